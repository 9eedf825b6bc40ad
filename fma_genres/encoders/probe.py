"""A probe on cached embeddings: a learned softmax weighting of the encoder's layers, then a linear or
MLP head (MARBLE's probes; X-ARES's are the linear one on the last layer).

    probe = ProbeHead(layers=12, dim=768, n_classes=8, head="mlp")
    logits = probe(embeddings)   # (B, L, D) float -> (B, n_classes)

A clip's windows are separate rows of the training set; its prediction is the mean of its windows'
probabilities, as prediction averages a track's windows.
"""
import torch
from torch import nn

MLP_HIDDEN, MLP_DROPOUT = 512, 0.5  # MARBLE's MLP probe: one hidden layer of 512, dropout 0.5


def linear_head(dim, n_classes):
    return nn.Linear(dim, n_classes)


def mlp_head(dim, n_classes):
    return nn.Sequential(nn.Linear(dim, MLP_HIDDEN), nn.ReLU(), nn.Dropout(MLP_DROPOUT), nn.Linear(MLP_HIDDEN, n_classes))


HEADS = {"linear": linear_head, "mlp": mlp_head}


class ProbeHead(nn.Module):
    """(B, layers, dim) embeddings -> (B, n_classes) logits through a softmax mix of the layers."""

    def __init__(self, layers, dim, n_classes, head="linear"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {sorted(HEADS)}")
        self.layer_logits = nn.Parameter(torch.zeros(layers))  # uniform weights to start, as MARBLE's
        self.head = HEADS[head](dim, n_classes)

    def layer_weights(self):
        return torch.softmax(self.layer_logits, dim=0)

    def embed(self, x):
        """(B, layers, dim) -> (B, dim): the layers' weighted sum."""
        return torch.einsum("bld,l->bd", x.float(), self.layer_weights())

    def forward(self, x):
        return self.head(self.embed(x))
