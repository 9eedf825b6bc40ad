"""The test figures of each task (tasks.py's figures(), written by models_utils.save_report): a single-label
run's confusion matrix and ROC curves; a multi-label run's average precision per genre and PR curves.

Multi-label: metrics is tasks.GenreTree's scores (per_genre in output order, class_names); targets (N, G)
0/1; probabilities (N, G) sigmoid outputs. Tests: tests/test_models_utils.py, tests/training/test_multilabel.py
"""
import numpy as np

from fma_genres.runtime.figures import pyplot  # headless, imported at the first figure

PR_CURVES = 8  # the most frequent genres get a PR curve (more would be unreadable)


def most_frequent(metrics, n=PR_CURVES):
    """Output indices of the n genres with the most test positives that have an average precision."""
    rows = list(metrics["per_genre"].values())
    ranked = sorted((k for k, row in enumerate(rows) if row["average_precision"] is not None),
                    key=lambda k: -rows[k]["support"])
    return ranked[:n]


def plot_average_precision(metrics):
    """Horizontal bars: each genre's test average precision (its tree path), by support."""
    rows = sorted((row for row in metrics["per_genre"].values() if row["average_precision"] is not None),
                  key=lambda row: row["support"])
    fig, ax = pyplot().subplots(figsize=(8, 1.0 + 0.28 * max(len(rows), 1)), layout="constrained")
    ax.barh([f"{row['path']} ({row['support']})" for row in rows], [row["average_precision"] for row in rows])
    ax.set(xlim=(0, 1), xlabel="Average precision (PR-AUC)",
           title=f"Test average precision per genre (test positives); macro {metrics['pr_auc_macro'] or 0:.3f}")
    return fig


def plot_pr_curves(metrics, targets, probabilities):
    """Precision-recall curves of the most frequent genres, each with its average precision."""
    from sklearn.metrics import precision_recall_curve

    names, per_genre = metrics["class_names"], metrics["per_genre"]
    fig, ax = pyplot().subplots(figsize=(7, 6), layout="constrained")
    for k in most_frequent(metrics):
        precision, recall, _ = precision_recall_curve(np.asarray(targets)[:, k], np.asarray(probabilities)[:, k])
        ax.plot(recall, precision, label=f"{per_genre[names[k]]['path']} (AP {per_genre[names[k]]['average_precision']:.2f})")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Precision-recall curves of the {PR_CURVES} most frequent genres")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_confusion_matrix(cm, class_names, normalize=False):
    """Confusion matrix (rows: true genre, columns: predicted), as counts or normalised by row."""
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = pyplot().subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n), layout="constrained")
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xticks=range(n), yticks=range(n), xlabel="Predicted genre", ylabel="True genre",
           title="Confusion matrix" + (" (normalised by row)" if normalize else ""))
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}", ha="center", va="center",
                    fontsize=8, color="white" if cm[i, j] > threshold else "black")
    return fig


def plot_roc_curves(y_true, probs, class_names):
    """One-vs-rest ROC curve per class, each with its AUC in the legend."""
    from sklearn.metrics import auc, roc_curve

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    fig, ax = pyplot().subplots(figsize=(7, 6), layout="constrained")
    for k, name in enumerate(class_names):
        positives = y_true == k
        if positives.all() or not positives.any() or not np.isfinite(probs[:, k]).all():
            continue  # ROC is undefined without both positives and negatives, or with NaN scores
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.2f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC curves (one genre vs the rest)")
    ax.legend(loc="lower right", fontsize=8)
    return fig
