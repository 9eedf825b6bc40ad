"""Train and evaluate one FMA genre classifier end to end (SPEC section 5), nanoGPT style.

Edit the constants below, or override any of them with --key=value:

    python main.py                                   # the original's best run: CRNN on FMA small
    python main.py --model=cnn1d --epochs=50 --lr=0.0001 --data_augmentation=True --weight_decay=0.0001
    python main.py --demo=True                       # synthetic demo data, offline, minutes on a CPU
    python main.py --resume=True                     # continue <out_dir>/last.pt after an interruption
    python main.py --prepare_only=True               # only download and build the spectrogram cache

Writes last.pt, best.pt, metrics.json, history.csv and PNG figures to out_dir (default runs/<model>)
and logs the run to Weights & Biases (offline unless an API key is configured).
"""
import allocator

allocator.keep_large_allocations()  # before numpy and torch allocate: glibc keeps freed tensors (allocator.py)

import csv
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import models_utils
import utils
from models import build_model
from models_utils import CheckpointError
from test import test  # the project's test.py (it comes first on sys.path), not the stdlib package
from train import NonFiniteLossError, train


# -----------------------------------------------------------------------------
# data
data_dir = "data"            # holds fma_metadata/ and fma_<subset>/ (the layout download_data.sh writes)
subset = "small"             # FMA subset: small (8 balanced genres) | medium (16, unbalanced) | large
download = True              # run download_data.sh when the data is missing (fma_small: 7.2 GiB)
cache_dir = ""               # spectrogram cache; "" = <data_dir>/cache
split = "official"           # official: FMA's artist-filtered train/val/test | random: the original's (val == test)
train_size = 0.8             # training fraction of the random split (the official split ignores it)
n_frames = 1291              # frames per clip (1291 = the original's ~29.95 s); smaller only for quick tests
num_workers = -1             # DataLoader worker processes; -1 = auto (see loader_workers); also caps the cache build
# model
model = "crnn"               # cnn1d | cnn2d | crnn (models.py)
faithful = True              # the original's forward pass (raw dB, its quirks); False: corrected + standardised
init = "kaiming"             # Linear/Conv weight init: kaiming (the original's) | xavier
# optimisation (Adam + cross-entropy, ReduceLROnPlateau with PyTorch defaults on the validation loss)
epochs = 30                  # training epochs
batch_size = 50              # examples per batch
lr = 1e-3                    # Adam's initial learning rate
weight_decay = 0.0           # Adam weight decay (the original used 1e-4 where enabled)
data_augmentation = False    # double the training set with SpecAugment copies (2 mel + 2 time masks, 0 dB)
seed = 0                     # seeds everything; each epoch reseeds from (seed, epoch) so resuming is exact
log_interval = 25            # batches between train-loss logs to W&B (the original's 25)
# system
device = "auto"              # auto: cuda, then mps, then cpu; or a torch device string ("cuda:1")
amp = False                  # bfloat16 autocast for speed (CUDA only, ignored elsewhere)
compile = "auto"             # torch.compile: auto = on for crnn/cnn2d (+ channels_last), off for cnn1d; True/False force it
# run
out_dir = ""                 # checkpoints and reports; "" = runs/<model> (runs/demo_<model> with demo=True)
resume = False               # continue from <out_dir>/last.pt: same result as an uninterrupted run
demo = False                 # the synthetic demo dataset (data/demo) with the DEMO settings below
prepare_only = False         # download and build the cache, print its summary, exit
wandb_project = "MusicGenreClassification"  # the original's W&B project
wandb_mode = None            # online | offline | disabled; None: $WANDB_MODE, else online iff an API key is set
# -----------------------------------------------------------------------------
CONFIG = {k: v for k, v in globals().items()
          if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}

