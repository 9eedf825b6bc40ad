"""The audio cache, the embedding cache's sibling: each clip's windows of audio at an encoder's rate, decoded once,
what fine-tuning an encoder trains on (main.py's finetune_encoder; docs/encoders.md: Fine-tuning).

    cache = build_audio_cache(tracks, "data/cache", "small", audio_preprocessing(checkpoint_preprocessing(encoder)))
    cache[track_id]   # float16 (windows, window samples): the clip's windows, as the embedding cache cuts them

A folder cache_root/audio/<subset>-<hash>/ is a mel cache folder (fma_genres/data/cache.py: params.json,
status.npy, report.csv, locks/, reuse, copying, resume after kill -9, disk checks, torchrun shards) whose
array is audio.npy. Its key is the sample rate, the window length and the windows per clip, so encoders of
one rate share it (Dasheng and Whisper: 16 kHz). Worker processes decode with embedding_cache.clip_windows:
the same windows the embedding cache embeds, broken clips reported alike.
fma_small at 16 kHz: 8,000 x 3 x 160,000 float16 samples = 7.7 GB (CLAP's 48 kHz: 23 GB).
"""
from pathlib import Path

from fma_genres.data.cache import Build, Builder, Kind, MelCache, fill_folder
from fma_genres.encoders.embedding_cache import clip_windows

KEY = ("sample_rate", "window_seconds", "windows")  # what decides a row
AUDIO = Kind("audio.npy", lambda params: (params["preprocessing"]["windows"], window_samples(params["preprocessing"])),
             "audio cache")


def window_samples(p):
    return round(p["window_seconds"] * p["sample_rate"])


def audio_preprocessing(p):
    """The cache's key in a fine-tuned checkpoint's preprocessing (embedding_cache.checkpoint_preprocessing's)."""
    return {key: p[key] for key in KEY}


class AudioBuilder(Builder):
    """A Builder whose workers decode each clip into its windows and write them."""
    kind = AUDIO
    compute = staticmethod(clip_windows)


class AudioCache(MelCache):
    """Read side of an audio cache folder: cache[track_id] is float16 (windows, window samples)."""
    kind, title = AUDIO, "Audio cache"


def build_audio_cache(tracks, cache_root, subset, preprocessing, workers=None, progress=True, shard=None):
    """Reuse, resume or build the audio cache of these tracks (index track_id, column path) under
    cache_root/audio; print its summary; return the AudioCache. workers and shard as mel_cache.build_cache's."""
    return fill_folder(tracks, Path(cache_root) / "audio", subset, preprocessing, AudioBuilder, AudioCache,
                       Build(workers, progress, shard))
