"""Tests for demo_data.py: real MP3s written to tmp folders, read back with the real FMA calls.

    python -m pytest tests/data/test_demo_data.py -q
"""
import json
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fma_genres.data.demo_data import GENRE_IDS, KNOWN_BROKEN, MARKER, _plan, make_demo_dataset, synthesize

ROOT = Path(__file__).resolve().parents[2]
DURATION = 6.0  # long enough for a few bars of every genre, short enough to keep the tests fast


def read_tracks(data_dir):
    return pd.read_csv(data_dir / "fma_metadata" / "tracks.csv", index_col=0, header=[0, 1])


def mp3_paths(data_dir):
    return {tid: data_dir / "fma_small" / f"{tid:06d}"[:3] / f"{tid:06d}.mp3" for tid in read_tracks(data_dir).index}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", tracks_per_genre=4, duration=DURATION)


def test_tracks_csv_has_the_real_fma_structure(demo):
    lines = (demo / "fma_metadata" / "tracks.csv").read_text().splitlines()
    assert lines[0].startswith(",album,") and lines[1].startswith(",")
    assert lines[2].strip(",") == "track_id"  # third header line: index name, then empty cells
    tracks = read_tracks(demo)
    assert tracks.index.name == "track_id" and tracks.index.dtype.kind == "i"
    assert list(tracks.columns) == sorted(tracks.columns)
    assert set(tracks.columns.get_level_values(0)) == {"album", "artist", "set", "track"}
    for column in [("set", "subset"), ("set", "split"), ("track", "genre_top"), ("track", "genres"),
                   ("track", "genres_all"), ("artist", "id"), ("track", "duration"), ("track", "title"),
                   ("artist", "name"), ("album", "id")]:
        assert column in tracks.columns, column
    assert len(tracks) == 8 * 4 and (tracks[("set", "subset")] == "small").all()
    assert set(tracks[("set", "split")]) == {"training", "validation", "test"}
    assert sorted(tracks[("track", "genre_top")].unique()) == sorted(GENRE_IDS)
    expected = tracks[("track", "genre_top")].map(lambda g: f"[{GENRE_IDS[g]}]")
    assert (tracks[("track", "genres")] == expected).all() and (tracks[("track", "genres_all")] == expected).all()
    assert not set(tracks.index) & KNOWN_BROKEN


def test_genres_csv(demo):
    genres = pd.read_csv(demo / "fma_metadata" / "genres.csv", index_col=0)
    assert genres.index.name == "genre_id" and list(genres.columns) == ["#tracks", "parent", "title", "top_level"]
    assert dict(zip(genres["title"], genres.index)) == GENRE_IDS
    assert (genres["parent"] == 0).all() and (genres["top_level"] == genres.index).all()
    assert (genres["#tracks"] == 4).all()


@pytest.mark.parametrize("tracks_per_genre", [3, 10, 25])
def test_splits_are_stratified_and_artist_filtered(tracks_per_genre):
    tracks = _plan(tracks_per_genre, seed=1)
    held = max(1, round(0.1 * tracks_per_genre))
    genre, split, artist = (tracks[c] for c in [("track", "genre_top"), ("set", "split"), ("artist", "id")])
    counts = pd.crosstab(genre, split)
    assert (counts["training"] == tracks_per_genre - 2 * held).all()
    assert (counts["validation"] == held).all() and (counts["test"] == held).all()
    assert (split.groupby(artist).nunique() == 1).all()
    assert (genre.groupby(artist).nunique() == 1).all()
    assert tracks.index.is_unique and tracks.index.max() < 1_000_000
    if tracks_per_genre == 10:  # the default demo: 8/1/1 per genre, ids spread over many folders
        assert len({f"{tid:06d}"[:3] for tid in tracks.index}) > 10


def test_too_few_tracks_per_genre_is_refused():
    with pytest.raises(ValueError, match="at least 3"):
        _plan(2, seed=0)


def test_audio_is_44k_mono_mp3_at_the_official_paths(demo):
    paths = mp3_paths(demo)
    assert all(path.exists() for path in paths.values())
    for path in list(paths.values())[:8]:
        info = sf.info(path)
        assert info.format == "MP3" and info.samplerate == 44100 and info.channels == 1
        audio, _ = sf.read(path)
        assert abs(len(audio) - DURATION * 44100) <= 1152  # at most one MP3 frame off
        assert 0.05 < np.abs(audio).max() < 1.0  # audible, not clipped
    assert not list(demo.rglob("*.tmp"))


