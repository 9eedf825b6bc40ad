"""Types for what travels : the training state's checkpoint layout defined once, FMA's
metadata read by one module for every target, and library functions that take a few fields, not the config."""
import ast
import math
from pathlib import Path

import torch

from fma_genres.data import datasets
from fma_genres.training.run_state import TrainingState

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [*sorted((ROOT / "fma_genres").rglob("*.py")),
           *(ROOT / f"{name}.py" for name in ("utils", "models", "models_utils", "train", "test"))]
MAX_PARAMETERS = 7
# The checkpoint's "training" entry as main.py has written it since format 2, in this order.
TRAINING_KEYS = ("epoch", "metrics", "optimizer", "scheduler", "position", "history", "best_val_score",
                 "best_val_accuracy", "best_val_loss", "best_epoch", "examples_seen", "training_seconds",
                 "wandb_run_id")


def parameter_count(function):
    args = function.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return len(named) + (args.vararg is not None) + (args.kwarg is not None)


def test_no_library_function_takes_more_than_seven_parameters():
    over = {}
    for path in LIBRARY:
        module = path.relative_to(ROOT).with_suffix("").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > MAX_PARAMETERS:
                over[f"{module}.{node.name}"] = parameter_count(node)
    assert not over, over


def optimiser_and_scheduler():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    weight.grad = torch.ones(3)
    optimizer.step()
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)


def test_the_training_state_round_trips_through_todays_checkpoint_layout():
    optimizer, scheduler = optimiser_and_scheduler()
    row = {"epoch": 2, "val_loss": 1.5}
    state = TrainingState({"n_classes": 8}, epoch=2, saved_epoch=2, history=[{"epoch": 1}, row],
                          best_val_score=0.4, best_val_accuracy=0.5, best_val_loss=1.25, best_epoch=1,
                          examples_seen=80, training_seconds=3.5, wandb_run_id="abc", thresholds=[0.3, 0.6])
    position = {"epoch": 3, "progress": {"batches": 1}}
    saved = state.to_dict(optimizer, scheduler, position)
    assert tuple(saved) == TRAINING_KEYS
    assert saved["metrics"] == row and saved["position"] == position
    assert saved["optimizer"]["state"][0]["step"] == 1 and saved["scheduler"] == scheduler.state_dict()
    restored = TrainingState.from_dict(saved, {"n_classes": 8}, thresholds=[0.3, 0.6])
    assert restored == TrainingState(**{**vars(state), "position": position})


def test_a_checkpoint_from_before_select_metric_resumes_with_its_accuracy_as_the_score():
    optimizer, scheduler = optimiser_and_scheduler()
    old = TrainingState({}, epoch=3, best_val_accuracy=0.7, best_val_loss=0.9).to_dict(optimizer, scheduler)
    del old["best_val_score"], old["position"]  # an early format-2 checkpoint had neither
    restored = TrainingState.from_dict(old, {})
    assert restored.best_val_score == 0.7 and restored.epoch == restored.saved_epoch == 3
    assert restored.position is None and restored.best_val_loss == 0.9
    assert TrainingState({}).best_val_loss == math.inf and TrainingState({}).history == []


def settings(data_dir, **keys):
    """DataSettings from its own fields only: no config dict."""
    given = dict(dataset="fma", data_dir=str(data_dir), subset="small", split="official", train_size=0.75,
                 val_size=0.1, test_size=0.1, split_seed=3)
    return datasets.DataSettings(**{**given, **keys})


def test_single_and_multi_label_read_the_same_tracks_and_splits(fma_small):
    """FMA's official split. (split=random differs on purpose: it stratifies by the class index, which
    multi-label tracks lack, and an older run's split must stay the one it resumes with.)"""
    single = datasets.load(settings(fma_small))
    multi = datasets.load(settings(fma_small, target="genres_all", min_genre_tracks=1))
    assert not single.multi_label and multi.multi_label and multi.genres["tree"]["id"]
    assert list(multi.tracks.index) == list(single.tracks.index)  # every small track has genres here
    for key in ("train", "val", "test"):
        assert sorted(multi.splits[key].index) == sorted(single.splits[key].index), key
    columns = ["path", "genre", "split", "artist_id"]
    assert multi.tracks[columns].equals(single.tracks[columns])
    assert (multi.tracks["label"] == -1).all() and (single.tracks["label"] >= 0).all()


def test_only_fma_py_reads_fma_metadata():
    """tracks.csv's two header rows and the subset ranking appear in one module of the library."""
    readers = {path.relative_to(ROOT).as_posix() for path in LIBRARY
               if "header=[0, 1]" in path.read_text() or "SUBSETS.index" in path.read_text()}
    assert readers == {"fma_genres/data/fma.py"}