# With demo=True these replace the defaults of keys not given on the command line. The demo dataset
# (demo_data.py) has 80 clips of 30 s, 64/8/8 train/val/test. Measured with the CRNN on 2 CPU cores
# (~13.5 s an epoch): batch 16 x 10 epochs reached 0.75 test accuracy; batch 8 (8 optimiser steps an
# epoch) reached 0.75 after 15 epochs and 1.0 (8/8, val 1.0) after 25, about 6 minutes of training.
DEMO = {"data_dir": "data/demo", "epochs": 25, "batch_size": 8, "download": False, "compile": "False"}
# compile=auto compiles these models, in channels_last layout. Measured on a 2-core CPU with freed
# memory kept (allocator.py; benchmarks/results_training.md): CRNN training steps 1.50x faster, CNN2D
# 1.20x, after an 11-29 s compile repaid within 21 steps (an fma_small epoch has 128), and the compiled
# CRNN peaks at 8.8 GB where the eager one reaches 13 GB; CNN1D 0.75x, hence off. The demo's few short
# epochs never repay the compile time.
COMPILED_MODELS = ("crnn", "cnn2d")
DEMO_TRACKS_PER_GENRE = 10
# On resume the checkpoint's config wins; only these keys may be changed on the command line.
RESUME_MAY_CHANGE = {"epochs", "log_interval", "lr", "weight_decay", "num_workers", "device", "amp", "compile",
                     "data_dir", "cache_dir", "download", "out_dir", "resume", "wandb_mode", "wandb_project"}
# Run state saved in every checkpoint besides the model, optimizer and scheduler.
RUN_STATE = ("history", "best_val_accuracy", "best_val_loss", "best_epoch", "examples_seen", "training_seconds",
             "wandb_run_id")
CHOICES = {"subset": ("small", "medium", "large"), "split": ("official", "random"),
           "model": ("cnn1d", "cnn2d", "crnn"), "init": ("kaiming", "xavier"),
           "wandb_mode": (None, "online", "offline", "disabled")}


def fail(message):
    """Stop with a one-paragraph message and exit status 1, no traceback."""
    raise SystemExit(f"error: {message}")


# -----------------------------------------------------------------------------
# configuration

def convert(key, text, default):
    """``text`` as the type of ``default``; bool takes True/False/true/false/1/0, None defaults take str."""
    if isinstance(default, bool):
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
    elif isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            pass
    else:
        return None if default is None and text.lower() == "none" else text
    fail(f"--{key}={text}: expected a {type(default).__name__} like the default {default!r}.")


def parse_overrides(argv, defaults=CONFIG):
    """``--key=value`` arguments as a dict, type-checked against ``defaults``."""
    overrides = {}
    for arg in argv:
        key, equals, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not equals:
            fail(f"cannot read argument {arg!r}: write --key=value, e.g. --epochs=5.")
        if key not in defaults:
            fail(f"unknown config key {key!r}. Valid keys: {', '.join(defaults)}.")
        overrides[key] = convert(key, text, defaults[key])
    return overrides


def make_config(overrides, defaults=CONFIG):
    """Defaults, then the demo settings (with demo=True), then the overrides; out_dir resolved and checked."""
    config = dict(defaults)
    if overrides.get("demo", defaults["demo"]):
        config.update(DEMO)
    config.update(overrides)
    if not config["out_dir"]:
        config["out_dir"] = str(Path("runs") / (f"demo_{config['model']}" if config["demo"] else config["model"]))
    config["compile"] = resolve_compile(config["compile"], config["model"])
    for key, valid in CHOICES.items():
        if config[key] not in valid:
            fail(f"{key}={config[key]!r} is not valid: choose one of {', '.join(map(str, valid))}.")
    for key in ("epochs", "batch_size", "n_frames", "log_interval"):
        if config[key] < 1:
            fail(f"{key} must be at least 1, got {config[key]}.")
    if not (config["lr"] > 0 and 0 < config["train_size"] < 1 and config["weight_decay"] >= 0):
        fail("lr must be > 0, weight_decay >= 0 and train_size between 0 and 1.")
    return config


def resolve_compile(value, model_name):
    """compile as a bool: "auto" means on for COMPILED_MODELS; True/False (or 1/0) force it."""
    text = str(value).lower()
    if text == "auto":
        return model_name in COMPILED_MODELS
    if text in ("true", "1", "false", "0"):
        return text in ("true", "1")
    fail(f"compile={value!r} is not valid: choose auto, True or False.")


def pick_device(name):
    """The torch device for ``name``; "auto" prefers CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        fail(f"device={name!r} cannot be used ({str(error).splitlines()[0]}). Use device=auto or cpu.")
    if device.type == "cpu" and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use, not the host's
    return device


def check_writable(out_dir):
    """Create ``out_dir`` and prove a file can be written there, before any work is done."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as error:
        fail(f"out_dir {out_dir} is not writable ({error.strerror or error}). Choose another with --out_dir=PATH.")


