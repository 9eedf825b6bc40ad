"""Train and evaluate one FMA genre classifier end to end (docs/faithfulness.md), nanoGPT style.

Edit the constants below, or override any of them with a config file and/or --key=value:

    python main.py                                   # CRNN on FMA small with this project's recipe
    python main.py configs/original_crnn.py          # a row of the original's results table, as it ran
    python main.py --model=cnn1d --epochs=50 --lr=0.0001 --data_augmentation=True --weight_decay=0.0001
    python main.py --demo=True                       # synthetic demo data, offline, minutes on a CPU
    python main.py --target=genres_all               # multi-label over every genre of FMA's tree (fma_genres/tasks.py)
    python main.py --resume=True                     # continue the latest run of the model (runs/<model>/latest)
    python main.py --prepare_only=True               # only download and build the spectrogram cache
    python main.py --help                            # every key with its default and comment

Writes last.pt, best.pt, metrics.json, history.csv and PNG figures to out_dir (default
runs/<model>/<date-time>, with runs/<model>/latest pointing at the newest run) and logs the run to
Weights & Biases (offline unless an API key is configured).
"""
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import models_utils
import utils
from fma_genres import configurator, multilabel, tasks
from fma_genres.data import cache as mel_cache, datasets
from fma_genres.data.preload import preloaded  # a function: main's key `preload` would shadow the module
from fma_genres.encoders import load_encoder
from fma_genres.encoders.audio_cache import audio_preprocessing, build_audio_cache
from fma_genres.encoders.embedding_cache import build_embedding_cache, checkpoint_preprocessing
from fma_genres.encoders.probe import feature_stats
from fma_genres.reporting import wandb_logging
from fma_genres.runtime import allocator, devices, distributed, errors, preemption
from fma_genres.runtime.errors import ConfigError, PeerFailed
from fma_genres.runtime.preemption import Preempted, RunSignals
from fma_genres.training import encoder_tuning, finetune, run_state
from models import MODELS, PROBES, accepted_args, build_model
from models_utils import CheckpointError
from test import evaluate, test  # the project's test.py (it comes first on sys.path), not the stdlib package
from train import EPOCH_LOSSES, EpochHooks, NonFiniteLossError, TrainSettings, continue_epoch, epoch_position, train

