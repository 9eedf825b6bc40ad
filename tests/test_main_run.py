"""main.py end to end on a tiny generated FMA-format dataset (48 clips of 3 s, CNN1D, 96 frames):
a real run and its artefacts, exact resume, the NaN stop, --prepare_only and Ctrl-C (W&B: tests/reporting/test_wandb.py)."""
import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main
import models_utils
import pre_trained_models
from conftest import clean_env, default_sigint
from fma_genres.data import demo_data
from fma_genres.runtime import atomic, errors
from fma_genres.training import run_state

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """8 genres x 6 clips (4/1/1 train/val/test per genre), 3 s each, in the real FMA layout."""
    return demo_data.make_demo_dataset(tmp_path_factory.mktemp("fma"), tracks_per_genre=6, duration=3.0)


def args(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--model=cnn1d", "--n_frames=96", "--batch_size=8",
            "--download=False", "--wandb_mode=disabled", "--num_workers=0", *extra]


def run_main(argv):
    assert main.main(argv) == 0


def error_of(argv):
    with pytest.raises(SystemExit) as info:
        main.main(argv)
    assert isinstance(info.value.code, str), info.value.code
    return info.value.code


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    """An uninterrupted 4-epoch run."""
    out_dir = tmp_path_factory.mktemp("full")
    run_main(args(data_dir, out_dir, "--epochs=4"))
    return out_dir


@pytest.fixture(scope="module")
def two_epochs(data_dir, tmp_path_factory):
    """The same run stopped after 2 of the 4 epochs (a finished 2-epoch run, to be resumed)."""
    out_dir = tmp_path_factory.mktemp("two")
    run_main(args(data_dir, out_dir, "--epochs=2"))
    return out_dir


