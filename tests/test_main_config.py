"""main.py's configuration and its early, clear failures (no training happens in these tests)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
import models_utils

ROOT = Path(__file__).resolve().parents[1]


def error_of(argv):
    """The message main.main(argv) exits with (SystemExit with a string, i.e. status 1)."""
    with pytest.raises(SystemExit) as info:
        main.main(argv)
    assert isinstance(info.value.code, str), info.value.code
    return info.value.code


def test_defaults_are_the_originals_best_run():
    config = main.make_config({})
    assert (config["model"], config["lr"], config["epochs"], config["batch_size"]) == ("crnn", 1e-3, 30, 50)
    assert config["faithful"] is True and config["data_augmentation"] is False and config["weight_decay"] == 0
    assert (config["split"], config["subset"], config["n_frames"]) == ("official", "small", 1291)
    assert config["init"] == "kaiming"
    assert config["wandb_project"] == "MusicGenreClassification" and config["device"] == "auto"
    assert config["out_dir"] == str(Path("runs") / "crnn")
    required = ("data_dir subset model faithful epochs batch_size lr weight_decay data_augmentation split "
                "train_size seed num_workers device out_dir download demo prepare_only resume wandb_project "
                "wandb_mode compile amp init n_frames").split()
    assert set(required) <= set(main.CONFIG)
    assert not [key for key in main.CONFIG if key.startswith("_")]  # no module dunders in the config


def test_overrides_are_converted_to_the_defaults_types():
    overrides = main.parse_overrides(["--epochs=5", "--lr=3e-4", "--faithful=false", "--demo=1",
                                      "--resume=True", "--model=cnn1d", "--wandb_mode=offline",
                                      "--weight_decay=0"])
    assert overrides == {"epochs": 5, "lr": 3e-4, "faithful": False, "demo": True, "resume": True,
                         "model": "cnn1d", "wandb_mode": "offline", "weight_decay": 0.0}
    assert type(overrides["weight_decay"]) is float and type(overrides["epochs"]) is int
    assert main.parse_overrides(["--wandb_mode=None"]) == {"wandb_mode": None}
    assert main.make_config(overrides)["out_dir"] == str(Path("runs") / "demo_cnn1d")


@pytest.mark.parametrize("argv, expected", [
    ([], True), (["--model=cnn2d"], True), (["--model=cnn1d"], False),  # auto: on where it pays
    (["--demo=True"], False), (["--demo=True", "--compile=True"], True),  # the demo never repays it
    (["--compile=False"], False), (["--model=cnn1d", "--compile=1"], True), (["--compile=auto"], True),
])
def test_compile_is_on_where_it_pays_unless_forced(argv, expected):
    assert main.make_config(main.parse_overrides(argv))["compile"] is expected


@pytest.mark.parametrize("argv, expected", [
    (["--compile=sometimes"], "choose auto, True or False"),
    (["--epochs=five"], "expected a int"),
    (["--epochs=2.5"], "expected a int"),
    (["--lr=fast"], "expected a float"),
    (["--faithful=yes"], "expected a bool"),
    (["--epochs", "5"], "write --key=value"),
    (["epochs=5"], "write --key=value"),
    (["--model=resnet"], "choose one of cnn1d, cnn2d, crnn"),
    (["--split=artist"], "choose one of official, random"),
    (["--epochs=0"], "epochs must be at least 1"),
    (["--lr=-1"], "lr must be > 0"),
])
def test_bad_values_exit_with_a_clear_message(argv, expected):
    assert expected in error_of(argv)


def test_unknown_key_lists_the_valid_keys():
    message = error_of(["--learning_rate=0.1"])
    assert "unknown config key 'learning_rate'" in message
    for key in main.CONFIG:
        assert key in message


def test_demo_settings_apply_only_where_the_user_did_not_choose():
    config = main.make_config(main.parse_overrides(["--demo=True", "--epochs=3"]))
    assert config["epochs"] == 3
    assert config["batch_size"] == main.DEMO["batch_size"] and config["data_dir"] == main.DEMO["data_dir"]
    assert config["download"] is False


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
    assert main.make_config({})["num_workers"] == -1
    assert 1 <= main.loader_workers(-1, torch.device("cuda")) <= 4
