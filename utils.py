"""Data pipeline: audio -> mel-spectrogram (dB) -> SpecAugment -> DataLoaders over the cache (FMA's metadata:
fma_genres/data/fma.py).

docs/faithfulness.md and docs/data.md state the facts it follows. A library for main.py, pre_trained_models.py and
cache.py (the float16 spectrogram cache, built from clip_spectrogram below); its tests:
python -m pytest tests/test_utils*.py -q
"""
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fma_genres.runtime import preemption
from fma_genres.runtime.errors import AudioError, ConfigError, DataError

PREPROCESSING = {"sample_rate": 22050, "n_fft": 2048, "hop_length": 512, "n_mels": 128,
                 "n_frames": 1291, "top_db": 80.0}

# A clip decoding to fewer than 90% of the window's frames (26.98 s of the 29.98 s window) is broken;
# a clip between 90% and 100% is padded at the end with its own minimum dB (its silence floor).
MIN_CLIP_FRACTION = 0.9
# Augmentation (docs/faithfulness.md): two band masks of up to 25% of the bands, two time masks of up to
# 15% of the frames, set to 0 dB.
BAND_MASK_FRACTION, TIME_MASK_FRACTION, MASKS_PER_AXIS = 0.25, 0.15, 2
# How a mask's width and start are drawn. inclusive: width uniform in 0..int(fraction * n) and start
# in 0..n - width (every band and frame can be masked); original: int(U(0, fraction * n)) and
# int(U(0, n - width)) as the original drew them (band widths 0..31 of 128; the start never reaches
# n - width, so the last band or frame is never masked by a full-width mask).
MASK_DRAWS = ("inclusive", "original")
# When masks are drawn. per_epoch: fresh masks for every epoch; fixed: one masked copy of each clip,
# drawn once, as the original made its augmented copies before training.
AUGMENT_MASKS = ("per_epoch", "fixed")


# ----------------------------------------------------------------------------- audio

# File types the audio loader (libsndfile) decodes: what prediction and the folder/CSV datasets accept.
AUDIO_EXTENSIONS = {".mp3", ".wav", ".au", ".snd", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff"}


def undecodable(path, error):
    """The AudioError for a file libsndfile cannot open. It says "File does not exist or is not a regular
    file" for any data it does not recognise (FMA's broken 108925.mp3, 1,371 bytes), so what is wrong comes
    first, in our words, and libsndfile's text only as the detail."""
    detail = getattr(error, "error_string", str(error))
    return AudioError(f"{path}: could not decode it as audio: no audio frames could be read from its "
                      f"{Path(path).stat().st_size:,} bytes (not audio, or a corrupt or cut-off file; libsndfile: "
                      f"{detail}). Replace it with a good copy (download or convert it again), or leave it out.")


def load_audio(path, sample_rate=22050):
    """Mono float32 at sample_rate, exactly as librosa.load (soundfile, channel mean, soxr_hq)."""
    import soundfile as sf  # here, as soxr in resample: only decoding needs them (benchmarks/gpu.py runs without)

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found. Check the path (and --data_dir), or download "
                         f"the audio with download_data.sh.")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes). Download it again or remove it.")
    try:
        audio, native_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as error:
        raise undecodable(path, error) from None
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: decodes to no audio at all. Download it again or remove it.")
    return resample(audio.mean(axis=1), native_rate, sample_rate)


def resample(mono, native_rate, sample_rate):
    """float32 mono at sample_rate, exactly as librosa.resample(res_type="soxr_hq") (also audio_windows')."""
    if native_rate == sample_rate:
        return mono
    import soxr  # here: only decoding needs it (benchmarks/gpu.py runs without)

    # librosa's length rule, without its scipy/numba imports (~2 s per process).
    length = math.ceil(len(mono) * sample_rate / native_rate)
    resampled = soxr.resample(mono, native_rate, sample_rate, quality="soxr_hq")[:length]
    return np.pad(resampled, (0, length - len(resampled))).astype(np.float32)


