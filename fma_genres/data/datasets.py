"""Where clips and labels come from: FMA, a folder per genre, a CSV; and their train/validation/test splits.

    data = datasets.load(DataSettings.from_config(config))   # a Dataset: tracks, class_names, splits, ...
    datasets.write_splits(data.splits, "runs/x/splits.csv", resume=False)

main.py calls load() for every dataset (the key ``dataset`` picks one of DATASETS); everything after it
(cache, training, reports, --evaluate) is shared. ``tracks`` is indexed by integer track ids (columns
path, genre, label, split, artist or FMA's artist_id); ``identity`` names the dataset in the spectrogram
cache (cache.py), so two datasets never share cached rows.

    fma     data_dir/fma_metadata + fma_<subset>/: FMA's official split, or the original's random one
    folder  data_dir/<genre>/**/<audio file>, e.g. GTZAN's genres/blues/blues.00000.au
    csv     data_dir is a CSV with columns path,genre and optional artist and split (training|validation|
            test); relative paths resolve against the CSV's folder

Folder and CSV datasets: a track's id is a hash of its path (stable when files are added); a file with the
same content as an earlier one (GTZAN has some) is left out and reported; without a split column the
split is drawn from split_seed, stratified by genre and grouped by artist when artists are known.
Tests: python -m pytest tests/data/test_datasets.py -q
"""
import csv
import hashlib
import io
import os
import re
import subprocess
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

import utils
from fma_genres import multilabel, tasks
from fma_genres.data import fma
from fma_genres.data.fma import SPLITS
from fma_genres.runtime import atomic, distributed
from fma_genres.runtime.errors import DataError

SPLIT_NAMES = tuple(SPLITS.values())  # training, validation, test: the names in CSVs and splits.csv
DEFAULT_CACHE_ROOT = Path("data") / "cache"  # folder and CSV datasets; FMA's is <data_dir>/cache
SHOWN = 10  # files named in a message or report before "and N more"


@dataclass(frozen=True)
class DataSettings:
    """main.py's keys that choose a dataset's tracks, labels and split (from_config picks them)."""
    dataset: str            # a DATASETS key
    data_dir: str           # FMA's folder, a folder of genre folders, or a CSV
    subset: str             # FMA's subset
    split: str              # FMA: official | random
    train_size: float       # training fraction of FMA's random split
    val_size: float         # folder and CSV datasets without a split column
    test_size: float
    split_seed: int         # resolved: never -1 (see split_seed)
    cache_dir: str = ""     # "" = the dataset's own cache root
    target: str = "genre_top"      # genres_all: multi-label over FMA's genre tree (multilabel.load_fma)
    min_genre_tracks: int = 1      # genres_all: fewer training clips and a genre is dropped
    selects_on_val: bool = False   # best.pt is chosen on validation (report_epoch=best): split=random warns so

    @classmethod
    def from_config(cls, config):
        """The settings of a run's (or a checkpoint's) config; keys it lacks keep their defaults."""
        given = {f.name: config[f.name] for f in fields(cls) if f.name in config}
        return cls(**{**given, "split_seed": split_seed(config),
                      "selects_on_val": config.get("report_epoch") == "best"})


@dataclass
class Dataset:
    """What a DATASETS loader returns: the tracks, their classes and split, and where they are cached."""
    tracks: pd.DataFrame    # index track_id; path, genre, label, split, artist (FMA: artist_id)
    class_names: list       # output index -> name
    splits: dict            # {"train", "val", "test"} -> rows of tracks
    identity: str           # names the dataset in the spectrogram cache: two datasets never share rows
    cache_root: Path
    label_rows: dict = None    # multi-label: track id -> float32 0/1 row over class_names (else None)
    genres: dict = None        # multi-label: {"ids", "tree"}, what the checkpoint records
    label_report: dict = None  # multi-label: what label_matrix kept and left out

    @property
    def multi_label(self):
        return self.label_rows is not None


