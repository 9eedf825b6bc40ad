"""experiments.py on the tiny FMA-format dataset (conftest's fma_small; CNN1D, 96 frames): an interrupted
Optuna study continued, with a resumed trial and a pruned one; docs/experiments.md's tune commands (the default space
narrowed by the fixed keys, refusals that leave nothing behind); repeat over seeds (summary statistics
by hand, reruns); ensembles in pre_trained_models.py; sweep.yaml's keys. Several processes on one
study, killed ones, PostgreSQL: test_studies.py."""
import csv
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import experiments
import main
import models_utils
import pre_trained_models
from conftest import clean_env, wait_for
from fma_genres import configurator

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
GOOD_LR, BAD_LR = 3e-3, 1e-7  # epoch 1 on this data: val accuracy 0.5 (both good trials alike), 0.25


def main_args(data_dir, *extra):
    return [f"--data_dir={data_dir}", "--model=cnn1d", "--n_frames=96", "--download=False", "--wandb_mode=disabled",
            "--num_workers=0", "--faithful=False", *extra]


def tune_args(data_dir, folder, *extra):
    return ["tune", *main_args(data_dir, "--batch_size=2", "--epochs=3"), f"--space={folder / 'space.py'}",
            f"--dir={folder}", "--name=test", *extra]


def load_study(folder):
    return optuna.load_study(study_name="test", storage=f"sqlite:///{folder / 'study.db'}")


