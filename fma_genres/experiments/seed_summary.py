"""repeat's summary of one configuration over seeds: each figure's mean, standard deviation (n-1) and 95%
Student-t interval, clipped to the figure's range, with a word on what few seeds can say; summary.csv
and summary.md.

    table = seed_summary.summarise({seed: metrics.json's dict, ...})
    seed_summary.write_summary(folder, table, seeds, ensemble_metrics_or_None)
"""
import csv
import io

import numpy as np

from fma_genres import tasks
from fma_genres.runtime import atomic

# the fewest seeds whose interval means much (t = 12.7 for 2 seeds, 4.3 for 3, 3.2 for 4, 2.8 for 5)
FEW_SEEDS = 5


def t_975(n):
    """Student's t, 97.5th percentile, n-1 degrees of freedom: the 95% interval's half-width in standard errors."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def summarise(runs):
    """metric -> {"mean", "std" (n-1), "ci95_low", "ci95_high" (Student's t, n-1 degrees of freedom,
    clipped to the metric's range), "seed_<s>": each seed's value}. The figures are the task's
    (tasks.seed_figures: every metric of metrics.py, the test loss, each genre's F1); an undefined one is NaN."""
    figures = {seed: tasks.of(metrics).seed_figures(metrics) for seed, metrics in runs.items()}
    values = {seed: {name: np.nan if value is None else value for name, (value, _) in row.items()}
              for seed, row in figures.items()}
    ranges = {name: value_range for name, (_, value_range) in next(iter(figures.values())).items()}
    table = {}
    for metric in ranges:
        column = np.array([row[metric] for row in values.values()], dtype=float)
        n, mean = len(column), float(column.mean())
        std = float(column.std(ddof=1)) if n > 1 else float("nan")
        half = t_975(n) * std / np.sqrt(n)
        low, high = np.clip([mean - half, mean + half], *ranges[metric])
        table[metric] = {"mean": mean, "std": std, "ci95_low": float(low), "ci95_high": float(high),
                         **{f"seed_{seed}": row[metric] for seed, row in values.items()}}
    return table


def interval_note(n):
    """What summary.md says under its table about the 95% intervals of ``n`` seeds."""
    clipped = "Intervals are clipped to each metric's range (scores 0..1, the loss >= 0)."
    if n == 1:
        return "One seed: no spread and no interval (they need two or more seeds)."
    if n < FEW_SEEDS:
        return (f"Only {n} seeds: the 95% interval spans +-{t_975(n):.1f} standard errors (Student's t, {n - 1} "
                f"degrees of freedom), too wide to mean much; {FEW_SEEDS} or more seeds give a useful one. {clipped}")
    return clipped


def write_summary(folder, table, seeds, ensemble):
    """summary.csv (one row per metric) and summary.md (the same as a table, and the ensemble), atomically."""
    columns = ["mean", "std", "ci95_low", "ci95_high", *(f"seed_{s}" for s in seeds)]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["metric", *columns])
    writer.writerows([metric, *(f"{row[c]:.6g}" for c in columns)] for metric, row in table.items())
    atomic.atomic_write(folder / "summary.csv", lambda f: f.write(text.getvalue().encode()))
    lines = [f"# {len(seeds)} seeds ({', '.join(map(str, seeds))}), one split; test split figures", "",
             f"| metric | mean | std | 95% interval | {' | '.join(f'seed {s}' for s in seeds)} |",
             "|---" * (4 + len(seeds)) + "|"]
    lines += [f"| {metric} | {row['mean']:.4f} | {row['std']:.4f} | {row['ci95_low']:.4f} .. {row['ci95_high']:.4f} | "
              + " | ".join(f"{row[f'seed_{s}']:.4f}" for s in seeds) + " |" for metric, row in table.items()]
    lines += ["", interval_note(len(seeds))]
    if ensemble:
        task = tasks.of(ensemble)
        figures = [(m.key, task.stored(ensemble, m)) for m in task.metrics] + [("test_loss", ensemble["test_loss"])]
        shown = ", ".join(f"{name} {value:.4f}" for name, value in figures if value is not None)
        lines += ["", f"Ensemble of the {len(seeds)} seeds (mean of their probabilities): {shown} "
                      f"({folder / 'ensemble'}/metrics.json)."]
    atomic.atomic_write(folder / "summary.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
