"""utils.py datasets and loaders: batches from the cache, doubled augmented epoch, seeded order,
standardisation with train-split statistics, broken tracks left out."""
import pickle

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from fma_genres.data.cache import build_cache
from fma_genres.data.fma import load_metadata, split_tracks
from fma_genres.runtime.errors import DataError
from utils import (
    PREPROCESSING,
    LoaderSettings,
    MelDataset,
    draw_mask_uniforms,
    make_loaders,
    mask_spans,
    normalisation_stats,
    spec_augment,
)

SMALL = dict(PREPROCESSING, n_frames=100)
BROKEN_TRAIN_TRACK = 1003


@pytest.fixture(scope="module")
def data(fma_small, tmp_path_factory):
    """The fixture's cache, with one training track's audio replaced by a non-audio file."""
    root = tmp_path_factory.mktemp("cache")
    (root / "broken.mp3").write_bytes(b"not an mp3 " * 100)
    tracks, _ = load_metadata(fma_small, "small")
    tracks.loc[BROKEN_TRAIN_TRACK, "path"] = str(root / "broken.mp3")
    cache = build_cache(tracks, root, "small", SMALL, progress=False)
    return cache, split_tracks(tracks, "official")


def epoch(loader):
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_batches_raw_db_in_split_order_without_broken_tracks(data):
    cache, splits = data
    loaders, stats = make_loaders(cache, splits, batch_size=4)
    assert stats == {"mean": None, "std": None}
    assert [len(loaders[k].dataset) for k in ("train", "val", "test")] == [15, 8, 8]
    assert BROKEN_TRAIN_TRACK not in loaders["train"].dataset.track_ids
    x, y = next(iter(loaders["train"]))
    assert x.dtype == torch.float32 and x.shape == (4, 128, 100) and y.dtype == torch.int64
    x, y = epoch(loaders["val"])
    raw = np.stack([cache[t] for t in splits["val"].index]).astype(np.float32)
    assert torch.equal(x, torch.from_numpy(raw)) and y.tolist() == splits["val"]["label"].tolist()
    assert not loaders["train"].pin_memory and not loaders["train"].persistent_workers
    cuda, _ = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(num_workers=1, device="cuda"))
    assert cuda["val"].pin_memory and cuda["val"].persistent_workers
    foreign = dict(splits, test=splits["test"].rename(index={splits["test"].index[0]: 999999}))
    with pytest.raises(DataError, match="999999"):
        make_loaders(cache, foreign, batch_size=4)


def test_train_order_is_seeded(data):
    cache, splits = data
    first = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(seed=1))[0]["train"]
    same = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(seed=1))[0]["train"]
    other = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(seed=2))[0]["train"]
    x1, y1 = epoch(first)
    assert torch.equal(x1, epoch(same)[0]) and not torch.equal(x1, epoch(other)[0])
    x2, y2 = epoch(first)  # the next epoch is another permutation of the same clips
    assert not torch.equal(x1, x2) and sorted(y1.tolist()) == sorted(y2.tolist())


def masks_of(masked, clean):
    """(masked bands, masked frames) of a masked copy; fails unless every change is a 0 dB band or frame."""
    changed = masked != clean
    bands, frames = (masked == 0).all(dim=1), (masked == 0).all(dim=0)
    assert torch.all(~changed | bands[:, None] | frames[None, :])
    return int(bands.sum()), int(frames.sum())


def test_augmented_epoch_is_doubled_and_only_second_half_masked(data):
    cache, splits = data
    loaders, _ = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(augment=True))
    train = loaders["train"].dataset
    assert len(train) == 30 and len(loaders["val"].dataset) == 8 and len(loaders["test"].dataset) == 8
    n_masked = 0
    for i in range(15):
        clean, label = train[i]
        assert torch.equal(clean, torch.from_numpy(cache[train.track_ids[i]].astype(np.float32)))
        masked, masked_label = train[i + 15]
        bands, frames = masks_of(masked, clean)
        assert label == masked_label and bands <= 2 * 32 and frames <= 2 * 15
        n_masked += bands > 0 and frames > 0
    assert n_masked >= 10
    x, y = epoch(loaders["train"])
    assert len(y) == 30 and all(c == 4 or c == 2 for c in torch.bincount(y).tolist())


def test_masks_fresh_each_epoch_reproducible_and_independent_of_workers(data):
    cache, splits = data
    loader = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(augment=True, seed=5))[0]["train"]
    first, second = epoch(loader)[0], epoch(loader)[0]
    assert not torch.equal(first, second)
    loader.sampler.generator.manual_seed(5)  # reseeding the sampler's generator replays an epoch
    assert torch.equal(epoch(loader)[0], first)
    workers = make_loaders(cache, splits, batch_size=4,
                           settings=LoaderSettings(num_workers=2, augment=True, seed=5))[0]["train"]
    assert torch.equal(epoch(workers)[0], first) and torch.equal(epoch(workers)[0], second)


