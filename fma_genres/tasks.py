"""What a model learns to predict: one top genre per clip (SingleLabel, main.py's target=genre_top) or every
genre of FMA's tree at once (GenreTree, target=genres_all). Everything that differs between the two is here:
the loss, probabilities and decisions, metrics and the ones that may select best.pt, thresholds, figures,
W&B entries, the summary table and the prediction line. The task is chosen once, from the config's target
(TASKS), and recorded in the checkpoint and metrics.json ("target"); nothing else tells the two apart.

    task = tasks.TASKS[config["target"]]      # or tasks.of(checkpoint) / tasks.of(metrics)
    loss = task.loss(logits, targets, class_weights, pos_weight)
    probabilities = task.probabilities(logits)
    scores = task.scores(targets, probabilities, class_names, genres)   # metrics.json's

W&B entries are plain data (Table, Bar, ConfusionMatrix, Curves below) that reporting/wandb_logging.py, the
one module that imports wandb, turns into W&B's objects. Tests: tests/test_tasks.py, tests/training/test_multilabel.py
"""
import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fma_genres import metrics as metric_table, multilabel

DEFAULT_TOP_K = 3  # genres shown per track of a single-label model


# -----------------------------------------------------------------------------
# W&B entries as plain data (wandb_logging.logged converts them)

@dataclass
class Table:
    columns: list
    rows: list


@dataclass
class Bar:
    table: Table
    x: str
    y: str
    title: str


@dataclass
class ConfusionMatrix:
    y_true: list
    preds: list
    class_names: list


@dataclass
class Curves:
    kind: str                # roc | pr
    targets: np.ndarray      # (N,) class indices
    scores: np.ndarray       # (N, C) probabilities
    labels: list
    classes_to_plot: list = field(default=None)


# -----------------------------------------------------------------------------

class Task:
    """The parts shared by both tasks; a subclass defines the rest (see SingleLabel for the list)."""
    name = ""           # main.py's target, TASKS' key, recorded in checkpoints and metrics.json
    kind = ""           # the metrics it computes (metrics.KINDS)
    genre_tree = False  # its labels come from FMA's genre tree (tracks.csv genres_all, genres.csv)
    demo = {}           # with demo=True, settings on top of configurator.DEMO
    run_kind = ()       # words a demo run's folder name adds (configurator.runs_folder)

    @property
    def metrics(self):
        return metric_table.of_kind(self.kind)

    @property
    def select_metrics(self):
        return metric_table.selectable(self.kind)

    def select_problem(self, config):
        """Why select_metric does not apply to this task, or None."""
        if config["select_metric"] in self.select_metrics:
            return None
        return (f"select_metric={config['select_metric']} does not apply to target={self.name}: choose one of "
                f"{', '.join(self.select_metrics)} (or auto).")

    def validation_score(self, result, metric, genres=None):
        """``metric`` of a test() result, to choose best.pt: higher is better."""
        return metric_table.score(metric, result["targets"], result["probabilities"], genres)

    def stored(self, scores, metric):
        return scores.get(metric.key)

    def headline(self, scores):
        """"loss 0.4123, accuracy 0.812, ...": the test loss and every metric of the task, one line."""
        return ", ".join([f"loss {scores['test_loss']:.4f}", *(m.shown(self.stored(scores, m)) for m in self.metrics)])

    def metric_entries(self, scores):
        """test/<name> of every metric with a value, and the test loss."""
        entries = {f"test/{m.name}": self.stored(scores, m) for m in self.metrics}
        return {"test/loss": scores["test_loss"], **{k: v for k, v in entries.items() if v is not None}}

    def seed_figures(self, scores):
        """repeat's figures per seed (seed_summary), by metrics.json key: every metric, the test loss, each
        genre's F1; with the range each one's interval is clipped to."""
        figures = {m.key: (self.stored(scores, m), m.value_range) for m in self.metrics}
        return {**figures, "test_loss": (scores["test_loss"], (0.0, np.inf)),
                **{f"f1_{genre}": (f1, (0.0, 1.0)) for genre, f1 in self.genre_f1(scores).items()}}

    def window_probabilities(self, model, windows):
        """(B, outputs) probabilities of a batch of windows (prediction, ONNX, ensembles)."""
        return self.probabilities(model(windows)[0])