# -----------------------------------------------------------------------------
# data
dataset = "fma"              # fma | folder: data_dir/<genre>/**/<audio> | csv: data_dir is a CSV (docs/data.md: Your own music)
data_dir = "data"            # FMA: holds fma_metadata/ and fma_<subset>/ (download_data.sh's layout); the folder or CSV
subset = "small"             # FMA subset: small (8 balanced genres) | medium (16, unbalanced) | large
target = "genre_top"         # genre_top: one top genre per clip | genres_all: every genre of FMA's tree, multi-label (multilabel.py)
min_genre_tracks = 10        # target=genres_all: genres with fewer training clips are dropped (and counted)
download = True              # run download_data.sh when the data is missing or partial (fma_small: 7.2 GiB)
allow_partial = False        # FMA: train on the clips present when over 1% of the subset's audio files are missing
cache_dir = ""               # spectrogram cache; "" = <data_dir>/cache for FMA, data/cache for folder and csv
split = "official"           # official: FMA's artist-filtered train/val/test | random: the original's (val == test)
train_size = 0.8             # training fraction of FMA's random split (the official split ignores it)
val_size = 0.1               # validation fraction of a folder or csv dataset split here (no split column)
test_size = 0.1              # test fraction of a folder or csv dataset split here (no split column)
split_seed = -1              # seed of the random splits (folder, csv, FMA's random); -1 = the training seed
n_frames = 1291              # frames per clip (1291 = the original's ~29.95 s); smaller only for quick tests
cache_workers = -1           # processes decoding audio into the cache; -1 = every core this process may use (its share under torchrun)
num_workers = -1             # DataLoader worker processes; -1 = auto: 0 on a CPU (its cores train), up to 4 on CUDA
preload = "auto"             # training split copied once onto the training device, batches gathered there: auto = when it fits (docs/performance.md)
# model
model = "crnn"               # cnn1d | cnn2d | crnn (models.py); an encoder other than mel makes it probe
encoder = "mel"              # mel: the CNNs on mel-spectrograms | dasheng | whisper | clap: a probe on that frozen encoder's cached embeddings (docs/encoders.md)
encoder_weights = ""         # the encoder's weights: a hub name, a local folder or a .pt file; "" = its published default
head = "linear"              # the probe on the encoder's layers (a learned mix of them): linear | mlp (512 hidden, dropout 0.5)
finetune_encoder = False     # with an encoder: True trains it end to end with its probe on audio windows (model finetuned; docs/encoders.md: Fine-tuning)
encoder_lr = 1e-5            # finetune_encoder: Adam's learning rate of the encoder's parameters (the probe's is lr)
frozen_layers = 0            # finetune_encoder: the encoder's input front end and its N lowest layers stay frozen; 0 = none
grad_checkpointing = False   # finetune_encoder: recompute the encoder's activations in the backward pass (less memory, more time)
faithful = True              # the original's forward pass with its quirks (models.py); False: the corrected pass
standardise = "auto"         # input dB standardised with train-split mean/std; auto = not faithful; True/False force it
init = "kaiming"             # Linear/Conv weight init: kaiming (the original's) | xavier
init_from = ""               # fine-tune from this checkpoint (or an original bare state_dict of --model; a probe's of the same encoder); "" = none
freeze = "none"              # with init_from: none | features: train only the classifier (BatchNorm statistics frozen); a probe's encoder is always frozen
# optimisation (Adam + cross-entropy, ReduceLROnPlateau with PyTorch defaults on the validation loss)
epochs = 30                  # training epochs
batch_size = 50              # examples per batch
lr = 1e-3                    # Adam's initial learning rate
weight_decay = 0.0           # Adam weight decay (the original used 1e-4 where enabled)
warmup_steps = 0             # finetune_encoder: every learning rate rises linearly over the first N optimiser steps; 0 = none
shuffle = True               # reshuffle the training clips every epoch; False: one fixed order (the original's)
class_weights = False        # weigh the cross-entropy by inverse class frequency of the training split (unbalanced subsets)
pos_weight = False           # target=genres_all: weigh each genre's positives in BCE by its training negatives/positives
balanced_sampler = False     # draw each epoch's training clips class-balanced, with replacement (unbalanced subsets)
epoch_loss = "per_example"   # epoch loss (and what the scheduler sees): per_example | per_batch (the original's)
data_augmentation = False    # add one SpecAugment copy of each training clip (2 mel + 2 time masks, 0 dB); finetune_encoder: the encoder's own (docs/encoders.md)
augment_masks = "per_epoch"  # per_epoch: masks redrawn every epoch | fixed: drawn once (the original's copies)
mask_draw = "inclusive"      # inclusive: any width 0..max and position | original: int(U(0, max)) as it drew them
report_epoch = "best"        # test figures from: best (best.pt, by select_metric) | last (the final epoch, the original's)
select_metric = "auto"       # validation metric choosing best.pt (and experiments.py's objective): auto = accuracy | macro_f1 | balanced_accuracy; genres_all: auto = pr_auc_macro | pr_auc_micro | roc_auc_macro | roc_auc_micro
seed = 0                     # seeds everything; each epoch reseeds from (seed, epoch) so resuming is exact
log_interval = 25            # batches between train-loss logs to W&B (the original's 25)
# system
device = "auto"              # auto: cuda, then mps, then cpu; or a torch device string ("cuda:1")
amp = "auto"                 # bfloat16 autocast: auto = on CUDA, off elsewhere (docs/performance.md); True/False force it (CUDA only)
compile = "auto"             # torch.compile: auto = on for crnn/cnn2d (+ channels_last), off for cnn1d; True/False force it
sync_batchnorm = False       # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA); False: per process
# run
out_dir = ""                 # checkpoints and reports; "" = a new runs/<model>/<date-time> (runs/demo_<model>/... with demo)
overwrite = False            # allow a new run in an out_dir that already holds one (its files are replaced)
resume = False               # continue <out_dir>/last.pt (out_dir "": the latest run of the model): exact
save_interval = 0            # optimiser steps between mid-epoch saves of last.pt; 0 = at epoch ends only
demo = False                 # the synthetic demo dataset (data/demo), offline, with configurator.DEMO's settings (the end of --help)
prepare_only = False         # download and build the cache, print its summary, exit
wandb_project = "MusicGenreClassificationDefinitive"  # the original's W&B project
wandb_mode = None            # online | offline | disabled; None: $WANDB_MODE, else online iff an API key is set
wandb_group = ""             # W&B group of the runs of one experiment (seeds, a search, a distributed run); "" = none
watch = False                # W&B gradient and parameter histograms every 10 batches (the original's wandb.watch)
hardest_clips = 24           # W&B table of the N most confidently wrong test clips (spectrogram, audio); 0 = none
upload_audio = "auto"        # the hardest clips' audio on W&B: auto = only Creative Commons FMA (and demo) clips
upload_checkpoints = True    # the reported checkpoint (best.pt, or last.pt) as a W&B model artifact
# -----------------------------------------------------------------------------
CONFIG = {k: v for k, v in globals().items()
          if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}

