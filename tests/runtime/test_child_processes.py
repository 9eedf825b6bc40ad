"""child_processes.py: a child started from a thread that ends at once (as Optuna's worker threads may)
keeps running while its parent process lives, and gets SIGTERM when the parent is killed with kill -9;
on Linux by the kernel (PR_SET_PDEATHSIG), and anywhere by the watchdog fallback."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ends_within
from fma_genres.runtime import child_processes

ROOT = Path(__file__).resolve().parents[2]
# A parent process: starts a sleeping child with child_processes.<argv[1]> from a short-lived thread,
# prints the child's pid, then waits to be killed.
PARENT = """
import sys, threading, time
from fma_genres.runtime import child_processes
start, pids = getattr(child_processes, sys.argv[1]), []
thread = threading.Thread(target=lambda: pids.append(start([sys.executable, "-c", "import time; time.sleep(120)"]).pid))
thread.start()
thread.join()
print(pids[0], flush=True)
time.sleep(120)
"""
STARTS = ["start_with_watchdog", *(["start_with_pdeathsig"] if sys.platform.startswith("linux") else [])]


@pytest.mark.parametrize("start", STARTS)
def test_a_child_outlives_the_thread_that_started_it_and_ends_with_its_process(start):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, start], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        child = int(parent.stdout.readline())
        assert not ends_within(child, 2 * child_processes.WATCH_SECONDS)  # its thread ended, its process lives
        parent.kill()
        parent.wait()
        assert ends_within(child, 10 * child_processes.WATCH_SECONDS)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
