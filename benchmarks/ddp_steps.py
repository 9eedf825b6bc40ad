"""Training steps under torchrun, timed for benchmarks/run.py (part ddp): main.py's own DDP path
(distributed.joined, wrap, train.train with sync_step) on a synthetic batch, so only the training
step is measured, not data loading or process start-up.

    torchrun --standalone --nproc_per_node=2 benchmarks/ddp_steps.py cnn1d 50 1291 8   # 2 CPU processes
    torchrun --standalone --nproc_per_node=8 benchmarks/ddp_steps.py crnn 400 1291 20  # 8 GPUs (NCCL)

Arguments: model, global batch, frames, steps[, CPU threads per process (default: its share of the
cores)]. Rank 0 prints one JSON line:
{"processes", "seconds_per_step", "samples_per_s"}.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fma_genres.runtime import devices, distributed  # noqa: E402
from models import build_model  # noqa: E402
from train import TrainSettings, train  # noqa: E402


def main(model_name, batch_size, n_frames, steps, threads=None):
    config = {"device": "auto", "sync_batchnorm": False, "batch_size": batch_size}
    with distributed.joined(config):
        device = torch.device(distributed.local_device("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cpu":
            torch.set_num_threads(threads or devices.cpu_share())
        torch.manual_seed(0)
        raw = build_model(model_name, n_frames=n_frames).to(device)
        model = distributed.wrap(raw, raw, device)
        optimizer = torch.optim.Adam(raw.parameters())
        per_process = batch_size // distributed.world_size()
        batch = (torch.randn(per_process, 128, n_frames) * 20 - 40, torch.randint(0, 8, (per_process,)))
        sync = distributed.sync_step if distributed.active() else None
        train(model, [batch], optimizer, device, TrainSettings(sync=sync))  # warm-up: allocations, DDP's buckets
        start = time.perf_counter()
        train(model, [batch] * steps, optimizer, device, settings=TrainSettings(sync=sync))
        seconds = (time.perf_counter() - start) / steps
        if distributed.is_main():
            print(json.dumps({"processes": distributed.world_size(), "seconds_per_step": seconds,
                              "samples_per_s": batch_size / seconds}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:2], *map(int, sys.argv[2:]))