def epochs_of(out_dir):
    with open(Path(out_dir) / "history.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def study(fma_small, tmp_path_factory):
    """A 3-trial study: a process stopped by SIGTERM during trial 0, then continued. Two good trials are
    queued first and a bad one (an lr that learns nothing) after the interruption, so the order is known:
    0 interrupted, 1 good, 2 = trial 0 resumed, 3 bad (pruned: the median of 1 and 2 is above it)."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "space.py").write_text(f"SPACE = {{'lr': [{GOOD_LR}, {BAD_LR}]}}\n")
    queued = optuna.create_study(study_name="test", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    queued.enqueue_trial({"lr": GOOD_LR})
    queued.enqueue_trial({"lr": GOOD_LR})
    argv = tune_args(fma_small, folder, "--trials=3")
    process = subprocess.Popen([sys.executable, "experiments.py", *argv], cwd=ROOT, env=clean_env(folder),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(folder / "trial_0" / "history.csv", process)  # epoch 1 of 3 is done
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1].decode()
    queued.enqueue_trial({"lr": BAD_LR})
    assert experiments.run(argv) == 0
    return {"folder": folder, "status": process.returncode, "stderr": stderr, "argv": argv}


def test_an_interrupted_trial_resumes_from_its_last_checkpoint(study):
    assert study["status"] == 143, study["stderr"][-2000:]
    assert "rerun the same command" in study["stderr"]
    assert "trial 0 stopped; it resumes from" in study["stderr"] and "Traceback" not in study["stderr"]  # one line
    trials = load_study(study["folder"]).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    resumed = trials[2]
    assert resumed.state == optuna.trial.TrialState.COMPLETE
    assert resumed.user_attrs["out_dir"] == trials[0].user_attrs["out_dir"] == str(study["folder"] / "trial_0")
    assert "resuming after epoch" in (study["folder"] / "trial_0" / "main.log").read_text()
    assert epochs_of(study["folder"] / "trial_0") == [1, 2, 3]  # each epoch once: continued, not restarted
    assert not (study["folder"] / "trial_2").exists()


def test_a_trial_that_reports_badly_is_pruned_early(study):
    trials = load_study(study["folder"]).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[1].intermediate_values[1] == trials[2].intermediate_values[1] > trials[3].intermediate_values[1]
    assert list(trials[3].intermediate_values) == [1]  # stopped after its first epoch (SIGTERM: main.py saved)
    assert not (study["folder"] / "trial_3" / "metrics.json").exists()
    # a finished (complete or pruned) trial keeps best.pt and drops its resume state
    assert all((study["folder"] / f"trial_{n}" / "best.pt").is_file() for n in (0, 1, 3))
    assert not list(study["folder"].glob("trial_*/last.pt"))
    # the objective is the run's best validation score, never a test figure
    metrics = json.loads((study["folder"] / "trial_1" / "metrics.json").read_text())
    assert trials[1].value == metrics["best_val_score"]


def test_the_report_gives_the_best_trial_as_a_config_and_the_study_as_csv_and_figures(study):
    folder = study["folder"]
    best = load_study(folder).best_trial
    with open(folder / "trials.csv", newline="") as f:
        assert [row["state"] for row in csv.DictReader(f)] == ["FAIL", "COMPLETE", "COMPLETE", "PRUNED"]
    overrides, _ = configurator.parse_command_line([str(folder / "best_config.py")], main.CONFIG, "main.py")
    assert overrides["lr"] == best.params["lr"] and overrides["model"] == "cnn1d" and overrides["epochs"] == 3
    assert (folder / "optimization_history.png").read_bytes().startswith(PNG)
    assert experiments.run([*study["argv"], "--report=True"]) == 0  # a finished study: a report, no trial
    assert len(load_study(folder).trials) == 4
    # a report given only some of main.py's arguments, and a continuation given none: the recorded ones apply
    assert experiments.run(["tune", "--model=cnn1d", f"--dir={folder}", "--name=test", "--report=True"]) == 0
    assert experiments.run(["tune", f"--space={folder / 'space.py'}", f"--dir={folder}", "--name=test",
                            "--trials=5"]) == 0
    config = models_utils.load_checkpoint(folder / "trial_4" / "best.pt")["config"]
    assert (config["epochs"], config["n_frames"], config["batch_size"]) == (3, 96, 2)


def test_a_continued_study_refuses_other_fixed_arguments(study):
    trials = len(load_study(study["folder"]).trials)
    with pytest.raises(SystemExit, match="--name=NEW"):
        experiments.run([*study["argv"], "--trials=9", "--seed=3"])
    assert len(load_study(study["folder"]).trials) == trials  # refused before any trial


# -----------------------------------------------------------------------------
# docs/experiments.md's tune commands (each with tiny data, 1 epoch): the default space less the fixed keys

def tiny(data_dir):
    return [f"--data_dir={data_dir}", "--n_frames=96", "--download=False", "--wandb_mode=disabled", "--num_workers=0",
            "--compile=False"]


def searched(folder, name):
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}").trials
    return [set(t.params) for t in trials]


@pytest.mark.slow
def test_readme_tune_commands_search_what_is_not_fixed(fma_small, tmp_path, capsys):
    folder = tmp_path / "crnn"  # python experiments.py tune --model=crnn --epochs=30 --trials=50
    assert experiments.run(["tune", "--model=crnn", "--epochs=1", "--trials=1", *tiny(fma_small), f"--dir={folder}"]) == 0
    assert "searches lr, weight_decay, batch_size, data_augmentation; fixed: model" in capsys.readouterr().out
    assert searched(folder, "tune_crnn") == [{"lr", "weight_decay", "batch_size", "data_augmentation"}]
    assert (folder / "trial_0" / "best.pt").is_file() and not (folder / "trial_0" / "last.pt").exists()
    # python experiments.py tune --model=crnn --report: the recorded arguments
    assert experiments.run(["tune", "--model=crnn", "--report", f"--dir={folder}"]) == 0
    assert "best of 1 finished trials" in capsys.readouterr().out
    # python experiments.py tune configs/original_crnn.py --trials=50 --parallel=4 (it fixes batch_size, lr, model)
    folder = tmp_path / "original"
    assert experiments.run(["tune", str(ROOT / "configs" / "original_crnn.py"), "--trials=2", "--parallel=2", "--epochs=1",
                            "--train_size=0.5", *tiny(fma_small), f"--dir={folder}", "--keep_last=True"]) == 0
    assert searched(folder, "tune_crnn") == [{"weight_decay", "data_augmentation"}] * 2
    assert len(list(folder.glob("trial_*/last.pt"))) == 2  # --keep_last


def test_a_space_of_ones_own_that_searches_a_fixed_key_is_refused_and_leaves_nothing_behind(fma_small, tmp_path):
    (tmp_path / "my_space.py").write_text("SPACE = {'model': ['cnn1d', 'crnn'], 'lr': [1e-3, 1e-4]}\n")
    folder = tmp_path / "study"  # python experiments.py tune --model=crnn --space=my_space.py --trials=20
    argv = ["tune", "--model=crnn", f"--space={tmp_path / 'my_space.py'}", "--trials=1", *tiny(fma_small),
            f"--dir={folder}"]
    with pytest.raises(SystemExit) as info:
        experiments.run([*argv, "--epochs=2"])
    assert f"model is both fixed on the command line and searched by {tmp_path / 'my_space.py'}: drop one." in info.value.code
    with pytest.raises(SystemExit) as info:
        experiments.run(["tune", str(ROOT / "configs" / "original_crnn.py"), *argv[2:]])
    assert (f"model and lr are both fixed by {ROOT / 'configs' / 'original_crnn.py'} and searched by "
            f"{tmp_path / 'my_space.py'}: drop one.") in info.value.code
    assert not folder.exists()  # no study.db recording the refused arguments
    (tmp_path / "my_space.py").write_text("SPACE = {'lr': [1e-3, 1e-4]}\n")
    assert experiments.run([*argv, "--epochs=1"]) == 0  # other arguments than the refused command's
    assert searched(folder, "tune_crnn") == [{"lr"}]


def test_nothing_left_to_search_is_an_error_naming_the_fixed_keys(fma_small, tmp_path):
    fixed = ["--model=crnn", "--lr=0.001", "--weight_decay=0", "--batch_size=8", "--data_augmentation=True"]
    with pytest.raises(SystemExit) as info:
        experiments.run(["tune", *fixed, "--trials=1", *tiny(fma_small), f"--dir={tmp_path / 'study'}"])
    assert "nothing is left to search" in info.value.code and "--space=FILE.py" in info.value.code
    assert all(f"{arg[2:].partition('=')[0]} on the command line" in info.value.code for arg in fixed)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("space, error", [("{'learning_rate': [0.1]}", "'learning_rate'"),
                                          ("{'lr': {'low': 1e-4}}", "'lr'"), ("{'out_dir': ['x']}", "'out_dir'")])
def test_a_bad_search_space_is_one_clear_error_naming_its_file(fma_small, tmp_path, space, error):
    (tmp_path / "space.py").write_text(f"SPACE = {space}\n")
    with pytest.raises(SystemExit) as info:
        experiments.run(tune_args(fma_small, tmp_path, "--trials=1"))
    assert str(tmp_path / "space.py") in info.value.code and error in info.value.code
    assert not list(tmp_path.glob("trial_*"))


# -----------------------------------------------------------------------------
# repeat and ensembles

SEEDS = (0, 1)  # repeat's seeds here: two give a mean, a std and a Student-t interval


@pytest.fixture(scope="module")
def repeated(fma_small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("repeat")
    argv = ["repeat", *main_args(fma_small, "--batch_size=4", "--epochs=1"), "--seeds=0,1", f"--dir={folder}"]
    assert experiments.run(argv) == 0
    return folder, argv


def read_summary(folder):
    with open(folder / "summary.csv", newline="") as f:
        return {row["metric"]: {k: float(v) for k, v in row.items() if k != "metric"} for row in csv.DictReader(f)}


def test_repeat_summarises_each_metric_over_the_seeds(repeated):
    folder, _ = repeated
    runs = [json.loads((folder / f"seed_{s}" / "metrics.json").read_text()) for s in SEEDS]
    summary = read_summary(folder)
    t_975_1 = 12.706204736174707  # Student's t, 97.5th percentile, 1 degree of freedom (a table's value)
    for metric, values in [("test_accuracy", [r["test_accuracy"] for r in runs]),
                           ("test_loss", [r["test_loss"] for r in runs]),
                           ("f1_Rock", [r["per_class"]["Rock"]["f1"] for r in runs])]:
        mean = sum(values) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (2 - 1))  # n - 1
        row = summary[metric]
        assert [row[f"seed_{s}"] for s in SEEDS] == pytest.approx(values, abs=1e-5)
        assert row["mean"] == pytest.approx(mean, abs=1e-5) and row["std"] == pytest.approx(std, abs=1e-5)
        high = 1.0 if metric != "test_loss" else math.inf  # clipped to the metric's range
        assert row["ci95_high"] == pytest.approx(min(mean + t_975_1 * std / math.sqrt(2), high), abs=1e-5)
        assert row["ci95_low"] == pytest.approx(max(mean - t_975_1 * std / math.sqrt(2), 0.0), abs=1e-5)
    assert {"macro_f1", "balanced_accuracy"} <= set(summary)
    splits = {(folder / f"seed_{s}" / "splits.csv").read_text() for s in SEEDS}
    assert len(splits) == 1  # one split for every seed
    seeds = [torch.load(folder / f"seed_{s}" / "best.pt", weights_only=True)["config"] for s in SEEDS]
    assert [c["seed"] for c in seeds] == [0, 1] and {c["split_seed"] for c in seeds} == {0}
    assert "| test_accuracy |" in (folder / "summary.md").read_text()


def test_repeat_reports_the_ensemble_of_its_seeds_next_to_each_member(repeated):
    folder, _ = repeated
    ensemble = json.loads((folder / "ensemble" / "metrics.json").read_text())
    assert [m["checkpoint"] for m in ensemble["members"]] == [str(folder / f"seed_{s}" / "best.pt") for s in SEEDS]
    for seed, member in enumerate(ensemble["members"]):
        own = json.loads((folder / f"seed_{seed}" / "metrics.json").read_text())
        assert member["test_accuracy"] == own["test_accuracy"]
    assert f"{ensemble['test_accuracy']:.4f}" in (folder / "summary.md").read_text()


def test_a_rerun_skips_finished_seeds(repeated, capsys):
    folder, argv = repeated
    logs = [(folder / f"seed_{s}" / "main.log").read_text() for s in SEEDS]
    assert experiments.run(argv) == 0
    out = capsys.readouterr().out
    assert all(f"seed {s}: finished" in out for s in SEEDS)
    assert [(folder / f"seed_{s}" / "main.log").read_text() for s in SEEDS] == logs  # no main.py started


def predict_csv(tmp_path, name, checkpoints, files):
    output = tmp_path / f"{name}.csv"
    argv = [*(f"--checkpoint={c}" for c in checkpoints), f"--output={output}", "--num_workers=0", *map(str, files)]
    assert pre_trained_models.main(argv) == 0
    with open(output, newline="") as f:
        return [[float(row[g]) for g in row if g not in ("path", "windows", "error")] for row in csv.DictReader(f)]


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(repeated, fma_small, tmp_path):
    folder, _ = repeated
    a, b = folder / "seed_0" / "best.pt", folder / "seed_1" / "best.pt"
    files = sorted(fma_small.rglob("*.mp3"))[:3]
    alone = [torch.tensor(predict_csv(tmp_path, name, [c], files)) for name, c in (("a", a), ("b", b))]
    together = torch.tensor(predict_csv(tmp_path, "ab", [a, b], files))
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # two different models
    assert torch.allclose(together, (alone[0] + alone[1]) / 2, atol=2e-6)


@pytest.mark.parametrize("change, refusal", [("class_names", "their genres differ"),
                                             ("split", "were trained on different splits")])
def test_members_must_share_genres_and_split(repeated, fma_small, tmp_path, capsys, change, refusal):
    folder, _ = repeated
    other = torch.load(folder / "seed_1" / "best.pt", weights_only=True)
    if change == "class_names":
        other["class_names"] = other["class_names"][::-1]
    else:
        other["config"]["split"] = "random"
    torch.save(other, tmp_path / "other.pt")
    mp3 = next(fma_small.rglob("*.mp3"))
    task = [str(mp3)] if change == "class_names" else ["--evaluate=True", f"--data_dir={fma_small}"]
    argv = [f"--checkpoint={folder / 'seed_0' / 'best.pt'}", f"--checkpoint={tmp_path / 'other.pt'}", *task]
    assert pre_trained_models.main(argv) == 2
    error = capsys.readouterr().err
    assert refusal in error and str(tmp_path / "other.pt") in error and str(folder / "seed_0" / "best.pt") in error


def test_every_sweep_parameter_is_a_main_py_key_and_the_command_passes_them_as_args():
    sweep = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    assert sweep["program"] == "main.py" and sweep["command"][-1] == "${args}"
    assert set(sweep["parameters"]) <= set(main.CONFIG)
    for key, spec in sweep["parameters"].items():  # every value is one main.py accepts for the key
        for value in spec.get("values", [spec.get("value", spec.get("min"))]):
            configurator.convert(key, str(value), main.CONFIG[key])