DEMO_TRACKS_PER_GENRE = 10
RUNS_ROOT = Path("runs")  # runs/<model>/<date-time>/, runs/<model>/latest -> the newest


# -----------------------------------------------------------------------------
# configuration

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

def loader_workers(requested, device):
    """DataLoader workers: ``requested`` when >= 0; auto (-1) overlaps loading with GPU compute on CUDA
    and loads in the main process on a CPU, whose cores the model already uses."""
    if requested >= 0:
        return requested
    return min(4, max(1, devices.available_cpus() - 1)) if device.type == "cuda" else 0


def loader_settings(config, device):
    """utils.make_loaders' settings from the run's keys."""
    return utils.LoaderSettings(
        num_workers=loader_workers(config["num_workers"], device), standardise=config["standardise"],
        augment=config["data_augmentation"], augment_masks=config["augment_masks"], mask_draw=config["mask_draw"],
        shuffle=config["shuffle"], balanced=config["balanced_sampler"], seed=config["seed"], device=device.type)


def build_data(config, device):
    """Tracks and splits (datasets.py) -> spectrogram cache (or, for a probe, the encoder's embedding cache; for
    a fine-tuned encoder, its audio cache) -> loaders: a datasets.RunData; None when prepare_only."""
    settings = datasets.DataSettings.from_config(config)
    if config["dataset"] == "fma":
        datasets.ensure_fma(settings, config["download"], DEMO_TRACKS_PER_GENRE if config["demo"] else None)
    dataset = datasets.load(settings)
    tracks, class_names, splits = dataset.tracks, dataset.class_names, dataset.splits
    task = tasks.TASKS[config["target"]]  # the run's one choice between single-label and the genre tree
    if config["dataset"] == "fma" and not config["demo"]:  # a partial download: before any caching
        distributed.from_main(datasets.ensure_complete, tracks, settings, config["download"], config["allow_partial"])
    cache, preprocessing, encoder = DATA_CACHES.get(config["model"], spectrogram_cache)(config, dataset, device)
    if config["prepare_only"]:  # build_cache has printed the cache's summary
        print("prepare_only=True: the data and the cache are ready; nothing was trained.")
        return None
    distributed.from_main(datasets.write_splits, splits, Path(config["out_dir"]) / "splits.csv", config["resume"])
    # A probe or a fine-tuned encoder standardises each feature of its embeddings (not all dB values at once),
    # and a fine-tuned one augments its own input (Encoder.augment).
    spectrograms = config["model"] in MODELS
    settings = replace(loader_settings(config, device), standardise=config["standardise"] and spectrograms,
                       augment=config["data_augmentation"] and spectrograms)
    loaders, normalisation = utils.make_loaders(cache, splits, config["batch_size"], settings,
                                                shard=(distributed.rank(), distributed.world_size()))
    train_ids = loaders["train"].dataset.track_ids
    if config["model"] in PROBES:
        normalisation = dict(zip(("mean", "std"), feature_stats(cache, train_ids)))
    elif encoder is not None:
        normalisation = encoder_tuning.initial_stats(config, encoder, cache, train_ids)
    sizes = ", ".join(f"{name} {len(loader.dataset)}" for name, loader in loaders.items())
    print(f"data: {dataset.identity} in {config['data_dir']}: {sizes} clips (the split: splits.csv)")
    data = datasets.RunData(loaders, class_names, preprocessing, normalisation, tracks, task, genres=dataset.genres,
                            label_report=dataset.label_report, encoder=encoder)
    if config["class_weights"]:
        data.class_weights = utils.inverse_class_frequency(loaders["train"].dataset.labels, len(class_names)).to(device)
    task.use_labels(loaders, dataset)  # multi-label: the loaders yield 0/1 genre rows
    if config["pos_weight"]:  # only with target=genres_all (GenreTree.config_problem)
        data.pos_weight = multilabel.pos_weight(dataset.label_rows, loaders["train"].dataset.track_ids).to(device)
    loaders["train"] = preloaded(loaders["train"], config["preload"], device)  # with the targets it will gather
    return data


