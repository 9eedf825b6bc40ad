"""Every test and validation metric, each defined once: its name, how it is computed, whether it may
choose best.pt, how the summary shows it. A task (tasks.py) computes, shows and logs the metrics of its
kind; metrics.json and W&B (test/<name>) use the name, repeat's seed summary takes them all.

    metrics.register(Metric("top2_accuracy", "single_label", top_k_accuracy, selects=True, label="top-2 accuracy"))
    metrics.selectable("multi_label")             # ('pr_auc_macro', ...): main.py's select_metric choices
    metrics.compute("single_label", targets, probabilities)   # {"accuracy": ..., "balanced_accuracy": ...}

Adding a metric is one register() call. ``compute(targets, probabilities, genres)``: single-label targets
are class indices (N,) and probabilities (N, C) softmax; multi-label targets are 0/1 rows (N, G) and
probabilities (N, G) sigmoids, ``genres`` the checkpoint's {"ids", "tree", "thresholds"} (None while
training: the default thresholds). A value may be None where a metric is undefined (a genre without
positives); an undefined score never selects best.pt (it counts as 0). Tests: tests/test_tasks.py (a metric registered in a test is selectable, summarised and logged).
"""
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fma_genres import multilabel

KINDS = ("single_label", "multi_label")


@dataclass(frozen=True)
class Metric:
    name: str                  # W&B test/<name>, val_<name> in history.csv, metrics.json's key unless stored_as
    kind: str                  # single_label | multi_label: the task that computes it (KINDS)
    compute: Callable          # (targets, probabilities, genres) -> float or None; higher is better
    selects: bool = False      # may choose best.pt (main.py's select_metric) and be experiments.py's objective
    label: str = ""            # how the summary lines show it ("" = the name)
    value_range: tuple = (0.0, 1.0)  # repeat's 95% intervals are clipped to it
    stored_as: str = ""        # metrics.json's key when it is not the name

    @property
    def key(self):
        return self.stored_as or self.name

    def shown(self, value):
        return f"{self.label or self.name} {'-' if value is None else f'{value:.3f}'}"


METRICS = {}  # name -> Metric, in the order the summaries show them


def register(metric):
    """Add ``metric`` to METRICS (the one edit a new metric needs); returns it."""
    if metric.kind not in KINDS:
        raise ValueError(f"metric {metric.name}: kind {metric.kind!r} is not one of {KINDS}")
    METRICS[metric.name] = metric
    return metric


def of_kind(kind):
    return [metric for metric in METRICS.values() if metric.kind == kind]


def selectable(kind=None):
    """The names of the metrics that may choose best.pt (of ``kind``, or of every kind): SELECT_METRICS."""
    return tuple(m.name for m in METRICS.values() if m.selects and kind in (None, m.kind))


def compute(kind, targets, probabilities, genres=None):
    """{name: value} of every metric of ``kind``."""
    return {metric.name: metric.compute(targets, probabilities, genres) for metric in of_kind(kind)}


def score(name, targets, probabilities, genres=None):
    """The value of metric ``name`` for choosing best.pt: higher is better, an undefined one counts as 0."""
    value = METRICS[name].compute(targets, probabilities, genres)
    return 0.0 if value is None else value


# -----------------------------------------------------------------------------
# single-label: targets (N,) class indices, probabilities (N, C); predictions are the argmax

def accuracy(targets, probabilities, genres=None):
    targets = np.asarray(targets)
    return float((np.asarray(probabilities).argmax(axis=1) == targets).mean()) if len(targets) else 0.0


