"""The cores and the device this process may use."""
import os

import torch

from fma_genres.runtime import distributed
from fma_genres.runtime.errors import ConfigError


def available_cpus():
    """The cores this process may run on: its CPU affinity (taskset, SLURM, containers), not the host's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_share():
    """The cores this process should keep busy: available_cpus(), split evenly among the processes that
    torchrun started on this machine (all of them for a plain run)."""
    return max(1, available_cpus() // distributed.local_world_size())


def pick_device(name):
    """The torch device for ``name``; "auto" prefers CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise ConfigError(f"device={name!r} cannot be used ({str(error).splitlines()[0]}). Use device=auto or cpu.")
    if device.type == "cpu":  # the cores this process may use, not the host's (its share under torchrun)
        torch.set_num_threads(cpu_share())
    return device