class SingleLabel(Task):
    """One genre per clip (genre_top): softmax over the classes, cross-entropy, argmax decisions."""
    name, kind = "genre_top", "single_label"

    def config_problem(self, config):
        if config["pos_weight"]:
            return "pos_weight=True weighs the genres of target=genres_all; for target=genre_top use class_weights=True."
        return None

    # -- training and evaluation
    def loss(self, logits, targets, class_weights=None, pos_weight=None, reduction="mean"):
        """Cross-entropy of class indices (N,), weighted by ``class_weights`` (one per class)."""
        return F.cross_entropy(logits, targets, weight=class_weights, reduction=reduction)

    def mean_weight(self, targets, class_weights=None):
        """What a batch's weighted mean loss divides by (torchrun sums it over the processes)."""
        return targets.size(0) if class_weights is None else class_weights[targets].sum()

    def probabilities(self, logits):
        return F.softmax(logits, dim=1)

    def logits(self, probabilities):
        """Logits whose probabilities are ``probabilities`` (an ensemble's mean), and whose loss is their log loss."""
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def correct(self, logits, targets):
        """Correct decisions in a batch: argmax hits."""
        return (logits.argmax(dim=1) == targets).sum()

    def decisions(self, probabilities):
        return probabilities.argmax(axis=1)

    def thresholds(self, targets, probabilities):
        return None  # argmax decides

    def use_labels(self, loaders, dataset):
        """The loaders yield class indices already."""

    def scores(self, targets, probabilities, class_names, genres=None):
        """metrics.json's scores: the metrics (accuracy as test_accuracy), per-class table, ROC AUC, confusion matrix."""
        report = metric_table.classification_metrics(targets, probabilities, class_names)
        renamed = {m.key: report.pop(m.name) for m in self.metrics}
        return {"target": self.name, **renamed, **report}

    def genre_f1(self, scores):
        return {genre: row["f1"] for genre, row in scores["per_class"].items()}

    # -- reports
    def figures(self, scores, targets, probabilities, class_names):
        from fma_genres import report_figures
        cm = scores.get("confusion_matrix") or metric_table.classification_metrics(
            targets, probabilities, class_names)["confusion_matrix"]
        return {"confusion_matrix.png": report_figures.plot_confusion_matrix(cm, class_names),
                "confusion_matrix_normalized.png": report_figures.plot_confusion_matrix(cm, class_names, normalize=True),
                "roc_curves.png": report_figures.plot_roc_curves(targets, probabilities, class_names)}

    def summary(self, scores, genres=None):
        """The test split's line and per-genre table of main.py's closing summary."""
        return [f"{self.headline(scores)} ({scores['test_examples']} clips)", format_metrics(scores)]

    def wandb_entries(self, scores, result, class_names):
        """test/*: the metrics, per-genre table and F1 bars, confusion matrix, ROC and PR curves."""
        per_genre = Table(["genre", "precision", "recall", "f1", "support", "roc_auc"],
                          [[genre, *(row[c] for c in ("precision", "recall", "f1", "support")), scores["roc_auc"][genre]]
                           for genre, row in scores["per_class"].items()])
        targets, probabilities = result["targets"], result["probabilities"]
        return {**self.metric_entries(scores), "test/per_genre": per_genre,
                "test/f1_per_genre": Bar(per_genre, "genre", "f1", "Test F1 per genre"),
                "test/confusion_matrix": ConfusionMatrix(targets.tolist(), self.decisions(probabilities).tolist(),
                                                         list(class_names)),
                "test/roc": Curves("roc", targets, probabilities, list(class_names)),
                "test/pr": Curves("pr", targets, probabilities, list(class_names))}

    def hardest(self, result, n):
        """[(index, true class, predicted class)] of the ``n`` most confidently wrong clips, the most confident first."""
        targets, probabilities = result["targets"], result["probabilities"]
        predictions = probabilities.argmax(axis=1)
        wrong = np.flatnonzero(predictions != targets)
        order = wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")][:n]
        return [(int(i), int(targets[i]), int(predictions[i])) for i in order]

    # -- prediction
    def shown_genres(self, probabilities, checkpoint, k=None):
        """[(genre, probability)]: the k (default DEFAULT_TOP_K) most probable."""
        order = np.argsort(-np.asarray(probabilities), kind="stable")[:k or DEFAULT_TOP_K]
        return [(checkpoint["class_names"][j], float(probabilities[j])) for j in order]

    def prediction_line(self, track, probabilities, checkpoint, top_k=None, as_json=False, widths=(0, 0)):
        """pre_trained_models.py's line: "song.mp3  Rock 0.812  Pop 0.100 ..." (columns of ``widths``), or JSON."""
        shown = self.shown_genres(probabilities, checkpoint, top_k)
        if as_json:
            return json.dumps({"path": str(track), "predictions": [{"genre": genre, "probability": round(p, 6)}
                                                                   for genre, p in shown]})
        return f"{str(track):<{widths[0]}}" + "".join(f"  {genre:<{widths[1]}} {p:5.3f}" for genre, p in shown)

    def ensemble_checkpoint(self, checkpoints):
        """The checkpoint that describes an ensemble of these (same genres): the first's."""
        return checkpoints[0]

    def onnx_metadata(self, checkpoint):
        return {"output_kind": "softmax: one genre per clip, probabilities sum to 1"}