def load_resume(config, overrides):
    """The checkpoint <out_dir>/last.pt and the config to continue with (the checkpoint's own)."""
    checkpoint = models_utils.load_checkpoint(Path(config["out_dir"]) / "last.pt")
    saved = {**config, **checkpoint["config"]}
    conflicts = [f"{k}={v!r} (checkpoint: {saved[k]!r})" for k, v in overrides.items()
                 if k not in RESUME_MAY_CHANGE and saved[k] != v]
    if conflicts:
        fail(f"cannot resume {config['out_dir']}/last.pt with {', '.join(conflicts)}: it was trained "
             f"differently. Drop those arguments, or start a new run in another --out_dir.")
    saved.update({k: v for k, v in config.items() if k in RESUME_MAY_CHANGE and k in overrides},
                 out_dir=config["out_dir"], resume=True)
    return checkpoint, saved


def reseed(seed, epoch=0, loader=None):
    """Seed python, numpy, torch and the loader's shuffling from (seed, epoch)."""
    value = seed * 1_000_003 + epoch
    random.seed(value)
    np.random.seed(value % 2 ** 32)
    torch.manual_seed(value)
    for generator in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)):
        if generator is not None:
            generator.manual_seed(value)


# -----------------------------------------------------------------------------
# data

def ensure_data(config):
    """Make sure the metadata and audio are there: demo data generated, or FMA downloaded if allowed."""
    import demo_data

    data_dir, subset_name = Path(config["data_dir"]), config["subset"]
    if config["demo"]:
        try:
            demo_data.make_demo_dataset(data_dir, tracks_per_genre=DEMO_TRACKS_PER_GENRE)  # fixed data seed
        except FileExistsError as error:
            fail(str(error))
        return
    if (data_dir / "fma_metadata" / "tracks.csv").is_file() and (data_dir / f"fma_{subset_name}").is_dir():
        return
    if not config["download"]:
        fail(f"no FMA data in {data_dir} (expected {data_dir}/fma_metadata/tracks.csv and "
             f"{data_dir}/fma_{subset_name}/). Download it with --download=True or "
             f"`bash download_data.sh {subset_name} {data_dir}`, point --data_dir at an existing copy, "
             f"or try the synthetic demo with --demo=True.")
    script = Path(__file__).resolve().with_name("download_data.sh")
    print(f"data: {data_dir} has no fma_{subset_name}; running bash {script.name} {subset_name} {data_dir}")
    if subprocess.run(["bash", str(script), subset_name, str(data_dir)]).returncode != 0:
        fail(f"download_data.sh could not fetch fma_{subset_name} into {data_dir} (its message is above). "
             f"Rerun it (it resumes), or download the archives by hand as the README describes.")


