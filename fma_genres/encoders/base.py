"""What every pretrained encoder offers (Encoder), and the one-paragraph error for weights it cannot load."""
import hashlib
import os
from pathlib import Path

import torch

from fma_genres.runtime.errors import ConfigError


class Encoder:
    """A frozen pretrained encoder: windows of audio at sample_rate -> (B, layers, dim) embeddings, each
    layer's hidden state averaged over time (or one projected embedding: layers == 1)."""
    name = ""              # the `encoder` key's value
    sample_rate = 16000    # Hz the encoder was trained at; the cache decodes clips at this rate
    window_seconds = 10.0  # audio per window: an FMA clip (30 s) gives three
    default_weights = ""   # hub name (or published checkpoint name) used when encoder_weights is empty
    licence = ""           # of the published weights, for the docs and the error messages
    source = ""            # where the published weights come from
    local_form = ""        # what a local copy of the weights is (a .pt file, a folder)

    def __init__(self, weights, device=None):
        self.weights = str(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.load(self.weights).eval().requires_grad_(False).to(self.device)
        self.layers, self.dim = self.embed_layers(torch.zeros(1, self.window_samples)).shape[1:]

    @property
    def window_samples(self):
        return round(self.window_seconds * self.sample_rate)

    def load(self, weights):
        """The torch module of these weights (a hub name, a local folder or a file)."""
        raise NotImplementedError

    @torch.inference_mode()
    def embed_layers(self, audio):
        """(B, samples) float32 mono audio at sample_rate -> float32 (B, layers, dim) on the CPU."""
        return self.forward_layers(torch.as_tensor(audio, dtype=torch.float32)).float().cpu()

    def forward_layers(self, audio):
        raise NotImplementedError

    def weights_key(self):
        """What identifies the weights in the cache's key: a hub name as given; a local file or folder by
        its files' names, sizes and modification times (so replaced weights make a new cache folder)."""
        path = Path(self.weights).expanduser()
        if not path.exists():
            return self.weights
        files = sorted(f for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
        stamp = "".join(f"{f.relative_to(path.parent)}:{f.stat().st_size}:{f.stat().st_mtime_ns};" for f in files)
        return f"{path.name}@{hashlib.sha1(stamp.encode()).hexdigest()[:12]}"


def looks_local(weights):
    """True for a path (an existing one, or one written as a path or a file), False for a hub name."""
    return Path(weights).expanduser().exists() or weights.startswith(("/", ".", "~")) or \
        Path(weights).suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def weights_error(encoder, weights, why):
    """The ConfigError for weights that cannot be loaded: which, why, where they come from, the fix."""
    offline = " (HF_HUB_OFFLINE is set: nothing is downloaded)" if os.environ.get("HF_HUB_OFFLINE") else ""
    if looks_local(weights):
        where = f"the local {'file' if Path(weights).suffix else 'folder'} {weights}"
    else:
        where = f"'{weights}', which is neither on this machine's cache nor downloadable here{offline}"
    return ConfigError(
        f"Cannot load the {encoder.name} encoder's weights from {where}: {why}. The published weights come from "
        f"{encoder.source} (licence: {encoder.licence}). On a machine with internet, download them (see "
        f"docs/encoders.md), copy them here, and give their local {encoder.local_form} with "
        f"--encoder_weights=/path/to/them.")
