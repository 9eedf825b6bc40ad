"""A trained model over audio files: per-track averages of its windows' genre probabilities or embeddings.

Each track is cut into windows as wide as the model's input (audio_windows.py decodes them as a stream
in background workers), windows of consecutive tracks share batches, and a track's result is the mean
over its windows of what the model gives each window: its genre probabilities (predict) or its
embedding (predict with outputs=embeddings), what the model's classifier head reads (model.embed):

    model   head          embedding size (default 128 x 1291 input)
    cnn1d   fc1           n_mels * T' = 128 * 38 = 4,864 (the last conv block's output, flattened)
    cnn2d   fc3           64 (after fc2, BatchNorm and ReLU)
    crnn    fc1           128 (the LSTM's last step; dropout is the identity in eval mode)

A library for pre_trained_models.py and app.py (the command line and the web page):

    model, checkpoint = inference.load_predictor("runs/crnn/latest/best.pt")
    for path, probabilities, n_windows, error in inference.predict(model, checkpoint, ["song.mp3"]): ...
    for path, embedding, n_windows, error in inference.predict(model, checkpoint, files, outputs=inference.embeddings): ...
    model, checkpoint = inference.ensemble([(path, *inference.load_predictor(path)) for path in paths])
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import models_utils
import utils
from fma_genres import tasks
from fma_genres.inference import audio_windows, probe_windows
from fma_genres.runtime import atomic
from models import MODELS, PROBES
from models_utils import CheckpointError


def find_audio_files(inputs):
    """Files given by name (any extension) plus audio files found recursively in folders; each file once."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in utils.AUDIO_EXTENSIONS)
            if not found:
                print(f"warning: no {'/'.join(sorted(utils.AUDIO_EXTENSIONS))} files in folder {item}", file=sys.stderr)
            files.extend(found)
        else:
            files.append(item)  # a missing file is reported by the worker with the others
    return list(dict.fromkeys(files))


# -----------------------------------------------------------------------------
# what the model gives each window



def embeddings(model, windows):
    """(B, D) features the model's head reads for a batch of windows (see the module docstring)."""
    return model.embed(windows)


# -----------------------------------------------------------------------------
# ensembles

class Ensemble(torch.nn.Module):
    """Several models of one preprocessing as one: the mean of the members' genre probabilities per window.

    forward returns (the task's logits of the mean, the mean) where a model returns (logits, probabilities):
    the task's probabilities of those logits are the mean again and its loss of them is the mean's log
    loss (cross-entropy, or BCE per genre), so prediction and evaluation take an ensemble like any model.
    """

    def __init__(self, members, task):
        super().__init__()
        self.members, self.task = torch.nn.ModuleList(members), task

    @property
    def encoder(self):
        """Probe members' encoder (one preprocessing: the same encoder and weights), for probe_windows."""
        return self.members[0].encoder

    def forward(self, x):
        mean = torch.stack([self.task.window_probabilities(member, x) for member in self.members]).mean(dim=0)
        return self.task.logits(mean), mean


class TrackEnsemble:
    """Members of several preprocessings (a probe with a CNN): each group of one preprocessing predicts a
    track from its own windows (mel windows, or the encoder's audio windows) and the track's probabilities
    are the mean of the members' track probabilities. groups: [(model, checkpoint, members in it)]."""

    def __init__(self, groups):
        self.groups = groups

    def predict(self, files, reading, device, outputs):
        """predict's rows: per file the members' mean (windows: the first group's count; error: the first)."""
        rows = (predict(model, checkpoint, files, reading, device, outputs) for model, checkpoint, _ in self.groups)
        for results in zip(*rows):
            error = next((error for _, _, _, error in results if error), None)
            mean = None if error else members_mean(self.groups, [vector for _, vector, _, _ in results])
            yield results[0][0], mean, results[0][2], error


def members_mean(groups, vectors):
    """The mean over every member of the groups' vectors (each group's is the mean of its members')."""
    weights = np.array([count for _, _, count in groups], dtype=np.float64)
    return sum(w * np.asarray(v, dtype=np.float64) for w, v in zip(weights, vectors)) / weights.sum()


def reads_encoder(checkpoint):
    """Whether a checkpoint's model reads a pretrained encoder's audio windows (a probe, or a fine-tuned
    encoder) rather than mel-spectrograms: its preprocessing names the encoder."""
    return "encoder" in (checkpoint.get("preprocessing") or {})


def preprocessing_key(checkpoint):
    """A checkpoint's preprocessing as one hashable value: members with the same read the same windows."""
    return json.dumps(checkpoint["preprocessing"], sort_keys=True)


