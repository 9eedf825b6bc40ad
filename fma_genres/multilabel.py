"""Multi-label classification over FMA's genre tree (main.py's target=genres_all).

FMA gives every track its genres and all their ancestors (tracks.csv ('track','genres_all')) and the tree
itself (genres.csv: genre_id, parent, title, top_level). With target=genres_all a model has one sigmoid
output per genre that has at least min_genre_tracks training clips, trained with BCE-with-logits. This
module holds everything specific to that task:

    tree      genre_tree(genres.csv frame) -> {"id", "parent", "title"} lists (what a checkpoint stores)
    data      load_fma(settings): datasets.py's Dataset fields plus the label matrix (ancestors included;
              rare genres dropped; tracks left without a genre counted)
    metrics   ranking_metrics (ROC-AUC, PR-AUC per genre, macro and micro), tune_thresholds (per genre,
              max F1 on validation), threshold_metrics (F1/precision/recall), top_genre_accuracy
              (metrics.py defines the metrics from them; tasks.GenreTree puts them together)
    text      genre_path ("Rock > Punk"), predicted_genres and prediction_line (pre_trained_models.py's
              output), format_table (the tree-indented summary)

Macro and micro figures and the threshold tuning cover the genres with both positives and negatives in
the split (a ranking is undefined otherwise); "left_out_genres" says how many were not. Figures and
W&B: tasks.GenreTree. Tests: python -m pytest tests/training/test_multilabel.py -q
"""
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fma_genres.data import fma
from fma_genres.runtime.errors import DataError

GENRE_LIST_COLUMNS = (("track", "genres"), ("track", "genres_all"))  # tracks.csv's genre id lists
DEFAULT_THRESHOLD = 0.5  # a genre whose validation split lacks positives or negatives cannot be tuned


# -----------------------------------------------------------------------------
# the tree

def genre_tree(genres):
    """genres.csv (index genre_id; parent, title) as plain lists, the form a checkpoint stores."""
    return {"id": [int(i) for i in genres.index], "parent": [int(p) for p in genres["parent"]],
            "title": [str(t) for t in genres["title"]]}


def ancestors(genre_id, tree):
    """The genre's ancestors, its parent first, up to its top-level genre (parent 0)."""
    parent = dict(zip(tree["id"], tree["parent"]))
    chain = []
    while parent.get(genre_id, 0) not in (0, genre_id) and len(chain) < len(parent):
        genre_id = parent[genre_id]
        chain.append(genre_id)
    return chain


def genre_path(genre_id, tree):
    """"Rock > Punk": the genre's titles from its top-level genre down."""
    title = dict(zip(tree["id"], tree["title"]))
    return " > ".join(title[g] for g in [*reversed(ancestors(genre_id, tree)), genre_id])


def tree_order(ids, tree):
    """``ids`` depth first through the tree (siblings by title): each genre right after its parent."""
    title = dict(zip(tree["id"], tree["title"]))
    return sorted(ids, key=lambda g: [title[a] for a in [*reversed(ancestors(g, tree)), g]])


# -----------------------------------------------------------------------------
# data

def parse_genres(text):
    """A tracks.csv genre list ("[12, 25]") as ints; an empty cell or "[]" -> []."""
    if not isinstance(text, str) or not text.strip():
        return []
    return [int(g) for g in ast.literal_eval(text)]