@dataclass
class RunData:
    """What a training run reads from its data (main.build_data): loaders, and what its checkpoints record."""
    loaders: dict               # {"train", "val", "test"} DataLoaders (utils.make_loaders; train maybe preloaded)
    class_names: list
    preprocessing: dict         # audio -> dB (utils.PREPROCESSING with the run's n_frames)
    normalisation: dict         # {"mean", "std"} of the training split's dB (None: raw dB)
    tracks: pd.DataFrame        # Dataset.tracks: the hardest clips' audio paths
    task: object                # tasks.py's Task of the run's target: loss, scores, thresholds
    class_weights: object = None  # class_weights=True: the cross-entropy's per-class weights (a tensor)
    pos_weight: object = None     # pos_weight=True: BCE's per-genre positive weights (a tensor)
    genres: dict = None           # multi-label: Dataset.genres
    label_report: dict = None     # multi-label: Dataset.label_report
    encoder: object = None        # finetune_encoder: the loaded encoder, whose weights the model starts from


def load(settings):
    """The dataset ``settings.dataset`` names (a DataSettings), with its splits (see the module docstring)."""
    data = DATASETS[settings.dataset](settings)
    if settings.cache_dir:
        data = replace(data, cache_root=Path(settings.cache_dir))
    if data.multi_label:  # every kept genre has min_genre_tracks training clips (multilabel.py)
        return data
    missing = [name for name in data.class_names if name not in set(data.splits["train"]["genre"])]
    if missing:
        raise DataError(f"The training split has no track of the genres {missing}: a model cannot learn "
                        f"a genre it never sees. Add tracks of them to training, or drop those genres.")
    for key in ("val", "test"):
        absent = sorted(set(data.class_names) - set(data.splits[key]["genre"]))
        if absent:
            print(f"warning: the {SPLITS[key]} split has no track of {absent}: its scores say nothing about them.")
    return data


def split_seed(config):
    """The seed of the random splits: split_seed, or the training seed when it is -1 (so older runs keep theirs)."""
    return config["split_seed"] if config["split_seed"] >= 0 else config["seed"]


def ensure_fma(settings, download, demo_tracks_per_genre=None):
    """Make sure FMA's metadata and audio are there: with ``demo_tracks_per_genre`` the demo generated
    (with sub-genres for target=genres_all), else FMA downloaded if ``download`` allows it."""
    from fma_genres.data import demo_data

    data_dir, subset_name = Path(settings.data_dir), settings.subset
    if demo_tracks_per_genre:
        try:  # fixed data seed; under torchrun written once per machine
            distributed.first_on_each_machine(demo_data.make_demo_dataset, data_dir, demo_tracks_per_genre, 0, 30.0,
                                              None, tasks.TASKS[settings.target].genre_tree)  # sub-genres
        except FileExistsError as error:
            raise DataError(str(error)) from None
        return
    if (data_dir / "fma_metadata" / "tracks.csv").is_file() and (data_dir / f"fma_{subset_name}").is_dir():
        return
    if not download or distributed.launched():
        raise DataError(f"no FMA data in {data_dir} (expected {data_dir}/fma_metadata/tracks.csv and "
                        f"{data_dir}/fma_{subset_name}/). Download it with --download=True or "
                        f"`bash download_data.sh {subset_name} {data_dir}`, point --data_dir at an existing copy, "
                        f"or try the synthetic demo with --demo=True."
                        + (" torchrun never downloads: get the data before the launch." if distributed.launched()
                           else ""))
    print(f"data: {data_dir} has no fma_{subset_name}; running bash download_data.sh {subset_name} {data_dir}")
    run_download(subset_name, data_dir)


def run_download(subset_name, data_dir, complete=False):
    """download_data.sh (it resumes); complete=True: FMA_COMPLETE=1, filling in a partial fma_<subset>/."""
    script = Path(__file__).resolve().parents[2] / "download_data.sh"  # the repository's
    env = {**os.environ, **({"FMA_COMPLETE": "1"} if complete else {})}
    if subprocess.run(["bash", str(script), subset_name, str(data_dir)], env=env).returncode != 0:
        raise DataError(f"download_data.sh could not fetch fma_{subset_name} into {data_dir} (its message is "
                        f"above). Rerun it (it resumes), or download the archives by hand as the README describes.")


# A few absent clips are FMA's own; more than this fraction of the subset's clips missing is a partial download.
MAX_MISSING_FRACTION = 0.01


