"""main.py's configuration and its early, clear failures (no training happens in these tests)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
import models_utils
import utils
from fma_genres import configurator
from fma_genres.data import fma
from models import FINETUNED, MODELS, PROBES

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    """The overrides main.main would apply for ``argv`` (config file first, then --key=value)."""
    return configurator.parse_command_line(argv, main.CONFIG, main.__file__)[0]


def error_of(argv):
    """The message main.main(argv) exits with (SystemExit with a string, i.e. status 1)."""
    with pytest.raises(SystemExit) as info:
        main.main(argv)
    assert isinstance(info.value.code, str), info.value.code
    return info.value.code


def test_defaults_are_the_originals_best_run():
    config = configurator.make_config({}, main.CONFIG)
    assert (config["model"], config["lr"], config["epochs"], config["batch_size"]) == ("crnn", 1e-3, 30, 50)
    assert config["faithful"] is True and config["data_augmentation"] is False and config["weight_decay"] == 0
    assert (config["split"], config["subset"], config["n_frames"]) == ("official", "small", 1291)
    assert config["init"] == "kaiming"
    assert config["wandb_project"] == "MusicGenreClassificationDefinitive" and config["device"] == "auto"
    assert config["out_dir"] == ""  # a new run folder per run, made by prepare_out_dir
    # the improved recipe by default; configs/original_*.py switch each of these to the original's
    assert (config["shuffle"], config["epoch_loss"], config["augment_masks"], config["mask_draw"],
            config["report_epoch"]) == (True, "per_example", "per_epoch", "inclusive", "best")
    assert config["standardise"] is False  # auto: standardise only the corrected (faithful=False) pass
    required = ("data_dir subset model faithful epochs batch_size lr weight_decay data_augmentation split "
                "train_size seed num_workers cache_workers device out_dir download demo prepare_only resume "
                "wandb_project wandb_mode compile amp init n_frames standardise shuffle epoch_loss "
                "augment_masks mask_draw report_epoch overwrite").split()
    assert set(required) <= set(main.CONFIG)
    assert not [key for key in main.CONFIG if key.startswith("_")]  # no module dunders in the config


def test_overrides_are_converted_to_the_defaults_types():
    overrides = parse(["--epochs=5", "--lr=3e-4", "--faithful=false", "--demo=1",
                       "--resume=True", "--model=cnn1d", "--wandb_mode=offline", "--weight_decay=0"])
    assert overrides == {"epochs": 5, "lr": 3e-4, "faithful": False, "demo": True, "resume": True,
                         "model": "cnn1d", "wandb_mode": "offline", "weight_decay": 0.0}
    assert type(overrides["weight_decay"]) is float and type(overrides["epochs"]) is int
    assert parse(["--wandb_mode=None"]) == {"wandb_mode": None}
    assert configurator.make_config(overrides, main.CONFIG)["standardise"] is True  # auto follows faithful=False


@pytest.mark.parametrize("argv, expected", [
    ([], True), (["--model=cnn2d"], True), (["--model=cnn1d"], False),  # auto: on where it pays
    (["--demo=True"], False), (["--demo=True", "--compile=True"], True),  # the demo never repays it
    (["--compile=False"], False), (["--model=cnn1d", "--compile=1"], True), (["--compile=auto"], True),
])
def test_compile_is_on_where_it_pays_unless_forced(argv, expected):
    assert configurator.make_config(parse(argv), main.CONFIG)["compile"] is expected


@pytest.mark.parametrize("argv, expected", [
    (["--compile=sometimes"], "choose auto, True or False"),
    (["--epochs=five"], "expected an int"),
    (["--epochs=2.5"], "expected an int"),
    (["--lr=fast"], "expected a float"),
    (["--faithful=yes"], "expected a bool"),
    (["--epochs", "5"], "write --key=value"),
    (["epochs=5"], "write --key=value"),
    (["--model=resnet"], "choose one of cnn1d, cnn2d, crnn"),
    (["--split=artist"], "choose one of official, random"),
    (["--epochs=0"], "epochs must be at least 1"),
    (["--lr=-1"], "lr must be > 0"),
    (["--cache_workers=0"], "cache_workers=0 is not valid"),
    (["--num_workers=-2"], "num_workers=-2 is not valid"),
    (["--standardise=maybe"], "standardise='maybe' is not valid: choose auto, True or False"),
    (["--epoch_loss=median"], "choose one of per_example, per_batch"),
    (["--report_epoch=first"], "choose one of best, last"),
    (["--mask_draw=wide"], "choose one of inclusive, original"),
    (["configs/no_such_file.py"], "cannot read config file configs/no_such_file.py"),
])
def test_bad_values_exit_with_a_clear_message(argv, expected):
    assert expected in error_of(argv)


def test_unknown_key_lists_the_valid_keys():
    message = error_of(["--learning_rate=0.1"])
    assert "unknown config key 'learning_rate'" in message
    for key in main.CONFIG:
        assert key in message


def test_demo_settings_apply_only_where_the_user_did_not_choose():
    config = configurator.make_config(parse(["--demo=True", "--epochs=3"]), main.CONFIG)
    assert config["epochs"] == 3
    assert config["batch_size"] == configurator.DEMO["batch_size"] and config["data_dir"] == configurator.DEMO["data_dir"]
    assert config["download"] is False


@pytest.mark.slow  # main.py processes
def test_command_line_error_is_one_message_without_traceback():
    result = subprocess.run([sys.executable, "main.py", "--bogus=1"], cwd=ROOT, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "unknown config key 'bogus'" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_without_download_names_the_folder_and_the_fixes(tmp_path):
    message = error_of([f"--data_dir={tmp_path / 'nothing'}", "--download=False", f"--out_dir={tmp_path / 'run'}",
                        "--wandb_mode=disabled"])
    assert str(tmp_path / "nothing") in message
    for fix in ("--download=True", "download_data.sh", "--demo=True"):
        assert fix in message


def test_out_dir_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    message = error_of([f"--out_dir={blocker / 'run'}", f"--data_dir={tmp_path}", "--download=False"])
    assert "is not writable" in message and "--out_dir" in message


def test_resume_from_a_corrupt_checkpoint_changes_nothing(tmp_path):
    last = tmp_path / "last.pt"
    last.write_bytes(b"this is not a checkpoint")
    message = error_of([f"--out_dir={tmp_path}", "--resume=True", f"--data_dir={tmp_path}", "--download=False"])
    assert "last.pt" in message and "corrupt" in message
    assert last.read_bytes() == b"this is not a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_resume_without_a_checkpoint_says_so(tmp_path):
    message = error_of([f"--out_dir={tmp_path}", "--resume=True"])
    assert "does not exist" in message


def test_resume_from_another_projects_file_is_refused(tmp_path):
    import torch
    torch.save({"weight": torch.zeros(2)}, tmp_path / "last.pt")  # e.g. a bare state_dict
    message = error_of([f"--out_dir={tmp_path}", "--resume=True"])
    assert "not a checkpoint of this project" in message


@pytest.mark.parametrize("requested, device, expected", [(-1, "cpu", 0), (0, "cuda", 0), (3, "cpu", 3)])
def test_loader_workers_follow_the_request(requested, device, expected):
    assert main.loader_workers(requested, torch.device(device)) == expected


def test_loader_workers_overlap_loading_on_cuda_by_default():
    assert configurator.make_config({}, main.CONFIG)["num_workers"] == -1
    assert 1 <= main.loader_workers(-1, torch.device("cuda")) <= 4


def test_valid_choices_come_from_the_registries_that_define_them():
    keys = configurator.KEYS
    assert keys["model"].choices == (*MODELS, *PROBES, *FINETUNED) and keys["subset"].choices == fma.SUBSETS
    assert keys["init"].choices == tuple(models_utils.INITIALISERS)
    assert keys["split"].choices == fma.SPLIT_MODES and keys["mask_draw"].choices == utils.MASK_DRAWS


def test_main_pys_defaults_read_from_its_file_are_its_config():
    """experiments.py runs main.py and never imports it: it reads main.py's constants with script_defaults,
    which must give exactly main.CONFIG (every key, its value and type, in order)."""
    defaults = configurator.script_defaults(Path(main.__file__))
    assert defaults == main.CONFIG and list(defaults) == list(main.CONFIG)
    assert [type(value) for value in defaults.values()] == [type(value) for value in main.CONFIG.values()]


@pytest.mark.slow  # a main.py process
def test_help_prints_every_key_with_its_default_and_comment():
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for key, default in main.CONFIG.items():
        line = next((l for l in lines if l.strip().startswith(f"--{key}=")), None)
        assert line is not None, f"--help lacks {key}"
        assert line.strip().startswith(f"--{key}={default}") and len(line.split(None, 1)) == 2, line
    assert "--cache_workers=-1" in result.stdout and "every core this process may use" in result.stdout
    demo = next(line for line in lines if line.startswith("With --demo=True"))  # what --demo's comment points to
    assert "--data_dir=data/demo --epochs=25 --batch_size=8" in demo and "--min_genre_tracks=2" in demo


def test_a_config_file_applies_its_keys_then_the_command_line_wins(tmp_path):
    (tmp_path / "base.py").write_text('lr = 0.01\nshuffle = False\n')
    config_file = tmp_path / "mine.py"
    config_file.write_text('# a comment\ninclude("base.py")\nmodel = "cnn1d"\nepochs = 7\nweight_decay = 0\n'
                           'compile = False\n')
    overrides, name = configurator.parse_command_line([str(config_file), "--epochs=2"], main.CONFIG, main.__file__)
    assert name == str(config_file)
    assert overrides == {"lr": 0.01, "shuffle": False, "model": "cnn1d", "epochs": 2, "weight_decay": 0.0,
                         "compile": "False"}
    assert type(overrides["weight_decay"]) is float  # an int in the file becomes the key's float
    assert configurator.make_config(overrides, main.CONFIG)["compile"] is False


def test_a_config_file_with_an_unknown_key_names_the_file_and_the_key(tmp_path):
    config_file = tmp_path / "typo.py"
    config_file.write_text("learning_rate = 0.1\n")
    message = error_of([str(config_file)])
    assert str(config_file) in message and "'learning_rate'" in message and "Valid keys" in message
    (tmp_path / "bad.py").write_text("epochs = 'many'\n")
    assert "expected an int" in error_of([str(tmp_path / "bad.py")])


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(main, "RUNS_ROOT", tmp_path / "runs")
    return tmp_path / "runs"


def test_each_run_gets_its_own_folder_and_latest_points_at_the_newest(runs_root):
    first = Path(configurator.prepare_out_dir(configurator.make_config({"model": "cnn1d"}, main.CONFIG), main.RUNS_ROOT))
    (first / "last.pt").write_bytes(b"run 1")
    second = Path(configurator.prepare_out_dir(configurator.make_config({"model": "cnn1d"}, main.CONFIG), main.RUNS_ROOT))
    assert first != second and first.parent == second.parent == runs_root / "cnn1d"
    assert (runs_root / "cnn1d" / "latest").resolve() == second.resolve()
    assert (first / "last.pt").read_bytes() == b"run 1"  # the earlier run is untouched
    resumed = configurator.prepare_out_dir(configurator.make_config({"model": "cnn1d", "resume": True}, main.CONFIG), main.RUNS_ROOT)
    assert Path(resumed) == second.resolve()  # --resume=True alone continues the latest run
    demo = Path(configurator.prepare_out_dir(configurator.make_config({"model": "cnn1d", "demo": True}, main.CONFIG), main.RUNS_ROOT))
    assert demo.parent == runs_root / "demo_cnn1d"


def test_the_quick_starts_demo_link_is_the_plain_demos_own(runs_root):
    """README's quick start predicts with runs/demo_crnn/latest: a multi-label or torchrun demo run after it keeps
    its own folder and link."""
    def run_folder(overrides, launched=False):
        return Path(configurator.prepare_out_dir(configurator.make_config(overrides, main.CONFIG), main.RUNS_ROOT,
                                                 launched))

    demo, multi_label = {"demo": True}, {"demo": True, "target": "genres_all"}
    plain, multi = run_folder(demo), run_folder(multi_label)
    both, torchrun = run_folder(multi_label, launched=True), run_folder(demo, launched=True)
    assert [p.parent.name for p in (plain, multi, both, torchrun)] == [
        "demo_crnn", "demo_genres_all_crnn", "demo_genres_all_torchrun_crnn", "demo_torchrun_crnn"]
    assert (runs_root / "demo_crnn" / "latest").resolve() == plain.resolve()


def test_resume_without_any_earlier_run_says_where_it_looked(runs_root):
    message = error_of(["--model=cnn2d", "--resume=True"])
    assert str(runs_root / "cnn2d" / "latest") in message and "--out_dir" in message


def test_an_out_dir_holding_a_run_is_not_overwritten_silently(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"an earlier run")
    message = error_of([f"--out_dir={tmp_path}", f"--data_dir={tmp_path}", "--download=False"])
    for option in ("--resume=True", "--overwrite=True", "--out_dir"):
        assert option in message
    assert (tmp_path / "last.pt").read_bytes() == b"an earlier run"
    config = configurator.make_config({"out_dir": str(tmp_path), "overwrite": True}, main.CONFIG)
    assert configurator.prepare_out_dir(config, main.RUNS_ROOT) == str(tmp_path)


def test_provenance_records_commit_versions_hardware_and_command():
    record = configurator.provenance(["configs/original_crnn.py", "--epochs=2"], "configs/original_crnn.py")
    assert record["command"] == "python main.py configs/original_crnn.py --epochs=2"
    assert record["config_file"] == "configs/original_crnn.py"
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    assert set(record["versions"]) >= {"torch", "torchaudio", "librosa", "numpy", "python"}
    assert record["hardware"]["cpu"] and record["hardware"]["cpu_cores"] >= 1
    in_git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if in_git.returncode == 0:
        assert record["git_commit"].startswith(in_git.stdout.strip())
    else:
        assert record["git_commit"] is None