@lru_cache(maxsize=8)
def _mel_transform(sample_rate, n_fft, hop_length, n_mels):
    import torchaudio  # here, as below: only decoding clips needs it, not the start-up

    # These options make torchaudio match librosa.feature.melspectrogram's defaults (docs/faithfulness.md: Preprocessing).
    return torchaudio.transforms.MelSpectrogram(
        sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=0.0,
        f_max=sample_rate / 2, power=2.0, norm="slaney", mel_scale="slaney", center=True,
        pad_mode="constant")


def mel_spectrogram_db(audio, preprocessing=PREPROCESSING):
    """float32 (n_mels, T) dB of all frames: power mel, power_to_db(ref=1, amin=1e-10, top_db) per clip."""
    import torchaudio

    p = preprocessing
    transform = _mel_transform(p["sample_rate"], p["n_fft"], p["hop_length"], p["n_mels"])
    # One thread, wherever it runs: the FFT and matrix product split their sums by thread count, and the
    # cache's workers run one thread each (on an Intel Xeon, a clip's window computed on a main process's
    # threads was one float16 step off its cache row in one cell). A 30 s clip took 25-50 ms
    # on one thread, no slower than on two (AMD EPYC, 2 shared cores, 2026-12).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            power = transform(torch.as_tensor(audio, dtype=torch.float32))
            # A 2-D input is one clip, so the top_db floor is relative to this clip's maximum.
            db = torchaudio.functional.amplitude_to_DB(power, 10.0, 1e-10, 0.0, p["top_db"])
    finally:
        torch.set_num_threads(threads)
    return db.numpy()


def fix_width(mel, n_frames):
    """Crop to the first n_frames, or pad at the end with the clip's minimum; returns (mel, padded frames)."""
    missing = n_frames - mel.shape[1]
    if missing <= 0:
        return mel[:, :n_frames], 0
    return np.pad(mel, ((0, 0), (0, missing)), constant_values=mel.min()), missing


def clip_spectrogram(path, preprocessing=PREPROCESSING):
    """(n_mels, n_frames) dB of one clip and its padding; AudioError when far shorter than the window."""
    p = preprocessing
    mel = mel_spectrogram_db(load_audio(path, p["sample_rate"]), p)
    needed = math.ceil(MIN_CLIP_FRACTION * p["n_frames"])
    if mel.shape[1] < needed:
        frame_seconds = p["hop_length"] / p["sample_rate"]
        raise AudioError(f"{path}: decodes to {mel.shape[1] * frame_seconds:.2f} s ({mel.shape[1]} frames), "
                         f"far shorter than the {p['n_frames'] * frame_seconds:.2f} s window (at least "
                         f"{needed} of {p['n_frames']} frames needed): truncated or broken clip.")
    return fix_width(mel, p["n_frames"])


# ----------------------------------------------------------------------------- metadata


# ----------------------------------------------------------------------------- files


# ----------------------------------------------------------------------------- datasets and loaders

def normalisation_stats(cache, track_ids):
    """Mean and standard deviation of all dB values of these tracks, read one track at a time."""
    total = total_sq = count = 0.0
    for track_id in track_ids:
        mel = cache[track_id].astype(np.float64)
        total, total_sq, count = total + mel.sum(), total_sq + np.square(mel).sum(), count + mel.size
    mean = total / count
    return float(mean), float(math.sqrt(max(total_sq / count - mean * mean, 0.0)))


def draw_mask_uniforms(n, generator=None):
    """(n, 2 * MASKS_PER_AXIS, 2) float64 uniforms in [0, 1): per clip, the (width, start) draws of its
    band masks, then its time masks; mask_spans turns them into spans. Drawn as one tensor for a whole
    epoch so that the DataLoader and the preloaded batches (preload.py) apply the same masks."""
    return torch.rand((n, 2 * MASKS_PER_AXIS, 2), generator=generator, dtype=torch.float64)