def test_standardisation_uses_train_split_only(data):
    cache, splits = data
    loaders, stats = make_loaders(cache, splits, batch_size=8, settings=LoaderSettings(standardise=True, augment=True))
    train_ids = [t for t in splits["train"].index if t != BROKEN_TRAIN_TRACK]
    train = np.stack([cache[t] for t in train_ids]).astype(np.float64)
    assert stats["mean"] == pytest.approx(train.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(train.std(), rel=1e-9)
    everything = normalisation_stats(cache, cache.track_ids)
    assert everything[0] != pytest.approx(stats["mean"], rel=1e-4)
    x, _ = epoch(loaders["val"])  # the loaders give raw dB: the model's Standardise layer scales them
    raw = torch.from_numpy(np.stack([cache[t] for t in splits["val"].index]).astype(np.float32))
    assert torch.equal(x, raw)
    clean, masked = loaders["train"].dataset[0][0], loaders["train"].dataset[(15, [[0.5, 0.5]] * 4)][0]
    changed = clean != masked
    assert changed.any() and (masked[changed] == 0).all()  # masks are 0 dB before standardisation


def test_spec_augment_bounds_and_only_the_augmented_clips():
    mels = torch.full((200, 40, 200), -30.0)
    augmented = torch.arange(200) % 2 == 1
    spec_augment(mels, draw_mask_uniforms(200, torch.Generator().manual_seed(0)), augmented=augmented)
    assert torch.all(mels[~augmented] == -30.0) and not torch.signbit(mels[mels == 0]).any()  # 0 dB, not -0.0
    bands, frames = np.array([masks_of(mel, torch.full((40, 200), -30.0)) for mel in mels[augmented]]).T
    assert bands.max() <= 2 * 10 and frames.max() <= 2 * 30 and bands.max() > 10 and frames.max() > 30


def test_dataset_pickles_without_its_memmap(data):
    cache, _ = data
    dataset = MelDataset(cache, cache.track_ids[:3], [0, 1, 2])
    x, _ = dataset[1]  # opens the memmap in this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.cache._mels is None and len(pickle.dumps(dataset)) < 20_000
    assert torch.equal(copy[1][0], x)


def test_shuffle_false_keeps_the_split_order_every_epoch(data):
    cache, splits = data
    loader = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(shuffle=False, seed=3))[0]["train"]
    expected = torch.from_numpy(np.stack([cache[t] for t in loader.dataset.track_ids]).astype(np.float32))
    first, second = epoch(loader)[0], epoch(loader)[0]
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_the_random_split_keeps_train_test_splits_order_for_training(fma_small):
    tracks, _ = load_metadata(fma_small, "small")
    train = split_tracks(tracks, "random", train_size=0.75, seed=4)["train"]
    expected, _ = train_test_split(tracks, train_size=0.75, random_state=4, stratify=tracks["label"])
    assert list(train.index) == list(expected.index) and list(train.index) != sorted(train.index)


def test_fixed_masks_give_the_same_copies_every_epoch_after_the_clean_clips(data):
    cache, splits = data
    loader = make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(
        augment=True, augment_masks="fixed", shuffle=False, seed=2))[0]["train"]
    n = len(loader.dataset.track_ids)
    first, second = epoch(loader)[0], epoch(loader)[0]
    assert torch.equal(first, second)  # the same masked copies in every epoch
    clean = torch.from_numpy(np.stack([cache[t] for t in loader.dataset.track_ids]).astype(np.float32))
    assert torch.equal(first[:n], clean)  # clean clips first, in order, then their masked copies
    for i in range(n):
        masks_of(first[n + i], clean[i])
    assert (first[n:] != clean).any()
    shuffled = make_loaders(cache, splits, batch_size=4,
                            settings=LoaderSettings(augment=True, augment_masks="fixed", seed=2))[0]["train"]
    one, two = epoch(shuffled)[0], epoch(shuffled)[0]
    assert not torch.equal(one, two)  # reshuffled, but the copies are the same set of spectrograms
    assert sorted(map(float, one.sum(dim=(1, 2)))) == sorted(map(float, first.sum(dim=(1, 2))))


def test_the_originals_mask_draw_never_reaches_the_top_width_or_the_last_band():
    uniforms = draw_mask_uniforms(3000, torch.Generator().manual_seed(0))
    spans = {draw: mask_spans(uniforms, 128, 1291, draw) for draw in ("original", "inclusive")}
    (start, end), (_, inclusive_end) = spans["original"], spans["inclusive"]
    bands, frames = (end - start)[:, :2], (end - start)[:, 2:]
    assert bands.max() == 31 and end[:, :2][bands > 0].max() <= 127
    assert frames.max() == 193  # int(U(0, 193.65))
    inclusive = inclusive_end - spans["inclusive"][0]
    assert inclusive[:, :2].max() == 32 and inclusive_end[:, :2].max() == 128 and inclusive[:, 2:].max() == 193
