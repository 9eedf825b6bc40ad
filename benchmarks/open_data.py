"""Benchmark probe: open a training set, fetch its first batch, print time and peak memory as JSON.

run.py starts it in a fresh process per measurement, so peak resident memory belongs to this
measurement alone. Two ways to open the data:

    python benchmarks/open_data.py cache FOLDER [--faithful=False]   # this project: cache.MelCache + make_loaders
    python benchmarks/open_data.py in_memory FOLDER                  # the original: every .npy into memory

Prints {"seconds": time from opening to the first batch, "peak_rss_mib": peak resident memory,
"import_rss_mib": resident memory after the imports, before opening, "anon_mib" and "file_mib": resident
memory after the first batch, split into the process's own (anonymous) memory and file pages mapped
in (memory-mapped cache rows: page cache the kernel can drop at any time)}. Imports are not timed.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
from fma_genres.data import cache as mel_cache, fma  # noqa: E402

BATCH_SIZE = 50


def memory_mib(field):
    """VmRSS (resident now) or VmHWM (peak resident) of this process; both start afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status (Linux only)")


def official_splits(track_ids):
    """An 80/10/10 training/validation/test split over synthetic labels, through fma.split_tracks."""
    names = np.array(["training"] * 8 + ["validation", "test"])
    frame = pd.DataFrame({"label": [t % 8 for t in track_ids],
                          "split": names[np.arange(len(track_ids)) % 10]},
                         index=pd.Index(track_ids, name="track_id"))
    return fma.split_tracks(frame, "official")


def loader_from_cache(folder, faithful):
    """This project: the memory-mapped cache and main.py's loaders (num_workers=0, its default)."""
    cache = mel_cache.MelCache(folder)
    # faithful=False standardises its input (main.py's standardise=auto), which reads the normalisation stats
    loaders, _ = utils.make_loaders(cache, official_splits(cache.track_ids), BATCH_SIZE,
                                    settings=utils.LoaderSettings(standardise=not faithful))
    return loaders["train"]


def loader_in_memory(folder):
    """The original: every spectrogram file read into a list, stacked into one tensor, then batched."""
    files = sorted(Path(folder).glob("*.npy"))
    spectrograms = [np.load(f) for f in files]
    data = torch.from_numpy(np.stack(spectrograms))  # list + stacked copy: the original's "twice over"
    labels = torch.tensor([i % 8 for i in range(len(files))])
    return DataLoader(TensorDataset(data, labels), batch_size=BATCH_SIZE, shuffle=True)


def main(argv):
    kind, folder, *options = argv
    import_rss = memory_mib("VmRSS")
    start = time.perf_counter()
    if kind == "cache":
        loader = loader_from_cache(folder, faithful="--faithful=False" not in options)
    elif kind == "in_memory":
        loader = loader_in_memory(folder)
    else:
        raise SystemExit(f"unknown kind {kind!r}: use cache or in_memory")
    inputs, _ = next(iter(loader))
    seconds = time.perf_counter() - start  # memory is read below while the loader is still alive
    assert inputs.shape[0] == BATCH_SIZE and inputs.dtype == torch.float32
    print(json.dumps({"seconds": seconds, "peak_rss_mib": memory_mib("VmHWM"), "import_rss_mib": import_rss,
                      "anon_mib": memory_mib("RssAnon"), "file_mib": memory_mib("RssFile")}))


if __name__ == "__main__":
    main(sys.argv[1:])