def per_class_scores(targets, probabilities):
    """(precision, recall, f1, support) per class (scikit-learn's, zero where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = list(range(probabilities.shape[1]))
    return precision_recall_fscore_support(np.asarray(targets), probabilities.argmax(axis=1), labels=labels,
                                           zero_division=0)


def balanced_accuracy(targets, probabilities, genres=None):
    """The mean recall of the classes present: what an unbalanced subset needs."""
    _, recall, _, support = per_class_scores(targets, probabilities)
    return float(recall[support > 0].mean()) if (support > 0).any() else 0.0


def macro_f1(targets, probabilities, genres=None):
    return float(per_class_scores(targets, probabilities)[2].mean())


def classification_metrics(targets, probabilities, class_names):
    """Single-label report: the single-label METRICS, per-class precision/recall/F1/support, confusion
    matrix and ROC AUC per class, as plain Python types (JSON-ready).

    A class absent from ``targets`` has ROC AUC None, and so does a class with a non-finite probability
    (a diverged model gives NaN; sklearn would raise): "non_finite_rows" counts the examples with any
    NaN or infinite probability, with a warning.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    targets, probabilities = np.asarray(targets), np.asarray(probabilities, dtype=np.float64)
    finite = np.isfinite(probabilities)
    non_finite_rows = int((~finite.all(axis=1)).sum())
    if non_finite_rows:
        warnings.warn(f"{non_finite_rows} of {len(targets)} examples have non-finite (NaN or infinite) "
                      f"probabilities: their predictions are meaningless and ROC AUC is None for the "
                      f"classes they touch.", RuntimeWarning, stacklevel=2)
    precision, recall, f1, support = per_class_scores(targets, probabilities)
    roc_auc = {}
    for k, name in enumerate(class_names):
        positives = targets == k
        defined = positives.any() and not positives.all() and finite[:, k].all()  # AUC needs both, and finite scores
        roc_auc[name] = float(roc_auc_score(positives, probabilities[:, k])) if defined else None
    return {
        **compute("single_label", targets, probabilities),
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]),
                             "f1": float(f1[k]), "support": int(support[k])}
                      for k, name in enumerate(class_names)},
        "roc_auc": roc_auc,
        "confusion_matrix": confusion_matrix(targets, probabilities.argmax(axis=1),
                                             labels=list(range(len(class_names)))).tolist(),
        "class_names": list(class_names),
        "non_finite_rows": non_finite_rows,
    }


# -----------------------------------------------------------------------------
# multi-label: targets (N, G) 0/1, probabilities (N, G); the ranking metrics over the defined genres

def ranking(name):
    return lambda targets, probabilities, genres=None: multilabel.ranking_metrics(targets, probabilities)[name]


def at_thresholds(name):
    """A metric at the checkpoint's per-genre thresholds (multilabel.DEFAULT_THRESHOLD without them)."""
    def compute_at(targets, probabilities, genres=None):
        thresholds = (genres or {}).get("thresholds") or [multilabel.DEFAULT_THRESHOLD] * np.shape(targets)[1]
        return multilabel.threshold_metrics(targets, probabilities, thresholds)[name]
    return compute_at


def top_genre_accuracy(targets, probabilities, genres=None):
    return multilabel.top_genre_accuracy(targets, probabilities, genres)[0] if genres else None


for _metric in (
    Metric("accuracy", "single_label", accuracy, selects=True, stored_as="test_accuracy"),
    Metric("balanced_accuracy", "single_label", balanced_accuracy, selects=True, label="balanced accuracy"),
    Metric("macro_f1", "single_label", macro_f1, selects=True, label="macro F1"),
    Metric("pr_auc_macro", "multi_label", ranking("pr_auc_macro"), selects=True, label="PR-AUC macro"),
    Metric("pr_auc_micro", "multi_label", ranking("pr_auc_micro"), selects=True, label="PR-AUC micro"),
    Metric("roc_auc_macro", "multi_label", ranking("roc_auc_macro"), selects=True, label="ROC-AUC macro"),
    Metric("roc_auc_micro", "multi_label", ranking("roc_auc_micro"), selects=True, label="ROC-AUC micro"),
    Metric("f1_macro", "multi_label", at_thresholds("f1_macro"), label="F1 macro"),
    Metric("f1_micro", "multi_label", at_thresholds("f1_micro"), label="F1 micro"),
    Metric("precision_macro", "multi_label", at_thresholds("precision_macro"), label="precision macro"),
    Metric("recall_macro", "multi_label", at_thresholds("recall_macro"), label="recall macro"),
    Metric("precision_micro", "multi_label", at_thresholds("precision_micro"), label="precision micro"),
    Metric("recall_micro", "multi_label", at_thresholds("recall_micro"), label="recall micro"),
    Metric("top_genre_accuracy", "multi_label", top_genre_accuracy, label="top-genre accuracy"),
):
    register(_metric)
