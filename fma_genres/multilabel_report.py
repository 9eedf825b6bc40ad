"""Figures and W&B entries of a multi-label run (target=genres_all; the metrics are multilabel.py's).

    figures = multilabel_report.figures(metrics, targets, probabilities)  # models_utils.save_report's PNGs
    logged = multilabel_report.wandb_entries(metrics, targets, probabilities)  # wandb_logging's test/* keys

metrics: multilabel.evaluation_scores' dict (per_genre in output order, class_names); targets: (N, G) 0/1;
probabilities: (N, G) sigmoid outputs. Tests: python -m pytest tests/test_multilabel.py -q
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


def figures(metrics, targets, probabilities):
    """{file name: Figure} of a multi-label report."""
    return {"average_precision.png": plot_average_precision(metrics),
            "pr_curves.png": plot_pr_curves(metrics, targets, probabilities)}


def wandb_entries(metrics, targets, probabilities):
    """test/* W&B entries: the summary metrics, the per-genre table, an AP bar chart and the PR curves of
    the most frequent genres."""
    import wandb

    columns = ["genre", "path", "support", "average_precision", "roc_auc", "threshold", "precision", "recall", "f1"]
    table = wandb.Table(columns=columns, data=[[name, *(row[c] for c in columns[1:])]
                                               for name, row in metrics["per_genre"].items()])
    ap_table = wandb.Table(columns=["genre", "average_precision"],
                           data=[[row["path"], row["average_precision"]] for row in metrics["per_genre"].values()
                                 if row["average_precision"] is not None])
    frequent = most_frequent(metrics)
    summary = ("pr_auc_macro", "pr_auc_micro", "roc_auc_macro", "roc_auc_micro", "f1_macro", "f1_micro",
               "precision_macro", "recall_macro", "top_genre_accuracy", "left_out_genres")
    entries = {f"test/{key}": metrics[key] for key in summary if metrics[key] is not None}
    entries.update({"test/loss": metrics["test_loss"], "test/per_genre": table,
                    "test/average_precision_per_genre": wandb.plot.bar(
                        ap_table, "genre", "average_precision", title="Test average precision per genre")})
    if frequent:  # wandb's pr_curve takes one label per clip: one curve per genre, as one-vs-rest
        targets, probabilities = np.asarray(targets), np.asarray(probabilities)
        for k in frequent:
            name = metrics["class_names"][k]
            scores = np.stack([1 - probabilities[:, k], probabilities[:, k]], axis=1)
            # W&B reads "/" in a key as a section: FMA has "Old-Time / Historic"
            entries[f"test/pr/{name.replace('/', '-')}"] = wandb.plot.pr_curve(targets[:, k].astype(int), scores,
                                                             labels=[f"not {name}", name], classes_to_plot=[1])
    return entries
