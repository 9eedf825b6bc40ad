"""allocator.py: a training process (main.py and its DataLoader workers) keeps large freed blocks for
reuse instead of faulting them in again; the user's own allocator settings win.

    python -m pytest tests/runtime/test_allocator.py -q
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fma_genres.runtime import allocator

ROOT = Path(__file__).resolve().parents[2]
PAGES = (256 << 20) // os.sysconf("SC_PAGE_SIZE")  # of the 256 MiB tensor the probe measures
# Starts main.py as `python main.py` does (its --help: nothing is trained), frees a 300 MiB tensor, then counts the page faults of filling
# a 256 MiB one, in this process and in a (forked) DataLoader worker: near 0 when the freed memory
# was kept and reused, one per page when glibc unmapped it and mapped fresh memory. (The second
# tensor is smaller because glibc 2.36's posix_memalign, which torch uses, asks for a few bytes more
# than the tensor and so cannot reuse a hole of exactly the same size.)
PROBE = r"""
import json, resource, runpy, sys
from fma_genres.runtime import allocator
import torch
from torch.utils.data import DataLoader, Dataset

def second_allocation_faults():
    torch.empty(75 << 20).fill_(1.0)  # 300 MiB of float32, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(64 << 20).fill_(1.0)  # 256 MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

class InWorker(Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, index):
        return second_allocation_faults()

sys.argv = ["main.py", "--help"]
try:
    runpy.run_path("main.py", run_name="__main__")
except SystemExit:
    pass
worker = next(iter(DataLoader(InWorker(), batch_size=None, num_workers=1)))
print(json.dumps({"main": second_allocation_faults(), "worker": int(worker), "status": allocator.status}))
"""

glibc_only = pytest.mark.skipif(allocator.glibc_version() is None,
                                reason="allocator.py tunes glibc's malloc only; a no-op with this C library")


def run_probe(**environ):
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_VARIABLES and k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**env, **environ},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_training_process_and_its_workers_keep_large_freed_blocks():
    result = run_probe()
    assert result["status"].startswith("glibc 2.") and "mmap threshold 1024 MiB" in result["status"]
    assert result["main"] < PAGES // 10, result
    assert result["worker"] < PAGES // 10, result  # the forked worker inherits the setting


@glibc_only
def test_the_users_mmap_threshold_wins():
    result = run_probe(MALLOC_MMAP_THRESHOLD_="131072")  # glibc's default threshold, fixed
    assert result["status"] == "left alone: the user set MALLOC_MMAP_THRESHOLD_"
    assert result["main"] > PAGES * 9 // 10, result  # every page faulted in again: not overridden


def test_importing_an_entry_point_leaves_the_allocator_alone():
    code = "from fma_genres.runtime import allocator; import app, experiments, main, pre_trained_models; print(allocator.status)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["not", "called"], result.stderr[-3000:]


@pytest.mark.parametrize("environ, expected", [
    ({}, []),
    ({"MALLOC_ARENA_MAX": "2"}, []),  # not a threshold: the project's setting still applies
    ({"MALLOC_TRIM_THRESHOLD_": "0", "LD_PRELOAD": "libjemalloc.so.2"}, ["MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"]),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, ["GLIBC_TUNABLES"]),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, []),
])
def test_user_settings_are_recognised(environ, expected):
    assert allocator.user_settings(environ) == expected
