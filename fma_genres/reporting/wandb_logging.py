"""Weights & Biases for main.py: the only module that talks to W&B (train.py and test.py never do).

    log = wandb_logging.start(config, state, model, n_parameters, defaults)  # does nothing when W&B is off
    log.train_loss(loss, epoch, step)               # every log_interval batches and at each epoch's end
    log.epoch(row, step)                            # an epoch's row of history.csv
    log.final(config, data, metrics, result, files) # test metrics, tables, plots, figures, the checkpoint
    log.finish(exit_code)

Every key is train/*, val/* or test/* (docs/wandb.md lists them), plus
W&B's own gradients/* and parameters/* histograms with watch=True. The step is the number of training
examples seen in the run, as the original logged it, so train/loss points and epoch rows share one
axis, also across a resumed run. A run is offline unless an API key is configured; W&B never prompts.
"""
import os
from pathlib import Path

import numpy as np

import utils
from fma_genres import tasks
from fma_genres.runtime import errors

WATCH_LOG_FREQ = 10  # batches between gradient and parameter histograms: the original's wandb.watch(log_freq=10)
# Datasets whose clips may go to W&B by default (upload_audio=auto): FMA's are Creative Commons, the demo's
# synthetic. A user's own recordings are uploaded only with upload_audio=True.
SHAREABLE_AUDIO = ("fma", "demo")
# history.csv column -> W&B key of the per-epoch row
EPOCH_KEYS = {"epoch": "train/epoch", "train_loss": "train/epoch_loss", "train_accuracy": "train/accuracy",
              "lr": "train/lr", "seconds": "train/epoch_seconds", "val_loss": "val/loss", "val_accuracy": "val/accuracy"}


def dataset_name(config):
    """The dataset tag: demo (the synthetic demo), else the dataset key (fma, folder, csv)."""
    return "demo" if config["demo"] else config.get("dataset", "fma")


def audio_shareable(config):
    """What upload_audio=auto means for this run: upload only Creative Commons (or synthetic) clips."""
    return dataset_name(config) in SHAREABLE_AUDIO


def run_name(config, defaults):
    """"<model> <key=value of every key of ``defaults`` (those that name runs) that differs> seed=<seed>"."""
    changed = [f"{key}={value}" for key, value in config.items() if key in defaults and value != defaults[key]]
    return " ".join([config["model"], *changed, f"seed={config['seed']}"])


def run_tags(config):
    return [f"model:{config['model']}", f"subset:{config['subset']}", f"split:{config['split']}",
            f"faithful:{config['faithful']}", f"dataset:{dataset_name(config)}"]


def resolve_mode(config):
    """wandb_mode, else $WANDB_MODE, else online iff an API key is configured (never prompts), else offline."""
    mode = config["wandb_mode"] or os.environ.get("WANDB_MODE")
    if mode in (None, ""):
        import wandb
        mode = "online" if wandb.login(prompt=False) else "offline"
    return mode


def start(config, state, model, n_parameters, defaults):
    """Start (on resume: continue) the run of ``state.wandb_run_id`` (a run_state.TrainingState); a WandbLog
    that does nothing when W&B is disabled or cannot start. ``defaults``: the keys that name runs, with the
    values the run's name compares it with (configurator.naming_defaults).

    Mode: wandb_mode, else $WANDB_MODE, else online iff an API key is configured (checked with
    prompt=False, so it never waits for input), else offline.
    """
    mode = resolve_mode(config)
    if mode == "disabled":
        return WandbLog(None)
    import wandb
    os.environ["WANDB_MODE"] = mode  # set before init, so an offline run never probes the network
    try:
        run = wandb.init(project=config["wandb_project"], mode=mode, name=run_name(config, defaults),
                         tags=run_tags(config), group=config["wandb_group"] or None,
                         config={**config, "parameters": n_parameters, "provenance": state.provenance},
                         id=state.wandb_run_id, resume="allow" if state.wandb_run_id else None)
    except Exception as error:  # W&B is a convenience: the files in out_dir are the record
        print(f"warning: W&B could not start ({type(error).__name__}: {error}); continuing without it. "
              f"Use --wandb_mode=offline, or disabled.")
        return WandbLog(None)
    if config["watch"]:  # the model's own (uncompiled) modules carry the hooks
        run.watch(model, log="all", log_freq=WATCH_LOG_FREQ)
    state.wandb_run_id = run.id
    return WandbLog(run)


