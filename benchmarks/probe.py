"""Benchmark: a probe (fma_genres/encoders/probe.py) trained on random cached embeddings of fma_small's size.

    python benchmarks/probe.py                         # 6,400 tracks x 3 windows x 12 layers x 768 (Dasheng-base)
    python benchmarks/probe.py --layers=1 --dim=512    # CLAP's projected embedding

Each track is one training example, its windows' embeddings averaged by the probe as main.py trains it
(6,400 at full size), float16 in memory as the cache stores them, batches of 50 (main.py's batch_size),
Adam; prints seconds per epoch for the linear and the MLP head on this machine's CPU.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fma_genres.encoders.probe import HEADS, ProbeHead  # noqa: E402

BATCH_SIZE = 50


def epoch_seconds(x, labels, head, epochs):
    """Mean seconds of an epoch after the first (which pays for the allocations)."""
    probe = ProbeHead(x.shape[2], x.shape[3], int(labels.max()) + 1, head)
    optimiser = torch.optim.Adam(probe.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(x)).split(BATCH_SIZE):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(probe(x[batch])[0], labels[batch]).backward()
            optimiser.step()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=6400)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.tracks, args.windows, args.layers, args.dim, generator=generator).half()
    labels = torch.randint(0, args.classes, (args.tracks,), generator=generator)
    shape = f"{args.tracks} tracks x {args.windows} windows x {args.layers} layers x {args.dim}"
    for head in HEADS:
        seconds = epoch_seconds(x, labels, head, args.epochs)
        print(f"probe {head} | {shape} | {seconds:.2f} s/epoch ({torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main()