def reads_spectrograms(model, checkpoint):
    """Whether the model's windows are mel-spectrograms (what --plot draws and a mel ONNX graph takes)."""
    return not isinstance(model, TrackEnsemble) and not reads_encoder(checkpoint)


def ensemble(members):
    """(Ensemble or TrackEnsemble, its checkpoint) from [(path, model, checkpoint), ...]: the first member's
    checkpoint, with the members' mean thresholds for a multi-label one (tasks.py). Members must share the
    task and genres (in order), else ValueError naming the two files; members of one preprocessing form an
    Ensemble (mean per window), of several a TrackEnsemble (mean per track)."""
    first_path, _, first = members[0]
    for path, _, checkpoint in members[1:]:
        for key, what in (("target", "target"), ("class_names", "genres"), ("genres", "genre ids")):
            mine, theirs = (c.get(key) for c in (checkpoint, first))
            if key == "genres":  # thresholds may differ: the ensemble takes their mean
                mine, theirs = ((g or {}).get("ids") for g in (mine, theirs))
            if (mine or None) != (theirs or None):
                raise ValueError(f"{path} and {first_path} cannot form an ensemble: their {what} differ "
                                 f"({mine} vs {theirs}). Give checkpoints trained on the same genres.")
    task = tasks.of(first)
    checkpoint = task.ensemble_checkpoint([c for _, _, c in members])
    groups = {}
    for member in members:
        groups.setdefault(preprocessing_key(member[2]), []).append(member)
    if len(groups) == 1:
        return Ensemble([model for _, model, _ in members], task), checkpoint
    return TrackEnsemble([group_model(group, task) for group in groups.values()]), checkpoint


def group_model(group, task):
    """(model, checkpoint, members) of a TrackEnsemble's group: its one member, or their Ensemble."""
    if len(group) == 1:
        return group[0][1], group[0][2], 1
    return Ensemble([model for _, model, _ in group], task), task.ensemble_checkpoint([c for _, _, c in group]), len(group)


# -----------------------------------------------------------------------------
# a checkpoint's model, and what a track's prediction shows

def load_predictor(path, model_name=None, device="cpu", encoder_weights=None):
    """(model in eval mode, checkpoint dict) from a checkpoint of this project or an original bare state_dict.

    Both are read with torch.load(weights_only=True), so a checkpoint can never run code. A probe's model
    is a probe_windows.EncoderProbe: its encoder loaded from ``encoder_weights`` or those it records; a
    fine-tuned encoder's (models.FinetunedEncoder) holds its encoder and needs no weights but its own.
    """
    try:
        checkpoint = models_utils.load_checkpoint(path, device)
    except CheckpointError:
        state_dict = models_utils.read_bare_state_dict(path, device)
        if state_dict is None:
            raise
        checkpoint = models_utils.original_checkpoint(state_dict, model_name, path)
    if model_name is not None and model_name != checkpoint["model"]:
        raise CheckpointError(f"{path} holds a {checkpoint['model']!r} model but --model={model_name} was given. "
                              f"Drop --model (this project's checkpoints name their model) or give the right one.")
    try:
        model = models_utils.model_from_checkpoint(checkpoint, device)
    except CheckpointError:
        fits = [name for name in MODELS if name != checkpoint["model"] and models_utils.weights_fit(name, checkpoint)]
        hint = f" They fit --model={fits[0]}." if fits else ""
        raise CheckpointError(f"The weights in {path} do not fit model {checkpoint['model']!r} "
                              f"{checkpoint['model_args']}.{hint}") from None
    if checkpoint["model"] in PROBES:
        model = probe_windows.EncoderProbe(model, probe_windows.encoder_of(checkpoint, encoder_weights, device))
    return model, checkpoint  # it takes raw dB: a standardised model's scaling is in its Standardise layer


def window_outputs(checkpoint):
    """What inference.predict takes from the model for each window of this checkpoint's tracks: its
    task's genre probabilities (softmax, or independent sigmoids for a multi-label checkpoint)."""
    return tasks.of(checkpoint).window_probabilities


def shown_genres(probabilities, checkpoint, k):
    """[(label, probability)]: what a track's prediction shows (--plot's bars, app.py's page): the task's
    (the k most probable; multi-label: the genres above their thresholds as tree paths, most specific first)."""
    return tasks.of(checkpoint).shown_genres(probabilities, checkpoint, k)


# -----------------------------------------------------------------------------
# batching windows of many tracks

