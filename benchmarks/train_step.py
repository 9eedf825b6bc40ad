"""Benchmark probe: time training steps of one model under one malloc setting, print JSON.

glibc's malloc settings apply from process start, so run.py starts this in a fresh process per
setting (and per round):

    python benchmarks/train_step.py crnn default       # glibc's own allocator settings
    python benchmarks/train_step.py crnn project       # allocator.keep_large_allocations(), as main.py does
    python benchmarks/train_step.py crnn 512,256       # mmap threshold 512 MiB, trim threshold 256 MiB
    python benchmarks/train_step.py crnn project --compile   # compiled in channels_last, as compile=auto

Options: --batch_size=50 --n_frames=1291 --steps=3 --threads=N --compile. Prints {"step_s": median
seconds of the timed steps (after WARM_UP_STEPS), "system_share": kernel time / (user + kernel time)
over the timed steps, "faults_per_step": minor page faults per timed step (memory faulted in afresh;
the machine's load does not change it), "peak_rss_mib": the process's peak resident memory,
"allocator": what allocator.py did}.
"""
import argparse
import contextlib
import io
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fma_genres.runtime import allocator  # noqa: E402

# The first step compiles (with --compile) and allocates; with freed memory kept, the heap reaches its
# working size over the first two steps (CRNN, batch 50: 9 GB, then 13 GB, then flat).
WARM_UP_STEPS = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=("cnn1d", "cnn2d", "crnn"))
    parser.add_argument("setting", help="default | project | MMAP[,TRIM]: thresholds in MiB, -1 = off (a sweep point)")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--n_frames", type=int, default=1291)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in channels_last layout")
    return parser.parse_args(argv)


def usage():
    """(user seconds, kernel seconds, minor page faults) of this process so far."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_utime, now.ru_stime, now.ru_minflt


def main(argv=None):
    args = parse_args(argv)
    if args.setting == "project":
        allocator.keep_large_allocations()
    elif args.setting != "default":
        mmap, _, trim = args.setting.partition(",")
        trim = int(trim) << 20 if trim and trim != "-1" else allocator.TRIM_THRESHOLD
        allocator.keep_large_allocations(int(mmap) << 20, trim)
    import torch  # after mallopt, as in main.py

    from models import build_model
    from models_utils import compile_model
    from train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, n_frames=args.n_frames)
    if args.compile:
        if args.model != "cnn1d":  # 4-D activations: compiled in channels_last, as main.py does
            model = model.to(memory_format=torch.channels_last)
        model = compile_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = [(torch.randn(args.batch_size, 128, args.n_frames) * 20 - 40, torch.randint(0, 8, (args.batch_size,)))]
    times = []
    with contextlib.redirect_stderr(io.StringIO()):  # train()'s progress bar
        for _ in range(WARM_UP_STEPS):
            train(model, batch, optimizer, "cpu")
        user, system, faults = usage()
        for _ in range(args.steps):
            start = time.perf_counter()
            train(model, batch, optimizer, "cpu")
            times.append(time.perf_counter() - start)
    user_end, system_end, faults_end = usage()
    print(json.dumps({"step_s": statistics.median(times),
                      "system_share": (system_end - system) / max(1e-9, user_end - user + system_end - system),
                      "faults_per_step": (faults_end - faults) / args.steps,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "allocator": "glibc defaults" if args.setting == "default" else allocator.status}))


if __name__ == "__main__":
    main()
