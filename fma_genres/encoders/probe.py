"""A probe on cached embeddings: a learned softmax weighting of the encoder's layers, then a linear or
MLP head (MARBLE's probes; X-ARES's are the linear one on the last layer). It keeps the model contract
of models.py (``standardise``, ``embed``, ``head``, forward -> (logits, probabilities)), so main.py trains
it, and prediction, evaluation and fine-tuning read it, like the CNNs.

    probe = ProbeHead(layers=12, dim=768, n_classes=8, head="mlp")
    logits, probabilities = probe(rows)   # (B, windows, layers, dim) float: embedding cache rows

A clip's input is its row of the embedding cache, every window's per-layer embedding; the probe averages
the windows before anything else. So a clip is one training example, and prediction gives a long track
the mean of all its windows' embeddings (fma_genres/inference/probe_windows.py): for equal windows that
is the mean over every token of the clip, what X-ARES's clip-level probes see.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MLP_HIDDEN, MLP_DROPOUT = 512, 0.5  # MARBLE's MLP probe: one hidden layer of 512, dropout 0.5


def linear_head(dim, n_classes):
    return nn.Linear(dim, n_classes)


def mlp_head(dim, n_classes):
    return nn.Sequential(nn.Linear(dim, MLP_HIDDEN), nn.ReLU(), nn.Dropout(MLP_DROPOUT), nn.Linear(MLP_HIDDEN, n_classes))


HEADS = {"linear": linear_head, "mlp": mlp_head}


class FeatureStandardise(nn.Module):
    """(x - mean) / std per (layer, feature), with the training split's statistics kept as buffers: an
    encoder's layers differ in scale by orders of magnitude, which one mean and std for all would keep."""

    def __init__(self, layers, dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(layers, dim))
        self.register_buffer("std", torch.ones(layers, dim))

    def use(self, mean, std):
        """Standardise with these (layers, dim) statistics (feature_stats); None: leave the input as it is."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(0.0 if mean is None else mean))
            self.std.copy_(torch.as_tensor(1.0 if std is None else std))
        return self

    def forward(self, x):
        return (x - self.mean) / self.std


class ProbeHead(nn.Module):
    """(B, windows, layers, dim) embeddings -> (logits, probabilities) through a softmax mix of the layers."""

    def __init__(self, layers, dim, n_classes, head="linear"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {sorted(HEADS)}")
        self.standardise = FeatureStandardise(layers, dim)
        self.layer_logits = nn.Parameter(torch.zeros(layers))  # uniform weights to start, as MARBLE's
        self.head = HEADS[head](dim, n_classes)

    def layer_weights(self):
        return torch.softmax(self.layer_logits, dim=0)

    def embed(self, x):
        """(B, windows, layers, dim) -> (B, dim): the windows' mean, standardised, its layers' weighted sum."""
        return torch.einsum("bld,l->bd", self.standardise(x.float().mean(dim=1)), self.layer_weights())

    def forward(self, x):
        logits = self.head(self.embed(x))
        return logits, F.softmax(logits, dim=1)


def feature_stats(cache, track_ids):
    """float32 (layers, dim) mean and standard deviation of these tracks' window embeddings (cache rows)."""
    total = total_sq = 0.0
    count = 0
    for track_id in track_ids:
        rows = cache[track_id].astype(np.float64)  # (windows, layers, dim)
        total, total_sq, count = total + rows.sum(0), total_sq + np.square(rows).sum(0), count + len(rows)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(np.maximum(std, 1e-6)).float()
