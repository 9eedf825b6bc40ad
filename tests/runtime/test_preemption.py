"""Cluster-style interruptions of real main.py processes: SIGTERM to the whole process group (as SLURM
and docker send it, DataLoader workers included), SIGUSR1's checkpoint, and exact resumption from a
mid-epoch checkpoint written every save_interval steps (bitwise equal final weights, CNN1D).

    python -m pytest tests/runtime/test_preemption.py -q
"""
import os
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
from conftest import default_sigint, wait_for
from fma_genres.data import demo_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """8 genres x 5 clips of 3 s (3 training clips each: 24, i.e. 12 steps an epoch at batch 2)."""
    return demo_data.make_demo_dataset(tmp_path_factory.mktemp("fma"), tracks_per_genre=5, duration=3.0)


def args(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--model=cnn1d", "--n_frames=96", "--batch_size=2",
            "--download=False", "--wandb_mode=disabled", "--num_workers=0", "--data_augmentation=True", *extra]


def start(data_dir, out_dir, *extra, log):
    """main.py in a process group of its own, so a signal can go to it and its workers at once."""
    return subprocess.Popen([sys.executable, "main.py", *args(data_dir, out_dir, *extra)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True, preexec_fn=default_sigint,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def weights(path):
    return models_utils.load_checkpoint(path)["state_dict"]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run: what every interrupted and resumed run must equal."""
    out_dir = tmp_path_factory.mktemp("straight")
    assert main.main(args(data_dir, out_dir, "--epochs=2")) == 0
    return out_dir


def test_a_mid_epoch_checkpoint_resumes_to_the_same_weights(data_dir, straight, tmp_path):
    log = open(tmp_path / "stderr.txt", "w+")
    process = start(data_dir, tmp_path / "run", "--epochs=2", "--save_interval=5", log=log)
    try:
        wait_for(tmp_path / "run" / "last.pt", process)  # the first save: step 5 of epoch 1's 12
        shutil.copytree(tmp_path / "run", tmp_path / "snapshot")
        assert process.wait(timeout=300) == 0
    finally:
        process.kill()
    position = models_utils.load_checkpoint(tmp_path / "snapshot" / "last.pt")["training"]["position"]
    assert position["epoch"] == 1 and position["progress"]["batches"] in (5, 10)  # mid-epoch, not an epoch end
    assert main.main(args(data_dir, tmp_path / "snapshot", "--epochs=2", "--resume=True")) == 0
    resumed, expected = weights(tmp_path / "snapshot" / "last.pt"), weights(straight / "last.pt")
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    history = lambda d: [{k: v for k, v in row.items() if k != "seconds"}
                         for row in models_utils.load_checkpoint(d / "last.pt")["training"]["history"]]
    assert history(tmp_path / "snapshot") == history(straight)


def test_sigterm_to_the_process_group_saves_the_current_step_and_exits_143(data_dir, straight, tmp_path):
    log = open(tmp_path / "stderr.txt", "w+")
    process = start(data_dir, tmp_path / "run", "--epochs=2", "--save_interval=3", "--num_workers=2", log=log)
    try:
        wait_for(tmp_path / "run" / "last.pt", process)
        os.killpg(process.pid, signal.SIGTERM)  # main.py and its DataLoader workers, as SLURM does
        assert process.wait(timeout=60) == 143
    finally:
        process.kill()
    log.seek(0)
    stderr = log.read()
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr, stderr[-3000:]
    assert "interrupted (SIGTERM)" in stderr and f"--out_dir={tmp_path / 'run'} --resume=True" in stderr
    checkpoint = models_utils.load_checkpoint(tmp_path / "run" / "last.pt")  # intact
    assert checkpoint["training"]["position"] is not None or checkpoint["training"]["epoch"] >= 1
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert main.main(args(data_dir, tmp_path / "run", "--epochs=2", "--resume=True", "--num_workers=2")) == 0
    resumed, expected = weights(tmp_path / "run" / "last.pt"), weights(straight / "last.pt")
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key


def test_sigusr1_saves_a_checkpoint_and_training_goes_on(data_dir, tmp_path):
    log = open(tmp_path / "stderr.txt", "w+")
    process = start(data_dir, tmp_path / "run", "--epochs=3", log=log)
    try:
        deadline = time.monotonic() + 300
        while "epoch 1/3" not in (tmp_path / "stderr.txt").read_text():  # training has started
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGUSR1)
        assert process.wait(timeout=300) == 0  # it went on to the end
    finally:
        process.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert f"SIGUSR1: saved {tmp_path / 'run'}/last.pt at step " in stderr and "training goes on" in stderr
    assert "Traceback" not in stderr
    assert models_utils.load_checkpoint(tmp_path / "run" / "last.pt")["training"]["epoch"] == 3
