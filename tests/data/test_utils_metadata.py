"""utils.py metadata: tracks.csv/genres.csv in FMA's format -> tracks, labels, splits; clear errors."""
from pathlib import Path

import pytest

from conftest import SMALL_GENRES, write_metadata
from fma_genres.data.fma import FMA_SMALL_GENRES, audio_path, load_metadata, split_tracks
from fma_genres.runtime.errors import DataError


def test_small_subset_columns_labels_and_paths(fma_small):
    tracks, class_names = load_metadata(fma_small, "small")
    assert class_names == FMA_SMALL_GENRES == SMALL_GENRES
    assert list(tracks.columns) == ["path", "genre", "label", "split", "artist_id"]
    assert tracks.index.name == "track_id" and tracks.index.dtype.kind == "i"
    assert len(tracks) == 32 and 90001 not in tracks.index
    assert tracks["label"].dtype.kind == "i" and tracks["artist_id"].dtype.kind == "i"
    assert (tracks["genre"].map(class_names.index) == tracks["label"]).all()
    assert tracks.loc[1002, "genre"] == "Electronic" and tracks.loc[8005, "label"] == 7  # Rock
    assert tracks.loc[1004, "split"] == "validation"
    assert tracks.loc[2003, "path"] == str(fma_small / "fma_small" / "002" / "002003.mp3")
    assert all(Path(p).is_file() for p in tracks["path"])


def test_medium_adds_its_genres_and_large_needs_a_top_genre(fma_small):
    medium, names = load_metadata(fma_small, "medium")
    assert len(medium) == 34 and names == sorted(SMALL_GENRES + ["Jazz", "Blues"])
    assert medium.loc[90001, "path"].endswith("fma_medium/090/090001.mp3")
    assert medium.loc[1002, "label"] == names.index("Electronic")
    large, _ = load_metadata(fma_small, "large")
    assert 90003 not in large.index and len(large) == 34  # no genre_top: left out


def test_audio_path_layout(tmp_path):
    assert audio_path(tmp_path, "small", 2) == tmp_path / "fma_small" / "000" / "000002.mp3"
    assert audio_path("data", "medium", 155066).as_posix() == "data/fma_medium/155/155066.mp3"


def test_missing_tracks_csv_names_file_and_fixes(tmp_path):
    with pytest.raises(DataError) as err:
        load_metadata(tmp_path, "small")
    message = str(err.value)
    assert str(tmp_path / "fma_metadata" / "tracks.csv") in message
    assert "download_data.sh" in message and "--demo=True" in message


@pytest.mark.parametrize("content", [
    b"track_id,genre_top\n1,Rock\n",              # one header row, not FMA's
    b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50,    # not text at all
    b"",                                          # empty file
])
def test_malformed_tracks_csv_names_file(fma_small, tmp_path, content):
    meta = tmp_path / "fma_metadata"
    meta.mkdir()
    (meta / "genres.csv").write_bytes((fma_small / "fma_metadata" / "genres.csv").read_bytes())
    (meta / "tracks.csv").write_bytes(content)
    with pytest.raises(DataError, match="tracks.csv") as err:
        load_metadata(tmp_path, "small")
    assert "download" in str(err.value)


def test_empty_selection_unknown_subset_and_foreign_genres(tmp_path):
    write_metadata(tmp_path, [dict(track_id=5, subset="medium", split="training", genre="Jazz",
                                   artist_id=1)])
    with pytest.raises(DataError, match="no track with a top genre in subset 'small'"):
        load_metadata(tmp_path, "small")
    with pytest.raises(DataError, match="Unknown FMA subset 'tiny'"):
        load_metadata(tmp_path, "tiny")
    write_metadata(tmp_path, [dict(track_id=5, subset="small", split="training", genre="Polka",
                                   artist_id=1)])
    with pytest.raises(DataError, match="genres.csv"):
        load_metadata(tmp_path, "small")


def test_official_split_is_tracks_csv_split(fma_small):
    tracks, _ = load_metadata(fma_small, "small")
    splits = split_tracks(tracks, "official")
    assert [len(splits[k]) for k in ("train", "val", "test")] == [16, 8, 8]
    assert (splits["val"]["split"] == "validation").all() and (splits["test"]["split"] == "test").all()
    artists = [set(splits[k]["artist_id"]) for k in ("train", "val", "test")]
    assert not (artists[0] & artists[1] or artists[0] & artists[2] or artists[1] & artists[2])


def test_random_split_stratified_seeded_and_val_is_test(fma_small):
    tracks, _ = load_metadata(fma_small, "small")
    splits = split_tracks(tracks, "random", train_size=0.75, seed=3)
    assert len(splits["train"]) == 24 and splits["val"].equals(splits["test"])
    assert set(splits["train"].index).isdisjoint(splits["test"].index)
    assert (splits["train"]["label"].value_counts() == 3).all()  # stratified: 3 of each genre's 4
    again = split_tracks(tracks, "random", train_size=0.75, seed=3)
    other = split_tracks(tracks, "random", train_size=0.75, seed=4)
    assert again["train"].index.equals(splits["train"].index)
    assert not other["train"].index.equals(splits["train"].index)


def test_split_errors(fma_small):
    tracks, _ = load_metadata(fma_small, "small")
    with pytest.raises(DataError, match="no validation"):
        split_tracks(tracks[tracks["split"] != "validation"], "official")
    with pytest.raises(DataError, match="random"):
        split_tracks(tracks.iloc[:5], "random")  # a genre with one track
    with pytest.raises(ValueError, match="official"):
        split_tracks(tracks, "artist")
