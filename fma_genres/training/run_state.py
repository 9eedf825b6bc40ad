"""A training run's state on disk: what main.py saves after every epoch (and mid-epoch), and what it reads
back to resume exactly where the run stopped.

    state = run_state.new_state(model_args, checkpoint)            # a fresh run's counters, or a resumed one's
    checkpoint, config = run_state.load_resume(config, overrides)  # <out_dir>/last.pt and the config it continues
    run_state.restore(checkpoint, model, optimizer, scheduler, state, config, overrides)
    run_state.save_epoch(config, data, model, optimizer, scheduler, state)  # best.pt, last.pt, history.csv
    print(run_state.resume_command(argv, config_file, out_dir))    # the command that continues the run

The checkpoint's layout is defined once, in models_utils.make_checkpoint; its "training" entry holds the
epoch, optimizer, scheduler, a mid-epoch position (train.epoch_position) and the RUN_STATE below.
"""
import csv
import io
from pathlib import Path

import models_utils
from fma_genres.runtime import atomic, distributed
from fma_genres.runtime.errors import ConfigError
from models_utils import CheckpointError

# On resume the checkpoint's config wins; only these keys may be changed on the command line.
RESUME_MAY_CHANGE = {"epochs", "log_interval", "lr", "weight_decay", "num_workers", "cache_workers", "preload",
                     "device", "amp", "compile", "data_dir", "cache_dir", "download", "allow_partial", "out_dir",
                     "resume", "overwrite", "wandb_mode", "wandb_project", "save_interval", "wandb_group", "watch",
                     "hardest_clips", "upload_audio", "upload_checkpoints"}
# Run state saved in every checkpoint's "training" entry besides the epoch, optimizer and scheduler.
RUN_STATE = ("history", "best_val_score", "best_val_accuracy", "best_val_loss", "best_epoch", "examples_seen",
             "training_seconds", "wandb_run_id")


def new_state(model_args, checkpoint=None):
    """The counters of a run before its first epoch (a resumed run's come from restore)."""
    return {"epoch": 0, "saved_epoch": 0, "history": [], "best_val_score": -1.0, "best_val_accuracy": -1.0,
            "best_val_loss": float("inf"), "best_epoch": 0, "examples_seen": 0, "training_seconds": 0.0,
            "wandb_run_id": None, "model_args": model_args,
            "thresholds": ((checkpoint or {}).get("genres") or {}).get("thresholds")}


def load_resume(config, overrides):
    """The checkpoint <out_dir>/last.pt and the config to continue with (the checkpoint's own)."""
    checkpoint = distributed.from_main(models_utils.load_checkpoint, Path(config["out_dir"]) / "last.pt")
    if not (checkpoint.get("training") or {}).get("optimizer"):
        raise CheckpointError(f"{config['out_dir']}/last.pt holds no training state to resume (an exported model, "
                              f"or a copy of a best.pt, which keeps the weights but not the optimizer); it can "
                              f"predict but not resume. Start a new run instead.")
    saved = {**config, **checkpoint["config"]}
    conflicts = [f"{k}={v!r} (checkpoint: {saved[k]!r})" for k, v in overrides.items()
                 if k not in RESUME_MAY_CHANGE and saved[k] != v]
    if conflicts:
        raise ConfigError(f"cannot resume {config['out_dir']}/last.pt with {', '.join(conflicts)}: it was trained "
                          f"differently. Drop those arguments, or start a new run in another --out_dir.")
    saved.update({k: v for k, v in config.items() if k in RESUME_MAY_CHANGE and k in overrides},
                 out_dir=config["out_dir"], resume=True)
    return checkpoint, saved


def restore(checkpoint, model, optimizer, scheduler, state, config, overrides):
    """The checkpoint's weights, optimizer, scheduler and RUN_STATE into a freshly built run."""
    training = checkpoint["training"]
    try:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
    except (RuntimeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0][:200]
        raise CheckpointError(f"{config['out_dir']}/last.pt does not fit this run ({reason}); start a new "
                              f"run in another --out_dir.") from None
    training.setdefault("best_val_score", training["best_val_accuracy"])  # saved before select_metric
    state.update({k: training[k] for k in RUN_STATE}, epoch=training["epoch"], saved_epoch=training["epoch"],
                 position=training.get("position"))
    for group in optimizer.param_groups:  # an lr or weight_decay given on resume applies from now on
        group.update({k: config[k] for k in ("lr", "weight_decay") if k in overrides})


def save_epoch(config, data, model, optimizer, scheduler, state, position=None):
    """best.pt (when this epoch is the best so far), last.pt and history.csv, each written atomically;
    with ``position`` (a mid-epoch save: where the next epoch stands, train.epoch_position) last.pt only.

    A checkpoint (models_utils.make_checkpoint) holds what rebuilds the model and what resumes the run;
    best.pt leaves out the resume state (models_utils.without_resume_state). Under torchrun only rank 0 writes.
    """
    if not distributed.is_main():
        return
    out_dir = Path(config["out_dir"])
    training = {"epoch": state["epoch"], "metrics": state["history"][-1] if state["history"] else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "position": position,
                **{k: state[k] for k in RUN_STATE}}
    checkpoint = models_utils.make_checkpoint(
        config["model"], state["model_args"], model.state_dict(), data["class_names"], data["preprocessing"],
        config, state["provenance"], training,
        genres=data["genres"] and {**data["genres"], "thresholds": state["thresholds"]})
    if position is None and state["best_epoch"] == state["epoch"]:
        models_utils.save_checkpoint(models_utils.without_resume_state(checkpoint), out_dir / "best.pt")
    models_utils.save_checkpoint(checkpoint, out_dir / "last.pt")
    if position is not None:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(state["history"][0]))
    writer.writeheader()
    writer.writerows(state["history"])
    atomic.atomic_write(out_dir / "history.csv", lambda f: f.write(text.getvalue().encode()))
    state["saved_epoch"] = state["epoch"]


def resume_command(argv, config_file, out_dir):
    """The command that continues this run: the same launch (python, or torchrun and its options),
    config file and overrides, its own out_dir."""
    kept = [a for a in argv[1 if config_file else 0:] if not a.startswith(("--resume=", "--out_dir=", "--overwrite="))]
    return " ".join([*distributed.launcher(), "main.py", *([config_file] if config_file else []), *kept,
                     f"--out_dir={out_dir}", "--resume=True"])
