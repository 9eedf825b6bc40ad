"""main.py under a real `torchrun --standalone --nproc_per_node=2` (gloo on the CPU, loopback) on a tiny
generated dataset (8 genres x 6 clips of 3 s; CNN1D, 96 frames, augmentation, global batch 4): one set of
artefacts whose metrics equal a single-process evaluation of best.pt, SIGTERM to the whole job (every
rank stops at the same step, rank 0 saves) and exact resumption under torchrun, continuation on one
process, a rank killed mid-run, and the NCCL path (one rank, where CUDA is present).

    python -m pytest tests/runtime/test_distributed.py -q
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import models_utils
import pre_trained_models
import utils
from conftest import wait_for
from fma_genres.data import demo_data, fma
from fma_genres.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """8 genres x 6 clips (32/8/8): 64 training examples with their masked copies, 16 steps an epoch."""
    return demo_data.make_demo_dataset(tmp_path_factory.mktemp("fma"), tracks_per_genre=6, duration=3.0)


def args(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--model=cnn1d", "--n_frames=96", "--batch_size=4",
            "--download=False", "--wandb_mode=disabled", "--num_workers=0", "--compile=False",
            "--data_augmentation=True", *extra]


def torchrun(data_dir, out_dir, *extra, nproc=2, **popen):
    command = [*TORCHRUN, f"--nproc_per_node={nproc}", "main.py", *args(data_dir, out_dir, *extra)]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finished(process, timeout=600):
    output = process.communicate(timeout=timeout)[0]
    return process.returncode, output


def worker_of_rank(parent, rank):
    """The pid of torchrun's worker with RANK=rank (a child of ``parent``)."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"\0RANK={rank}\0" in "\0" + (proc / "environ").read_text():
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def weights(path):
    return models_utils.load_checkpoint(path)["state_dict"]


