"""The three genre classifiers of the original project (UAB 2023): CNN1D, CNN2D and CRNN.

Every model takes a batch of mel-spectrograms in decibels, shape (batch, n_mels, n_frames), and
returns ``(logits, probabilities)``. Layer sizes derive from the constructor arguments; with the
defaults (128 x 1291 input, 8 classes) the parameter counts are exactly the original's:
CNN1D 236,680, CNN2D 37,912,576, CRNN 438,808 (docs/faithfulness.md: Models).

``faithful=True`` reproduces the original forward pass, quirks included, so the original's trained
weights give the original's outputs; ``faithful=False`` is the corrected pass. Parameter names and
counts are identical either way. CNN2D had no quirk, so it takes no ``faithful``.

The contract every model keeps: ``embed(x)`` gives the features its classifier ``head`` (one of its
layers) reads, and forward is ``head(embed(x))`` with its softmax. The first layer, ``standardise``, holds the
input scaling as buffers saved with the weights (raw dB unless the run standardises), so every user of a
model (training, prediction, ONNX, embeddings, the web page) feeds it raw dB.

    python models.py        # prints each model's parameter count
"""
import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F


class Standardise(nn.Module):
    """(x - mean) / std with the training split's dB statistics, kept as buffers in the state_dict;
    mean 0 and std 1 (the default, a run without standardise) give the raw dB back exactly. ``shape``:
    the statistics' (a probe's: one per layer and feature of its embeddings), broadcast over the input."""

    def __init__(self, shape=()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def use(self, mean, std):
        """Standardise with these statistics (utils.normalisation_stats, probe.feature_stats); None: raw input."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(0.0 if mean is None else mean))
            self.std.copy_(torch.as_tensor(1.0 if std is None else std))
        return self

    def forward(self, x):
        return (x - self.mean) / self.std


def standardisation_state(mean=None, std=None):
    """The state_dict entries of a model's Standardise layer (what the original's bare weights lack)."""
    return {f"standardise.{key}": value for key, value in Standardise().use(mean, std).state_dict().items()}


def with_probabilities(logits):
    """(logits, softmax probabilities): what every model's forward returns."""
    return logits, F.softmax(logits, dim=1)


class QuirkyLinear(nn.Linear):
    """CNN1D's classifier: a Linear layer (its parameters keep the Linear's names) whose outputs the
    faithful pass sends through ReLU and Dropout(0.3), as the original did (quirk 1)."""

    def __init__(self, in_features, out_features, faithful):
        super().__init__(in_features, out_features)
        self.faithful = faithful
        self.dropout = nn.Dropout(0.3)

    def forward(self, x):
        logits = super().forward(x)
        return self.dropout(F.relu(logits)) if self.faithful else logits


class CNN1D(nn.Module):
    """The original's CNN1D ("CNNGH1D"): mel bands as Conv1d channels, three conv blocks, one Linear."""

    pools = (4, 4, 2)
    kernel = 4

    def __init__(self, n_mels=128, n_frames=1291, n_classes=8, faithful=True):
        super().__init__()
        self.standardise = Standardise()
        length = n_frames
        for i, pool in enumerate(self.pools, start=1):
            # Layer order (dropout before batch norm) and names are the original's.
            setattr(self, f"layer{i}", nn.Sequential(
                nn.Conv1d(n_mels, n_mels, kernel_size=self.kernel),
                nn.LeakyReLU(),
                nn.Dropout(0.25),
                nn.BatchNorm1d(n_mels),
                nn.MaxPool1d(pool),
            ))
            length = (length - self.kernel + 1) // pool
        if length < 1:
            raise ValueError(f"CNN1D needs n_frames >= 95 (three conv + pool blocks); got n_frames={n_frames}.")
        self.fc1 = QuirkyLinear(n_mels * length, n_classes, faithful)

    @property
    def head(self):
        return self.fc1

    # Each model has its own forward, even if alike: torch.compile caches compiled frames by code object,
    # and one forward shared by the three models made a second model's compile a recompile of the first's,
    # with its weights' shapes turned symbolic (an InductorError for CNN2D after CRNN in one process).
    def forward(self, x):                       # (B, n_mels, T) -> (B, n_classes) twice
        return with_probabilities(self.head(self.embed(x)))

    def embed(self, x):                         # (B, n_mels, T)
        x = self.layer3(self.layer2(self.layer1(self.standardise(x))))  # (B, n_mels, T')
        return x.flatten(1)                     # (B, n_mels * T')


