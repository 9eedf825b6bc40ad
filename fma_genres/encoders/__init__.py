"""Pretrained music encoders: audio windows -> pooled per-layer embeddings, their cache, and a probe head.

    encoder = load_encoder("dasheng", "dasheng_base")   # or a hub name, a local folder, a .pt file
    encoder.embed_layers(audio)                           # (B, window_samples) -> (B, L, D) float32

ENCODERS is the registry (adding an encoder is one class and one entry); transformers and dasheng are
imported only when an encoder is loaded, so start-up stays that of `import torch`. The optional
packages are in requirements-encoders.txt (Python >= 3.11); docs/encoders.md has the keys, licences,
published figures and the MERT recipe. Tests: python -m pytest tests/encoders/test_encoders.py -q
"""
from fma_genres.encoders.base import Encoder, weights_error
from fma_genres.encoders.dasheng import DashengEncoder
from fma_genres.encoders.transformers_encoders import ClapEncoder, WhisperEncoder
from fma_genres.runtime.errors import ConfigError

ENCODERS = {encoder.name: encoder for encoder in (DashengEncoder, WhisperEncoder, ClapEncoder)}

MERT_MESSAGE = (
    "encoder=mert is not supported: MERT-v1 has no class in transformers and loads only with "
    "trust_remote_code=True, i.e. code downloaded from its hub page at load time, which cannot run offline "
    "and which this suite will not run for you. docs/encoders.md has a recipe that exports MERT's per-layer "
    "embeddings on a machine with internet; for a probe here use encoder=dasheng, whisper or clap.")


def load_encoder(name, weights=None, device=None):
    """The encoder `name` of ENCODERS with `weights` (default: its published weights) on `device` (default:
    CUDA when there is a GPU). ConfigError, in one paragraph, for an unknown name, mert, or weights that
    cannot be found or downloaded."""
    if name == "mert":
        raise ConfigError(MERT_MESSAGE)
    if name not in ENCODERS:
        raise ConfigError(f"encoder={name!r} is not a pretrained encoder; choose one of {sorted(ENCODERS)} "
                          f"(or mel, the default, for the CNNs on mel-spectrograms).")
    return ENCODERS[name](weights or ENCODERS[name].default_weights, device)


__all__ = ["ENCODERS", "Encoder", "load_encoder", "weights_error"]