def history(out_dir):
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in models_utils.load_checkpoint(out_dir / "last.pt")["training"]["history"]]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run on 2 processes: (out_dir, its output)."""
    out_dir = tmp_path_factory.mktemp("straight") / "run"
    code, output = finished(torchrun(data_dir, out_dir, "--epochs=2"))
    assert code == 0, output[-3000:]
    return out_dir, output


@pytest.fixture(scope="module")
def preempted(data_dir, tmp_path_factory):
    """The same run, SIGTERM sent to torchrun and its workers (as SLURM does) after the first mid-epoch
    save: (out_dir, output, seconds from the signal to the job's end)."""
    out_dir = tmp_path_factory.mktemp("preempted") / "run"
    process = torchrun(data_dir, out_dir, "--epochs=2", "--save_interval=3", start_new_session=True)
    try:
        wait_for(out_dir / "last.pt", process)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        _, output = finished(process, timeout=120)
        return out_dir, output, time.monotonic() - sent
    finally:
        process.kill()


def test_rank_0_alone_prints_and_writes_one_set_of_artefacts(straight):
    out_dir, output = straight
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["run"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["last.pt", "best.pt", "metrics.json", "history.csv", "splits.csv", "curves.png", "roc_curves.png", "confusion_matrix.png",
         "confusion_matrix_normalized.png"])
    assert "torchrun: 2 processes (gloo on CPU), global batch 4 = 2 x 2 per process" in output
    for line in ("epoch   1/2 |", "epoch   2/2 |", "=== cnn1d", "clips (the split: splits.csv)"):
        assert output.count(line) == 1, line
    last = models_utils.load_checkpoint(out_dir / "last.pt")
    assert last["config"]["world_size"] == 2 and last["training"]["examples_seen"] == 2 * 64  # none twice, none lost
    assert last["provenance"]["command"].startswith("torchrun --standalone --nproc_per_node=2 main.py --data_dir=")


def test_the_gathered_metrics_equal_a_single_process_evaluation_of_best_pt(straight, data_dir, tmp_path):
    out_dir, _ = straight
    assert pre_trained_models.main(["--evaluate=True", f"--checkpoint={out_dir / 'best.pt'}",
                                    f"--data_dir={data_dir}", f"--out_dir={tmp_path}"]) == 0
    gathered, single = (json.loads((d / "metrics.json").read_text()) for d in (out_dir, tmp_path))
    assert gathered["test_examples"] == single["test_examples"] == 8
    assert gathered["test_accuracy"] == single["test_accuracy"]
    assert gathered["test_loss"] == pytest.approx(single["test_loss"], abs=1e-6)
    assert gathered["confusion_matrix"] == single["confusion_matrix"]
    assert gathered["per_class"] == single["per_class"] and gathered["macro_f1"] == single["macro_f1"]
    assert gathered["roc_auc"] == pytest.approx(single["roc_auc"], abs=1e-6)


def test_sigterm_stops_every_rank_at_one_step_and_rank_0_saves_it(preempted):
    out_dir, output, seconds = preempted
    assert seconds < 30, output[-3000:]  # torchrun waits 30 s before it kills: every rank stopped by itself
    assert "forcefully exiting via SIGKILL" not in output and "lost the other processes" not in output
    assert 'main.py", line' not in output, output[-3000:]  # no traceback through the project (torchrun has its own)
    assert output.count("interrupted (SIGTERM)") == 1
    assert ("Continue with: torchrun --standalone --nproc_per_node=2 main.py --data_dir=" in output
            and f"--out_dir={out_dir} --resume=True" in output)
    position = models_utils.load_checkpoint(out_dir / "last.pt")["training"]["position"]
    assert position is not None and position["progress"]["batches"] >= 3  # the step it stopped at, mid-epoch
    assert not list(out_dir.glob("*.tmp"))


def test_a_sigterm_to_one_rank_stops_them_all_at_one_step(data_dir, tmp_path):
    """Rank 0 never gets the signal, yet saves the step where rank 1 stops, and both exit with 143."""
    process = torchrun(data_dir, tmp_path / "run", "--epochs=50", "--save_interval=3")
    try:
        wait_for(tmp_path / "run" / "last.pt", process)
        os.kill(worker_of_rank(process.pid, 1), signal.SIGTERM)
        code, output = finished(process, timeout=120)
    finally:
        process.kill()
    assert code != 0 and output.count("exitcode  : 143") == 2, output[-3000:]  # torchrun's report of both ranks
    assert "interrupted (SIGTERM)" in output and "lost the other processes" not in output
    assert models_utils.load_checkpoint(tmp_path / "run" / "last.pt")["training"]["position"] is not None


def test_resuming_under_torchrun_gives_the_uninterrupted_weights(preempted, straight, data_dir, tmp_path):
    out_dir = tmp_path / "run"
    shutil.copytree(preempted[0], out_dir)
    code, output = finished(torchrun(data_dir, out_dir, "--epochs=2", "--resume=True"))
    assert code == 0, output[-3000:]
    assert "not bit-identically" not in output
    resumed, expected = weights(out_dir / "last.pt"), weights(straight[0] / "last.pt")
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    assert history(out_dir) == history(straight[0])


def test_a_two_process_checkpoint_continues_on_one_process_and_says_so(preempted, data_dir, tmp_path, capsys):
    out_dir = tmp_path / "run"
    shutil.copytree(preempted[0], out_dir)
    assert main.main(args(data_dir, out_dir, "--epochs=2", "--resume=True")) == 0
    assert "trained on 2 process(es) and continues on 1" in capsys.readouterr().out
    last = models_utils.load_checkpoint(out_dir / "last.pt")
    assert last["config"]["world_size"] == 1 and [row["epoch"] for row in last["training"]["history"]] == [1, 2]
    assert last["training"]["examples_seen"] == 2 * 64  # the epoch went on from its step, on the same batches


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(straight, data_dir, tmp_path):
    """A training clip's cached spectrogram turned to inf (bit rot): only the rank whose part of a batch
    holds it computes a NaN loss, yet the summed step loss stops both before the backward pass."""
    (folder,) = (data_dir / "cache").iterdir()  # built by the straight run
    shutil.copytree(folder, tmp_path / "cache" / folder.name, ignore=shutil.ignore_patterns("locks"))
    tracks, _ = fma.load_metadata(data_dir, "small")
    row = json.loads((folder / "params.json").read_text())["track_ids"].index(
        int(tracks.index[tracks["split"] == "training"][0]))
    mels = np.load(tmp_path / "cache" / folder.name / "mels.npy", mmap_mode="r+")
    mels[row] = np.inf
    mels.flush()
    code, output = finished(torchrun(data_dir, tmp_path / "run", "--epochs=1", f"--cache_dir={tmp_path / 'cache'}"))
    assert code != 0 and output.count("error: training stopped in epoch 1: the training loss became") == 1, output[-3000:]
    assert "lost the other processes" not in output and "no checkpoint exists" in output


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_job_with_a_message_naming_the_ranks(data_dir, tmp_path):
    process = torchrun(data_dir, tmp_path / "run", "--epochs=50", "--save_interval=3")
    try:
        wait_for(tmp_path / "run" / "last.pt", process)
        os.kill(worker_of_rank(process.pid, 1), signal.SIGKILL)  # as the kernel's out-of-memory killer does
        killed = time.monotonic()
        code, output = finished(process, timeout=120)
    finally:
        process.kill()
    assert code != 0 and time.monotonic() - killed < 30, output[-3000:]
    assert "error: rank 0 of 2: lost the other processes of the job" in output  # the project's message
    assert "rank      : 1 (local_rank: 1)" in output and "Signal 9 (SIGKILL)" in output  # torchrun's report


def test_two_ranks_build_the_cache_one_process_would_and_any_number_reuses_it(data_dir, tmp_path, capsys):
    code, output = finished(torchrun(data_dir, "", "--prepare_only=True", f"--cache_dir={tmp_path / 'two'}"))
    assert code == 0, output[-3000:]
    assert "[24 computed now" in output and "nothing was trained" in output  # rank 0's half; rank 1 did the rest
    assert main.main(args(data_dir, "", "--prepare_only=True", f"--cache_dir={tmp_path / 'one'}")) == 0
    assert "[48 computed now" in capsys.readouterr().out
    (two,), (one,) = ((tmp_path / name).iterdir() for name in ("two", "one"))
    assert two.name == one.name  # the same tracks and preprocessing
    for name in ("mels.npy", "status.npy", "params.json", "report.csv"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    assert main.main(args(data_dir, "", "--prepare_only=True", f"--cache_dir={tmp_path / 'two'}")) == 0
    assert "[0 computed now" in capsys.readouterr().out


def test_shards_split_every_global_batch_and_evaluation_blocks_keep_the_order():
    base = utils.train_sampler(10, seed=0, shuffle=True, augment=True, augment_masks="per_epoch")
    order = list(base)
    shards = [utils.ShardSampler(utils.train_sampler(10, 0, True, True, "per_epoch"), 4, r, 2) for r in (0, 1)]
    parts = [list(shard) for shard in shards]
    assert [len(p) for p in parts] == [len(s) for s in shards] == [5, 5]  # 2 + 2 + 1 each
    for b, start in enumerate(range(0, 10, 4)):  # rank r takes items r, r + 2, ... of each global batch
        assert order[start:start + 4][0::2] == parts[0][2 * b:2 * b + 2]
        assert order[start:start + 4][1::2] == parts[1][2 * b:2 * b + 2]
    blocks = [list(utils.EvalShard(11, 3, r, 2)) for r in (0, 1)]
    assert blocks == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]  # whole batches of 3, in order
    with pytest.raises(ConfigError, match="the last batch of an epoch holds 1, fewer than the 2 processes"):
        utils.ShardSampler(utils.train_sampler(9, 0, True, False, "per_epoch"), 4, 0, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs CUDA: no GPU on this machine")
def test_nccl_one_rank_per_gpu_trains(data_dir, tmp_path):
    code, output = finished(torchrun(data_dir, tmp_path / "run", "--epochs=1", "--device=cuda", nproc=1))
    assert code == 0, output[-3000:]
    assert "torchrun: 1 process (nccl), global batch 4 = 1 x 4 per process" in output
    assert models_utils.load_checkpoint(tmp_path / "run" / "last.pt")["config"]["world_size"] == 1