def cache_settings(config):
    """build_cache's keyword arguments: under torchrun each process of a machine decodes its share of the
    chunks, then waits for the rest."""
    return dict(workers=config["cache_workers"] if config["cache_workers"] > 0 else devices.cpu_share(),
                progress=distributed.is_main(), shard=(distributed.local_rank(), distributed.local_world_size()))


def spectrogram_cache(config, dataset, device):
    """(the run's spectrogram cache, its preprocessing: utils.PREPROCESSING with the run's n_frames, no encoder)."""
    preprocessing = finetune.checked_preprocessing(config, {**utils.PREPROCESSING, "n_frames": config["n_frames"]})
    return mel_cache.build_cache(dataset.tracks, dataset.cache_root, dataset.identity, preprocessing,
                                 **cache_settings(config)), preprocessing, None


def embedding_cache(config, dataset, device):
    """(the run's embedding cache of its encoder, run on the training device; the preprocessing its
    checkpoints record: the cache's key and encoder_weights, which prediction loads the encoder from; None)."""
    encoder = load_encoder(config["encoder"], config["encoder_weights"], device)
    preprocessing = finetune.checked_preprocessing(config, checkpoint_preprocessing(encoder))
    return build_embedding_cache(dataset.tracks, dataset.cache_root, dataset.identity, encoder,
                                 **cache_settings(config)), preprocessing, None


def audio_cache(config, dataset, device):
    """(the run's audio cache at its encoder's rate; the preprocessing its checkpoints record, a probe's (so a
    probe's checkpoint is an init_from for LP-FT); the loaded encoder, whose weights the model starts from)."""
    encoder = load_encoder(config["encoder"], config["encoder_weights"], device)
    preprocessing = finetune.checked_preprocessing(config, checkpoint_preprocessing(encoder))
    return build_audio_cache(dataset.tracks, dataset.cache_root, dataset.identity, audio_preprocessing(preprocessing),
                             **cache_settings(config)), preprocessing, encoder


DATA_CACHES = {"probe": embedding_cache, "finetuned": audio_cache}  # every other model: spectrogram_cache


# -----------------------------------------------------------------------------
# model and training state

