"""Benchmarks of the training data path (DataLoader against preload.py) and start-up imports.
On CUDA, the GPU's share of time waiting for data is benchmarks/gpu.py's (the one GPU check).

    python benchmarks/data_path.py                    # full size; writes benchmarks/results_data_path.md
    python benchmarks/data_path.py --size=tiny        # smoke test in seconds: every row, numbers meaningless

Parts:
  g loader  clips/s delivered to the training loop (an epoch of batches of 50 taken from the training
            loader, nothing else done with them) for caches of 200 and 2,000 synthetic full-size clips:
            utils.make_loaders' DataLoader with 0, 1 and 2 workers against preload.py's loader (in RAM
            on a CPU), without and with augmentation (standardised input, main.py's faithful=False).
            The contenders alternate epoch by epoch; each row is its best epoch (the least disturbed
            by other load). The preloaded tensor is filled before (its one-time copy is in the notes).
  i startup seconds to import main.py and pre_trained_models.py, minus `import torch` alone, each
            in fresh processes (warm file cache: one untimed import first), median over rounds.

Shares benchmarks/run.py's helpers (synthetic caches under data/benchmarks/<size>/, verdicts, table).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import run as bench  # benchmarks/run.py (this folder is first on sys.path); it puts the repository there too
import torch

import utils  # noqa: E402
from fma_genres.data import cache as mel_cache, preload  # noqa: E402
from fma_genres.runtime import atomic  # noqa: E402

SIZES = {
    "full": dict(clips=(200, 2000), n_frames=1291, batch_size=50, epochs=6, import_rounds=7, warm_imports=True),
    "tiny": dict(clips=(20, 40), n_frames=150, batch_size=4, epochs=1, import_rounds=1, warm_imports=False),
}
TARGETS = {"preload_speedup": 10.0, "import_s": 0.5}
WORKERS = (0, 1, 2)


def train_split_loader(cache, batch_size, augment, workers):
    """The training DataLoader main.py builds (faithful=False: standardised) over every clip of the cache."""
    frame = pd.DataFrame({"label": [t % 8 for t in cache.track_ids]}, index=pd.Index(cache.track_ids))
    splits = {"train": frame, "val": frame.iloc[:1], "test": frame.iloc[:1]}
    loaders, _ = utils.make_loaders(cache, splits, batch_size, settings=utils.LoaderSettings(
        num_workers=workers, standardise=True, augment=augment, device="cuda" if torch.cuda.is_available() else "cpu"))
    return loaders["train"]


def clips_per_second(loader, epoch):
    """clips/s of taking every batch of one epoch from ``loader`` (reseeded as main.py does)."""
    loader.sampler.generator.manual_seed(epoch)
    start, clips = time.perf_counter(), 0
    for inputs, _ in loader:
        clips += len(inputs)
    return clips / (time.perf_counter() - start)


def bench_loader(size, work, rows):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for n in size["clips"]:
        cache = mel_cache.MelCache(bench.synthetic_cache(work / f"synthetic-cache-{n}x{size['n_frames']}", n,
                                                         size["n_frames"]))
        for augment in (False, True):
            what = f"{n} clips, {'augmented' if augment else 'no augmentation'}"
            feeds = {f"DataLoader, {w} workers": train_split_loader(cache, size["batch_size"], augment, w)
                     for w in WORKERS}
            start = time.perf_counter()
            fast = preload.preloaded(train_split_loader(cache, size["batch_size"], augment, 0), True, device)
            copy_seconds = time.perf_counter() - start
            feeds[f"preload ({fast.rows.device})"] = fast
            rates = {name: [] for name in feeds}
            for epoch in range(size["epochs"]):  # alternating, so a busy moment slows all of them alike
                for name in (list(feeds) if epoch % 2 == 0 else list(feeds)[::-1]):
                    rates[name].append(clips_per_second(feeds[name], epoch))
            del feeds, fast  # the DataLoaders' persistent workers end here
            best = {name: max(r) for name, r in rates.items()}  # each one's least disturbed epoch
            *loaders, preloaded = best
            top = max(best[name] for name in loaders)
            for name in loaders:
                bench.report(rows, ("g loader", f"{what}, {name}", f"{best[name]:.0f} clips/s", "", ""))
            bench.report(rows, ("g loader", f"{what}, {preloaded}", f"{best[preloaded]:.0f} clips/s",
                                f"{best[preloaded] / top:.1f}x the best DataLoader",
                                f"copy in {copy_seconds:.2f} s; speed-up "
                                + bench.verdict(best[preloaded] / top, (">=", TARGETS["preload_speedup"]), "x", ".1f")))


def import_seconds(module):
    """Wall seconds of a fresh `python -c "import <module>"` in the repository."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=bench.ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_startup(size, rows):
    modules = ("torch", "main", "pre_trained_models")
    for module in modules if size["warm_imports"] else ():  # untimed: warms the file cache
        import_seconds(module)
    seconds = {m: [] for m in modules}
    for r in range(size["import_rounds"]):  # alternating, so a busy moment slows all of them alike
        for module in (modules if r % 2 == 0 else modules[::-1]):
            seconds[module].append(import_seconds(module))
    torch_alone = statistics.median(seconds["torch"])
    bench.report(rows, ("i startup", "import torch alone", f"{torch_alone:.2f} s", "",
                        f"median of {size['import_rounds']} fresh processes"))
    for module in modules[1:]:
        extra = statistics.median(seconds[module]) - torch_alone
        bench.report(rows, ("i startup", f"import {module}, minus import torch", f"{extra:.2f} s", "",
                            bench.verdict(extra, ("<", TARGETS["import_s"]), " s")))


def write_results(path, size_name, rows, seconds):
    text = (f"# Benchmark results: data path and start-up\n\nCommand: `python benchmarks/data_path.py "
            f"--size={size_name}` ({time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.0f} min)\n\n"
            f"Machine: {bench.machine()}.\n\nLoad average (1 min) at the end: {os.getloadavg()[0]:.2f}.\n\n"
            f"{bench.table(rows)}\n\nbenchmarks/data_path.py's docstring says what each part measures.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(path, lambda f: f.write(text.encode()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--work_dir", default=None, help="generated data (default data/benchmarks/<size>)")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results_data_path.md "
                                                    "for full size, <work_dir>/results_data_path.md otherwise)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or bench.ROOT / "data" / "benchmarks" / args.size)
    out = Path(args.out or (bench.ROOT / "benchmarks" if args.size == "full" else work) / "results_data_path.md")
    work.mkdir(parents=True, exist_ok=True)
    size, rows, start = SIZES[args.size], [], time.perf_counter()
    print(bench.machine(), flush=True)
    bench_startup(size, rows)  # first: nothing of ours runs beside the fresh processes
    bench_loader(size, work, rows)
    write_results(out, args.size, rows, time.perf_counter() - start)
    print(f"\n{bench.table(rows)}\n\nwritten to {out}", flush=True)


if __name__ == "__main__":
    main()
