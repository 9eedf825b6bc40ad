"""The training split preloaded onto the training device: batches gathered by index, no per-sample Python.

main.py calls ``preloaded(loaders["train"], config["preload"], device)`` after utils.make_loaders:
with preload=True (or "auto" when the split fits) it returns a PreloadedLoader in place of the
training DataLoader. The split's cache rows are copied once into one float16 tensor (as the cache
stores them) on the training device: on CUDA when they fit its free memory with a margin, else in
pinned host memory; on a CPU into RAM. Each epoch the sampler's plan (utils.EpochSampler: the order
and every item's mask uniforms, drawn from the same generator as the DataLoader path's) is cut into
batches, and each batch is gathered and masked (utils.spec_augment, vectorised over the batch) on that
device, so the same seed gives the same batches and masks on both paths (the model standardises its input).

    loader = preloaded(loaders["train"], True, torch.device("cpu"))
    for inputs, targets in loader: ...  # float32 (B, n_mels, n_frames); int64 (B,), or (B, G) 0/1 genre rows

Its tests: python -m pytest tests/data/test_preload.py -q
"""
import math
import os

import numpy as np
import torch

import utils
from fma_genres.runtime import distributed

GB = 1e9
ROWS_PER_COPY = 256  # cache rows stacked on the host per copy into the tensor: few, large copies


def free_bytes(device):
    """Memory free for the preloaded split: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # MemAvailable counts the page cache that the kernel can drop, unlike sysconf's free pages
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # no /proc: the free pages, where the system says (not macOS)
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return 0  # unknown: "auto" keeps the DataLoader


def margin_bytes(free, device):
    """Memory left free beside the split: the model's activations and the optimiser need room (the
    compiled CRNN's batch of 50 peaks near 9 GB), and so do the other processes of the machine."""
    return max(0.2 * free, (8 if device.type == "cuda" else 2) * GB)


def placement(nbytes, device, sharers=1):
    """(the device the split goes to, its pin_memory flag, a line saying why), or (None, False, why)
    when it does not fit. ``sharers``: processes of this machine preloading their own copy into RAM."""
    candidates = [device, torch.device("cpu")] if device.type == "cuda" else [device]
    reasons = []
    for place in candidates:
        free = free_bytes(place)
        copies = 1 if place.type == "cuda" else sharers
        margin = margin_bytes(free, place)
        where = str(place) if place.type == "cuda" else "pinned host memory" if place != device else "RAM"
        line = (f"{copies * nbytes / GB:.2f} GB in {where} ({free / GB:.1f} GB free, a margin of "
                f"{margin / GB:.1f} GB kept)")
        if copies * nbytes <= free - margin:
            return place, place != device, line
        reasons.append(line.replace(" in ", " does not fit in ", 1))
    return None, False, "; ".join(reasons)


def load_rows(cache, track_ids, place, pin):
    """One float16 tensor (clips, n_mels, n_frames) on ``place`` holding these tracks' cache rows."""
    first = cache[track_ids[0]]
    rows = torch.empty((len(track_ids), *first.shape), dtype=torch.from_numpy(first).dtype, device=place,
                       pin_memory=pin)
    for begin in range(0, len(track_ids), ROWS_PER_COPY):
        chunk = np.stack([cache[t] for t in track_ids[begin:begin + ROWS_PER_COPY]])
        rows[begin:begin + len(chunk)].copy_(torch.from_numpy(chunk))
    return rows


class PreloadedLoader:
    """The training DataLoader's batches, gathered from ``rows`` (load_rows) by the sampler's plan.

    It has what main.py and train.py use of a DataLoader: iteration, len(), .dataset, .sampler (its
    .start and .generator resume and reseed an epoch), .generator and .batch_size.
    """

    def __init__(self, dataset, sampler, batch_size, rows, device):
        self.dataset, self.sampler, self.batch_size, self.rows = dataset, sampler, batch_size, rows
        self.device, self.generator = torch.device(device), None  # every draw comes from the sampler's generator
        labels = dataset.labels  # class indices, or multi-label 0/1 genre rows (multilabel.use_label_rows)
        self.labels = (torch.stack(labels) if torch.is_tensor(labels[0]) else torch.tensor(labels)).to(rows.device)

    def __len__(self):
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        order, masks = self.sampler.plan()
        for begin in range(0, len(order), self.batch_size):
            batch = slice(begin, begin + self.batch_size)
            yield self.gather(order[batch], None if masks is None else masks[batch])

    def gather(self, indices, uniforms):
        """(float32 inputs, targets) on the training device, equal to what MelDataset and the
        collate give. Few passes over the batch: on a CPU each costs about as much as the gather."""
        n_clips = len(self.dataset.track_ids)
        clips = (indices % n_clips).to(self.rows.device)
        mels = self.rows[clips].to(self.device, non_blocking=True)
        targets = self.labels[clips].to(self.device, non_blocking=True)
        if uniforms is not None:  # on float16, half the bytes: 0 dB is exact in both precisions
            utils.spec_augment(mels, uniforms.to(self.device), self.dataset.mask_draw,
                               augmented=(indices >= n_clips).to(self.device))
        return mels.float(), targets


def preloaded(loader, preload, device):
    """The training loader to use: a PreloadedLoader of ``loader``'s split when preload is True, or
    "auto" and the split fits (placement); else ``loader`` itself. Prints where the split went and why."""
    if preload is False:
        return loader
    dataset, device = loader.dataset, torch.device(device)
    first = dataset.cache[dataset.track_ids[0]]
    nbytes = len(dataset.track_ids) * first.nbytes
    place, pin, why = placement(nbytes, device, sharers=distributed.local_world_size())
    if place is None and preload == "auto":
        print(f"preload: the training split ({len(dataset.track_ids)} clips) {why}: batches come from the "
              f"DataLoader ({loader.num_workers} workers).")
        return loader
    if place is None:  # preload=True: RAM anyway; a real shortage ends in a MemoryError
        place, pin, why = torch.device("cpu"), device.type == "cuda", f"{why}; preload=True: in RAM anyway"
    print(f"preload: the training split ({len(dataset.track_ids)} clips, float16) {why}.")
    rows = load_rows(dataset.cache, dataset.track_ids, place, pin)
    return PreloadedLoader(dataset, loader.sampler, loader.batch_size, rows, device)