def loader_workers(requested, device):
    """DataLoader workers: ``requested`` when >= 0; auto (-1) overlaps loading with GPU compute on CUDA
    and loads in the main process on a CPU, whose cores the model already uses."""
    if requested >= 0:
        return requested
    return min(4, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


def build_data(config, device):
    """Metadata -> splits -> spectrogram cache -> loaders; None when prepare_only."""
    ensure_data(config)
    tracks, class_names = utils.load_metadata(config["data_dir"], config["subset"])
    splits = utils.split_tracks(tracks, mode=config["split"], train_size=config["train_size"], seed=config["seed"])
    preprocessing = {**utils.PREPROCESSING, "n_frames": config["n_frames"]}
    cache_root = config["cache_dir"] or Path(config["data_dir"]) / "cache"
    cache = utils.build_cache(tracks, cache_root, config["subset"], preprocessing,
                              num_workers=config["num_workers"] if config["num_workers"] > 0 else None)
    if config["prepare_only"]:  # build_cache has printed the cache's summary
        print("prepare_only=True: the data and the cache are ready; nothing was trained.")
        return None
    if config["split"] == "random":
        print("warning: split=random uses the same tracks for validation and test (the original's setup): "
              "the test accuracy is not from held-out data, and artists leak between train and test.")
    loaders, normalisation = utils.make_loaders(
        cache, splits, config["batch_size"], num_workers=loader_workers(config["num_workers"], device), faithful=config["faithful"],
        augment=config["data_augmentation"], seed=config["seed"], device=device.type)
    sizes = ", ".join(f"{name} {len(loader.dataset)}" for name, loader in loaders.items())
    print(f"data: {config['subset']} in {config['data_dir']}, {config['split']} split: {sizes} clips")
    return {"loaders": loaders, "class_names": class_names, "preprocessing": preprocessing,
            "normalisation": normalisation}


# -----------------------------------------------------------------------------
# model and training state

def build_training(config, data, device, checkpoint=None, overrides=()):
    """Model (initialised, or from the checkpoint), Adam, ReduceLROnPlateau and the run state."""
    model_args = {"n_mels": data["preprocessing"]["n_mels"], "n_frames": config["n_frames"],
                  "n_classes": len(data["class_names"]), "faithful": config["faithful"]}
    reseed(config["seed"])
    try:
        model = models_utils.init_weights(build_model(config["model"], **model_args), config["init"]).to(device)
    except ValueError as error:
        fail(str(error))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    state = {"epoch": 0, "history": [], "best_val_accuracy": -1.0, "best_val_loss": float("inf"), "best_epoch": 0,
             "examples_seen": 0, "training_seconds": 0.0, "wandb_run_id": None, "model_args": model_args}
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["state_dict"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).splitlines()[0][:200]
            raise CheckpointError(f"{config['out_dir']}/last.pt does not fit this run ({reason}); start a new "
                                  f"run in another --out_dir.") from None
        state.update({k: checkpoint[k] for k in RUN_STATE}, epoch=checkpoint["epoch"])
        for group in optimizer.param_groups:  # an lr or weight_decay given on resume applies from now on
            group.update({k: config[k] for k in ("lr", "weight_decay") if k in overrides})
    state["saved_epoch"] = state["epoch"]
    return model, optimizer, scheduler, state


# -----------------------------------------------------------------------------
# Weights & Biases (only this file talks to it)

def setup_wandb(config, state, n_parameters):
    """Start (on resume: continue) the W&B run; None when disabled or when W&B cannot start.

    Mode: wandb_mode, else $WANDB_MODE, else online iff an API key is configured (checked with
    prompt=False, so it never waits for input), else offline.
    """
    mode = config["wandb_mode"] or os.environ.get("WANDB_MODE")
    if mode == "disabled":
        return None
    import wandb
    mode = mode or ("online" if wandb.login(prompt=False) else "offline")
    os.environ["WANDB_MODE"] = mode  # set before init, so an offline run never probes the network
    try:
        run = wandb.init(project=config["wandb_project"], config=config, mode=mode, id=state["wandb_run_id"],
                         resume="allow" if state["wandb_run_id"] else None, name=Path(config["out_dir"]).name)
    except Exception as error:  # W&B is a convenience: the files in out_dir are the record
        print(f"warning: W&B could not start ({type(error).__name__}: {error}); continuing without it. "
              f"Use --wandb_mode=offline, or disabled.")
        return None
    run.summary["parameters"] = n_parameters
    state["wandb_run_id"] = run.id
    return run


def log_final_wandb(run, out_dir, metrics, result, class_names, files):
    """Test metrics, confusion matrix, ROC curves, the PNGs and best.pt (as an artifact)."""
    import wandb
    run.summary.update({f"test/{k}": metrics[k] for k in ("test_accuracy", "test_loss", "macro_f1", "best_epoch")})
    run.log({"test/accuracy": metrics["test_accuracy"], "test/loss": metrics["test_loss"],
             "test/macro_f1": metrics["macro_f1"],
             "test/confusion_matrix": wandb.plot.confusion_matrix(
                 y_true=result["targets"].tolist(), preds=result["predictions"].tolist(), class_names=class_names),
             "test/roc": wandb.plot.roc_curve(result["targets"], result["probabilities"], labels=class_names),
             **{f"figures/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"}})
    artifact = wandb.Artifact(f"{metrics['model']}-best", type="model", metadata=metrics)
    artifact.add_file(str(Path(out_dir) / "best.pt"))
    run.log_artifact(artifact)


def finish_wandb(run, exit_code):
    """Close the run; for an offline run, say how to upload it."""
    if run is not None:
        offline, run_dir = run.settings.mode == "offline", Path(run.dir).parent
        run.finish(exit_code=exit_code)
        if offline:
            print(f"W&B: the run is saved offline in {run_dir}; upload it with: wandb sync {run_dir}")


# -----------------------------------------------------------------------------
# epochs, checkpoints, evaluation

def save_epoch(config, data, model, optimizer, scheduler, state):
    """best.pt (when this epoch is the best so far), last.pt and history.csv, each written atomically.

    A checkpoint holds what rebuilds the model (CONTRACT.md format) and what resumes the run exactly.
    """
    out_dir = Path(config["out_dir"])
    checkpoint = {
        "model": config["model"], "model_args": state["model_args"], "faithful": config["faithful"],
        "state_dict": model.state_dict(), "class_names": data["class_names"], "preprocessing": data["preprocessing"],
        "normalisation": data["normalisation"], "config": config, "epoch": state["epoch"],
        "metrics": state["history"][-1], "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        **{k: state[k] for k in RUN_STATE}}
    if state["best_epoch"] == state["epoch"]:
        models_utils.save_checkpoint(checkpoint, out_dir / "best.pt")
    models_utils.save_checkpoint(checkpoint, out_dir / "last.pt")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(state["history"][0]))
    writer.writeheader()
    writer.writerows(state["history"])
    utils.atomic_write(out_dir / "history.csv", lambda f: f.write(text.getvalue().encode()))
    state["saved_epoch"] = state["epoch"]


def run_epochs(config, data, model, raw_model, optimizer, scheduler, state, device, wandb_run):
    """Train from state["epoch"] + 1 to config["epochs"], validating and saving after each epoch."""
    loaders = data["loaders"]
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        reseed(config["seed"], epoch, loaders["train"])  # same batches and dropout whether resumed or not
        start, seen, lr_now = time.time(), state["examples_seen"], optimizer.param_groups[0]["lr"]

        def on_log(examples, loss):  # W&B step = examples seen in the run, as the original logged it
            if wandb_run is not None:
                wandb_run.log({"train/loss": loss, "epoch": epoch}, step=seen + examples)

        try:
            trained = train(model, loaders["train"], optimizer, device, on_log=on_log, amp=config["amp"],
                            log_interval=config["log_interval"], desc=f"epoch {epoch}/{config['epochs']}")
        except NonFiniteLossError as error:
            kept = (f"{config['out_dir']}/last.pt (epoch {state['epoch']}) is kept" if state["epoch"]
                    else "no checkpoint exists")
            raise NonFiniteLossError(f"training stopped in epoch {epoch}: {error}. Nothing of this epoch was "
                                     f"saved; {kept}. Lower the learning rate (lr={config['lr']:g}) or try "
                                     f"--faithful=False (standardised input).") from None
        val = test(model, loaders["val"], device, amp=config["amp"], desc="validate")
        scheduler.step(val["loss"])
        seconds = time.time() - start
        row = {"epoch": epoch, "train_loss": trained["loss"], "train_accuracy": trained["accuracy"],
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr_now, "seconds": round(seconds, 2)}
        state["history"].append(row)
        state.update(epoch=epoch, examples_seen=seen + trained["examples"],
                     training_seconds=state["training_seconds"] + seconds)
        # best = the highest val accuracy; a tie goes to the lower val loss (small val sets tie often)
        improved = (val["accuracy"], -val["loss"]) > (state["best_val_accuracy"], -state["best_val_loss"])
        if improved:
            state.update(best_val_accuracy=val["accuracy"], best_val_loss=val["loss"], best_epoch=epoch)
        save_epoch(config, data, raw_model, optimizer, scheduler, state)
        print(f"epoch {epoch:3d}/{config['epochs']} | train loss {row['train_loss']:.4f} acc "
              f"{row['train_accuracy']:.3f} | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} | "
              f"lr {lr_now:.1e} | {seconds:.1f} s{' | best.pt' if improved else ''}", flush=True)
        if wandb_run is not None:
            wandb_run.log({"epoch": epoch, "train/epoch_loss": row["train_loss"],
                           "train/accuracy": row["train_accuracy"], "val/loss": row["val_loss"],
                           "val/accuracy": row["val_accuracy"], "lr": lr_now}, step=state["examples_seen"])


def evaluate_best(config, data, state, device, n_parameters):
    """best.pt on the test split -> metrics.json and PNGs; returns (metrics, test result, files written)."""
    best = models_utils.load_checkpoint(Path(config["out_dir"]) / "best.pt", device)
    result = test(models_utils.model_from_checkpoint(best, device), data["loaders"]["test"], device,
                  amp=config["amp"], desc="test")
    scores = models_utils.classification_metrics(result["targets"], result["probabilities"], data["class_names"])
    metrics = {"test_accuracy": scores.pop("accuracy"), "test_loss": result["loss"], **scores,
               "test_examples": result["examples"], "best_epoch": best["epoch"],
               "best_val_accuracy": best["best_val_accuracy"], "epochs": state["epoch"],
               "training_seconds": round(state["training_seconds"], 1), "parameters": n_parameters,
               **{k: config[k] for k in ("model", "faithful", "subset", "split")},
               "val_is_test": config["split"] == "random"}
    files = models_utils.save_report(config["out_dir"], metrics, result["targets"], result["probabilities"],
                                     data["class_names"], history=state["history"])
    return metrics, result, files


def print_summary(config, state, metrics):
    """Per-epoch table, then the best checkpoint's test result per genre."""
    print(f"\n=== {config['model']} ({'faithful' if config['faithful'] else 'corrected'}), {metrics['parameters']:,}"
          f" parameters, FMA {config['subset']} ({config['split']} split) ===")
    print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8} {'lr':>8} {'s':>7}")
    for row in state["history"]:
        print(f"{row['epoch']:5d} {row['train_loss']:10.4f} {row['train_accuracy']:9.3f} {row['val_loss']:9.4f} "
              f"{row['val_accuracy']:8.3f} {row['lr']:8.1e} {row['seconds']:7.1f}")
    print(f"\nbest.pt = epoch {metrics['best_epoch']} (val accuracy {metrics['best_val_accuracy']:.3f}); test split: "
          f"loss {metrics['test_loss']:.4f}, accuracy {metrics['test_accuracy']:.3f}, macro F1 "
          f"{metrics['macro_f1']:.3f} ({metrics['test_examples']} clips)")
    print(models_utils.format_metrics(metrics))
    print(f"training time {state['training_seconds']:.0f} s; outputs in {config['out_dir']}/")