def mask_spans(uniforms, n_mels, n_frames, draw="inclusive"):
    """(starts, ends) int64 (n, 2 * MASKS_PER_AXIS) of the masks that ``uniforms`` draw (see MASK_DRAWS)."""
    sizes = torch.tensor([n_mels] * MASKS_PER_AXIS + [n_frames] * MASKS_PER_AXIS, dtype=torch.float64,
                         device=uniforms.device)
    fractions = torch.tensor([BAND_MASK_FRACTION] * MASKS_PER_AXIS + [TIME_MASK_FRACTION] * MASKS_PER_AXIS,
                             dtype=torch.float64, device=uniforms.device)
    u_width, u_start = uniforms.unbind(-1)
    if draw == "original":  # int(U(0, fraction * n)), int(U(0, n - width)): float rounding can reach the top
        width = torch.minimum((u_width * (fractions * sizes)).floor(), (fractions * sizes).ceil() - 1)
        start = torch.minimum((u_start * (sizes - width)).floor(), (sizes - width - 1).clamp(min=0))
    else:
        most = (fractions * sizes).floor()
        width = torch.minimum((u_width * (most + 1)).floor(), most)
        start = torch.minimum((u_start * (sizes - width + 1)).floor(), sizes - width)
    return start.long(), (start + width).long()


def spec_augment(mels, uniforms, draw="inclusive", augmented=None):
    """mels (B, n_mels, n_frames), with each clip's two mel-band masks (each up to 25% of bands) and two
    time masks (each up to 15% of frames) set to 0 dB in place, drawn by its row of ``uniforms``
    (draw_mask_uniforms; see MASK_DRAWS); ``augmented`` (B bools): only those clips are masked."""
    starts, ends = mask_spans(uniforms, mels.shape[1], mels.shape[2], draw)
    if augmented is not None:
        ends = torch.where(augmented[:, None], ends, starts)

    def covered(size, first, last):  # (B, size): inside any of the clip's spans
        positions = torch.arange(size, device=mels.device)
        return ((positions >= first[:, :, None]) & (positions < last[:, :, None])).any(dim=1)

    k = MASKS_PER_AXIS
    bands, frames = covered(mels.shape[1], starts[:, :k], ends[:, :k]), covered(mels.shape[2], starts[:, k:], ends[:, k:])
    keep = (~bands).to(mels.dtype)[:, :, None] * (~frames).to(mels.dtype)[:, None, :]
    # Multiplying is 4x quicker than masked_fill_ on a CPU; + 0.0 turns the -0.0 of a masked negative dB
    # into 0 dB and leaves every other value as it is: the same bits as a fill.
    return mels.mul_(keep).add_(0.0)


class MelDataset(Dataset):
    """(float32 (n_mels, n_frames), label) per track. With augment, index i + N is clip i masked.

    An index may be a pair (index, mask uniforms) from EpochSampler: the masks then depend only on
    them, so they are the same whatever the number of DataLoader workers (or with preload.py).
    """

    def __init__(self, cache, track_ids, labels, augment=False, mask_draw="inclusive"):
        self.cache, self.track_ids, self.labels = cache, [int(t) for t in track_ids], [int(l) for l in labels]
        self.augment, self.mask_draw = augment, mask_draw

    def __len__(self):
        return len(self.track_ids) * (2 if self.augment else 1)

    def __getitem__(self, key):
        index, uniforms = key if isinstance(key, tuple) else (key, None)
        clip = index % len(self.track_ids)
        mel = torch.from_numpy(self.cache[self.track_ids[clip]].astype(np.float32))
        if index >= len(self.track_ids):
            uniforms = draw_mask_uniforms(1) if uniforms is None else torch.tensor([uniforms], dtype=torch.float64)
            mel = spec_augment(mel[None], uniforms, self.mask_draw)[0]
        return mel, self.labels[clip]


def sampler_items(order, uniforms):
    """What a sampler yields for a plan (order, mask uniforms or None): indices, or (index, uniforms) pairs."""
    return iter(order.tolist()) if uniforms is None else zip(order.tolist(), uniforms.tolist())


