"""Helpers around the models: initialisation, parameter counts, checkpoints and report figures.

Checkpoints are self-describing dicts (model name and arguments, class names, preprocessing,
config, ...) written atomically and read with ``torch.load(weights_only=True)``, so
a checkpoint can never run code. Figures are drawn headless (Agg) and returned as matplotlib Figures.
"""
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fma_genres import tasks
from fma_genres.data.fma import FMA_SMALL_GENRES
from fma_genres.runtime import preemption
from fma_genres.runtime.atomic import atomic_write
from fma_genres.runtime.figures import pyplot
from models import FINETUNED, MODELS, PROBES, accepted_args, build_model, standardisation_state
from utils import PREPROCESSING

CHECKPOINT_FORMAT = "fma-genre-classifier"
CHECKPOINT_VERSION = 3
CHECKPOINT_KEYS = ("model", "model_args", "state_dict", "class_names", "preprocessing")
# What only resuming needs: best.pt leaves it out (Adam's two moments per weight make a checkpoint three times
# its weights' size: a CNN2D's last.pt is 455 MB, its best.pt 152 MB). last.pt keeps the full state.
RESUME_KEYS = ("optimizer", "scheduler", "position")
# Format 1 kept these beside the model; format 2 groups them under "training".
TRAINING_KEYS_V1 = ("epoch", "metrics", "optimizer", "scheduler", "history", "best_val_accuracy", "best_val_loss",
                    "best_epoch", "examples_seen", "training_seconds", "wandb_run_id")


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not one of this project's."""


# -----------------------------------------------------------------------------
# initialisation and size

INITIALISERS = {
    "kaiming": lambda w: nn.init.kaiming_uniform_(w, a=0, mode="fan_in", nonlinearity="leaky_relu"),
    "xavier": nn.init.xavier_uniform_,
}


def init_weights(model, method="kaiming"):
    """Initialise Linear/Conv1d/Conv2d weights as the original did (docs/faithfulness.md: Models); biases to zero.

    "kaiming": Kaiming-uniform (a=0, fan_in, leaky_relu); "xavier": Xavier-uniform. LSTM and
    batch-norm layers keep PyTorch's defaults.
    """
    if method not in INITIALISERS:
        raise ValueError(f"Unknown init method {method!r}: choose one of {', '.join(INITIALISERS)}.")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            INITIALISERS[method](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def count_parameters(model, trainable=True):
    """Number of trainable parameters (trainable=False: all of them, frozen ones included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


# torch.compile mode, measured on a 2-core CPU (CRNN training step, batch 50, same run): the default
# mode 1.64x eager, with channels_last 1.83x, this mode with channels_last 2.19x. No CUDA graphs: the
# last batch of an epoch is smaller, and graphs would be re-recorded for it.
COMPILE_MODE = "max-autotune-no-cudagraphs"


# Inductor's autotuning writes its benchmark tables ("AUTOTUNE addmm(...)", "SingleProcess AUTOTUNE
# benchmarking takes ...", "Autotune Choices Stats") straight to stderr, 8 blocks into a CRNN run's
# output on a CPU. Off unless asked for with inductor's own environment variable.
AUTOTUNE_REPORTS = {"autotune_num_choices_displayed": ("TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED", 0),
                    "max_autotune_report_choices_stats": ("TORCHINDUCTOR_MAX_AUTOTUNE_REPORT_CHOICES_STATS", False)}


def compile_model(model, backend="inductor"):
    """``torch.compile(model)`` as main.py runs it (a backend other than inductor takes no mode)."""
    import torch._inductor.config as inductor_config

    for setting, (variable, quiet) in AUTOTUNE_REPORTS.items():
        if variable not in os.environ:
            setattr(inductor_config, setting, quiet)
    return torch.compile(model, backend=backend, mode=COMPILE_MODE if backend == "inductor" else None)


# -----------------------------------------------------------------------------
# checkpoints

def make_checkpoint(model, model_args, state_dict, class_names, preprocessing, genres=None, run=None):
    """The one checkpoint layout (format 3), from which inference rebuilds everything.

    model, model_args: ``build_model(model, **model_args)`` rebuilds the network (model_args holds
    n_mels, n_frames, n_classes and, for the models with a quirk, faithful); state_dict: its weights,
    the input's standardisation included (models.Standardise's buffers); class_names: output index ->
    genre; preprocessing: audio -> dB parameters (utils.PREPROCESSING). run: the run that trained it,
    {"config": its config, "provenance": commit, versions, hardware, command line, "training": what resumes
    it exactly (run_state.TrainingState.to_dict: epoch, optimizer, scheduler, history, ...)}, each optional.
    genres (multi-label models only, target=genres_all): {"ids": FMA genre id per output, "tree": genres.csv's
    id/parent/title lists, "thresholds": per output, tuned on validation}; the checkpoint then also records
    its task, target=genres_all (tasks.of reads it). Without it the layout is the single-label one.
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model,
                  "model_args": dict(model_args), "state_dict": state_dict, "class_names": list(class_names),
                  "preprocessing": dict(preprocessing), "config": dict((run or {}).get("config") or {}),
                  "provenance": dict((run or {}).get("provenance") or {}), "training": (run or {}).get("training")}
    if genres is not None:
        checkpoint.update(target=tasks.GenreTree.name, genres=dict(genres))
    return checkpoint


