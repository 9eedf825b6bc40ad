"""datasets.py: a folder per genre and a CSV (real audio files of several formats written here), their
splits (stratified, artist-grouped, given, split_seed), duplicates, clear errors, splits.csv, and a whole
main.py run plus --evaluate on a folder dataset."""
import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import main
import pre_trained_models
from fma_genres import configurator
from fma_genres.data import datasets, fma
from fma_genres.runtime.errors import DataError

FORMATS = {".wav": "WAV", ".flac": "FLAC", ".au": "AU", ".ogg": "OGG", ".mp3": "MP3"}


def write_tone(path, pitch, seed, seconds=2.3, rate=22050):
    """A noisy tone (distinct per seed) in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    audio = 0.4 * np.sin(2 * np.pi * pitch * t + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, audio.astype(np.float32), rate, format=FORMATS[path.suffix])
    return path


def make_folder(root, genres=("blues", "jazz", "rock"), per_genre=10):
    """GTZAN's layout with every format: root/<genre>/<genre>.0000k.<ext>, one file of each genre in a
    sub-folder, and a cover.jpg."""
    extensions = list(FORMATS)
    for g, genre in enumerate(genres):
        for k in range(per_genre):
            folder = root / genre / ("live" if k == 0 else "")
            write_tone(folder / f"{genre}.{k:05d}{extensions[k % len(extensions)]}", 200.0 * (g + 1), 100 * g + k)
    (root / genres[0] / "cover.jpg").write_bytes(b"\xff\xd8 not audio")
    return root


def settings(data_dir, dataset="folder", **extra):
    """datasets.load's settings of main.py's defaults with these keys."""
    return datasets.DataSettings.from_config({**main.CONFIG, "dataset": dataset, "data_dir": str(data_dir), **extra})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("gtzan") / "genres")


def test_a_folder_per_genre_reads_every_format_and_splits_by_genre(folder, capsys):
    data = datasets.load(settings(folder))
    tracks = data.tracks
    assert data.class_names == ["blues", "jazz", "rock"] and len(tracks) == 30
    assert set(tracks["path"].str.rsplit(".", n=1).str[1]) == {"wav", "flac", "au", "ogg", "mp3"}
    assert str(folder / "jazz" / "live" / "jazz.00000.wav") in set(tracks["path"])
    assert (tracks["genre"].map(data.class_names.index) == tracks["label"]).all()
    assert "ignored 1 files that are not audio" in capsys.readouterr().out
    assert not tracks["path"].str.endswith("cover.jpg").any()
    for genre in data.class_names:  # 80/10/10 of each genre's 10 files
        sizes = [int((frame["genre"] == genre).sum()) for frame in data.splits.values()]
        assert sizes == [8, 1, 1], (genre, sizes)
    assert data.identity.startswith("folder_genres_") and data.cache_root == datasets.DEFAULT_CACHE_ROOT


def test_ids_are_stable_and_two_folders_never_share_an_identity(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "genres")
    before = datasets.load(settings(copy))
    write_tone(copy / "rock" / "new.wav", 999.0, 12345)
    after = datasets.load(settings(copy))
    assert set(before.tracks.index) < set(after.tracks.index)
    assert (after.tracks.loc[before.tracks.index, "path"] == before.tracks["path"]).all()
    assert after.identity == before.identity != datasets.load(settings(folder)).identity


def test_split_seed_draws_the_split_and_the_training_seed_does_not(folder):
    def test_ids(**keys):
        return sorted(datasets.load(settings(folder, **keys)).splits["test"].index)

    assert test_ids(split_seed=1, seed=0) == test_ids(split_seed=1, seed=5) != test_ids(split_seed=2, seed=0)
    assert test_ids(split_seed=-1, seed=2) == test_ids(split_seed=2, seed=7)  # -1: the training seed


def test_duplicate_files_are_kept_once_and_reported(folder, tmp_path, capsys):
    copy = shutil.copytree(folder, tmp_path / "genres")
    shutil.copy(copy / "blues" / "blues.00001.flac", copy / "jazz" / "zz_copy.flac")  # GTZAN has such repeats
    data = datasets.load(settings(copy))
    paths = set(data.tracks["path"])
    assert str(copy / "blues" / "blues.00001.flac") in paths and str(copy / "jazz" / "zz_copy.flac") not in paths
    out = capsys.readouterr().out
    assert "left out 1 files with the same content" in out and "zz_copy.flac" in out


def test_an_empty_genre_folder_and_too_few_files_are_refused(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "genres")
    (copy / "pop").mkdir()
    with pytest.raises(DataError, match="pop holds no audio file"):
        datasets.load(settings(copy))
    for k in (1, 2):
        write_tone(copy / "pop" / f"pop.{k}.wav", 300.0, seed=k)
    with pytest.raises(DataError, match=r"too few files .* pop \(2 files"):
        datasets.load(settings(copy))


def write_csv(path, rows, header="path,genre,artist"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_csv_with_artists_keeps_each_artist_in_one_split(folder, tmp_path):
    rows = [f"{p.relative_to(folder.parent).as_posix()},{p.parent.name if p.parent.name != 'live' else p.parents[1].name},"
            f"artist{i // 2}" for i, p in enumerate(sorted(folder.rglob("*.*"))) if p.suffix in FORMATS]
    data = datasets.load(settings(write_csv(folder.parent / "tracks.csv", rows), "csv", split_seed=3))
    assert data.class_names == ["blues", "jazz", "rock"] and len(data.tracks) == 30
    artists = {key: set(frame["artist"]) for key, frame in data.splits.items()}
    assert not artists["train"] & artists["val"] and not artists["train"] & artists["test"]
    assert not artists["val"] & artists["test"]
    assert all(set(frame["genre"]) == {"blues", "jazz", "rock"} for frame in data.splits.values())


def test_a_csv_without_artists_honours_its_split_column(folder, tmp_path):
    files = sorted(p for p in (folder / "jazz").glob("*.*")) + sorted((folder / "rock").glob("*.*"))
    rows = [f"{p},{p.parent.name},{'test' if i % 5 == 0 else 'validation' if i % 5 == 1 else 'training'}"
            for i, p in enumerate(files)]
    data = datasets.load(settings(write_csv(tmp_path / "given.csv", rows, "path,genre,split"), "csv"))
    expected = {str(p): row.rsplit(",", 1)[1] for p, row in zip(files, rows)}
    assert {path: split for path, split in zip(data.tracks["path"], data.tracks["split"])} == expected
    datasets.write_splits(data.splits, tmp_path / "splits.csv")
    written = pd.read_csv(tmp_path / "splits.csv")
    assert dict(zip(written["path"], written["split"])) == expected
    again = datasets.load(settings(tmp_path / "splits.csv", "csv"))  # splits.csv repeats the split
    assert dict(zip(again.tracks["path"], again.tracks["split"])) == expected


def test_unreadable_csv_rows_are_all_reported_with_their_lines(folder, tmp_path):
    good = folder / "rock" / "rock.00001.flac"
    rows = [f"{good},rock,a", f"{folder}/rock/missing.wav,rock,a", f"{good},rock", f"{good},,a"]
    with pytest.raises(DataError) as error:
        datasets.load(settings(write_csv(tmp_path / "bad.csv", rows), "csv"))
    message = str(error.value)
    assert "bad.csv: 3 rows cannot be used" in message
    assert "line 3 file" in message and "missing.wav not found" in message
    assert "line 4 has 2 fields" in message and "line 5 has no path or no genre" in message


def test_training_never_starts_without_a_genre_in_its_training_split(folder, tmp_path):
    files = sorted(p for p in folder.glob("*/*.*") if p.suffix in FORMATS)
    rows = [f"{p},{p.parent.name},{'training' if p.parent.name == 'jazz' and i > 1 else 'test' if i else 'validation'}"
            for i, p in enumerate(files)]
    with pytest.raises(DataError, match=r"training split has no track of the genres \['blues', 'rock'\]"):
        datasets.load(settings(write_csv(tmp_path / "given.csv", rows, "path,genre,split"), "csv"))


@pytest.mark.slow  # trains main.py
def test_main_trains_on_a_folder_dataset_and_evaluate_reads_its_split(folder, tmp_path):
    out_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    assert main.main(["--dataset=folder", f"--data_dir={folder}", f"--out_dir={out_dir}", f"--cache_dir={cache_dir}",
                      "--model=cnn1d", "--n_frames=96", "--batch_size=8", "--epochs=1", "--wandb_mode=disabled",
                      "--num_workers=0", "--cache_workers=1", "--split_seed=4"]) == 0
    splits = pd.read_csv(out_dir / "splits.csv")
    assert len(splits) == 30 and splits["split"].value_counts().to_dict() == {"training": 24, "validation": 3, "test": 3}
    assert [p.name.split("-")[0] for p in cache_dir.iterdir()] == [datasets.load(settings(folder)).identity]
    write_tone(folder / "rock" / "late.wav", 999.0, 777)  # the data changes: resuming would train on other clips
    with pytest.raises(SystemExit, match="not the one this run started with"):
        main.main([f"--data_dir={folder}", f"--out_dir={out_dir}", "--resume=True", "--epochs=2"])
    (folder / "rock" / "late.wav").unlink()
    assert pre_trained_models.main([f"--checkpoint={out_dir}/best.pt", "--evaluate=True", f"--data_dir={folder}",
                                    f"--cache_dir={cache_dir}", f"--out_dir={tmp_path / 'eval'}"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test_examples"] == 3 and metrics["dataset"] == "folder" and metrics["split_seed"] == 4


def test_your_own_music_is_never_uploaded_to_wandb_by_default():
    assert configurator.make_config({"dataset": "folder"}, main.CONFIG)["upload_audio"] is False  # it may not be yours to share
    assert configurator.make_config({}, main.CONFIG)["upload_audio"] is True  # FMA: Creative Commons clips


def test_fma_keeps_its_splits_and_its_random_split_takes_split_seed(fma_small):
    official = datasets.load(settings(fma_small, "fma"))
    assert official.identity == "small" and official.cache_root == fma_small / "cache"
    assert sorted(official.splits["test"].index) == sorted(official.tracks.query("split == 'test'").index)
    expected = sorted(fma.split_tracks(official.tracks, "random", 0.75, seed=3)["test"].index)
    for keys in ({"seed": 3}, {"seed": 0, "split_seed": 3}):  # split_seed=-1 (default): the seed, as before
        data = datasets.load(settings(fma_small, "fma", split="random", train_size=0.75, **keys))
        assert sorted(data.splits["test"].index) == expected, keys


# ----------------------------------------------------------------------------- a partial FMA download

@pytest.fixture
def partial(fma_small, tmp_path):
    """fma_small's metadata with 5 of its 32 clips: what an interrupted copy or unzip leaves."""
    data = tmp_path / "data"
    shutil.copytree(fma_small / "fma_metadata", data / "fma_metadata")
    for clip in sorted((fma_small / "fma_small").rglob("*.mp3"))[:5]:
        target = data / clip.relative_to(fma_small)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, target)
    return data