def ensure_complete(tracks, settings, download, allow_partial):
    """A partial FMA download (over MAX_MISSING_FRACTION of ``tracks``' audio files missing) is completed with
    download=True (download_data.sh fills it in), trained on with a warning with allow_partial=True, else refused.
    Broken and short clips are the cache's to report; this counts missing files only."""
    data_dir, subset_name = settings.data_dir, settings.subset
    missing = missing_files(tracks)
    complete_command = f"FMA_COMPLETE=1 bash download_data.sh {subset_name} {data_dir}"
    if missing and download and not distributed.launched():
        print(f"data: {len(missing):,} of {len(tracks):,} clips of fma_{subset_name} are missing from {data_dir}; "
              f"completing the download: {complete_command}", flush=True)
        run_download(subset_name, data_dir, complete=True)
        missing = missing_files(tracks)
    if not missing:
        return
    present = len(tracks) - len(missing)
    partial = (f"{len(missing):,} of the {len(tracks):,} clips of FMA {subset_name} ({len(missing) / len(tracks):.0%}) "
               f"are missing from {data_dir}/fma_{subset_name}/ (e.g. {missing[0]}): the download is incomplete. "
               f"Complete it with `{complete_command}` (what --download=True runs)")
    if not allow_partial:
        raise DataError(f"{partial}, or train on the {present:,} clips present with --allow_partial=True.")
    banner = "!" * 80
    print(f"\n{banner}\nwarning: {partial}. allow_partial=True: training on the {present:,} clips present.\n"
          f"{banner}\n", flush=True)


def missing_files(tracks):
    """The audio files of ``tracks`` that do not exist, when they are over MAX_MISSING_FRACTION of them; else []."""
    missing = [path for path in tracks["path"] if not os.path.isfile(path)]
    return missing if len(missing) > MAX_MISSING_FRACTION * len(tracks) else []


def load_fma(settings):
    """FMA's metadata (fma.load_metadata) and its official or random split (fma.split_tracks); with
    a target of FMA's genre tree (tasks.GenreTree), every genre of the tree (multilabel.load_fma)."""
    if tasks.TASKS[settings.target].genre_tree:
        data = Dataset(**multilabel.load_fma(settings), identity=settings.subset,
                       cache_root=Path(settings.data_dir) / "cache")
    else:
        tracks, class_names = fma.load_metadata(settings.data_dir, settings.subset)
        splits = fma.split_tracks(tracks, settings.split, settings.train_size, settings.split_seed)
        data = Dataset(tracks, class_names, splits, identity=settings.subset,
                       cache_root=Path(settings.data_dir) / "cache")
    if settings.split == "random":
        print("warning: split=random uses the same tracks for validation and test (the original's setup): "
              "the test accuracy is not from held-out data, and artists leak between train and test."
              + (" best.pt is chosen on the test tracks themselves; report_epoch=last reports the final "
                 "epoch instead, as the original did." if settings.selects_on_val else ""))
    return data


# ----------------------------------------------------------------------------- folder and CSV datasets

def load_folder(settings):
    """data_dir/<genre>/**/<audio file>: class names are the folder names."""
    root = Path(settings.data_dir)
    if not root.is_dir():
        raise DataError(f"dataset=folder: {root} is not a folder. Give --data_dir=<folder with one sub-folder "
                        f"per genre> (e.g. GTZAN's genres/), or use dataset=csv for a CSV file.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no genre folders: put each genre's audio in a folder of its own, "
                        f"e.g. {root}/blues/blues.00000.au.")
    rows, ignored = [], []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        audio = [p for p in files if p.suffix.lower() in utils.AUDIO_EXTENSIONS]
        ignored += [p for p in files if p.suffix.lower() not in utils.AUDIO_EXTENSIONS]
        if not audio:
            raise DataError(f"The genre folder {folder} holds no audio file ({', '.join(sorted(utils.AUDIO_EXTENSIONS))}): "
                            f"add its tracks, or remove the folder if it is not a genre.")
        rows += [{"key": p.relative_to(root).as_posix(), "path": str(p), "genre": folder.name, "artist": ""}
                 for p in audio]
    if ignored:
        print(f"data: ignored {len(ignored)} files that are not audio by their extension: "
              f"{names(ignored)}")
    return finish(settings, pd.DataFrame(rows), "folder", root)