# -----------------------------------------------------------------------------

def run(config, overrides):
    """The whole run; returns the exit status."""
    checkpoint = None
    if not config["prepare_only"]:
        check_writable(config["out_dir"])
        if config["resume"]:
            checkpoint, config = load_resume(config, overrides)
    device = pick_device(config["device"])
    data = build_data(config, device)
    if data is None:
        return 0
    raw_model, optimizer, scheduler, state = build_training(config, data, device, checkpoint, overrides)
    n_parameters = models_utils.count_parameters(raw_model)
    print(f"model: {config['model']} ({'faithful' if config['faithful'] else 'corrected'}), {n_parameters:,} "
          f"parameters, on {device}" + (f"; resuming after epoch {state['epoch']}" if checkpoint else ""))
    model = raw_model
    if config["compile"]:  # the first steps pay the compile time; see COMPILED_MODELS
        if config["model"] in COMPILED_MODELS:  # 4-D activations: channels_last speeds the convolutions
            raw_model.to(memory_format=torch.channels_last)
        model = models_utils.compile_model(raw_model)
    wandb_run, exit_code = setup_wandb(config, state, n_parameters), 1
    try:
        run_epochs(config, data, model, raw_model, optimizer, scheduler, state, device, wandb_run)
        metrics, result, files = evaluate_best(config, data, state, device, n_parameters)
        if wandb_run is not None:
            log_final_wandb(wandb_run, config["out_dir"], metrics, result, data["class_names"], files)
        print_summary(config, state, metrics)
        exit_code = 0
    except KeyboardInterrupt:
        exit_code = 130
        if state["epoch"] > state["saved_epoch"]:  # the epoch had finished but was not saved yet
            save_epoch(config, data, raw_model, optimizer, scheduler, state)
        raise
    finally:
        finish_wandb(wandb_run, exit_code)
    return 0


def main(argv=None):
    """Parse ``argv`` (default sys.argv[1:]), run, and turn every expected failure into a clear exit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = parse_overrides(argv)
    config = make_config(overrides)
    try:
        return run(config, overrides)
    except KeyboardInterrupt:
        last = Path(config["out_dir"]) / "last.pt"
        again = " ".join(["python main.py", *(a for a in argv if not a.startswith("--resume=")), "--resume=True"])
        print(f"\ninterrupted: {last} holds the last completed epoch. Continue with: {again}" if last.is_file()
              else "\ninterrupted before the first epoch finished: rerun the same command (a cache build resumes).",
              file=sys.stderr)
        return 130
    except (NonFiniteLossError, CheckpointError, utils.DataError) as error:
        fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