class EpochSampler(Sampler):
    """One pass over ``size`` indices: plan() draws its order and, with augment, each item's mask
    uniforms, as whole tensors from one generator (reseed it to replay an epoch); iterating yields
    plan()'s items for MelDataset, and preload.py gathers plan()'s batches from one tensor.

    shuffle=False keeps the dataset's order. weights (one per index): draw the epoch's indices with
    replacement in proportion to them. fixed_masks (draw_mask_uniforms, one row per index, drawn once)
    give every epoch the same masked copies, as the original did; otherwise each epoch draws fresh masks.
    """

    def __init__(self, size, generator, shuffle=True, weights=None, augment=False, fixed_masks=None):
        self.size, self.generator, self.shuffle, self.weights = size, generator, shuffle, weights
        self.augment, self.fixed_masks = augment, fixed_masks

    def __len__(self):
        return self.size

    def plan(self):
        """(order, mask uniforms of each item, or None without augment) of the next pass."""
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=self.generator)
        else:  # randperm(size, generator) is also what torch's RandomSampler draws
            order = torch.randperm(self.size, generator=self.generator) if self.shuffle else torch.arange(self.size)
        if not self.augment:
            return order, None
        masks = self.fixed_masks if self.fixed_masks is not None else draw_mask_uniforms(self.size, self.generator)
        return order, masks[order]

    def __iter__(self):
        return sampler_items(*self.plan())


class ResumableSampler(Sampler):
    """A sampler whose next pass may begin ``start`` indices in, with the order (and masks) of a full
    pass: a mid-epoch checkpoint continues exactly where it stopped. ``generator`` is the base's."""

    def __init__(self, base):
        self.base, self.start = base, 0

    @property
    def generator(self):
        return self.base.generator

    def __len__(self):
        return len(self.base) - self.start

    def plan(self):
        start, self.start = self.start, 0  # only the next pass is shortened
        order, masks = self.base.plan()
        return order[start:], None if masks is None else masks[start:]

    def __iter__(self):
        return sampler_items(*self.plan())