def read_history(out_dir):
    with open(out_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_short_run_learns_and_writes_every_artefact(full_run):
    history = read_history(full_run)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3, 4]
    assert list(history[0]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert json.loads((full_run / "metrics.json").read_text())["select_metric"] == "accuracy"
    losses = [float(row["train_loss"]) for row in history]
    assert min(losses[1:]) < losses[0], losses  # the loss falls
    for name in ("confusion_matrix.png", "roc_curves.png", "curves.png"):
        assert (full_run / name).read_bytes().startswith(PNG), name

    metrics = json.loads((full_run / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "per_class", "macro_f1", "confusion_matrix", "class_names",
                "roc_auc", "best_epoch", "training_seconds", "parameters"):
        assert key in metrics, key
    assert metrics["class_names"] == ["Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental",
                                      "International", "Pop", "Rock"]
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_examples"] == 8
    assert set(metrics["per_class"]["Rock"]) == {"precision", "recall", "f1", "support"}
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    # best: the highest val accuracy, a tie broken by the lower val loss
    best_row = max(history, key=lambda row: (float(row["val_accuracy"]), -float(row["val_loss"])))
    assert metrics["best_epoch"] == int(best_row["epoch"])


def test_select_metric_chooses_best_pt_and_is_in_every_row(data_dir, tmp_path):
    run_main(args(data_dir, tmp_path, "--epochs=3", "--select_metric=macro_f1"))
    history, metrics = read_history(tmp_path), json.loads((tmp_path / "metrics.json").read_text())
    assert list(history[0])[-1] == "val_macro_f1"
    best_row = max(history, key=lambda row: (float(row["val_macro_f1"]), -float(row["val_loss"])))
    assert metrics["select_metric"] == "macro_f1" and metrics["best_epoch"] == int(best_row["epoch"])
    assert metrics["best_val_score"] == pytest.approx(float(best_row["val_macro_f1"]))
    assert "select_metric=f1 does not apply to target=genre_top" in error_of(args(data_dir, tmp_path / "x", "--select_metric=f1"))


def test_checkpoints_hold_everything_to_rebuild_and_resume(full_run):
    last = models_utils.load_checkpoint(full_run / "last.pt")
    best = models_utils.load_checkpoint(full_run / "best.pt")
    # the one layout, models_utils.make_checkpoint: what rebuilds the model, then what resumes the run
    assert set(last) == {"format", "version", "model", "model_args", "state_dict", "class_names", "preprocessing",
                         "config", "provenance", "training"}
    for key in ("epoch", "metrics", "optimizer", "scheduler", "history", "best_val_accuracy", "examples_seen"):
        assert key in last["training"], key
    assert last["training"]["epoch"] == 4 and last["model"] == "cnn1d"
    assert last["model_args"] == {"n_mels": 128, "n_frames": 96, "n_classes": 8, "faithful": True}
    assert last["preprocessing"]["n_frames"] == 96 and last["config"]["lr"] == 1e-3
    assert last["config"]["standardise"] is False  # raw dB: the Standardise layer's identity
    assert (last["state_dict"]["standardise.mean"], last["state_dict"]["standardise.std"]) == (0, 1)
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert best["training"]["epoch"] == metrics["best_epoch"] == metrics["reported_epoch"]
    for record in (last["provenance"], metrics["provenance"]):  # what produced the run
        assert record["command"].startswith("python main.py --data_dir=") and record["versions"]["torch"]
        assert record["hardware"]["cpu_cores"] >= 1 and "git_commit" in record
    # best.pt: what prediction, evaluation and fine-tuning read, without last.pt's optimizer and scheduler
    assert set(best) == set(last) and best["config"] == last["config"]
    assert not set(best["training"]) & set(models_utils.RESUME_KEYS)
    assert set(best["training"]) | set(models_utils.RESUME_KEYS) == set(last["training"])
    assert (full_run / "best.pt").stat().st_size < 0.6 * (full_run / "last.pt").stat().st_size  # Adam: 2 moments a weight
    model = models_utils.model_from_checkpoint(best)
    logits, probs = model(torch.full((2, 128, 96), -40.0))
    assert probs.shape == (2, 8)
    assert models_utils.count_parameters(model) == json.loads((full_run / "metrics.json").read_text())["parameters"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(data_dir, full_run, two_epochs, tmp_path):
    out_dir = tmp_path / "resumed"
    shutil.copytree(two_epochs, out_dir)
    run_main(args(data_dir, out_dir, "--epochs=4", "--resume=True"))
    resumed, uninterrupted = (models_utils.load_checkpoint(d / "last.pt") for d in (out_dir, full_run))
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["training"]["scheduler"] == uninterrupted["training"]["scheduler"]
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert strip(resumed["training"]["history"]) == strip(uninterrupted["training"]["history"])
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out_dir, full_run))
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-6)
    assert a["confusion_matrix"] == b["confusion_matrix"]


def test_a_best_pt_cannot_be_resumed_and_an_old_full_one_still_predicts_and_fine_tunes(data_dir, full_run,
                                                                                         tmp_path, capsys):
    shutil.copytree(full_run, tmp_path / "run")
    shutil.copy(full_run / "best.pt", tmp_path / "run" / "last.pt")  # best.pt keeps no optimizer
    message = error_of(args(data_dir, tmp_path / "run", "--epochs=5", "--resume=True"))
    assert "holds no training state to resume" in message and "a copy of a best.pt" in message
    (tmp_path / "old").mkdir()  # a best.pt written before it left out the resume state: last.pt's layout
    shutil.copy(full_run / "last.pt", tmp_path / "old" / "best.pt")
    song = next((Path(data_dir) / "fma_small").rglob("*.mp3"))
    capsys.readouterr()
    assert pre_trained_models.main([f"--checkpoint={tmp_path / 'old' / 'best.pt'}", "--num_workers=0", str(song)]) == 0
    assert str(song) in capsys.readouterr().out
    run_main(args(data_dir, tmp_path / "tuned", "--epochs=1", f"--init_from={tmp_path / 'old' / 'best.pt'}"))
    assert "init_from=" in capsys.readouterr().out