def test_synthesis_is_deterministic_and_safe():
    for genre in GENRE_IDS:
        a = synthesize(genre, 2.0, np.random.default_rng([0, 5]))
        assert np.array_equal(a, synthesize(genre, 2.0, np.random.default_rng([0, 5])))
        assert a.shape == (88200, 2) and a.dtype == np.float32 and np.abs(a).max() < 0.9
        assert not np.array_equal(a, synthesize(genre, 2.0, np.random.default_rng([1, 5])))


def test_same_seed_gives_the_same_dataset(tmp_path):
    a = make_demo_dataset(tmp_path / "a", tracks_per_genre=3, seed=7, duration=2.0)
    b = make_demo_dataset(tmp_path / "b", tracks_per_genre=3, seed=7, duration=2.0)
    assert (a / "fma_metadata" / "tracks.csv").read_bytes() == (b / "fma_metadata" / "tracks.csv").read_bytes()
    for tid, path in mp3_paths(a).items():
        np.testing.assert_allclose(sf.read(path)[0], sf.read(mp3_paths(b)[tid])[0], atol=1e-4)


def test_second_call_is_a_no_op_and_a_missing_clip_is_restored(tmp_path, capsys):
    data = make_demo_dataset(tmp_path, tracks_per_genre=3, duration=2.0)
    files = [p for p in data.rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    capsys.readouterr()
    assert make_demo_dataset(tmp_path, tracks_per_genre=3, duration=2.0) == data
    assert capsys.readouterr().out == ""  # returned at once: nothing generated
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    lost = next(iter(mp3_paths(data).values()))
    lost.unlink()
    make_demo_dataset(tmp_path, tracks_per_genre=3, duration=2.0)
    assert "writing 1 of 24 clips" in capsys.readouterr().out
    assert lost.exists() and sf.info(lost).channels == 1
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.suffix == ".mp3" and p != lost)


def test_other_parameters_replace_the_dataset(tmp_path):
    make_demo_dataset(tmp_path, tracks_per_genre=3, seed=0, duration=2.0)
    old = set(mp3_paths(tmp_path).values())
    (tmp_path / "cache").mkdir()  # main.py's default spectrogram cache of the old clips
    make_demo_dataset(tmp_path, tracks_per_genre=3, seed=1, duration=2.0)
    new = set(mp3_paths(tmp_path).values())
    assert old != new and all(p.exists() for p in new)
    assert set((tmp_path / "fma_small").rglob("*.mp3")) == new  # the old seed's clips are gone
    assert json.loads((tmp_path / MARKER).read_text())["seed"] == 1
    assert not (tmp_path / "cache").exists()


def test_refuses_to_overwrite_a_real_fma_folder(tmp_path):
    tracks_csv = tmp_path / "fma_metadata" / "tracks.csv"
    tracks_csv.parent.mkdir()
    tracks_csv.write_text("real metadata")
    with pytest.raises(FileExistsError, match="not written by demo_data.py"):
        make_demo_dataset(tmp_path, tracks_per_genre=3, duration=2.0)
    assert tracks_csv.read_text() == "real metadata"


def test_genres_are_separable_from_mel_spectrograms(demo):
    """Leave-one-out nearest centroid on mean mel-band profiles (docs/faithfulness.md: Preprocessing)."""
    tracks = read_tracks(demo)
    profiles = []
    for path in mp3_paths(demo).values():
        audio, _ = librosa.load(path, sr=22050)
        mel = librosa.feature.melspectrogram(y=audio, sr=22050, n_fft=2048, hop_length=512, n_mels=128)
        profiles.append(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80).mean(axis=1))
    profiles, genres = np.array(profiles), tracks[("track", "genre_top")].to_numpy()
    correct = 0
    for i in range(len(profiles)):
        rest = np.arange(len(profiles)) != i
        centroids = {g: profiles[rest & (genres == g)].mean(axis=0) for g in GENRE_IDS}
        correct += min(centroids, key=lambda g: np.sum((profiles[i] - centroids[g]) ** 2)) == genres[i]
    assert correct / len(profiles) >= 0.9
