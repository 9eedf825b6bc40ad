"""Weights & Biases for main.py: the only module that talks to W&B (train.py and test.py never do).

    log = wandb_logging.start(config, state, model, n_parameters, defaults)  # does nothing when W&B is off
    log.train_loss(loss, epoch, step)               # every log_interval batches and at each epoch's end
    log.epoch(row, step)                            # an epoch's row of history.csv
    log.final(config, data, metrics, result, files) # test metrics, tables, plots, figures, the checkpoint
    log.finish(exit_code)

Every key is train/*, val/* or test/* (README, "Reviewing a run on Weights & Biases", lists them), plus
W&B's own gradients/* and parameters/* histograms with watch=True. The step is the number of training
examples seen in the run, as the original logged it, so train/loss points and epoch rows share one
axis, also across a resumed run. A run is offline unless an API key is configured; W&B never prompts.
"""
import os
from pathlib import Path

import numpy as np

import utils
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
        """Test metrics; per-genre table and F1 bars; confusion matrix, ROC and PR curves; the hardest
        clips; the report's PNGs; the reported checkpoint as an artifact unless upload_checkpoints=False."""
        if self.run is None:
            return
        import wandb
        targets, probabilities = result["targets"], result["probabilities"]
        self.run.summary.update({"val/best_epoch": metrics["best_epoch"],
                                 "val/best_accuracy": metrics["best_val_accuracy"],
                                 f"val/best_{metrics['select_metric']}": metrics["best_val_score"],
                                 "test/epoch": metrics["reported_epoch"]})
        figures = {f"test/figures/{p.stem}": wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        if metrics.get("target") == "genres_all":  # multi-label: AP per genre, PR curves (multilabel_report)
            from fma_genres import multilabel_report
            self.run.log({**multilabel_report.wandb_entries(metrics, targets, probabilities), **figures})
        else:
            self.run.log(single_label_entries(config, data, metrics, result, figures))
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


def single_label_entries(config, data, metrics, result, figures):
    """test/* of a single-label run: scores, per-genre table and F1 bars, confusion matrix, ROC and PR
    curves, the report's figures and the hardest clips."""
    import wandb
    names, targets, probabilities = data.class_names, result["targets"], result["probabilities"]
    per_genre = per_genre_table(metrics)
    logged = {"test/accuracy": metrics["test_accuracy"], "test/loss": metrics["test_loss"],
              "test/balanced_accuracy": metrics["balanced_accuracy"], "test/macro_f1": metrics["macro_f1"],
              "test/per_genre": per_genre,
              "test/f1_per_genre": wandb.plot.bar(per_genre, "genre", "f1", title="Test F1 per genre"),
              "test/confusion_matrix": wandb.plot.confusion_matrix(
                  y_true=targets.tolist(), preds=result["predictions"].tolist(), class_names=names),
              "test/roc": wandb.plot.roc_curve(targets, probabilities, labels=names),
              "test/pr": wandb.plot.pr_curve(targets, probabilities, labels=names), **figures}
    if config["hardest_clips"]:
        logged["test/hardest_clips"] = hardest_clips_table(config, data, result)
    return logged


def per_genre_table(metrics):
    """One row per genre: precision, recall, F1, support and ROC AUC (None for a genre absent from test)."""
    import wandb
    columns = ["genre", "precision", "recall", "f1", "support", "roc_auc"]
    rows = [[genre, *(scores[c] for c in columns[1:5]), metrics["roc_auc"][genre]]
            for genre, scores in metrics["per_class"].items()]
    return wandb.Table(columns=columns, data=rows)


def hardest_clips(targets, probabilities, n):
    """Indices of the ``n`` most confidently wrong predictions, the most confident first."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != targets)
    return wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")][:n]


def hardest_clips_table(config, data, result):
    """The hardest_clips most confidently wrong test clips: track, true and predicted genre, every genre's
    probability, the mel-spectrogram the model saw and (with upload_audio) that part of the audio."""
    import wandb
    names, targets, probabilities = data.class_names, result["targets"], result["probabilities"]
    test_set = data.loaders["test"].dataset  # the test loader keeps the split's order: result's rows
    table = wandb.Table(columns=["track_id", "true", "predicted", "confidence",
                                 *(f"p({genre})" for genre in names), "mel", "audio"])
    for i in hardest_clips(targets, probabilities, config["hardest_clips"]):
        track_id, predicted = test_set.track_ids[i], int(probabilities[i].argmax())
        audio = clip_audio(data.tracks.loc[track_id, "path"], data.preprocessing) \
            if config["upload_audio"] else None
        table.add_data(track_id, names[targets[i]], names[predicted], float(probabilities[i, predicted]),
                       *map(float, probabilities[i]), wandb.Image(mel_image(test_set.cache[track_id])), audio)
    return table


def mel_image(mel_db):
    """A (n_mels, n_frames) dB spectrogram as an RGB array: low frequencies at the bottom, magma colours."""
    from matplotlib import colormaps
    mel = np.flipud(np.asarray(mel_db, dtype=np.float32))
    scaled = (mel - mel.min()) / max(float(mel.max() - mel.min()), 1e-6)
    return (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)


def clip_audio(path, preprocessing):
    """The part of the clip the model saw (its first n_frames frames) as wandb.Audio, decoded by the
    project's own loader; None with a warning when the file no longer decodes (the run still finishes)."""
    import wandb
    p = preprocessing
    try:
        audio = utils.load_audio(path, p["sample_rate"])
    except errors.DataError as error:
        print(f"warning: W&B hardest clips: no audio: {error}")
        return None
    return wandb.Audio(audio[:p["n_frames"] * p["hop_length"]], sample_rate=p["sample_rate"])


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