class GenreTree(Task):
    """Every genre of FMA's tree (genres_all): a sigmoid per genre, BCE-with-logits, per-genre thresholds
    tuned on validation (multilabel.py holds the tree and the ranking and threshold computations)."""
    name, kind, genre_tree = "genres_all", "multi_label", True
    demo = {"data_dir": "data/demo_genres_all", "min_genre_tracks": 2}  # the sub-genres have 2-3 training clips
    run_kind = ("genres_all",)

    def config_problem(self, config):
        if config["min_genre_tracks"] < 1:
            return f"min_genre_tracks must be at least 1, got {config['min_genre_tracks']}."
        if config["dataset"] != "fma":
            return (f"target=genres_all needs FMA's genre tree (tracks.csv genres_all, genres.csv): dataset=fma, not "
                    f"{config['dataset']}. A folder or CSV dataset has one genre per clip: use target=genre_top.")
        for key in ("class_weights", "balanced_sampler"):
            if config[key]:
                return f"{key}=True balances the classes of single-label training; with target=genres_all use pos_weight=True."
        if config["model"] == "cnn1d" and config["faithful"]:
            return ("model=cnn1d with faithful=True cannot be multi-label: the original CNN1D passes its logits through "
                    "ReLU (then Dropout), so no logit is negative and every genre's sigmoid probability is at least 0.5 "
                    "(every genre predicted for every clip). Use --faithful=False (the corrected forward pass) with "
                    "target=genres_all; the CNN2D and CRNN keep their faithful forward pass.")
        return None

    # -- training and evaluation
    def loss(self, logits, targets, class_weights=None, pos_weight=None, reduction="mean"):
        """BCE-with-logits of 0/1 genre rows (N, G), per example the mean over its genres; ``pos_weight``
        (one per genre) weighs the positives. reduction="sum" sums the examples' losses."""
        losses = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none").mean(dim=1)
        return losses.sum() if reduction == "sum" else losses.mean()

    def mean_weight(self, targets, class_weights=None):
        return targets.size(0)

    def probabilities(self, logits):
        return torch.sigmoid(logits)

    def logits(self, probabilities):
        eps = torch.finfo(probabilities.dtype).eps
        return torch.logit(probabilities.clamp(eps, 1 - eps))

    def correct(self, logits, targets):
        """Each example's share of its genres decided right at probability 0.5 ("accuracy": label-wise)."""
        return ((logits > 0) == (targets > 0.5)).float().mean(dim=1).sum()

    def decisions(self, probabilities):
        return (probabilities > 0.5).astype(np.float32)  # as correct()'s positive logits

    def thresholds(self, targets, probabilities):
        """Per genre, the validation threshold with the best F1 (saved with each epoch's checkpoints)."""
        return multilabel.tune_thresholds(targets, probabilities)

    def use_labels(self, loaders, dataset):
        """The loaders yield each clip's 0/1 genre row instead of a class index."""
        multilabel.use_label_rows(loaders, dataset.label_rows)

    def scores(self, targets, probabilities, class_names, genres=None):
        """metrics.json's scores: the metrics at the checkpoint's thresholds, top-genre accuracy's clip count,
        the genres left out of the macro figures and a per_genre table (title -> support, AP, ROC-AUC,
        threshold, P, R, F1)."""
        targets, probabilities = np.asarray(targets), np.asarray(probabilities)
        thresholds = genres.get("thresholds") or [multilabel.DEFAULT_THRESHOLD] * len(genres["ids"])
        ranking = multilabel.ranking_metrics(targets, probabilities)
        at = multilabel.threshold_metrics(targets, probabilities, thresholds)
        titles = dict(zip(genres["tree"]["id"], genres["tree"]["title"]))
        per_genre = {titles[g]: {"genre_id": g, "path": multilabel.genre_path(g, genres["tree"]),
                                 "support": int(targets[:, k].sum()), "average_precision": ranking["average_precision"][k],
                                 "roc_auc": ranking["roc_auc"][k], "threshold": thresholds[k],
                                 **{m: at[m][k] for m in ("precision", "recall", "f1")}}
                     for k, g in enumerate(genres["ids"])}
        if not np.isfinite(probabilities.astype(np.float64)).all():
            warnings.warn("some probabilities are not finite: their genres are left out of the metrics", RuntimeWarning)
        return {"target": self.name, **metric_table.compute(self.kind, targets, probabilities, genres),
                "left_out_genres": ranking["left_out_genres"],
                "top_genre_clips": multilabel.top_genre_accuracy(targets, probabilities, genres)[1],
                "per_genre": per_genre, "class_names": [titles[g] for g in genres["ids"]]}

    def genre_f1(self, scores):
        return {genre: row["f1"] for genre, row in scores["per_genre"].items()}

    # -- reports
    def figures(self, scores, targets, probabilities, class_names):
        from fma_genres import report_figures
        return {"average_precision.png": report_figures.plot_average_precision(scores),
                "pr_curves.png": report_figures.plot_pr_curves(scores, targets, probabilities)}

    def summary(self, scores, genres=None):
        return [f"{self.headline(scores)} ({scores['test_examples']} clips, {len(scores['class_names'])} genres)",
                multilabel.format_table(scores, genres)]

    def wandb_entries(self, scores, result, class_names):
        """test/*: the metrics, the per-genre table, an AP bar chart and the PR curves of the most frequent genres."""
        from fma_genres import report_figures
        columns = ["genre", "path", "support", "average_precision", "roc_auc", "threshold", "precision", "recall", "f1"]
        table = Table(columns, [[name, *(row[c] for c in columns[1:])] for name, row in scores["per_genre"].items()])
        ap = Table(["genre", "average_precision"], [[row["path"], row["average_precision"]]
                                                    for row in scores["per_genre"].values()
                                                    if row["average_precision"] is not None])
        entries = {**self.metric_entries(scores), "test/left_out_genres": scores["left_out_genres"],
                   "test/per_genre": table,
                   "test/average_precision_per_genre": Bar(ap, "genre", "average_precision",
                                                           "Test average precision per genre")}
        targets, probabilities = np.asarray(result["targets"]), np.asarray(result["probabilities"])
        for k in report_figures.most_frequent(scores):  # W&B's pr_curve takes one label per clip: one-vs-rest
            name = scores["class_names"][k]
            # W&B reads "/" in a key as a section: FMA has "Old-Time / Historic"
            entries[f"test/pr/{name.replace('/', '-')}"] = Curves(
                "pr", targets[:, k].astype(int), np.stack([1 - probabilities[:, k], probabilities[:, k]], axis=1),
                [f"not {name}", name], [1])
        return entries

    def hardest(self, result, n):
        return []  # "confidently wrong" needs one true genre per clip

    # -- prediction
    def shown_genres(self, probabilities, checkpoint, k=None):
        """The genres above their thresholds as tree paths, most specific first, or the k most probable (k given)."""
        return multilabel.predicted_genres(probabilities, checkpoint["genres"], k)

    def prediction_line(self, track, probabilities, checkpoint, top_k=None, as_json=False, widths=(0, 0)):
        return multilabel.prediction_line(track, probabilities, checkpoint, top_k, as_json)

    def ensemble_checkpoint(self, checkpoints):
        """The first's checkpoint with the members' mean thresholds (members share the genre ids)."""
        first = checkpoints[0]
        members = [c["genres"].get("thresholds") or [multilabel.DEFAULT_THRESHOLD] * len(c["genres"]["ids"])
                   for c in checkpoints]
        return {**first, "genres": {**first["genres"], "thresholds": np.mean(members, axis=0).tolist()}}

    def onnx_metadata(self, checkpoint):
        genres = checkpoint["genres"]
        return {"output_kind": "sigmoid: one independent probability per genre; a genre is predicted at or above "
                               "its threshold", "thresholds": genres.get("thresholds"), "genre_ids": genres["ids"],
                "genre_tree": genres["tree"]}


TASKS = {task.name: task for task in (SingleLabel(), GenreTree())}  # main.py's key target
DEFAULT = "genre_top"  # what a checkpoint or metrics.json without a "target" was trained for


def of(record):
    """The task of a checkpoint, metrics.json or config dict (one without "target" is single-label)."""
    return TASKS[record.get("target") or DEFAULT]


def format_metrics(scores):
    """A text table of single-label per-class scores, one genre a line."""
    lines = [f"{'genre':<15} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7} {'ROC AUC':>7}"]
    for name, row in scores["per_class"].items():
        auc = scores["roc_auc"][name]
        lines.append(f"{name:<15} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} {row['support']:7d} "
                     f"{'-' if auc is None else f'{auc:.3f}':>7}")
    return "\n".join(lines)
