"""The embedding cache, the mel cache's sibling: each clip's windows through a pretrained encoder, once.

    cache = build_embedding_cache(tracks, "data/cache", "small", load_encoder("dasheng"))
    cache[track_id]   # float16 (windows, layers, dim): each window's per-layer embedding, mean over time

A folder cache_root/embeddings/<subset>-<hash>/ is a mel cache folder (fma_genres/data/cache.py: params.json,
status.npy, report.csv, locks/, the same reuse, copying, resume after kill -9, disk checks and shards for
torchrun's ranks) whose array is embeddings.npy. Its key (params.json's preprocessing) is the encoder, its
weights (weights_key), sample rate, window length, windows per clip, layers and width.

Each clip is decoded at the encoder's rate (utils.load_audio: soxr_hq) by worker processes and cut into
WINDOWS_PER_CLIP windows of window_seconds, evenly spaced from its start to its end (a 29.98 s FMA clip:
0, 9.99 and 19.98 s; they overlap by a few milliseconds, so nothing is padded). A clip shorter than
utils.MIN_CLIP_FRACTION of that span is reported broken, as the mel cache does. This process runs the
encoder (on the GPU when there is one) on each chunk's windows, then writes and fsyncs its rows.
"""
import functools
import os
from pathlib import Path

import numpy as np

from fma_genres.data.cache import BROKEN, MISSING, OK, Build, Builder, Kind, MelCache, fill_folder, write_row
from fma_genres.runtime.errors import AudioError
from utils import MIN_CLIP_FRACTION, load_audio

WINDOWS_PER_CLIP = 3  # an FMA clip is 30 s: three 10 s windows
EMBED_BATCH = 24      # windows per encoder call (a chunk of 8 clips)
ROW = ("windows", "layers", "dim")  # a row's axes
EMBEDDINGS = Kind("embeddings.npy", lambda params: tuple(params["preprocessing"][k] for k in ROW),
                  "embedding cache")


def preprocessing_of(encoder):
    """The cache's key for this encoder: what decides its embeddings."""
    return {"encoder": encoder.name, "weights": encoder.weights_key(), "sample_rate": encoder.sample_rate,
            "window_seconds": float(encoder.window_seconds), "windows": WINDOWS_PER_CLIP,
            "layers": int(encoder.layers), "dim": int(encoder.dim)}


def checkpoint_preprocessing(encoder):
    """What a probe's checkpoints record as their preprocessing: the cache's key, and the weights as given
    (a hub name or a path), from which prediction and --evaluate load the encoder again."""
    return {**preprocessing_of(encoder), "encoder_weights": encoder.weights}


def window_starts(samples, window, count):
    """First sample of each of ``count`` windows spread evenly from the audio's start to its end."""
    return np.linspace(0, max(samples - window, 0), count).round().astype(int)


def clip_windows(path, p):
    """(status, reason, float32 (windows, window samples) or None) of one clip; any failure is the clip's."""
    if not Path(path).is_file():
        return MISSING, "audio file not found", None
    window = round(p["window_seconds"] * p["sample_rate"])
    try:
        audio = load_audio(path, p["sample_rate"])
        needed = MIN_CLIP_FRACTION * p["windows"] * window
        if len(audio) < needed:
            raise AudioError(f"decodes to {len(audio) / p['sample_rate']:.2f} s, far shorter than the "
                             f"{p['windows']} windows of {p['window_seconds']:g} s (at least "
                             f"{needed / p['sample_rate']:.2f} s needed): truncated or broken clip.")
    except Exception as e:
        reason = str(e) if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
        return BROKEN, reason.replace(f"{path}: ", ""), None
    return OK, None, np.stack([audio[s:s + window] for s in window_starts(len(audio), window, p["windows"])])


def _decode_rows(tasks, p):
    """Worker task: [(row, status, reason, windows or None, copied embeddings or None)] of these (row, path,
    source) tasks; a source row (another folder's array, its row, status, reason) is read, not decoded."""
    results = []
    for row, path, source in tasks:
        if source:
            code, reason = source[2:]
            copied = None if code == BROKEN else np.array(np.load(source[0], mmap_mode="r")[source[1]])
            results.append((row, code, reason, None, copied))
        else:
            results.append((row, *clip_windows(path, p), None))
    return results


class EmbeddingBuilder(Builder):
    """A Builder whose workers decode clips into windows and whose own process embeds and writes them."""
    kind = EMBEDDINGS

    def __init__(self, folder, params, paths, sources, shard, encoder):
        super().__init__(folder, params, paths, sources, shard)
        self.encoder = encoder

    def submit(self, pool, tasks):
        return pool.submit(_decode_rows, tasks, self.params["preprocessing"])

    def finish(self, results):
        """Embed the decoded rows' windows, write every row, fsync; [(row, status, reason)]."""
        decoded = [windows for _, _, _, windows, _ in results if windows is not None]
        embedded = iter(self.embed(np.concatenate(decoded)) if decoded else [])
        array = self.folder / self.kind.array
        layout, fd = np.load(array, mmap_mode="r"), os.open(array, os.O_WRONLY)
        try:
            for row, _, _, windows, copied in results:
                values = copied if windows is None else np.stack([next(embedded) for _ in windows])
                if values is not None:
                    write_row(fd, layout, row, values)
            os.fsync(fd)
        finally:
            os.close(fd)
        return [(row, code, reason) for row, code, reason, _, _ in results]

    def embed(self, windows):
        """float16 (n, layers, dim) of n windows, EMBED_BATCH at a time."""
        return np.concatenate([self.encoder.embed_layers(windows[i:i + EMBED_BATCH]).numpy().astype(np.float16)
                               for i in range(0, len(windows), EMBED_BATCH)])


class EmbeddingCache(MelCache):
    """Read side of an embedding cache folder: cache[track_id] is float16 (windows, layers, dim)."""
    kind, title = EMBEDDINGS, "Embedding cache"


def build_embedding_cache(tracks, cache_root, subset, encoder, workers=None, progress=True, shard=None):
    """Reuse, resume or build the embedding cache of these tracks (index track_id, column path) under
    cache_root/embeddings with this loaded encoder; print its summary; return the EmbeddingCache.
    workers and shard as mel_cache.build_cache's (workers decode; this process embeds)."""
    return fill_folder(tracks, Path(cache_root) / "embeddings", subset, preprocessing_of(encoder),
                       functools.partial(EmbeddingBuilder, encoder=encoder), EmbeddingCache,
                       Build(workers, progress, shard))