def label_matrix(genre_lists, train_ids, tree, min_genre_tracks):
    """(matrix, report): 0/1 DataFrame (track x kept genre id, in tree order) and what was left out.

    A track's labels are its genres and all their ancestors. Kept: the genres with at least
    ``min_genre_tracks`` positives among ``train_ids``. Tracks with no genre at all, or none kept, are
    left out of the matrix and counted in the report.
    """
    lineage = {g: [g, *ancestors(g, tree)] for g in tree["id"]}  # once: FMA large has 100,000 tracks
    known, rows = set(lineage), {}
    for track_id, genres in genre_lists.items():
        unknown = set(genres) - known
        if unknown:
            raise DataError(f"track {track_id} has genre ids {sorted(unknown)} that genres.csv does not list: the "
                            f"metadata files do not belong together; download fma_metadata.zip again.")
        rows[track_id] = {a for g in genres for a in lineage[g]}
    no_genre = [t for t, labels in rows.items() if not labels]
    train_counts = pd.Series([g for t in train_ids for g in rows.get(t, ())], dtype=int).value_counts()
    kept = tree_order([int(g) for g, n in train_counts.items() if n >= min_genre_tracks], tree)
    column = {g: k for k, g in enumerate(kept)}
    values = np.zeros((len(rows), len(kept)), dtype=np.uint8)
    for i, labels in enumerate(rows.values()):
        values[i, [column[g] for g in labels if g in column]] = 1
    matrix = pd.DataFrame(values, index=pd.Index(list(rows), name="track_id"), columns=kept)
    no_kept = matrix.index[(matrix.sum(axis=1) == 0) & ~matrix.index.isin(no_genre)]
    report = {"tracks_without_genre": len(no_genre), "tracks_without_kept_genre": len(no_kept),
              "genres_seen": int(len(train_counts)), "genres_kept": len(kept),
              "genres_dropped": int(len(train_counts)) - len(kept), "min_genre_tracks": min_genre_tracks}
    return matrix[matrix.sum(axis=1) > 0], report


def load_fma(settings):
    """FMA with target=genres_all (``settings``: datasets.DataSettings): datasets.Dataset's fields besides
    identity and cache_root: tracks, class_names (genre titles in tree order), splits, label_rows (track id
    -> float32 0/1 tensor), genres ({"ids", "tree"}: what the checkpoint records), label_report (label_matrix's)."""
    data_dir, subset, min_tracks = settings.data_dir, settings.subset, settings.min_genre_tracks
    chosen, genres = fma.subset_tracks(data_dir, subset, GENRE_LIST_COLUMNS, ("parent",))
    lists = pd.Series([parse_genres(a) + parse_genres(b) for a, b in zip(
        chosen[("track", "genres")], chosen[("track", "genres_all")])], index=chosen.index.astype(int))
    frame = fma.track_frame(chosen, data_dir, subset, labels=-1)  # not class indices: the targets are label_rows
    splits = fma.split_tracks(frame, settings.split, settings.train_size, settings.split_seed)
    tree = genre_tree(genres)
    matrix, report = label_matrix(lists, splits["train"].index, tree, min_tracks)
    if matrix.shape[1] < 2:
        raise DataError(f"FMA {subset} in {data_dir} has {matrix.shape[1]} genre(s) with at least min_genre_tracks="
                        f"{min_tracks} training clips: too few for multi-label training. Lower "
                        f"--min_genre_tracks or use a larger subset.")
    titles = dict(zip(tree["id"], tree["title"]))
    class_names = [titles[g] for g in matrix.columns]
    if len(set(class_names)) < len(class_names):
        raise DataError(f"{Path(data_dir) / 'fma_metadata' / 'genres.csv'} gives two kept genres the same title: "
                        f"titles name the outputs.")
    splits = {key: split.loc[split.index.isin(matrix.index)] for key, split in splits.items()}
    print(f"data: target=genres_all: {report['genres_kept']} of the {report['genres_seen']} genres of the training "
          f"split have at least {report['min_genre_tracks']} training clips; left out "
          f"{report['tracks_without_genre']} tracks without a genre and {report['tracks_without_kept_genre']} "
          f"with none of the kept genres")
    rows = {int(t): torch.from_numpy(row.astype(np.float32)) for t, row in zip(matrix.index, matrix.to_numpy())}
    return {"tracks": frame.loc[matrix.index], "class_names": class_names, "splits": splits, "label_rows": rows,
            "label_report": report, "genres": {"ids": [int(g) for g in matrix.columns], "tree": tree}}


def use_label_rows(loaders, label_rows):
    """Make every loader yield each clip's 0/1 genre row (float32) as its target instead of a class index."""
    for loader in loaders.values():
        loader.dataset.labels = [label_rows[t] for t in loader.dataset.track_ids]


def pos_weight(label_rows, track_ids):
    """Per genre, negatives / positives among the training clips: BCE's pos_weight (pos_weight=True)."""
    positives = torch.stack([label_rows[t] for t in track_ids]).sum(dim=0)
    return (len(track_ids) - positives) / positives.clamp(min=1)