def test_resume_refuses_a_different_model(data_dir, two_epochs, tmp_path):
    shutil.copytree(two_epochs, tmp_path / "run")
    message = error_of(args(data_dir, tmp_path / "run", "--resume=True", "--n_frames=128"))
    assert "n_frames=128 (checkpoint: 96)" in message


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, two_epochs, tmp_path):
    out_dir = tmp_path / "run"
    shutil.copytree(two_epochs, out_dir)
    before = {name: (out_dir / name).read_bytes() for name in ("last.pt", "best.pt", "history.csv")}
    # A learning rate of 1e30 (allowed on resume) makes Adam's first step overflow: a real NaN loss.
    message = error_of(args(data_dir, out_dir, "--resume=True", "--epochs=4", "--lr=1e30"))
    assert "training stopped in epoch 3" in message and "loss became nan" in message
    assert "last.pt (epoch 2) is kept" in message and "Lower the learning rate" in message
    assert {name: (out_dir / name).read_bytes() for name in before} == before


def test_a_nan_loss_in_the_first_epoch_leaves_no_checkpoint(data_dir, tmp_path):
    message = error_of(args(data_dir, tmp_path, "--epochs=2", "--lr=1e30"))
    assert "loss became nan" in message and "no checkpoint exists" in message
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_prepare_only_builds_the_cache_and_stops(data_dir, tmp_path, capsys):
    run_main(args(data_dir, tmp_path / "run", "--prepare_only=True"))
    out = capsys.readouterr().out
    assert "Mel cache" in out and "48 ok" in out and "nothing was trained" in out
    assert not (tmp_path / "run").exists()


def test_ctrl_c_saves_and_exits_cleanly_with_a_resume_hint(data_dir, tmp_path):
    out_dir = tmp_path / "run"
    log = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen([sys.executable, "main.py", *args(data_dir, out_dir, "--epochs=500")], cwd=ROOT,
                               env=clean_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=log, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 300
        while not (out_dir / "last.pt").exists():
            assert process.poll() is None, "main.py ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    log.seek(0)
    stderr = log.read()
    assert "Traceback" not in stderr
    assert "interrupted (Ctrl-C):" in stderr and str(out_dir / "last.pt") in stderr
    assert f"--out_dir={out_dir} --resume=True" in stderr  # the exact command that continues this run
    checkpoint = models_utils.load_checkpoint(out_dir / "last.pt")
    assert 1 <= checkpoint["training"]["epoch"] < 500
    assert len(read_history(out_dir)) == checkpoint["training"]["epoch"]


CONFIG_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("original_*.py"))
QUICK = ["--n_frames=96", "--epochs=1", "--batch_size=8", "--compile=False"]


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_each_config_file_runs_the_originals_procedure(config_file, data_dir, tmp_path):
    argv = [config_file, *(a for a in args(data_dir, tmp_path / "run", *QUICK) if not a.startswith("--model="))]
    run_main(argv)
    checkpoint = models_utils.load_checkpoint(tmp_path / "run" / "last.pt")
    config, metrics = checkpoint["config"], json.loads((tmp_path / "run" / "metrics.json").read_text())
    procedure = {"split": "random", "shuffle": False, "epoch_loss": "per_batch", "augment_masks": "fixed",
                 "mask_draw": "original", "report_epoch": "last", "faithful": True, "standardise": False,
                 "wandb_project": "MusicGenreClassificationDefinitive"}
    assert {k: config[k] for k in procedure} == procedure
    assert checkpoint["provenance"]["config_file"] == config_file
    assert checkpoint["provenance"]["command"].startswith(f"python main.py {config_file} --data_dir=")
    assert metrics["val_is_test"] and metrics["report_epoch"] == "last"
    assert checkpoint["model"] == ("cnn1d" if "cnn1d" in config_file else "cnn2d" if "cnn2d" in config_file
                                   else "crnn")


def test_the_original_procedure_reports_the_last_epoch_on_the_held_out_fifth(data_dir, tmp_path):
    config_file = "configs/original_cnn1d_lr0.0001_augmented.py"
    run_main([config_file, *args(data_dir, tmp_path / "run", *QUICK[:1], "--epochs=3", "--lr=0.003")])
    last = models_utils.load_checkpoint(tmp_path / "run" / "last.pt")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["reported_epoch"] == 3 and metrics["epochs"] == 3  # the final epoch, whichever was best
    assert metrics["test_examples"] == 48 - int(0.8 * 48)  # the random 80/20 split's held-out part
    config = last["config"]
    assert (config["data_augmentation"], config["weight_decay"], config["lr"]) == (True, 1e-4, 0.003)
    train_rows = last["training"]["examples_seen"] / 3
    assert train_rows == 2 * int(0.8 * 48)  # clean clips + one masked copy each, every epoch


