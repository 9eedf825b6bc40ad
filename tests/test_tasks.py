"""tasks.py and metrics.py: single- vs multi-label is decided in tasks.py only, W&B is imported by one
module only, and a metric registered in one place is selectable, in the summary and in the logged entries.

    python -m pytest tests/test_tasks.py -q
"""
import re
from pathlib import Path

import numpy as np
import pytest

import main
import models_utils
from fma_genres import configurator, metrics, tasks
from fma_genres.reporting import wandb_logging

ROOT = Path(__file__).resolve().parents[1]
# What tells the two tasks apart: the target's name (FMA's tracks.csv column ("track", "genres_all") is data,
# not a decision), the target tensor's shape, a checkpoint's recorded target.
DECIDES_TASK = re.compile(r'targets\.dim\(\)|(?<!\("track", )"genres_all"|checkpoint\.get\("target"\)')


def sources():
    """{path relative to the repository: text} of the top-level modules and the package's."""
    files = [*ROOT.glob("*.py"), *(ROOT / "fma_genres").rglob("*.py")]
    return {str(f.relative_to(ROOT)): f.read_text() for f in files}


def test_only_tasks_py_tells_single_from_multi_label():
    found = [f"{path}:{n}: {line.strip()}" for path, text in sources().items() if path != "fma_genres/tasks.py"
             for n, line in enumerate(text.splitlines(), 1) if DECIDES_TASK.search(line)]
    assert found == []
    assert DECIDES_TASK.search('if config["target"] == "genres_all":')  # the pattern does catch a decision
    assert not DECIDES_TASK.search('tracks[("track", "genres_all")]')


def test_only_wandb_logging_imports_wandb():
    importing = [path for path, text in sources().items() if re.search(r"^\s*(import wandb|from wandb)", text, re.M)]
    assert importing == ["fma_genres/reporting/wandb_logging.py"]


def test_select_metrics_are_defined_once():
    assert metrics.selectable("single_label") == ("accuracy", "balanced_accuracy", "macro_f1")
    assert metrics.selectable("multi_label") == ("pr_auc_macro", "pr_auc_micro", "roc_auc_macro", "roc_auc_micro")
    assert tasks.TASKS["genres_all"].select_metrics == metrics.selectable("multi_label")
    for path, text in sources().items():
        assert "SELECT_METRICS =" not in text, path


def top2_accuracy(targets, probabilities, genres=None):
    """The share of clips whose genre is among the two most probable."""
    top2 = np.argsort(-np.asarray(probabilities), axis=1)[:, :2]
    return float((top2 == np.asarray(targets)[:, None]).any(axis=1).mean())


@pytest.fixture
def registered():
    metric = metrics.register(metrics.Metric("top2_accuracy", "single_label", top2_accuracy, selects=True,
                                             label="top-2 accuracy"))
    yield metric
    del metrics.METRICS[metric.name]


def test_a_registered_metric_is_selectable_summarised_and_logged(registered):
    task = tasks.TASKS["genre_top"]
    config = configurator.make_config({"select_metric": "top2_accuracy"}, main.CONFIG)  # accepted
    assert config["select_metric"] == "top2_accuracy" and "top2_accuracy" in task.select_metrics
    names = ["a", "b", "c"]
    targets = np.array([0, 1, 2, 0])
    probabilities = np.array([[.5, .3, .2], [.6, .1, .3], [.1, .2, .7], [.3, .5, .2]])  # top-2 hits: 3 of 4, argmax 2
    result = {"targets": targets, "probabilities": probabilities}
    assert task.validation_score(result, "top2_accuracy") == 0.75  # chooses best.pt
    scores = {"test_loss": 0.9, **task.scores(targets, probabilities, names), "test_examples": 4}
    assert scores["top2_accuracy"] == 0.75 and scores["test_accuracy"] == 0.5  # metrics.json
    metrics_json = {**scores, "parameters": 10, "report_epoch": "best", "reported_epoch": 1, "best_epoch": 1,
                    "select_metric": "top2_accuracy", "best_val_score": 0.75, "training_seconds": 1.0}
    summary = models_utils.format_summary({"model": "cnn1d", "faithful": True, "demo": True, "out_dir": "x"},
                                          [], metrics_json)
    assert "top-2 accuracy 0.750" in summary and "accuracy 0.500" in summary
    logged = wandb_logging.logged_entries(task.wandb_entries(scores, result, names))
    assert logged["test/top2_accuracy"] == 0.75 and logged["test/accuracy"] == 0.5
    assert task.seed_figures(scores)["top2_accuracy"] == (0.75, (0.0, 1.0))  # repeat's summary


def test_an_unregistered_metric_is_refused_with_the_tasks_choices():
    with pytest.raises(configurator.ConfigError, match="choose one of accuracy, balanced_accuracy, macro_f1"):
        configurator.make_config({"select_metric": "top2_accuracy"}, main.CONFIG)


def test_each_task_is_recorded_and_found_again():
    assert tasks.of({}) is tasks.TASKS["genre_top"]  # a checkpoint or metrics.json from before targets
    assert tasks.of({"target": "genres_all"}) is tasks.TASKS["genres_all"]
    scores = tasks.TASKS["genre_top"].scores([0, 1], [[.9, .1], [.2, .8]], ["a", "b"])
    assert tasks.of(scores) is tasks.TASKS["genre_top"]  # metrics.json says which task wrote it
