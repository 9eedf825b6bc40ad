"""Child processes that end with their parent. experiments.py runs each trial as a main.py child; after a
`kill -9` of experiments.py nothing of it runs to stop them, and they would train on unobserved.

    process = child_processes.start(command, stdout=log)  # subprocess.Popen's arguments

The child gets SIGTERM when its parent dies, as from a scheduler: main.py saves last.pt and exits, so the
trial resumes from there. On Linux the kernel sends it (prctl PR_SET_PDEATHSIG, requested in the child
between fork and exec). The kernel sends it when the parent THREAD that forked the child ends, not the
process, and Optuna runs trials in worker threads: every child is therefore forked by one thread that
lives as long as the process. Elsewhere a small watchdog process checks every WATCH_SECONDS whether the
parent still runs and sends the SIGTERM itself.
"""
import concurrent.futures
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 1.0
SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="child-spawner")  # never ends
# The fallback, run as `python -c WATCHDOG <parent pid> <child pid> <seconds>`: it ends with the child.
WATCHDOG = """
import os, signal, sys, time
parent, child, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
while True:
    time.sleep(seconds)
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        break
    if os.getppid() != parent:  # the parent died: this watchdog was handed to another process
        os.kill(child, signal.SIGTERM)
        break
"""


def start(command, **popen_args):
    """subprocess.Popen(command, **popen_args), sent SIGTERM when this process dies, even by kill -9."""
    return (start_with_pdeathsig if sys.platform.startswith("linux") else start_with_watchdog)(command, **popen_args)


def start_with_pdeathsig(command, **popen_args):
    """Linux: the kernel signals the child when the long-lived spawner thread, hence this process, ends."""
    parent, prctl = os.getpid(), ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def end_with_parent():  # in the child, between fork and exec (the request survives exec)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request was made
            os._exit(128 + signal.SIGTERM)

    return SPAWNER.submit(subprocess.Popen, command, preexec_fn=end_with_parent, **popen_args).result()


def start_with_watchdog(command, **popen_args):
    """Anywhere: a watchdog process (plain Python, no imports of note) signals the child when this process ends."""
    child = subprocess.Popen(command, **popen_args)
    subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(child.pid), str(WATCH_SECONDS)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return child