def run_partial(data, *extra):
    return main.main([f"--data_dir={data}", "--n_frames=100", "--prepare_only=True", "--wandb_mode=disabled", *extra])


def test_a_partial_download_is_refused_with_the_command_that_completes_it(partial):
    with pytest.raises(SystemExit) as info:
        run_partial(partial, "--download=False")
    message = " ".join(str(info.value.code).split())
    assert "27 of the 32 clips of FMA small (84%) are missing from" in message
    assert f"Complete it with `FMA_COMPLETE=1 bash download_data.sh small {partial}`" in message
    assert "train on the 5 clips present with --allow_partial=True" in message
    assert not (partial / "cache").exists()  # refused before any caching


def test_allow_partial_trains_on_the_clips_present_after_a_warning(partial, capsys):
    assert run_partial(partial, "--download=False", "--allow_partial=True") == 0
    out = capsys.readouterr().out
    warning = out.index("warning: 27 of the 32 clips of FMA small (84%) are missing")
    assert "allow_partial=True: training on the 5 clips present" in out and out.index("5 ok") > warning


def test_download_true_completes_a_partial_download(fma_small, partial, tmp_path, monkeypatch, capsys):
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "fma_small.zip", "w") as archive:
        for clip in sorted((fma_small / "fma_small").rglob("*.mp3")):
            archive.write(clip, clip.relative_to(fma_small).as_posix())
    (tmp_path / "SHA1SUMS").write_text(f"{hashlib.sha1((served / 'fma_small.zip').read_bytes()).hexdigest()}  "
                                       f"fma_small.zip\n")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FMA_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("FMA_CHECKSUMS", str(tmp_path / "SHA1SUMS"))
    try:
        assert run_partial(partial, "--download=True") == 0
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    assert f"27 of 32 clips of fma_small are missing from {partial}; completing the download" in out
    assert len(list((partial / "fma_small").rglob("*.mp3"))) == 32 and "32 ok" in out