class CNN2D(nn.Module):
    """The original's CNN2D: a LeNet-style 2-D CNN over the spectrogram image, then three Linear layers."""

    def __init__(self, n_mels=128, n_frames=1291, n_classes=8):
        super().__init__()
        height, width = n_mels, n_frames
        for _ in range(2):  # conv 5x5 (no padding) then max-pool 2
            height, width = (height - 4) // 2, (width - 4) // 2
        if height < 1 or width < 1:
            raise ValueError(f"CNN2D needs n_mels and n_frames >= 16; got {n_mels} x {n_frames}.")
        self.standardise = Standardise()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * height * width, 256)
        self.bn3 = nn.BatchNorm1d(256)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(256, 64)
        self.bn4 = nn.BatchNorm1d(64)
        self.fc3 = nn.Linear(64, n_classes)

    @property
    def head(self):
        return self.fc3

    def forward(self, x):                                 # (B, n_mels, T) -> (B, n_classes) twice
        return with_probabilities(self.head(self.embed(x)))

    def embed(self, x):                                   # (B, n_mels, T)
        x = self.standardise(x).unsqueeze(1)              # (B, 1, n_mels, T)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (B, 6, H1, W1)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (B, 16, H2, W2)
        x = self.dropout(F.relu(self.bn3(self.fc1(x.flatten(1)))))  # (B, 256)
        return F.relu(self.bn4(self.fc2(x)))              # (B, 64)


class ResidualBlock(nn.Module):
    """ReLU(conv3x3-BN-ReLU-conv3x3-BN (x) + conv1x1-BN (x)), as in the original CRNN."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
        )
        self.layer2 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return F.relu(self.layer1(x) + self.layer2(x))


class ConvBlock(nn.Module):
    """Four residual blocks with max-pooling between them; named ``conv_block.block`` as in the original."""

    pools = ((8, 2), (4, 2), (4, 2))
    channels = (1, 16, 32, 64, 128)

    def __init__(self):
        super().__init__()
        layers = []
        for i in range(4):
            layers.append(ResidualBlock(self.channels[i], self.channels[i + 1]))
            if i < len(self.pools):
                layers.append(nn.MaxPool2d(self.pools[i]))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


class CRNN(nn.Module):
    """The original's CRNN: residual 2-D conv blocks, an LSTM over time, the last step to a Linear."""

    def __init__(self, n_mels=128, n_frames=1291, n_classes=8, faithful=True):
        super().__init__()
        self.faithful = faithful
        height = n_mels
        for pool_height, _ in ConvBlock.pools:
            height //= pool_height
        if height < 1 or n_frames < 8:
            raise ValueError(f"CRNN needs n_mels >= 128 and n_frames >= 8; got {n_mels} x {n_frames}.")
        channels = ConvBlock.channels[-1]
        self.standardise = Standardise()
        self.conv_block = ConvBlock()
        self.lstm = nn.LSTM(channels * height, 128, batch_first=True)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(128, n_classes)

    @property
    def head(self):
        return self.fc1

    def forward(self, x):                       # (B, n_mels, T) -> (B, n_classes) twice
        return with_probabilities(self.head(self.embed(x)))

    def embed(self, x):                         # (B, n_mels, T)
        x = self.conv_block(self.standardise(x).unsqueeze(1))  # (B, 128, H, T') with H = n_mels // 128
        batch, channels, height, steps = x.shape
        if self.faithful:
            # Quirk 2: the original reshaped (B, 128, 1, T') straight to (B, T', 128), which
            # scrambles channels and time instead of transposing them.
            x = x.reshape(batch, steps, channels * height)
        else:
            x = x.permute(0, 3, 1, 2).reshape(batch, steps, channels * height)  # (B, T', 128 H)
        out, _ = self.lstm(x)                   # (B, T', 128)
        return self.dropout(out[:, -1])         # (B, 128): the last step


MLP_HIDDEN, MLP_DROPOUT = 512, 0.5  # MARBLE's MLP probe: one hidden layer of 512, dropout 0.5


def linear_head(dim, n_classes):
    return nn.Linear(dim, n_classes)