def build_training(config, data, device, checkpoint=None, overrides=()):
    """Model (initialised, or from the checkpoint), Adam, ReduceLROnPlateau and the run state:
    a run_state.Training whose ``model`` is the raw model until run() compiles or wraps it."""
    p = data.preprocessing  # a CNN's mel bands, or a probe's encoder layers and width
    model_args = accepted_args(config["model"], n_mels=p.get("n_mels"), n_frames=config["n_frames"],
                               n_classes=len(data.class_names), faithful=config["faithful"], layers=p.get("layers"),
                               dim=p.get("dim"), head=config["head"], encoder=config["encoder"],
                               architecture=data.encoder and data.encoder.architecture(),
                               augment=config["data_augmentation"])
    reseed(config["seed"])
    try:
        model = models_utils.init_weights(build_model(config["model"], **model_args), config["init"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    model.standardise.use(**data.normalisation)  # the train split's dB statistics, or None: raw dB
    encoder_tuning.adopt_pretrained(model, data)  # a fine-tuned encoder starts from its published weights
    if config["init_from"] and checkpoint is None:  # a resumed run has its own weights
        finetune.load_features(model, config["init_from"], config["model"], data.class_names)
    model = encoder_tuning.prepare(finetune.freeze(model, config["freeze"]).to(device), config)
    # fused: one kernel per step, and it skips a non-finite loss's step on the device (train.skippable_step)
    optimizer = torch.optim.Adam(encoder_tuning.param_groups(model, config), lr=config["lr"],
                                 weight_decay=config["weight_decay"], fused=True)
    encoder_tuning.warm_up(optimizer, config["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    state = (run_state.restore(checkpoint, model, optimizer, scheduler, config, overrides) if checkpoint is not None
             else run_state.TrainingState(model_args))
    return run_state.Training(model, model, optimizer, scheduler, state)


def compiled(config, raw_model, backend="inductor"):
    """raw_model as config["compile"] runs it: compiled (the first steps pay the compile time; see
    configurator.COMPILED_MODELS), the 4-D models in channels_last layout, which speeds their convolutions."""
    if not config["compile"]:
        return raw_model
    if config["model"] in configurator.COMPILED_MODELS:
        raw_model.to(memory_format=torch.channels_last)
    return models_utils.compile_model(raw_model, backend)


# -----------------------------------------------------------------------------
# epochs, checkpoints, evaluation

def train_settings(config, data):
    """train()'s settings from the run's keys and data."""
    return TrainSettings(task=data.task, amp=config["amp"], log_interval=config["log_interval"], class_weights=data.class_weights,
                         pos_weight=data.pos_weight, sync=distributed.sync_step if distributed.active() else None)


def run_epochs(config, data, training, device, wandb_log, signals):
    """Train from state.epoch + 1 (or a mid-epoch position) to config["epochs"], validating and
    saving after each epoch, and mid-epoch every save_interval steps or when a signal asks."""
    loaders, state, model, settings = data.loaders, training.state, training.model, train_settings(config, data)
    for epoch in range(state.epoch + 1, config["epochs"] + 1):
        reseed(config["seed"], epoch, loaders["train"])  # same batches and dropout whether resumed or not
        position, state.position, progress, done = state.position, None, None, 0.0
        if position is not None:
            progress, done = continue_epoch(position, loaders["train"], config["batch_size"])
        start, seen, lr_now = time.time() - done, state.examples_seen, training.optimizer.param_groups[0]["lr"]

        def on_step(batches, settled):  # after every optimiser step: a mid-epoch save when due or asked for
            due = config["save_interval"] and batches % config["save_interval"] == 0
            stop, save = distributed.agree(signals.stop, signals.save)  # every process decides alike
            if due or save or stop:
                run_state.save_epoch(config, data, training, epoch_position(epoch, settled(), time.time() - start))
                if save and distributed.is_main():
                    print(f"\nSIGUSR1: saved {config['out_dir']}/last.pt at step {batches} of epoch "
                          f"{epoch}; training goes on.", file=sys.stderr, flush=True)
                signals.save = False
            if stop:
                raise preemption.stopped(stop)

        try:
            signals.in_steps = True
            hooks = EpochHooks(desc=f"epoch {epoch}/{config['epochs']}", on_step=on_step,  # step: the run's examples
                               on_log=lambda examples, loss: wandb_log.train_loss(loss, epoch, step=seen + examples))
            trained = train(model, loaders["train"], training.optimizer, device, settings, hooks, progress)
        except NonFiniteLossError as error:
            kept = (f"{config['out_dir']}/last.pt (epoch {state.epoch}) is kept" if state.epoch
                    else "no checkpoint exists")
            raise NonFiniteLossError(f"training stopped in epoch {epoch}: {error}. Nothing of this epoch was "
                                     f"saved; {kept}. Lower the learning rate (lr={config['lr']:g}) or try "
                                     f"--faithful=False (standardised input).") from None
        finally:  # under torchrun a stop waits for the epoch's end, where every process takes it at once
            signals.in_steps = distributed.active()
        distributed.broadcast_buffers(training.raw_model)  # every process validates rank 0's weights, those saved
        val = test(distributed.unwrap(model), loaders["val"], device, amp=config["amp"], desc="validate",
                   gather=distributed.gather, task=data.task)
        loss = EPOCH_LOSSES[config["epoch_loss"]]  # per example, or the original's mean of batch losses
        training.scheduler.step(val[loss])
        seconds = time.time() - start
        row = {"epoch": epoch, "train_loss": trained[loss], "train_accuracy": trained["accuracy"],
               "val_loss": val[loss], "val_accuracy": val["accuracy"], "lr": lr_now, "seconds": round(seconds, 2)}
        metric = config["select_metric"]  # its value is in every row: experiments.py prunes on it
        row[f"val_{metric}"] = score = data.task.validation_score(val, metric)
        state.thresholds = data.task.thresholds(val["targets"], val["probabilities"])  # multi-label: saved with its checkpoints
        state.history.append(row)
        state.epoch, state.examples_seen = epoch, seen + trained["examples"]
        state.training_seconds += seconds
        # best = the highest select_metric; a tie goes to the lower val loss (small val sets tie often)
        improved = (score, -val[loss]) > (state.best_val_score, -state.best_val_loss)
        if improved:
            state.best_val_score, state.best_val_accuracy, state.best_val_loss = score, val["accuracy"], val[loss]
            state.best_epoch = epoch
        run_state.save_epoch(config, data, training)
        print(f"epoch {epoch:3d}/{config['epochs']} | train loss {row['train_loss']:.4f} acc "
              f"{row['train_accuracy']:.3f} | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} | "
              f"lr {lr_now:.1e} | {seconds:.1f} s{' | best.pt' if improved else ''}", flush=True)
        wandb_log.epoch(row, step=state.examples_seen)
        stop, = distributed.agree(signals.stop)
        if stop:
            raise preemption.stopped(stop)


def evaluate_best(config, data, state, device, counts):
    """The reported checkpoint (best.pt, or last.pt with report_epoch=last) on the test split ->
    metrics.json and PNGs; returns (metrics, test result, files written)."""
    best = distributed.from_main(models_utils.load_checkpoint, Path(config["out_dir"]) / f"{config['report_epoch']}.pt")
    scores, result = evaluate(models_utils.model_from_checkpoint(best, device), data.loaders["test"], device,
                              best, amp=config["amp"], gather=distributed.gather)
    metrics = {**scores, "reported_epoch": best["training"]["epoch"],
               "report_epoch": config["report_epoch"], "best_epoch": state.best_epoch,
               "select_metric": config["select_metric"], "best_val_score": state.best_val_score,
               "best_val_accuracy": state.best_val_accuracy, "epochs": state.epoch,
               "training_seconds": round(state.training_seconds, 1), **counts,
               **{k: config[k] for k in ("model", "faithful", "subset", "split")},
               **({"labels": data.label_report} if data.label_report else {}),
               "val_is_test": config["split"] == "random", "provenance": state.provenance}
    files = models_utils.save_report(config["out_dir"], metrics, result["targets"], result["probabilities"],
                                     data.class_names, history=state.history) if distributed.is_main() else []
    return metrics, result, files


# -----------------------------------------------------------------------------

def run(config, overrides, provenance):
    """The whole run (out_dir already prepared); returns the exit status."""
    checkpoint = None
    if config["resume"]:
        checkpoint, config = run_state.load_resume(
            config, overrides, may_change=configurator.keys_where("may_change_on_resume", CONFIG))
    device = devices.pick_device(distributed.local_device(config["device"]))
    config["amp"] = configurator.resolve_auto(config, "amp", device.type == "cuda")  # bf16 autocast: this project's GPU recipe
    data = build_data(config, device)
    if data is None:
        return 0
    training = build_training(config, data, device, checkpoint, overrides)
    raw_model, state = training.raw_model, training.state
    state.provenance = provenance
    n_parameters = models_utils.count_parameters(raw_model)  # trainable: all but the frozen ones (freeze)
    counts = {"parameters": n_parameters, "total_parameters": models_utils.count_parameters(raw_model, trainable=False)}
    print(f"model: {models_utils.describe_model(config)}, "
          f"{models_utils.describe_parameters(counts['parameters'], counts['total_parameters'])}, "
          f"on {device}" + (f"; resuming after epoch {state.epoch}" if checkpoint else ""))
    config["world_size"] = distributed.world_size()  # recorded in the checkpoints, not a key
    for line in (encoder_tuning.describe(config), distributed.describe(config),
                 checkpoint and distributed.resume_note(checkpoint["config"])):
        if line:
            print(line)
    training.model = distributed.wrap(compiled(config, raw_model), raw_model, device, config["sync_batchnorm"])
    defaults = configurator.naming_defaults(config, CONFIG)  # W&B names a run by the keys that differ from these
    wandb_log = (wandb_logging.start(config, state, raw_model, n_parameters, defaults) if distributed.is_main()
                 else wandb_logging.WandbLog(None))
    exit_code = 1
    try:
        with RunSignals(defer_sigint=distributed.active()).installed() as signals:
            run_epochs(config, data, training, device, wandb_log, signals)
        metrics, result, files = evaluate_best(config, data, state, device, counts)
        wandb_log.final(config, data, metrics, result, files)
        print(models_utils.format_summary(config, state.history, metrics, data.genres))
        exit_code = 0
    except KeyboardInterrupt as interrupt:
        exit_code = getattr(interrupt, "exit_code", 130)
        if state.epoch > state.saved_epoch:  # the epoch had finished but was not saved yet
            run_state.save_epoch(config, data, training)
        raise
    finally:
        wandb_log.finish(exit_code)
    return 0


def main(argv=None):
    """Parse ``argv`` (default sys.argv[1:]), run, and turn every expected failure into a clear exit:
    its message on stderr and status 1 (the library raises them; this entry point ends the process)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if configurator.asks_help(argv):
        print(configurator.help_text(__file__, CONFIG, configurator.demo_help() + configurator.resume_help(CONFIG)))
        return 0
    try:
        return train_command(argv)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    except PeerFailed:  # rank 0 (or a machine's first process) failed and says why
        sys.exit(1)


def train_command(argv):
    """The run ``argv`` asks for, from its configuration to its exit status."""
    overrides, config_file = configurator.parse_command_line(argv, CONFIG, __file__)
    config = configurator.make_config(overrides, CONFIG)
    with distributed.joined(config):  # under torchrun: this process joins the job; a plain run: nothing
        if not config["prepare_only"]:
            config["out_dir"] = distributed.from_main(configurator.prepare_out_dir, config, RUNS_ROOT,
                                                      distributed.launched())
        provenance = configurator.provenance(argv, config_file, launcher=distributed.launcher())
        try:
            return run(config, overrides, provenance)
        except KeyboardInterrupt as interrupt:
            last, cause = Path(config["out_dir"]) / "last.pt", "SIGTERM" if isinstance(interrupt, Preempted) else "Ctrl-C"
            if distributed.is_main():
                print(f"\ninterrupted ({cause}): {last} holds the last saved step. Continue with: "
                      f"{run_state.resume_command(argv, config_file, config['out_dir'])}" if last.is_file()
                      else f"\ninterrupted ({cause}) before anything was saved: rerun the same command (a cache "
                           f"build resumes).", file=sys.stderr)
            return getattr(interrupt, "exit_code", 130)
        except NonFiniteLossError as error:  # every process stopped at the same step: rank 0 says why
            sys.exit(f"error: {error}" if distributed.is_main() else 1)
        except (CheckpointError, errors.DataError) as error:
            sys.exit(f"error: {distributed.named(str(error))}")
        except errors.DiskFullError as error:  # a checkpoint, report or split file (the cache's is a DataError)
            go_on = (f"Then continue the run with: {run_state.resume_command(argv, config_file, config['out_dir'])}"
                     if (Path(config["out_dir"]) / "last.pt").is_file() else "Then rerun the same command.")
            sys.exit(f"error: {distributed.named(f'{error} {go_on}')}")
        except RuntimeError as error:
            if not distributed.peer_lost(error):
                raise
            sys.exit(f"error: {distributed.lost_peer_message(error)}")


if __name__ == "__main__":
    allocator.keep_large_allocations()  # before the run allocates: glibc keeps freed tensors (allocator.py)
    distributed.exit_process(main)