def without_resume_state(checkpoint):
    """``checkpoint`` as best.pt keeps it: everything prediction, evaluation and fine-tuning read (weights,
    config, preprocessing, genres and thresholds, the training record and its metrics), no RESUME_KEYS."""
    training = checkpoint["training"]
    return {**checkpoint, "training": training and {k: v for k, v in training.items() if k not in RESUME_KEYS}}


def from_format_1(checkpoint):
    """Format 1 kept the training state at the top level and repeated model_args["faithful"] there."""
    training = {key: checkpoint.pop(key) for key in TRAINING_KEYS_V1 if key in checkpoint}
    checkpoint.pop("faithful", None)
    config = checkpoint.setdefault("config", {})
    config.setdefault("standardise", checkpoint.get("normalisation", {}).get("mean") is not None)
    checkpoint.update(provenance={}, training=training or None)


def from_format_2(checkpoint):
    """Format 2 kept the input's {"mean", "std"} beside the weights (None: raw dB); format 3 has them in the
    model's Standardise buffers. Its CNN2D model_args said faithful, which CNN2D no longer takes."""
    normalisation = checkpoint.pop("normalisation", None) or {}
    scaling = standardisation_state(normalisation.get("mean"), normalisation.get("std"))
    checkpoint["state_dict"] = {**checkpoint["state_dict"], **scaling}
    if checkpoint["model"] in MODELS:  # an unknown name gets build_model's error later
        checkpoint["model_args"] = accepted_args(checkpoint["model"], **checkpoint["model_args"])


MIGRATIONS = {1: from_format_1, 2: from_format_2}  # version -> the step to the next one


def migrate_checkpoint(checkpoint):
    """A checkpoint of an older format in today's layout, one version at a time."""
    for version in range(checkpoint.get("version", 1), CHECKPOINT_VERSION):
        MIGRATIONS[version](checkpoint)
        checkpoint["version"] = version + 1
    return checkpoint


def save_checkpoint(checkpoint, path):
    """Write ``checkpoint`` (a ``make_checkpoint`` dict) to ``path`` atomically: a crash leaves the
    previous file intact, and a Ctrl-C or SIGTERM during the write takes effect once the file is complete
    (preemption.held)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with preemption.held():
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint of this project (any format version, migrated to today's layout);
    CheckpointError says what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Train a model first (python main.py, "
                              f"which writes runs/<model>/<run>/best.pt) or give the path of an existing .pt file.")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"Checkpoint {path} could not be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}). The file is corrupt, truncated or not a "
                              f"PyTorch checkpoint of this project; retrain or point to another file.") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no format={CHECKPOINT_FORMAT!r} "
                              f"entry). A bare state_dict of the original project loads with "
                              f"pre_trained_models.py --model=cnn1d|crnn instead.")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing or checkpoint.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"Checkpoint {path} is incompatible (version {checkpoint.get('version')}, "
                              f"missing {missing}); it was written by a newer version of this project: "
                              f"update the project (git pull) to read it.")
    return migrate_checkpoint(checkpoint)


def model_from_checkpoint(checkpoint, device="cpu"):
    """Rebuild the model a checkpoint describes, load its weights and put it in eval mode."""
    model = build_model(checkpoint["model"], **checkpoint["model_args"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"The weights in the checkpoint do not fit model {checkpoint['model']!r} "
                              f"{checkpoint['model_args']}: {str(error).splitlines()[0]}") from None
    return model.to(device).eval()


def read_bare_state_dict(path, device="cpu"):
    """The original project's checkpoint format: a plain dict of tensors without a "format" key, else None."""
    try:
        state_dict = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # load_checkpoint has already explained why the file cannot be read
        return None
    if (isinstance(state_dict, dict) and state_dict and "format" not in state_dict
            and all(isinstance(v, torch.Tensor) for v in state_dict.values())):
        return state_dict
    return None


