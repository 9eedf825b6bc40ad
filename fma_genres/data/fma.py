"""FMA's metadata (tracks.csv, genres.csv): the tracks of a subset, their labels and splits (docs/data.md: FMA's files)."""
from pathlib import Path

import pandas as pd

from fma_genres.runtime.errors import DataError

FMA_SMALL_GENRES = ["Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental",
                    "International", "Pop", "Rock"]
FMA_TOP_GENRES = ["Blues", "Classical", "Country", "Easy Listening", "Electronic", "Experimental", "Folk", "Hip-Hop",
                  "Instrumental", "International", "Jazz", "Old-Time / Historic", "Pop", "Rock", "Soul-RnB",
                  "Spoken"]  # genres.csv's 16 top-level genres: fma_medium's (and large's) classes
SUBSETS = ("small", "medium", "large")  # ('set','subset') is the smallest subset a track is in
SPLITS = {"train": "training", "val": "validation", "test": "test"}
SPLIT_MODES = ("official", "random")
# The columns of tracks.csv every dataset reads (multi-label also reads genres and genres_all).
TRACK_COLUMNS = (("set", "subset"), ("set", "split"), ("track", "genre_top"), ("artist", "id"))


def audio_path(data_dir, subset, track_id):
    tid = f"{int(track_id):06d}"
    return Path(data_dir) / f"fma_{subset}" / tid[:3] / f"{tid}.mp3"


def read_csv(path, data_dir, subset, **read_csv_args):
    """One metadata CSV, or a DataError naming it and how to get it."""
    if not path.is_file():
        raise DataError(f"{path} not found. Download FMA with `bash download_data.sh {subset} {data_dir}` "
                        f"(or unzip fma_metadata.zip there), or run offline on the demo dataset with "
                        f"`python main.py --demo=True`.")
    try:
        return pd.read_csv(path, **read_csv_args)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a readable FMA metadata CSV ({e}). Download fma_metadata.zip "
                        f"again with download_data.sh.") from e


def subset_tracks(data_dir, subset, track_columns=(), genre_columns=()):
    """(tracks.csv rows of every track in the subset, genres.csv): the one reader of FMA's metadata, used by
    single-label (load_metadata), multi-label (multilabel.load_fma) and --evaluate alike. Besides the
    columns every user needs (TRACK_COLUMNS, title), the caller names the ones it reads."""
    if subset not in SUBSETS:
        raise DataError(f"Unknown FMA subset '{subset}': choose one of {', '.join(SUBSETS)}.")
    meta = Path(data_dir) / "fma_metadata"
    tracks_csv, genres_csv = meta / "tracks.csv", meta / "genres.csv"
    tracks = read_csv(tracks_csv, data_dir, subset, index_col=0, header=[0, 1])
    genres = read_csv(genres_csv, data_dir, subset, index_col=0)
    missing = [c for c in (*TRACK_COLUMNS, *track_columns) if c not in tracks.columns]
    missing_genres = [c for c in ("title", *genre_columns) if c not in genres.columns]
    if missing or missing_genres:
        raise DataError(f"{tracks_csv if missing else genres_csv} lacks the FMA columns "
                        f"{missing or missing_genres}: it is not FMA's metadata (tracks.csv needs two header "
                        f"rows). Download fma_metadata.zip again with download_data.sh.")
    rank = tracks[("set", "subset")].map({name: i for i, name in enumerate(SUBSETS)})
    return tracks[rank <= SUBSETS.index(subset)], genres


def genre_titles(data_dir):
    """Every genre title of genres.csv (FMA's tree: 163 genres), in its order; no need to read tracks.csv."""
    path = Path(data_dir) / "fma_metadata" / "genres.csv"
    genres = read_csv(path, data_dir, "small", index_col=0)
    if "title" not in genres.columns:
        raise DataError(f"{path} has no title column: it is not FMA's genres.csv. Download fma_metadata.zip "
                        f"again with download_data.sh.")
    return genres["title"].astype(str).tolist()


def track_frame(chosen, data_dir, subset, labels):
    """The tracks' frame every dataset shares (index track_id; path, genre, label, split, artist_id) from
    subset_tracks' rows; ``labels``: each row's class index (-1 where the targets are genre rows)."""
    ids = chosen.index.astype(int)
    return pd.DataFrame({
        "path": [str(audio_path(data_dir, subset, t)) for t in ids],
        "genre": chosen[("track", "genre_top")].fillna("").to_numpy(),  # splits.csv's genre column
        "label": labels,
        "split": chosen[("set", "split")].to_numpy(),
        "artist_id": chosen[("artist", "id")].astype(int).to_numpy(),
    }, index=pd.Index(ids, name="track_id"))


def load_metadata(data_dir, subset="small"):
    """Tracks of the subset with a top genre: DataFrame (index track_id; path, genre, label, split,
    artist_id) and the alphabetical class names (label = index)."""
    tracks, genres = subset_tracks(data_dir, subset)
    tracks_csv = Path(data_dir) / "fma_metadata" / "tracks.csv"
    chosen = tracks[tracks[("track", "genre_top")].notna()]
    if chosen.empty:
        raise DataError(f"{tracks_csv} has no track with a top genre in subset '{subset}' (subset values "
                        f"found: {sorted(tracks[('set', 'subset')].dropna().unique())}).")
    unknown = set(chosen[("track", "genre_top")]) - set(genres["title"])
    if unknown:
        raise DataError(f"{tracks_csv} uses genres missing from {tracks_csv.with_name('genres.csv')}: "
                        f"{sorted(unknown)}. The metadata files do not belong together; download "
                        f"fma_metadata.zip again.")
    class_names = sorted(chosen[("track", "genre_top")].unique())
    labels = chosen[("track", "genre_top")].map(class_names.index).astype(int).to_numpy()
    return track_frame(chosen, data_dir, subset, labels), class_names


def split_tracks(tracks, mode="official", train_size=0.8, seed=0):
    """{"train", "val", "test"} frames: FMA's official artist-filtered split, or the original's random
    stratified split whose held-out part serves as both val and test."""
    if mode == "official":
        splits = {key: tracks[tracks["split"] == name] for key, name in SPLITS.items()}
        empty = [SPLITS[key] for key, frame in splits.items() if frame.empty]
        if empty:
            raise DataError(f"The official split has no {' or '.join(empty)} tracks in this selection "
                            f"({len(tracks)} tracks); use the random split (--split=random) instead.")
        return splits
    if mode == "random":
        from sklearn.model_selection import train_test_split  # here: scikit-learn takes ~0.9 s to import

        try:
            train, held_out = train_test_split(tracks, train_size=train_size, random_state=seed,
                                               stratify=tracks["label"])
        except ValueError as e:
            raise DataError(f"Cannot split {len(tracks)} tracks at random with train_size={train_size} "
                            f"stratified by genre ({e}); use more tracks or the official split.") from e
        # train keeps train_test_split's order: the original's fixed training order (shuffle=False)
        return {"train": train, "val": held_out.sort_index(), "test": held_out.sort_index()}
    raise ValueError(f"Unknown split mode '{mode}': choose one of {', '.join(SPLIT_MODES)}.")