def default_hop(checkpoint):
    """Frames between window starts when none is given: half a window (windows overlap by half)."""
    return checkpoint["preprocessing"]["n_frames"] // 2


@dataclass(frozen=True)
class Reading:
    """How predict reads tracks: ``hop`` seconds between windows (None: the checkpoint's), at most
    ``max_windows`` a track (None: all), ``batch_size`` windows a batch, ``num_workers`` decoding processes."""
    hop: float = None
    max_windows: int = None
    batch_size: int = 32
    num_workers: int = 0


def predict(model, checkpoint, files, reading=Reading(), device="cpu", outputs=None, on_window=None):
    """Yield (path, mean of its windows' outputs or None, number of windows, error or None) per file, in order,
    reading them as ``reading`` (a Reading) says.

    `outputs(model, windows)` gives each window's vector (window_outputs(checkpoint) by default: probabilities). `on_window(file
    index, window, vector)`, when given, sees every window (float16 dB on the CPU) with its vector, a
    file's windows in order, before the file is yielded: what plots.py draws. Windows from
    consecutive tracks share batches. Windows flow from the decoding workers to the model as they are
    computed, so memory does not grow with the length of a track.
    """
    preprocessing, outputs = checkpoint["preprocessing"], outputs or window_outputs(checkpoint)
    if isinstance(model, TrackEnsemble):  # each group reads its own windows
        yield from model.predict(files, reading, device, outputs)
        return
    if reads_encoder(checkpoint):  # the encoder's windows of audio, not spectrograms
        yield from probe_windows.predict(model, checkpoint, files, outputs, reading, device, on_window)
        return
    dataset = audio_windows.TrackWindows(files, preprocessing, reading.hop or default_hop(checkpoint), reading.max_windows)
    loader = DataLoader(dataset, batch_size=None, num_workers=reading.num_workers, collate_fn=keep_item,
                        worker_init_fn=audio_windows.silence_decoder_notes)
    tracks = [{"sum": 0.0, "windows": 0, "queued": 0, "done": False, "error": None} for _ in files]
    queue = []     # (file index, window) waiting for a batch
    emitted = 0
    for i, windows, done, error in loader:
        track = tracks[i]
        track.update(done=done, error=error)
        if windows is not None:
            track["windows"] += len(windows)
            track["queued"] += len(windows)
            queue.extend((i, w) for w in windows)
        while len(queue) >= reading.batch_size:
            run_batch(model, outputs, queue[:reading.batch_size], tracks, device, on_window)
            queue = queue[reading.batch_size:]
        emitted = yield from finished_tracks(files, tracks, emitted)
    if queue:
        run_batch(model, outputs, queue, tracks, device, on_window)
    yield from finished_tracks(files, tracks, emitted)


def keep_item(item):
    """DataLoader collate_fn: items are already whole tracks (a module function so workers can pickle it)."""
    return item


@torch.no_grad()
def run_batch(model, outputs, queue, tracks, device, on_window=None):
    indices, windows = zip(*queue)
    vectors = outputs(model, torch.stack(windows).to(device).float())  # float16 windows, as the cache holds
    for i, window, v in zip(indices, windows, vectors.double().cpu().numpy()):
        tracks[i]["sum"] = tracks[i]["sum"] + v
        tracks[i]["queued"] -= 1
        if on_window is not None:
            on_window(i, window, v)


def finished_tracks(files, tracks, emitted):
    """Yield the tracks, from index `emitted` on, that are decoded and whose windows have all been through the model."""
    while emitted < len(tracks) and tracks[emitted]["done"] and tracks[emitted]["queued"] == 0:
        track = tracks[emitted]
        mean = None if track["error"] else track["sum"] / track["windows"]
        yield files[emitted], mean, track["windows"], track["error"]
        emitted += 1
    return emitted


# -----------------------------------------------------------------------------
# embeddings file

def save_embeddings(path, rows, checkpoint):
    """FILE.npz: embeddings (N, D) float32, paths (N,), windows (N,), class_names and model, written
    atomically; rows are predict's (path, embedding, windows) of the tracks that were read. Plain
    arrays only, so np.load needs no allow_pickle."""
    paths, vectors, windows = zip(*rows)
    arrays = {"embeddings": np.stack(vectors).astype(np.float32), "paths": np.array([str(p) for p in paths]),
              "windows": np.array(windows), "class_names": np.array(checkpoint["class_names"]),
              "model": np.array(checkpoint["model"])}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(Path(path), lambda f: np.savez(f, **arrays))