class WandbLog:
    """The run's logging calls; each does nothing without a run (W&B disabled or unavailable)."""

    def __init__(self, run):
        self.run = run

    def train_loss(self, loss, epoch, step):
        """The mean loss of the batches since the previous point, at step = examples seen in the run."""
        if self.run is not None:
            self.run.log({"train/loss": loss, "train/epoch": epoch}, step=step)

    def epoch(self, row, step):
        """An epoch's row of history.csv, at the step of its last batch (the epoch's last train/loss point)."""
        if self.run is not None:
            selected = {f"val/{column[4:]}": value for column, value in row.items()  # select_metric's column
                        if column.startswith("val_") and column not in EPOCH_KEYS}
            self.run.log({**{key: row[column] for column, key in EPOCH_KEYS.items()}, **selected}, step=step)

    def final(self, config, data, metrics, result, files):
        """The task's test entries (tasks.py: metrics, per-genre table, curves, ...); the hardest clips; the
        report's PNGs; the reported checkpoint as an artifact unless upload_checkpoints=False."""
        if self.run is None:
            return
        import wandb
        task = tasks.of(metrics)
        self.run.summary.update({"val/best_epoch": metrics["best_epoch"],
                                 "val/best_accuracy": metrics["best_val_accuracy"],
                                 f"val/best_{metrics['select_metric']}": metrics["best_val_score"],
                                 "test/epoch": metrics["reported_epoch"]})
        figures = {f"test/figures/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        logged = {**logged_entries(task.wandb_entries(metrics, result, data.class_names)), **figures}
        hardest = task.hardest(result, config["hardest_clips"])
        if hardest:
            logged["test/hardest_clips"] = hardest_clips_table(config, data, result, hardest)
        self.run.log(logged)
        if config["upload_checkpoints"]:
            name = config["report_epoch"]  # best.pt or last.pt: the weights the test metrics come from
            artifact = wandb.Artifact(f"{config['model']}-{name}", type="model", metadata=metrics)
            artifact.add_file(str(Path(config["out_dir"]) / f"{name}.pt"))
            self.run.log_artifact(artifact)

    def finish(self, exit_code):
        """Close the run; for an offline run, say how to look at it and how to upload it."""
        if self.run is not None:
            offline, run_dir = self.run.settings.mode == "offline", Path(self.run.dir).parent
            self.run.finish(exit_code=exit_code)
            if offline:
                print(f"W&B: the run is saved offline in {run_dir}; look at it with: wandb leet {run_dir} ; "
                      f"upload it with: wandb sync {run_dir}")


def logged_entries(entries):
    """A task's W&B entries (plain data: tasks.Table, Bar, ConfusionMatrix, Curves; numbers) as W&B objects."""
    return {key: to_wandb(value) for key, value in entries.items()}


def to_wandb(value):
    """One entry as W&B logs it (a number stays a number)."""
    import wandb
    curves = {"roc": wandb.plot.roc_curve, "pr": wandb.plot.pr_curve}
    convert = {
        tasks.Table: lambda t: wandb.Table(columns=t.columns, data=t.rows),
        tasks.Bar: lambda b: wandb.plot.bar(to_wandb(b.table), b.x, b.y, title=b.title),
        tasks.ConfusionMatrix: lambda c: wandb.plot.confusion_matrix(y_true=c.y_true, preds=c.preds,
                                                                     class_names=c.class_names),
        tasks.Curves: lambda c: curves[c.kind](c.targets, c.scores, labels=c.labels, classes_to_plot=c.classes_to_plot),
    }.get(type(value))
    return convert(value) if convert else value


def hardest_clips_table(config, data, result, hardest):
    """The most confidently wrong test clips (``hardest``: the task's [(index, true, predicted)]): track, true
    and predicted genre, every genre's probability, the mel-spectrogram the model saw and (with
    upload_audio) that part of the audio."""
    import wandb
    names, probabilities = data.class_names, result["probabilities"]
    test_set = data.loaders["test"].dataset  # the test loader keeps the split's order: result's rows
    table = wandb.Table(columns=["track_id", "true", "predicted", "confidence",
                                 *(f"p({genre})" for genre in names), "mel", "audio"])
    for i, true, predicted in hardest:
        track_id = test_set.track_ids[i]
        audio = clip_audio(data.tracks.loc[track_id, "path"], data.preprocessing) \
            if config["upload_audio"] else None
        row = test_set.cache[track_id]  # a probe's is its windows' embeddings: no picture
        table.add_data(track_id, names[true], names[predicted], float(probabilities[i, predicted]),
                       *map(float, probabilities[i]), wandb.Image(mel_image(row)) if row.ndim == 2 else None, audio)
    return table


def mel_image(mel_db):
    """A (n_mels, n_frames) dB spectrogram as an RGB array: low frequencies at the bottom, magma colours."""
    from matplotlib import colormaps
    mel = np.flipud(np.asarray(mel_db, dtype=np.float32))
    scaled = (mel - mel.min()) / max(float(mel.max() - mel.min()), 1e-6)
    return (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)


def clip_audio(path, preprocessing):
    """The part of the clip the model saw (its first n_frames frames; a probe's: all) as wandb.Audio, decoded by the
    project's own loader; None with a warning when the file no longer decodes (the run still finishes)."""
    import wandb
    p = preprocessing
    try:
        audio = utils.load_audio(path, p["sample_rate"])
    except errors.DataError as error:
        print(f"warning: W&B hardest clips: no audio: {error}")
        return None
    seen = p["n_frames"] * p["hop_length"] if "n_frames" in p else None  # a probe's windows span the clip
    return wandb.Audio(audio[:seen], sample_rate=p["sample_rate"])


def summary_run(config, group, job_type, summary, tables=None, images=()):
    """One run in an experiment's W&B group holding its aggregate (experiments.py: a study's best trial,
    trials table and figures; the mean and spread over seeds); nothing when W&B is disabled."""
    mode = resolve_mode(config)
    if mode == "disabled":
        return
    import wandb
    os.environ["WANDB_MODE"] = mode
    try:
        run = wandb.init(project=config["wandb_project"], mode=mode, group=group, job_type=job_type,
                         name=f"{group} {job_type}")
    except Exception as error:  # W&B is a convenience: the experiment's files are the record
        print(f"warning: W&B could not start ({type(error).__name__}: {error}); the files are written.")
        return
    run.summary.update(summary)
    run.log({**{name: wandb.Table(dataframe=frame) for name, frame in (tables or {}).items()},
             **{Path(path).stem: wandb.Image(str(path)) for path in images}})
    run.finish()