# -----------------------------------------------------------------------------
# metrics

def defined_genres(targets):
    """The columns with both positives and negatives: where a ranking (AUC, AP, a threshold) means something."""
    positives = targets.sum(axis=0)
    return (positives > 0) & (positives < len(targets))


def ranking_metrics(targets, probabilities):
    """ROC-AUC and PR-AUC (average precision) per genre (None where undefined), and their macro and micro
    values over the defined genres (metrics.py's pr_auc_* and roc_auc_*); left_out_genres counts the others."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    targets, probabilities = np.asarray(targets), np.asarray(probabilities, dtype=np.float64)
    defined = defined_genres(targets) & np.isfinite(probabilities).all(axis=0)
    ap = [float(average_precision_score(targets[:, k], probabilities[:, k])) if ok else None
          for k, ok in enumerate(defined)]
    roc = [float(roc_auc_score(targets[:, k], probabilities[:, k])) if ok else None for k, ok in enumerate(defined)]
    y, p = targets[:, defined], probabilities[:, defined]
    micro = defined.any() and 0 < y.sum() < y.size
    return {"pr_auc_macro": float(np.mean([a for a in ap if a is not None])) if defined.any() else None,
            "pr_auc_micro": float(average_precision_score(y.ravel(), p.ravel())) if micro else None,
            "roc_auc_macro": float(np.mean([r for r in roc if r is not None])) if defined.any() else None,
            "roc_auc_micro": float(roc_auc_score(y.ravel(), p.ravel())) if micro else None,
            "average_precision": ap, "roc_auc": roc, "left_out_genres": int((~defined).sum())}


def tune_thresholds(targets, probabilities):
    """Per genre, the threshold t (predict the genre when p >= t) with the highest F1 on these clips
    (the lowest such t on a tie); DEFAULT_THRESHOLD for a genre without positives or negatives."""
    from sklearn.metrics import precision_recall_curve

    targets, probabilities = np.asarray(targets), np.asarray(probabilities, dtype=np.float64)
    thresholds = []
    for k, ok in enumerate(defined_genres(targets)):
        if not ok or not np.isfinite(probabilities[:, k]).all():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, candidates = precision_recall_curve(targets[:, k], probabilities[:, k])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        thresholds.append(float(candidates[int(np.argmax(f1[:-1]))]))  # the last point has no threshold
    return thresholds


def threshold_metrics(targets, probabilities, thresholds):
    """Precision, recall and F1 per genre at ``thresholds``; macro (over the defined genres) and micro."""
    targets, predicted = np.asarray(targets).astype(bool), np.asarray(probabilities) >= np.asarray(thresholds)
    tp, fp, fn = ((predicted & targets).sum(0), (predicted & ~targets).sum(0), (~predicted & targets).sum(0))
    ratio = lambda a, b: np.where(b > 0, a / np.maximum(b, 1), 0.0)
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    defined = defined_genres(targets)
    macro = lambda values: float(values[defined].mean()) if defined.any() else None
    tp, fp, fn = tp[defined].sum(), fp[defined].sum(), fn[defined].sum()
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "f1_macro": macro(f1), "precision_macro": macro(precision), "recall_macro": macro(recall),
            "f1_micro": float(2 * tp / max(2 * tp + fp + fn, 1)), "precision_micro": float(tp / max(tp + fp, 1)),
            "recall_micro": float(tp / max(tp + fn, 1))}


def top_genre_accuracy(targets, probabilities, genres):
    """(accuracy, clips counted): the top-level output with the highest probability against the clip's
    top genre, over the clips with exactly one top-level genre among the outputs (FMA's genre_top, as
    long as min_genre_tracks dropped no top-level genre); comparable with a single-label model's
    accuracy. None when no clip has one."""
    top = np.array([not ancestors(g, genres["tree"]) for g in genres["ids"]])
    truth = np.asarray(targets)[:, top]
    counted = truth.sum(axis=1) == 1
    if not counted.any():
        return None, 0
    predicted = np.asarray(probabilities)[:, top].argmax(axis=1)
    return float((predicted[counted] == truth[counted].argmax(axis=1)).mean()), int(counted.sum())


# -----------------------------------------------------------------------------
# text

def predicted_genres(probabilities, genres, top_k=None):
    """[(path, probability)]: the genres at or above their thresholds, most specific (deepest) first, then
    by probability; with ``top_k``, the k most probable whatever the thresholds."""
    ids, tree = genres["ids"], genres["tree"]
    thresholds = genres.get("thresholds") or [DEFAULT_THRESHOLD] * len(ids)
    if top_k:
        chosen = list(np.argsort(-np.asarray(probabilities), kind="stable")[:top_k])
    else:
        chosen = sorted((k for k in range(len(ids)) if probabilities[k] >= thresholds[k]),
                        key=lambda k: (-len(ancestors(ids[k], tree)), -probabilities[k]))
    return [(genre_path(ids[k], tree), float(probabilities[k])) for k in chosen]


def prediction_line(track, probabilities, checkpoint, top_k=None, as_json=False):
    """pre_trained_models.py's line for a track: "song.mp3  Rock > Punk 0.71; Rock 0.93" (predicted_genres);
    as JSON, {"path", "genres": [{"genre", "probability"}], "probabilities": every genre's}."""
    genres = predicted_genres(probabilities, checkpoint["genres"], top_k)
    if as_json:
        return json.dumps({"path": str(track), "genres": [{"genre": path, "probability": round(p, 6)} for path, p in genres],
                           "probabilities": {name: round(float(p), 6)
                                             for name, p in zip(checkpoint["class_names"], probabilities)}})
    return f"{track}  " + ("; ".join(f"{path} {p:.2f}" for path, p in genres) or "no genre above its threshold")


def format_table(metrics, genres):
    """The per-genre test scores, one genre a line: top-level genres by support, each followed by its
    sub-genres (indented, by support), then the macro and micro figures."""
    per_genre, tree = metrics["per_genre"], genres["tree"]
    title = dict(zip(tree["id"], tree["title"]))
    by_id = {row["genre_id"]: row for row in per_genre.values()}
    children = {}
    for g in genres["ids"]:  # a genre hangs under its nearest kept ancestor
        parent = next((a for a in ancestors(g, tree) if a in by_id), 0)
        children.setdefault(parent, []).append(g)
    show = lambda v, width: f"{'-' if v is None else f'{v:.3f}':>{width}}"
    lines = [f"{'genre':<32} {'support':>7} {'AP':>6} {'ROC AUC':>7} {'thresh':>6} {'P':>6} {'R':>6} {'F1':>6}"]

    def add(parent, depth):
        for g in sorted(children.get(parent, []), key=lambda g: (-by_id[g]["support"], title[g])):
            row = by_id[g]
            lines.append(f"{'  ' * depth + title[g]:<32.32} {row['support']:7d} {show(row['average_precision'], 6)} "
                         f"{show(row['roc_auc'], 7)} {row['threshold']:6.3f} {row['precision']:6.3f} "
                         f"{row['recall']:6.3f} {row['f1']:6.3f}")
            add(g, depth + 1)

    add(0, 0)
    if "labels" in metrics:  # a training run's label report (label_matrix)
        labels = metrics["labels"]
        lines.append(f"{labels['genres_kept']} of {labels['genres_seen']} genres kept (>= {labels['min_genre_tracks']} "
                     f"training clips); left out: {labels['tracks_without_genre']} tracks without a genre, "
                     f"{labels['tracks_without_kept_genre']} with none of the kept genres")
    top = metrics["top_genre_accuracy"]
    lines.append(f"PR-AUC macro {show(metrics['pr_auc_macro'], 0)} micro {show(metrics['pr_auc_micro'], 0)}; ROC-AUC "
                 f"macro {show(metrics['roc_auc_macro'], 0)} micro {show(metrics['roc_auc_micro'], 0)}; at the "
                 f"validation thresholds F1 macro {show(metrics['f1_macro'], 0)} micro {metrics['f1_micro']:.3f}; "
                 f"top-genre accuracy {show(top, 0)} ({metrics['top_genre_clips']} clips with one top genre); "
                 f"{metrics['left_out_genres']} genres without both positives and negatives left out of the macro "
                 f"figures")
    return "\n".join(lines)