@pytest.mark.slow
def test_a_compiled_crnn_with_augmentation_and_workers_resumes_exactly(data_dir, tmp_path, monkeypatch):
    """compile=True in channels_last, masks drawn in 2 DataLoader workers: 2 epochs straight equal 1 + 1.
    The default compile mode: max-autotune picks kernels by timing, which no run can repeat bitwise."""
    monkeypatch.setattr(models_utils, "COMPILE_MODE", "default")
    crnn = [a.replace("--model=cnn1d", "--model=crnn").replace("--num_workers=0", "--num_workers=2")
            for a in args(data_dir, "", "--compile=True", "--data_augmentation=True", "--n_frames=32",
                          "--preload=False")]  # the DataLoader's workers, not preload.py's batches
    crnn = [a for a in crnn if not a.startswith("--out_dir=")]
    run_main([*crnn, f"--out_dir={tmp_path / 'straight'}", "--epochs=2"])
    run_main([*crnn, f"--out_dir={tmp_path / 'resumed'}", "--epochs=1"])
    run_main([*crnn, f"--out_dir={tmp_path / 'resumed'}", "--epochs=2", "--resume=True"])
    straight, resumed = (models_utils.load_checkpoint(tmp_path / d / "last.pt") for d in ("straight", "resumed"))
    assert straight["config"]["compile"] is True and straight["model"] == "crnn"
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert strip(resumed["training"]["history"]) == strip(straight["training"]["history"])


@pytest.fixture
def small_disk(tmp_path):
    """mount(size): a tmpfs of that many bytes, unmounted after the test; skipped where mounting is refused."""
    mounts = []

    def mount(size):
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        refused = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                 capture_output=True, text=True)
        if refused.returncode:
            pytest.skip(f"cannot mount a small tmpfs here (root and CAP_SYS_ADMIN needed): {refused.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=True)


def test_a_full_disk_stops_with_the_space_needed_and_keeps_a_resumable_last_pt(data_dir, two_epochs, small_disk,
                                                                                tmp_path):
    size, best = (two_epochs / "last.pt").stat().st_size, (two_epochs / "best.pt").stat().st_size
    # Room for epoch 1's best.pt (no resume state: about a third of last.pt), last.pt, history.csv and
    # splits.csv, and for epoch 2's best.pt beside them, not for its last.pt beside the previous one.
    out_dir = small_disk(best + size + size // 2)
    argv = args(data_dir, out_dir, "--epochs=2")
    message = error_of(argv)
    assert f"the disk holding {out_dir} is full: writing " in message
    assert f"needs {errors.format_bytes(size)} but " in message and " is free there" in message
    assert message.endswith(f"Then continue the run with: {run_state.resume_command(argv, None, str(out_dir))}")
    assert models_utils.load_checkpoint(out_dir / "last.pt")["training"]["epoch"] == 1  # intact
    assert not list(out_dir.glob("*.tmp"))
    roomy = tmp_path / "roomy"
    shutil.copytree(out_dir, roomy)  # what freeing space (or moving the folder) does
    run_main(args(data_dir, roomy, "--epochs=2", "--resume=True"))
    assert [row["epoch"] for row in read_history(roomy)] == ["1", "2"]


def test_a_report_write_that_does_not_fit_is_a_disk_full_error_naming_its_size(small_disk):
    disk = small_disk(64 * 1024)  # metrics.json, figures, history.csv: plain writes, which fail with ENOSPC
    (disk / "metrics.json").write_bytes(b"the previous report")
    with pytest.raises(errors.DiskFullError) as info:
        atomic.atomic_write(disk / "metrics.json", lambda f: f.write(b"x" * 300_000))
    assert info.value.needed == 300_000 and info.value.free < 64 * 1024
    assert str(info.value).startswith(f"the disk holding {disk} is full: writing metrics.json needs 0.3 MiB")
    assert (disk / "metrics.json").read_bytes() == b"the previous report" and not list(disk.glob("*.tmp"))