def original_checkpoint(state_dict, model_name, path):
    """A checkpoint dict describing the original's bare weights: FMA small genres, faithful forward pass."""
    if model_name is None:
        fits = [name for name in MODELS if weights_fit(name, {"state_dict": state_dict, "model_args": {}})]
        hint = f" (these weights fit --model={fits[0]})" if fits else ""
        raise CheckpointError(f"{path} is a bare state_dict (the original project's format), which does not "
                              f"say which model it belongs to: add --model=cnn1d|crnn{hint}.")
    model_args = accepted_args(model_name, n_mels=PREPROCESSING["n_mels"], n_frames=PREPROCESSING["n_frames"],
                               n_classes=len(FMA_SMALL_GENRES), faithful=True)
    # the original fed raw dB: its weights get the Standardise layer's identity buffers
    return make_checkpoint(model_name, model_args, {**standardisation_state(), **state_dict}, FMA_SMALL_GENRES,
                           PREPROCESSING)


def weights_fit(name, checkpoint):
    """Whether checkpoint's state_dict loads into model `name` (used only to suggest the right --model)."""
    try:
        model = MODELS[name](**accepted_args(name, **checkpoint["model_args"]))
        model.load_state_dict({**standardisation_state(), **checkpoint["state_dict"]})
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


# -----------------------------------------------------------------------------
# figures


def plot_training_curves(history):
    """Loss and accuracy per epoch, train vs validation; ``history`` is a list of per-epoch dicts."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = pyplot().subplots(1, 2, figsize=(11, 4), layout="constrained")
    for split in ("train", "val"):
        label = "train" if split == "train" else "validation"
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=label)
    loss_ax.set(xlabel="Epoch", ylabel="Cross-entropy loss", title="Loss")
    acc_ax.set(xlabel="Epoch", ylabel="Accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def save_report(out_dir, metrics, targets, probabilities, class_names, history=None):
    """Write metrics.json, the task's figures (tasks.py: confusion matrix and ROC curves, or average precision
    and PR curves) and, given a ``history``, curves.png into ``out_dir`` atomically; returns the paths written."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(metrics, indent=2, allow_nan=True) + "\n"
    written = [out_dir / "metrics.json"]
    atomic_write(written[0], lambda f: f.write(text.encode()))
    figures = tasks.of(metrics).figures(metrics, targets, probabilities, class_names)
    if history:
        figures["curves.png"] = plot_training_curves(history)
    for name, fig in figures.items():
        atomic_write(out_dir / name, lambda f: fig.savefig(f, format="png", dpi=120))
        pyplot().close(fig)
        written.append(out_dir / name)
    return written


def describe_data(config):
    """What a run trained on, in words, from its config: the demo, FMA's subset and split, or the folder/CSV."""
    if config.get("demo"):
        return f"the synthetic demo data ({config.get('data_dir', 'data/demo')}, not FMA)"
    if config.get("dataset", "fma") == "fma":
        return f"FMA {config['subset']} ({config.get('split', 'official')} split)"
    return f"{config['dataset']} {config['data_dir']}"


def describe_parameters(trainable, total):
    """'438,808 parameters', or with frozen layers '1,032 trainable of 438,808 parameters'."""
    return f"{total:,} parameters" if trainable == total else f"{trainable:,} trainable of {total:,} parameters"


def describe_model(config):
    """'crnn (faithful)', or a probe's 'probe (linear head on dasheng)' (a fine-tuned encoder's alike)."""
    if config["model"] in PROBES or config["model"] in FINETUNED:
        return f"{config['model']} ({config['head']} head on {config['encoder']})"
    return f"{config['model']} ({'faithful' if config['faithful'] else 'corrected'})"


def format_summary(config, history, metrics, genres=None):
    """The run's closing text: the per-epoch table, then the reported checkpoint's test result per genre
    (tasks.of(metrics).summary; multi-label: ``genres``, the checkpoint's, gives the tree)."""
    parameters = describe_parameters(metrics["parameters"], metrics.get("total_parameters", metrics["parameters"]))
    lines = [f"\n=== {describe_model(config)}, {parameters}, {describe_data(config)} ===",
             f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8} {'lr':>8} {'s':>7}"]
    lines += [f"{row['epoch']:5d} {row['train_loss']:10.4f} {row['train_accuracy']:9.3f} {row['val_loss']:9.4f} "
              f"{row['val_accuracy']:8.3f} {row['lr']:8.1e} {row['seconds']:7.1f}" for row in history]
    reported = (f"\n{metrics['report_epoch']}.pt = epoch {metrics['reported_epoch']} (best val "
                f"{metrics['select_metric']} {metrics['best_val_score']:.3f} at epoch {metrics['best_epoch']}); "
                f"test split: ")
    headline, table = tasks.of(metrics).summary(metrics, genres)
    lines += [reported + headline, table]
    lines += [f"training time {metrics['training_seconds']:.0f} s; outputs in {config['out_dir']}/"]
    return "\n".join(lines)