def load_csv(settings):
    """A CSV file: path,genre[,artist][,split]; every unreadable row is reported at once."""
    csv_path = Path(settings.data_dir)
    if not csv_path.is_file():
        raise DataError(f"dataset=csv: {csv_path} is not a file. Give --data_dir=<CSV file with columns "
                        f"path,genre and optional artist,split>.")
    try:
        lines = list(csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{csv_path} is not a readable UTF-8 CSV ({error}). Save it as CSV (UTF-8).") from None
    header = [name.strip().lower() for name in lines[0]] if lines else []
    if "path" not in header or "genre" not in header:
        raise DataError(f"{csv_path} needs a header row with the columns path and genre (and optionally "
                        f"artist and split); its first row is {lines[0] if lines else 'empty'}.")
    has_split = "split" in header
    rows, bad = [], []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(f.strip() for f in cells):
            continue  # a blank line
        row = dict(zip(header, (f.strip() for f in cells)))
        problem = (f"has {len(cells)} fields, the header {len(header)}" if len(cells) != len(header)
                   else "has no path or no genre" if not row["path"] or not row["genre"]
                   else f"split {row['split']!r} is not one of {', '.join(SPLIT_NAMES)}"
                   if has_split and row["split"] not in SPLIT_NAMES else None)
        if problem is None:
            path = Path(row["path"]) if Path(row["path"]).is_absolute() else csv_path.parent / row["path"]
            problem = None if path.is_file() else f"file {path} not found"
        if problem:
            bad.append(f"line {number} {problem}")
            continue
        rows.append({"key": row["path"], "path": str(path), "genre": row["genre"],
                     "artist": row.get("artist", ""), **({"split": row["split"]} if has_split else {})})
    if bad:
        raise DataError(f"{csv_path}: {len(bad)} rows cannot be used: {names(bad)}. Fix or delete them.")
    if not rows:
        raise DataError(f"{csv_path} lists no tracks: add rows path,genre below its header.")
    return finish(settings, pd.DataFrame(rows), "csv", csv_path)


def finish(settings, frame, kind, source):
    """Ids, duplicates left out, labels and splits of a folder or CSV dataset's rows (key, path, genre, artist[, split])."""
    frame = drop_duplicates(frame)
    frame.index = pd.Index([track_id(key) for key in frame["key"]], name="track_id")
    if frame.index.has_duplicates:  # two paths whose 48-bit hashes collide: practically never
        raise DataError(f"Two paths of {source} hash to the same track id; rename one of "
                        f"{list(frame.loc[frame.index.duplicated(keep=False), 'path'])}.")
    class_names = sorted(frame["genre"].unique())
    frame["label"] = frame["genre"].map(class_names.index).astype(int)
    if "split" not in frame:
        frame["split"] = assign_splits(frame, settings.val_size, settings.test_size, settings.split_seed, source)
    tracks = frame[["path", "genre", "label", "split", "artist"]]
    splits = {key: tracks[tracks["split"] == name] for key, name in SPLITS.items()}
    for key, name in SPLITS.items():
        if splits[key].empty:
            raise DataError(f"{source} gives no track to the {name} split: every split needs tracks.")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", Path(source).stem)[:40]
    digest = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:8]
    return Dataset(tracks, class_names, splits, identity=f"{kind}_{slug}_{digest}", cache_root=DEFAULT_CACHE_ROOT)


