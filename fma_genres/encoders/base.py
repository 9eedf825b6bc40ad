"""What every pretrained encoder offers (Encoder), and the one-paragraph error for weights it cannot load."""
import hashlib
import os
from pathlib import Path

import torch

import utils
from fma_genres.runtime.errors import ConfigError

GAIN_DB = 6.0               # waveform augmentation: each window's gain drawn from +-GAIN_DB
NOISE_DB = (-50.0, -30.0)   # and white noise this far below the window's RMS (drawn per window)


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
    # Fine-tuning (models.FinetunedEncoder, docs/encoders.md: Fine-tuning):
    augmentation = "waveform"  # what data_augmentation does to its input: waveform | specaugment (augment)
    front_end = ()         # parameter name prefixes of its input front end, frozen with any frozen_layers
    blocks = ""            # the module list of its layers, frozen from the bottom up (frozen_layers)
    checkpointing = True   # whether grad_checkpointing can recompute its blocks' activations

    def __init__(self, weights, device=None):
        self.weights = str(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.load(self.weights).eval().requires_grad_(False).to(self.device)
        self.layers, self.dim = self.embed_layers(torch.zeros(1, self.window_samples)).shape[1:]

    @classmethod
    def rebuilt(cls, architecture):
        """An encoder of this architecture (what architecture() gave) with random weights, on the CPU and
        trainable: a fine-tuned checkpoint rebuilds its encoder so, then loads its own weights into it."""
        encoder = cls.__new__(cls)
        encoder.weights, encoder.device = "", torch.device("cpu")
        encoder.model = encoder.build(architecture)
        return encoder

    def architecture(self):
        """Plain values (a checkpoint's model_args) from which build() makes this encoder's module again."""
        raise NotImplementedError

    def build(self, architecture):
        """A module of this architecture, randomly initialised (its feature extractor too, where it has one)."""
        raise NotImplementedError

    def depth(self):
        return len(self.model.get_submodule(self.blocks))

    def frozen_names(self, layers):
        """Prefixes of the parameters frozen_layers=layers keeps fixed: none for 0, else the front end and the
        ``layers`` lowest blocks."""
        if layers == 0:
            return ()
        return (*self.front_end, *(f"{self.blocks}.{k}." for k in range(layers)))

    def enable_checkpointing(self):
        """Recompute each block's activations in the backward pass instead of keeping them (grad_checkpointing)."""
        raise NotImplementedError

    def inputs(self, audio):
        """The module's input of (B, samples) audio, as a dict (a feature extractor's output, or the audio)."""
        return {"audio": audio}

    def augment(self, inputs):
        """``inputs`` as data_augmentation changes them in training, by the class's ``augmentation``."""
        return AUGMENTATIONS[self.augmentation](inputs)

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
        return self.layers_of(self.inputs(audio))

    def layers_of(self, inputs):
        """(B, layers, dim) of the module's ``inputs`` (inputs()), differentiable: fine-tuning trains through it."""
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


def waveform_augment(inputs):
    """Each window at a random gain (+-GAIN_DB), plus white noise NOISE_DB below its RMS: audio in, audio out."""
    audio = inputs["audio"]
    draws = torch.rand(audio.shape[0], 2, 1, device=audio.device)
    gain = 10 ** ((draws[:, 0] * 2 - 1) * GAIN_DB / 20)
    rms = audio.square().mean(dim=1, keepdim=True).sqrt()
    noise = rms * 10 ** ((NOISE_DB[0] + draws[:, 1] * (NOISE_DB[1] - NOISE_DB[0])) / 20)
    return {**inputs, "audio": gain * audio + noise * torch.randn_like(audio)}


def feature_augment(inputs):
    """SpecAugment (utils.spec_augment: two band and two time masks) on the extractor's (B, [1,] bands or
    frames...) input features; a masked value becomes its window's mean feature, not 0 (CLAP's are dB)."""
    features = inputs["input_features"]
    flat = features.reshape(features.shape[0], -1, features.shape[-1]).float()  # (B, rows, columns)
    mean = flat.mean(dim=(1, 2), keepdim=True)
    uniforms = utils.draw_mask_uniforms(flat.shape[0]).to(flat.device)
    masked = utils.spec_augment(flat - mean, uniforms) + mean
    return {**inputs, "input_features": masked.reshape(features.shape).to(features.dtype)}


AUGMENTATIONS = {"waveform": waveform_augment, "specaugment": feature_augment}


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
