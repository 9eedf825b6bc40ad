"""A training run's state on disk: what main.py saves after every epoch (and mid-epoch), and what it reads
back to resume exactly where the run stopped.

    state = run_state.TrainingState(model_args)                    # a fresh run's counters
    checkpoint, config = run_state.load_resume(config, overrides, may_change)  # <out_dir>/last.pt, the config to go on with
    state = run_state.restore(checkpoint, model, optimizer, scheduler, config, overrides)
    run_state.save_epoch(config, data, training, position=None)    # best.pt, last.pt, history.csv
    print(run_state.resume_command(argv, config_file, out_dir))    # the command that continues the run

The checkpoint's layout is defined once, in models_utils.make_checkpoint; its "training" entry is
TrainingState.to_dict's: the epoch, its metrics, optimizer, scheduler, a mid-epoch position
(train.epoch_position) and the RUN_STATE fields.
"""
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import models_utils
from fma_genres.runtime import atomic, distributed
from fma_genres.runtime.errors import ConfigError
from fma_genres.training import encoder_tuning
from models_utils import CheckpointError

# Run state saved in every checkpoint's "training" entry besides the epoch, optimizer and scheduler.
RUN_STATE = ("history", "best_val_score", "best_val_accuracy", "best_val_loss", "best_epoch", "examples_seen",
             "training_seconds", "wandb_run_id")


@dataclass
class TrainingState:
    """Where a run stands: main.py updates it every epoch; every checkpoint saves it (to_dict)."""
    model_args: dict                   # build_model's arguments (n_mels, n_frames, n_classes, faithful)
    epoch: int = 0                     # the last finished epoch
    saved_epoch: int = 0               # the last epoch written to last.pt (not saved: it is epoch on load)
    history: list = field(default_factory=list)  # one row of metrics per epoch (history.csv)
    best_val_score: float = -1.0       # select_metric of best.pt's epoch; a tie goes to the lower val loss
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    examples_seen: int = 0             # training examples of every epoch so far: the W&B step
    training_seconds: float = 0.0
    wandb_run_id: str = None           # the W&B run a resume continues
    position: dict = None              # a mid-epoch checkpoint's train.epoch_position, taken by the next epoch
    thresholds: list = None            # multi-label: the last epoch's tuned thresholds (saved in "genres")
    provenance: dict = field(default_factory=dict)  # commit, versions, hardware, command line

    def to_dict(self, optimizer, scheduler, position=None):
        """The checkpoint's "training" entry; ``position``: a mid-epoch save's (train.epoch_position)."""
        return {"epoch": self.epoch, "metrics": self.history[-1] if self.history else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "position": position,
                **{k: getattr(self, k) for k in RUN_STATE}}

    @classmethod
    def from_dict(cls, training, model_args, thresholds=None):
        """The state a checkpoint's "training" entry saved (older ones lack best_val_score: it was the accuracy)."""
        saved = {"best_val_score": training["best_val_accuracy"], **{k: training[k] for k in RUN_STATE if k in training}}
        return cls(model_args, epoch=training["epoch"], saved_epoch=training["epoch"],
                   position=training.get("position"), thresholds=thresholds, **saved)


@dataclass
class Training:
    """What a run trains and saves: the model as saved (raw_model) and as it runs (model: compiled, or
    wrapped for torchrun), its optimiser and scheduler, and its TrainingState."""
    raw_model: object
    model: object
    optimizer: object
    scheduler: object
    state: TrainingState


def load_resume(config, overrides, may_change):
    """The checkpoint <out_dir>/last.pt and the config to continue with (resumed_config)."""
    checkpoint = distributed.from_main(models_utils.load_checkpoint, Path(config["out_dir"]) / "last.pt")
    if not (checkpoint.get("training") or {}).get("optimizer"):
        raise CheckpointError(f"{config['out_dir']}/last.pt holds no training state to resume (an exported model, "
                              f"or a copy of a best.pt, which keeps the weights but not the optimizer); it can "
                              f"predict but not resume. Start a new run instead.")
    return checkpoint, resumed_config(checkpoint["config"], config, overrides, may_change)


def resumed_config(trained, config, overrides, may_change):
    """The checkpoint's config (``trained``; a key it predates takes ``config``'s value) with the keys of
    ``may_change`` that ``overrides`` set; an override of any other key to another value is refused."""
    saved = {**config, **trained}
    conflicts = [f"{k}={v!r} (checkpoint: {saved[k]!r})" for k, v in overrides.items()
                 if k not in may_change and saved[k] != v]
    if conflicts:
        raise ConfigError(f"cannot resume {config['out_dir']}/last.pt with {', '.join(conflicts)}: it was trained "
                          f"differently. Drop those arguments, or start a new run in another --out_dir.")
    saved.update({k: v for k, v in config.items() if k in may_change and k in overrides},
                 out_dir=config["out_dir"], resume=True)
    return saved


def restore(checkpoint, model, optimizer, scheduler, config, overrides):
    """The checkpoint's weights, optimizer and scheduler into a freshly built run; returns its TrainingState."""
    training = checkpoint["training"]
    try:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
    except (RuntimeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0][:200]
        raise CheckpointError(f"{config['out_dir']}/last.pt does not fit this run ({reason}); start a new "
                              f"run in another --out_dir.") from None
    for group in optimizer.param_groups:  # an lr (encoder_lr) or weight_decay given on resume applies from now on
        group.update({k: config[k] for k in ("weight_decay",) if k in overrides})
        key = encoder_tuning.lr_key(group)
        if key in overrides:
            group.update({lr: config[key] for lr in ("lr", "warmup_lr") if lr in group})
    return TrainingState.from_dict(training, checkpoint["model_args"], (checkpoint.get("genres") or {}).get("thresholds"))


def save_epoch(config, data, training, position=None):
    """best.pt (when this epoch is the best so far), last.pt and history.csv, each written atomically;
    with ``position`` (a mid-epoch save: where the next epoch stands, train.epoch_position) last.pt only.

    A checkpoint (models_utils.make_checkpoint) holds what rebuilds the model and what resumes the run;
    best.pt leaves out the resume state (models_utils.without_resume_state). Under torchrun only rank 0 writes.
    """
    if not distributed.is_main():
        return
    out_dir, state = Path(config["out_dir"]), training.state
    record = state.to_dict(training.optimizer, training.scheduler, position)
    checkpoint = models_utils.make_checkpoint(
        config["model"], state.model_args, training.raw_model.state_dict(), data.class_names, data.preprocessing,
        genres=data.genres and {**data.genres, "thresholds": state.thresholds},
        run={"config": config, "provenance": state.provenance, "training": record})
    if position is None and state.best_epoch == state.epoch:
        models_utils.save_checkpoint(models_utils.without_resume_state(checkpoint), out_dir / "best.pt")
    models_utils.save_checkpoint(checkpoint, out_dir / "last.pt")
    if position is not None:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(state.history[0]))
    writer.writeheader()
    writer.writerows(state.history)
    atomic.atomic_write(out_dir / "history.csv", lambda f: f.write(text.getvalue().encode()))
    state.saved_epoch = state.epoch


def resume_command(argv, config_file, out_dir):
    """The command that continues this run: the same launch (python, or torchrun and its options),
    config file and overrides, its own out_dir."""
    kept = [a for a in argv[1 if config_file else 0:] if not a.startswith(("--resume=", "--out_dir=", "--overwrite="))]
    return " ".join([*distributed.launcher(), "main.py", *([config_file] if config_file else []), *kept,
                     f"--out_dir={out_dir}", "--resume=True"])
