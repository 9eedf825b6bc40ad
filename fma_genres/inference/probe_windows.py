"""Prediction with a probe checkpoint (main.py's encoder other than mel): audio -> the encoder's windows ->
their per-layer embeddings -> the probe, per track; and with a fine-tuned encoder's (finetune_encoder), whose
model takes the windows themselves.

    model = EncoderProbe(probe, encoder_of(checkpoint))   # predict.load_predictor does this for a probe
    for path, probabilities, n_windows, error in predict(model, checkpoint, ["song.mp3"]): ...

A track is decoded at the encoder's rate (utils.load_audio, as the embedding cache decodes its clips) and
cut into windows of the encoder's length spread evenly from its start to its end, as many as fit about
(its length / the window, rounded; --max_windows caps them): an FMA clip gets the cache's three windows,
so its prediction reads the input its training row held. The probe averages a track's windows'
embeddings (fma_genres/encoders/probe.py), so a long track's prediction is the probe on the mean of all
its windows. Worker processes decode; this process runs the encoder (on the GPU when there is one).
"""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import utils
from fma_genres.encoders import load_encoder
from fma_genres.encoders.audio_cache import audio_preprocessing, build_audio_cache
from fma_genres.encoders.embedding_cache import build_embedding_cache, window_starts
from fma_genres.inference.audio_windows import silence_decoder_notes
from fma_genres.runtime.errors import ConfigError, DataError
from models import FINETUNED


class EncoderProbe(torch.nn.Module):
    """A probe and the frozen encoder it was trained on: the probe's forward, embed and head on embedding
    rows (B, windows, layers, dim) as main.py trained it; ``encoder`` turns audio into those rows."""

    def __init__(self, probe, encoder):
        super().__init__()
        self.probe, self.encoder = probe, encoder  # the encoder is no module of this one: it is never saved

    @property
    def head(self):
        return self.probe.head

    def embed(self, x):
        return self.probe.embed(x)

    def forward(self, x):
        return self.probe(x)


def encoder_of(checkpoint, weights=None, device=None):
    """The encoder a probe checkpoint was trained on, from ``weights`` (a hub name or path) or the
    encoder_weights it records; ConfigError when those weights give embeddings of another shape."""
    p = checkpoint["preprocessing"]
    encoder = load_encoder(p["encoder"], weights or p["encoder_weights"], device)
    if (encoder.layers, encoder.dim) != (p["layers"], p["dim"]):
        raise ConfigError(f"the {p['encoder']} weights {encoder.weights} give {encoder.layers} layers of "
                          f"{encoder.dim} features, but the probe was trained on {p['layers']} x {p['dim']} "
                          f"(encoder_weights={p['encoder_weights']}): give those weights with --encoder_weights.")
    return encoder


def track_windows(path, p, max_windows=None):
    """float32 (windows, samples) of an audio file at the encoder's rate (the module docstring); a track
    shorter than one window gives one, padded with silence."""
    window = round(p["window_seconds"] * p["sample_rate"])
    audio = utils.load_audio(path, p["sample_rate"])
    audio = np.pad(audio, (0, max(window - len(audio), 0)))
    count = max(1, round(len(audio) / window))
    starts = window_starts(len(audio), window, min(count, max_windows or count))
    return np.stack([audio[s:s + window] for s in starts])


class TrackAudio(Dataset):
    """Item i: (i, float32 windows or None, error or None) of files[i], decoded in a DataLoader worker."""

    def __init__(self, files, preprocessing, max_windows):
        self.files, self.preprocessing, self.max_windows = files, preprocessing, max_windows

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = Path(self.files[i])
        if not path.is_file():
            return i, None, "file not found; check the path"
        try:
            return i, torch.from_numpy(track_windows(path, self.preprocessing, self.max_windows)), None
        except DataError as error:  # AudioError: empty, not audio, truncated or corrupt
            return i, None, str(error).removeprefix(f"{path}: ")
        except Exception as error:  # one undecodable file must not stop the others
            return i, None, f"could not decode it as audio ({type(error).__name__}: {error})".strip()


def keep_item(item):
    """DataLoader collate_fn: an item is already a whole track (a module function: workers pickle it)."""
    return item


def predict(model, checkpoint, files, outputs, reading, device="cpu", on_window=None):
    """Yield (path, outputs(model, the track's embedding row) or None, windows, error or None) per file, in
    order, as predict.predict does for the CNNs (``reading``: its predict.Reading, whose hop the encoder's
    windows ignore); the encoder embeds reading.batch_size windows at a time. ``on_window(file index, audio
    window, vector)``, when given, sees each window with outputs of that window alone (a timeline)."""
    loader = DataLoader(TrackAudio(files, checkpoint["preprocessing"], reading.max_windows), batch_size=None,
                        num_workers=reading.num_workers, collate_fn=keep_item, worker_init_fn=silence_decoder_notes)
    batch_size = reading.batch_size
    for i, windows, error in loader:
        if error:
            yield files[i], None, 0, error
            continue
        rows = track_rows(model, checkpoint, windows, batch_size)
        with torch.no_grad():
            vector = outputs(model, rows[None].float().to(device))[0]
            for window, alone in zip(windows, outputs(model, rows[:, None].float().to(device)) if on_window else ()):
                on_window(i, window, alone.double().cpu().numpy())
        yield files[i], vector.double().cpu().numpy(), len(windows), None


def track_rows(model, checkpoint, windows, batch_size):
    """A track's row as the model's training cache held it: a probe's, its windows' embeddings (the encoder's,
    batch_size windows at a time); a fine-tuned encoder's (or an ensemble of them), the windows themselves;
    float16, as the caches store them."""
    if checkpoint["model"] in FINETUNED:
        return windows.half()
    return torch.cat([model.encoder.embed_layers(windows[k:k + batch_size]).half()
                      for k in range(0, len(windows), batch_size)])


def test_cache(model, tracks, data, checkpoint):
    """--evaluate's cache of the test tracks, the training run's where it covers them: a probe's embedding cache
    (same encoder and weights), a fine-tuned encoder's audio cache."""
    if checkpoint["model"] in FINETUNED:
        return build_audio_cache(tracks, data.cache_root, data.identity, audio_preprocessing(checkpoint["preprocessing"]))
    return build_embedding_cache(tracks, data.cache_root, data.identity, model.encoder)