class ShardSampler(Sampler):
    """This process's part of every global batch of ``base`` (a ResumableSampler): item j of a
    batch goes to process j % world_size. Every process thus trains on the same global batches, in the
    same order and with the same masks, as one process would. ``start`` (in items of the global order,
    so a mid-epoch checkpoint resumes on any number of processes) and ``generator`` are the base's."""

    def __init__(self, base, batch_size, rank, world_size):
        self.base, self.batch_size, self.rank, self.world = base, batch_size, rank, world_size
        rest = len(base) % batch_size
        if 0 < rest < world_size:
            better = next(b for b in range(batch_size + world_size, 2 * len(base) + world_size, world_size)
                          if len(base) % b == 0 or len(base) % b >= world_size)
            raise ConfigError(f"the training split has {len(base)} examples: with batch_size={batch_size} the last batch "
                              f"of an epoch holds {rest}, fewer than the {world_size} processes, and one of them would "
                              f"have none. Choose a batch size that leaves no such remainder (e.g. batch_size={better}).")

    @property
    def generator(self):
        return self.base.generator

    @property
    def start(self):
        return self.base.start

    @start.setter
    def start(self, value):
        self.base.start = value

    def __len__(self):
        full, rest = divmod(len(self.base), self.batch_size)
        return full * (self.batch_size // self.world) + len(range(self.rank, rest, self.world))

    def plan(self):
        """The base's plan (order, mask uniforms or None), cut to this process's items, as __iter__ yields them."""
        order, masks = self.base.plan()
        mine = torch.arange(len(order)) % self.batch_size % self.world == self.rank
        return order[mine], None if masks is None else masks[mine]

    def __iter__(self):
        return sampler_items(*self.plan())


class EvalShard(Sampler):
    """One contiguous block of whole batches of an evaluation split per process (rank 0 the first), so
    that gather() restores the split's order and its batches: the same losses to the last bit."""

    def __init__(self, size, batch_size, rank, world_size):
        batches = -(-size // batch_size)
        first, end = batches * rank // world_size, batches * (rank + 1) // world_size
        self.indices = range(first * batch_size, min(end * batch_size, size))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def class_balanced_weights(labels):
    """Per example, 1 / the number of examples of its class: drawn in proportion to these, every class
    comes up equally often (balanced_sampler)."""
    labels = torch.as_tensor(labels)
    return 1.0 / torch.bincount(labels)[labels].double()


def inverse_class_frequency(labels, n_classes):
    """Per class, N / (classes present x its count): the cross-entropy weights of class_weights=True
    (the mean weight per example is 1; a class absent from ``labels`` gets 0)."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=n_classes).double()
    return torch.where(counts > 0, counts.sum() / ((counts > 0).sum() * counts), 0.0).float()


def train_sampler(size, seed, shuffle, augment, augment_masks, labels=None):
    """The training split's sampler: its order (and masks) depend only on its generator, seeded here.
    labels (one per index): every epoch draws ``size`` indices with replacement, each class equally often."""
    weights = None if labels is None else class_balanced_weights(labels)
    fixed = None
    if augment and augment_masks == "fixed":  # drawn once, from their own generator: the same copies every epoch
        fixed = draw_mask_uniforms(size, torch.Generator().manual_seed(seed + 1))
    return ResumableSampler(EpochSampler(size, torch.Generator().manual_seed(seed), shuffle, weights, augment, fixed))


@dataclass(frozen=True)
class LoaderSettings:
    """How make_loaders feeds the splits to a model (main.py builds it once from its keys)."""
    num_workers: int = 0              # DataLoader worker processes (0: the main process loads)
    standardise: bool = False         # compute the training split's dB mean and std (the model's Standardise uses them)
    augment: bool = False             # append a SpecAugment copy of every training clip
    augment_masks: str = "per_epoch"  # the copies' masks redrawn per epoch or fixed (AUGMENT_MASKS)
    mask_draw: str = "inclusive"      # how a mask's width and start are drawn (MASK_DRAWS)
    shuffle: bool = True              # False: the training split's own order every epoch
    balanced: bool = False            # draw the training clips class-balanced, with replacement
    seed: int = 0                     # seeds the training order (and masks): loaders["train"].sampler.generator
    device: str = "cpu"               # the batches' destination: pinned memory for CUDA


def make_loaders(cache, splits, batch_size, settings=LoaderSettings(), shard=(0, 1)):
    """({"train", "val", "test"} DataLoaders of raw dB, {"mean", "std"}: None unless settings.standardise) as
    ``settings`` (LoaderSettings) describe. Broken tracks (listed in the cache's report) are left out. shard=(rank, processes) under torchrun:
    this process's part of every global batch of batch_size, and its block of the evaluation splits
    (ShardSampler, EvalShard)."""
    unknown = [t for frame in splits.values() for t in frame.index if t not in cache._rows]
    if unknown:
        raise DataError(f"{len(unknown)} tracks of the splits (e.g. {unknown[0]}) are not in the cache "
                        f"{cache.path}: build the cache from the same tracks as the splits.")
    usable = {name: frame.loc[[t in cache for t in frame.index]] for name, frame in splits.items()}
    for name, frame in usable.items():
        if frame.empty:
            raise DataError(f"The {name} split has no track with a usable spectrogram in {cache.path}; "
                            f"see its report.csv.")
    mean, std = normalisation_stats(cache, usable["train"].index) if settings.standardise else (None, None)
    common = dict(num_workers=settings.num_workers, drop_last=False, pin_memory=str(settings.device).startswith("cuda"),
                  persistent_workers=settings.num_workers > 0)
    rank, processes = shard
    loaders = {}
    for name, frame in usable.items():
        train = name == "train"
        data = MelDataset(cache, frame.index, frame["label"], augment=train and settings.augment,
                          mask_draw=settings.mask_draw)
        if train:
            labels = [data.labels[i % len(data.labels)] for i in range(len(data))] if settings.balanced else None
            sampler = train_sampler(len(data), settings.seed, settings.shuffle, settings.augment,
                                    settings.augment_masks, labels)
            if processes > 1:
                sampler = ShardSampler(sampler, batch_size, rank, processes)
        else:
            sampler = EvalShard(len(data), batch_size, rank, processes) if processes > 1 else None
        # The loader draws its worker seeds from a generator of its own, never from torch's global one.
        loaders[name] = DataLoader(data, sampler=sampler, generator=torch.Generator().manual_seed(settings.seed),
                                   batch_size=batch_size // processes if train else batch_size,
                                   worker_init_fn=preemption.ignore_stop_signals, **common)
    return loaders, {"mean": mean, "std": std}