def track_id(key):
    """A track's id: 48 bits of its path's hash, the same however many files are added or removed."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:6], "big")


def drop_duplicates(frame):
    """The rows without files whose content equals an earlier row's (the first kept), reporting the others.
    Only files of equal size are hashed."""
    sizes = frame["path"].map(lambda p: Path(p).stat().st_size)
    same_size = sizes.duplicated(keep=False)
    content = pd.Series(frame.index.astype(str), index=frame.index)  # unique unless the content matches
    content[same_size] = frame.loc[same_size, "path"].map(file_digest)
    duplicate = content.duplicated(keep="first")
    if duplicate.any():
        first = frame.loc[~duplicate].set_index(content[~duplicate])["path"]
        pairs = [f"{path} (= {first[content[i]]})" for i, path in frame.loc[duplicate, "path"].items()]
        print(f"data: left out {len(pairs)} files with the same content as an earlier file (kept once, never "
              f"in two splits): {names(pairs)}")
    return frame.loc[~duplicate].copy()


def file_digest(path):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def names(items):
    """The first SHOWN items, then how many more."""
    shown = "; ".join(str(item) for item in items[:SHOWN])
    return shown + (f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


# ----------------------------------------------------------------------------- splits

def assign_splits(frame, val_size, test_size, seed, source):
    """training/validation/test per row: each genre's tracks in these proportions (at least one each),
    whole artists (or single tracks when the artist is unknown) going to one split.

    Greedy over the groups (largest first, ties in a seeded random order): each goes where its genres'
    tracks are most wanted relative to their targets; a tie goes to test, then validation.
    """
    groups = frame["artist"].where(frame["artist"] != "", "\0" + frame["path"])  # no artist: a group of one
    per_genre = frame.assign(group=groups).groupby("genre")["group"].agg(["size", "nunique"])
    few = per_genre[per_genre["nunique"] < 3]
    if not few.empty:
        detail = ", ".join(f"{genre} ({row['size']} files, {row['nunique']} artists or files)"
                           for genre, row in few.iterrows())
        raise DataError(f"{source}: too few files for a training/validation/test split in {detail}: each genre "
                        f"needs at least 3 (3 artists when artists are given). Add files, drop the genre, or "
                        f"give the split yourself (a CSV with a split column).")
    targets = {}
    for genre, n in per_genre["size"].items():
        val, test = max(1, round(val_size * n)), max(1, round(test_size * n))
        targets[genre] = np.array([max(1, n - val - test), val, test], dtype=float)
    counts = pd.crosstab(groups, frame["genre"])  # group x genre
    rng = np.random.default_rng(seed)
    order = counts.index[rng.permutation(len(counts))]
    order = sorted(order, key=lambda g: -counts.loc[g].sum())  # stable: ties keep the random order
    placed = {genre: np.zeros(3) for genre in targets}
    choice = {}
    for group in order:
        row = counts.loc[group]
        need = sum(row[g] * (targets[g] - placed[g]) / targets[g] for g in row.index[row > 0])
        split = 2 - int(np.argmax(need[::-1]))  # argmax takes the first maximum: test, then validation
        for g in row.index[row > 0]:
            placed[g][split] += row[g]
        choice[group] = SPLIT_NAMES[split]
    return groups.map(choice)


def write_splits(splits, path, resume=False):
    """The split a run used, one row per track and split (track_id, absolute path, genre, artist, split),
    written atomically: it is itself a CSV dataset (dataset=csv) that repeats the split. A resumed run
    must have the split it started with (a folder's files may have changed since)."""
    path = Path(path)
    if resume and path.is_file():
        before = pd.read_csv(path, usecols=["track_id", "split"])
        now = {(int(t), SPLITS[key]) for key, frame in splits.items() for t in frame.index}
        changed = now ^ set(zip(before["track_id"], before["split"]))
        if changed:
            raise DataError(f"The data's split is not the one this run started with ({len(changed)} tracks moved, "
                            f"added or removed since {path} was written): resuming would train on other clips. "
                            f"Restore the data, or start a new run (with --dataset=csv --data_dir={path} to keep the "
                            f"split).")
    frames = []
    for key, frame in splits.items():
        artist = frame["artist"] if "artist" in frame else frame["artist_id"].astype(str)
        frames.append(pd.DataFrame({"track_id": frame.index, "path": frame["path"].map(os.path.abspath).to_numpy(),
                                    "genre": frame["genre"].to_numpy(), "artist": artist.to_numpy(), "split": SPLITS[key]}))
    text = pd.concat(frames).to_csv(index=False)
    atomic.atomic_write(path, lambda f: f.write(text.encode()))


DATASETS = {"fma": load_fma, "folder": load_folder, "csv": load_csv}
