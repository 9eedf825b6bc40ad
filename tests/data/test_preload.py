"""preload.py: the preloaded training batches equal the DataLoader's (same clips, labels, masks and
statistics, exactly), whatever the options; a run gives the same weights either way; importing main
leaves the late-needed libraries unimported."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main
import models_utils
from fma_genres import multilabel
from fma_genres.data.cache import build_cache
from fma_genres.data.fma import load_metadata, split_tracks
from fma_genres.data.preload import PreloadedLoader, placement, preloaded
from utils import PREPROCESSING, LoaderSettings, make_loaders

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(fma_small, tmp_path_factory):
    tracks, _ = load_metadata(fma_small, "small")
    cache = build_cache(tracks, tmp_path_factory.mktemp("cache"), "small", dict(PREPROCESSING, n_frames=96),
                        progress=False)
    return cache, split_tracks(tracks, "official")


def both_paths(data, shard=(0, 1), **options):
    """The training DataLoader, and a PreloadedLoader of a second, identically seeded one."""
    cache, splits = data
    loader, twin = (make_loaders(cache, splits, 4, LoaderSettings(seed=7, **options), shard)[0]["train"] for _ in "ab")
    return loader, preloaded(twin, True, torch.device("cpu"))


def assert_same_epochs(loader, preloaded_loader, epochs=2):
    for epoch in range(epochs):
        for sampler in (loader.sampler, preloaded_loader.sampler):
            sampler.generator.manual_seed(100 + epoch)  # as main.reseed does every epoch
        assert len(preloaded_loader) == len(loader)
        batches = list(zip(loader, preloaded_loader, strict=True))
        for (x, y), (px, py) in batches:
            assert px.dtype == x.dtype and py.dtype == y.dtype
            assert torch.equal(px, x) and torch.equal(py, y)
    return batches


OPTIONS = [dict(), dict(shuffle=False), dict(augment=True), dict(augment=True, shuffle=False, standardise=True),
           dict(augment=True, augment_masks="fixed", mask_draw="original"), dict(standardise=True, balanced=True),
           dict(augment=True, balanced=True, shard=(1, 2))]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_preloaded_batches_equal_the_dataloaders(data, options):
    loader, fast = both_paths(data, **options)
    assert isinstance(fast, PreloadedLoader) and fast.rows.dtype == torch.float16
    batches = assert_same_epochs(loader, fast)
    x = torch.cat([x for (x, _), _ in batches])
    if options.get("augment"):
        assert (x == 0).any()  # masks were applied (0 dB), and equally on both paths


def test_multi_label_rows_are_gathered_like_the_dataloaders(data):
    """target=genres_all: main.build_data gives the loaders 0/1 genre rows before preloading them."""
    cache, splits = data
    loaders = [make_loaders(cache, splits, batch_size=4, settings=LoaderSettings(seed=7, augment=True))[0]
               for _ in range(2)]
    rows = {int(t): torch.tensor([t % 2, t % 3 == 0, 1], dtype=torch.float32) for t in cache.track_ids}
    for twin in loaders:
        multilabel.use_label_rows(twin, rows)
    batches = assert_same_epochs(loaders[0]["train"], preloaded(loaders[1]["train"], True, torch.device("cpu")))
    targets = torch.cat([y for (_, y), _ in batches])
    assert targets.dtype == torch.float32 and targets.shape[1] == 3 and targets[:, 2].all()


def test_a_resumed_epoch_continues_with_the_same_batches(data):
    loader, fast = both_paths(data, augment=True, standardise=True)
    for sampler in (loader.sampler, fast.sampler):
        sampler.generator.manual_seed(3)
        sampler.start = 8  # train.continue_epoch after 2 batches of 4
    assert len(fast) == len(loader) == 6
    for (x, y), (px, py) in zip(loader, fast, strict=True):
        assert torch.equal(px, x) and torch.equal(py, y)
    assert len(fast) == 8  # only that pass was shortened


def test_placement_refuses_a_split_larger_than_memory_and_says_why():
    place, pin, why = placement(10 ** 16, torch.device("cpu"))
    assert place is None and not pin and "does not fit in RAM" in why and "margin" in why
    place, _, why = placement(10 ** 6, torch.device("cpu"))
    assert place == torch.device("cpu") and "0.00 GB in RAM" in why


def run_args(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", f"--out_dir={out_dir}", f"--cache_dir={out_dir}/cache", "--model=cnn1d",
            "--n_frames=96", "--batch_size=4", "--epochs=2", "--download=False", "--wandb_mode=disabled",
            "--num_workers=0", "--hardest_clips=0", "--data_augmentation=True", "--faithful=False", *extra]


@pytest.mark.slow  # trains main.py twice
def test_a_run_ends_with_the_same_weights_with_and_without_preload(fma_small, tmp_path, capsys):
    weights = {}
    for preload in (True, False):
        out_dir = tmp_path / str(preload)
        assert main.main(run_args(fma_small, out_dir, f"--preload={preload}")) == 0
        weights[preload] = models_utils.load_checkpoint(out_dir / "last.pt")["state_dict"]
    assert "preload: the training split (16 clips, float16)" in capsys.readouterr().out
    assert weights[True].keys() == weights[False].keys()
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])


@pytest.mark.slow  # a Python process importing main.py
def test_importing_main_leaves_the_late_needed_libraries_unimported():
    late = ("sklearn", "matplotlib", "wandb", "librosa", "scipy")
    code = (f"import sys, main, pre_trained_models; "
            f"print(sorted(m for m in {late!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