def mlp_head(dim, n_classes):
    return nn.Sequential(nn.Linear(dim, MLP_HIDDEN), nn.ReLU(), nn.Dropout(MLP_DROPOUT), nn.Linear(MLP_HIDDEN, n_classes))


HEADS = {"linear": linear_head, "mlp": mlp_head}  # main.py's head


class ProbeHead(nn.Module):
    """A probe on a frozen encoder's cached embeddings (fma_genres/encoders/probe.py, docs/encoders.md):
    (B, windows, layers, dim) -> the windows' mean, standardised per (layer, feature), a learned softmax
    mix of the layers (MARBLE's probes), then a linear or MLP head."""

    def __init__(self, layers, dim, n_classes, head="linear"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {sorted(HEADS)}")
        self.standardise = Standardise((layers, dim))  # an encoder's layers differ in scale by orders of magnitude
        self.layer_logits = nn.Parameter(torch.zeros(layers))  # uniform weights to start, as MARBLE's
        self.head = HEADS[head](dim, n_classes)

    def layer_weights(self):
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x):                       # (B, windows, layers, dim) -> (B, n_classes) twice
        return with_probabilities(self.head(self.embed(x)))

    def embed(self, x):                         # (B, windows, layers, dim) -> (B, dim)
        return torch.einsum("bld,l->bd", self.standardise(x.float()).mean(dim=1), self.layer_weights())


class FinetunedEncoder(nn.Module):
    """A pretrained encoder trained end to end with a ProbeHead (docs/encoders.md: Fine-tuning): audio windows
    (B, windows, samples) -> the encoder's per-layer states pooled over time (B, windows, layers, dim) -> the
    probe. ``architecture`` rebuilds the encoder (fma_genres/encoders: Encoder.architecture) without its
    original weights, which the state_dict holds; ``augment``: data_augmentation in training (Encoder.augment)."""

    def __init__(self, encoder, architecture, layers, dim, n_classes, head="linear", augment=False):
        super().__init__()
        from fma_genres.encoders import ENCODERS  # light: the encoders' packages load only in build()

        self.adapter = ENCODERS[encoder].rebuilt(architecture)  # turns audio into the module's input and back
        self.encoder = self.adapter.model
        self.probe = ProbeHead(layers, dim, n_classes, head)
        self.augment = augment

    @property
    def standardise(self):
        return self.probe.standardise

    @property
    def head(self):
        return self.probe.head

    def forward(self, x):                       # (B, windows, samples) -> (B, n_classes) twice
        return with_probabilities(self.head(self.embed(x)))

    def embed(self, x):                         # (B, windows, samples) -> (B, dim)
        return self.probe.embed(self.hidden_states(x))

    def hidden_states(self, x):                 # (B, windows, samples) -> (B, windows, layers, dim)
        self.adapter.device = x.device
        inputs = self.adapter.inputs(x.flatten(0, 1).float())
        if self.training and self.augment:
            inputs = self.adapter.augment(inputs)
        return self.adapter.layers_of(inputs).unflatten(0, x.shape[:2])


MODELS = {"cnn1d": CNN1D, "cnn2d": CNN2D, "crnn": CRNN}  # on mel-spectrograms: --model's choices
# On a pretrained encoder's cached embeddings (main.py's encoder other than mel, which makes model=probe).
PROBES = {"probe": ProbeHead}
# The encoder trained with its probe on audio (main.py's finetune_encoder=True with an encoder).
FINETUNED = {"finetuned": FinetunedEncoder}


def build_model(name, **model_args):
    """The registry's model ``name`` built with ``model_args``; an unknown name lists the valid ones."""
    try:
        model_class = {**MODELS, **PROBES, **FINETUNED}[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}.") from None
    return model_class(**model_args)


def accepted_args(name, **model_args):
    """The entries of ``model_args`` that model ``name`` takes (CNN2D takes no ``faithful``, a probe its
    ``layers``, ``dim``, ``n_classes`` and ``head``, a fine-tuned encoder also its ``encoder``, ``architecture``
    and ``augment``)."""
    accepted = inspect.signature({**MODELS, **PROBES, **FINETUNED}[name]).parameters
    return {key: value for key, value in model_args.items() if key in accepted}


if __name__ == "__main__":
    for name, model_class in MODELS.items():
        print(f"{name:6s} {sum(p.numel() for p in model_class().parameters()):>12,d} parameters")
