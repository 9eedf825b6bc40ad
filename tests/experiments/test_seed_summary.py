"""seed_summary.py (experiments.py repeat): 95% intervals clipped to each figure's range, and a word on
what few seeds can say. Hand-made metrics.json dicts; the full repeat runs in test_experiments.py."""
import math

import pytest

from fma_genres.experiments import seed_summary


def metrics(score, loss):
    """The part of a run's metrics.json that repeat summarises."""
    return {"test_accuracy": score, "macro_f1": score, "balanced_accuracy": score, "test_loss": loss,
            "per_class": {"Rock": {"f1": score}}}


def test_an_interval_never_leaves_its_metrics_range():
    table = seed_summary.summarise({0: metrics(0.1, 0.05), 1: metrics(0.9, 2.0)})  # t = 12.7: raw -4.6 .. 5.6
    for metric, row in table.items():
        high = math.inf if metric == "test_loss" else 1.0
        assert 0.0 <= row["ci95_low"] <= row["mean"] <= row["ci95_high"] <= high
    assert (table["test_accuracy"]["ci95_low"], table["test_accuracy"]["ci95_high"]) == (0.0, 1.0)
    assert table["test_loss"]["ci95_low"] == 0.0 and table["test_loss"]["ci95_high"] > 10  # a loss has no upper bound


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_the_summary_says_when_there_are_too_few_seeds_for_an_interval_to_mean_much(tmp_path, n):
    runs = {seed: metrics(0.5 + 0.01 * seed, 1.0 + 0.01 * seed) for seed in range(n)}
    seed_summary.write_summary(tmp_path, seed_summary.summarise(runs), list(range(n)), None)
    text = (tmp_path / "summary.md").read_text()
    assert ("too wide to mean much" in text) == (1 < n < seed_summary.FEW_SEEDS)
    assert ("no interval" in text) == (n == 1)
    assert ("clipped to each metric's range" in text) == (n > 1)
