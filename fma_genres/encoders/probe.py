"""A probe on cached embeddings: models.ProbeHead (a learned softmax weighting of the encoder's layers,
then a linear or MLP head: MARBLE's probes; X-ARES's are the linear one on the last layer), and the
per-feature statistics its Standardise layer takes from the training split. It keeps the model contract of
models.py (``standardise``, ``embed``, ``head``, forward -> (logits, probabilities)), so main.py trains it,
and prediction, evaluation and fine-tuning read it, like the CNNs.

    probe = ProbeHead(layers=12, dim=768, n_classes=8, head="mlp")
    probe.standardise.use(*feature_stats(cache, train_track_ids))
    logits, probabilities = probe(rows)   # (B, windows, layers, dim) float: embedding cache rows

A clip's input is its row of the embedding cache, every window's per-layer embedding; the probe averages
the windows. So a clip is one training example, and prediction gives a track the mean of all its
windows' embeddings (fma_genres/inference/probe_windows.py): for equal windows that is the mean over
every token of the clip, what X-ARES's clip-level probes see.
"""
import numpy as np
import torch

from models import HEADS, ProbeHead


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


__all__ = ["HEADS", "ProbeHead", "feature_stats"]
