"""Running main.py as a child process for experiments.py: its command, its history.csv rows as they come,
its metrics.json, where it runs (a GPU, or a share of the cores), and the stop every running main.py obeys.

    status = main_runs.run_main(main_runs.main_command(["--epochs=5"], seed=1), out_dir, on_row=print)
"""
import csv
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from fma_genres.runtime import child_processes

ROOT = Path(__file__).resolve().parents[2]  # the repository
MAIN_PY = ROOT / "main.py"
POLL_SECONDS = 0.2  # how often a running main.py's history.csv is read
STOP = threading.Event()  # set by Ctrl-C or SIGTERM (STOP.signum): running main.py processes are stopped and saved



def main_command(main_args, **keys):
    """python main.py <the fixed config file and overrides> --key=value for ``keys``."""
    return [sys.executable, str(MAIN_PY), *main_args,
            *(f"--{key}={value}" for key, value in keys.items())]


def run_main(command, out_dir, on_row=None, slot=None, on_start=None):
    """Run main.py (output appended to <out_dir>/main.log), calling on_start(pid) once it runs and on_row(row)
    for each new history.csv row; on_row returns True to stop the run (SIGTERM: main.py saves last.pt).
    Returns the exit status. ``slot``: ("cuda", id) for one GPU, or ("cpu", cores) to share the CPU with
    other runs. main.py ends with this process (child_processes), and with this call when it fails."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if slot and slot[0] == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = str(slot[1])
    with open(Path(out_dir) / "main.log", "ab") as log:
        process = child_processes.start(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if slot and slot[0] == "cpu":  # before torch starts: main.py sizes its threads by its affinity
            os.sched_setaffinity(process.pid, slot[1])
        if on_start:
            on_start(process.pid)
        seen, stopping = 0, False
        while True:
            ended = process.poll() is not None
            rows = read_history(out_dir)[seen:]
            seen += len(rows)
            if not stopping and (STOP.is_set() or on_row and any(on_row(row) for row in rows)):
                process.terminate()
                stopping = True
            if ended:
                return process.returncode
            time.sleep(POLL_SECONDS)
    except BaseException:  # e.g. the study's database failed: the run must not go on unobserved
        process.terminate()
        process.wait()
        raise


def read_history(out_dir):
    """history.csv's rows (main.py replaces it atomically after every epoch); [] before the first."""
    try:
        return list(csv.DictReader(io.StringIO((Path(out_dir) / "history.csv").read_text())))
    except FileNotFoundError:
        return []


def read_metrics(out_dir):
    path = Path(out_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_args(out_dir):
    """--resume=True when out_dir holds an unfinished run (its last.pt), so it continues from there."""
    return {"out_dir": out_dir, **({"resume": True} if (Path(out_dir) / "last.pt").is_file() else {})}


def slots(parallel):
    """A queue of where runs go: one GPU each when GPUs are present, else a share of this process's cores."""
    import torch

    places = queue.Queue()
    gpus = torch.cuda.device_count()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for i in range(parallel):
        places.put(("cuda", i % gpus) if gpus else ("cpu", cores[i::parallel]) if 1 < parallel <= len(cores) else None)
    return places
