"""Fine-tuning a pretrained encoder end to end with its probe (main.py's finetune_encoder; docs/encoders.md:
Fine-tuning): the model (models.FinetunedEncoder) starts from the encoder's published weights, its input
standardisation from a few training clips, its lowest layers frozen as asked; Adam gets the encoder's
parameters at encoder_lr and the probe's at lr, both warmed up linearly over warmup_steps.

    normalisation = initial_stats(config, encoder, cache, train_track_ids)   # build_data
    adopt_pretrained(model, data); prepare(model, config)                    # build_training
    optimizer = torch.optim.Adam(param_groups(model, config), ...); warm_up(optimizer, config["warmup_steps"])

Tests: python -m pytest tests/encoders/test_finetune_encoder.py -q
"""
import numpy as np

from fma_genres.encoders.probe import feature_stats
from fma_genres.runtime.errors import ConfigError
from fma_genres.training.finetune import keep_frozen_batchnorm_in_eval
from models import FINETUNED

STATS_CLIPS = 32  # training clips whose windows give a fresh run's standardisation (the first ones: deterministic)
LR_KEYS = {"encoder": "encoder_lr", "head": "lr"}  # the key that sets each of Adam's groups' lr


def initial_stats(config, encoder, cache, track_ids):
    """{"mean", "std"} per (layer, feature) of the encoder's embeddings of the first STATS_CLIPS training
    clips, as the probe standardises; None for both when init_from (LP-FT: the probe's own) or a resumed
    run (its checkpoint's) brings them."""
    if config["init_from"] or config["resume"]:
        return {"mean": None, "std": None}
    rows = {t: encoder.embed_layers(cache[t].astype(np.float32)).numpy() for t in list(track_ids)[:STATS_CLIPS]}
    return dict(zip(("mean", "std"), feature_stats(rows, rows)))


def adopt_pretrained(model, data):
    """Copy the loaded encoder's weights (data.encoder, then released: the model holds them now) into a
    fine-tuned model built from its architecture; nothing for any other model."""
    if data.encoder is not None:
        model.encoder.load_state_dict(data.encoder.model.state_dict())
        data.encoder = None


def prepare(model, config):
    """frozen_layers (the front end and the lowest blocks keep their weights, BatchNorm its statistics) and
    grad_checkpointing on a fine-tuned model."""
    if config["model"] not in FINETUNED:
        return model
    adapter, layers = model.adapter, config["frozen_layers"]
    if layers > adapter.depth():
        raise ConfigError(f"frozen_layers={layers}, but this {config['encoder']} encoder has {adapter.depth()} "
                          f"layers: give at most {adapter.depth()} (that many freezes all but the probe).")
    frozen = adapter.frozen_names(layers)
    for name, parameter in model.encoder.named_parameters():
        if name.startswith(frozen):
            parameter.requires_grad = False
    keep_frozen_batchnorm_in_eval(model.encoder)
    if config["grad_checkpointing"]:
        adapter.enable_checkpointing()
    return model


def param_groups(model, config):
    """Adam's parameter groups of the trainable parameters: a fine-tuned model's encoder at encoder_lr and its
    probe at lr; any other model's in one group at lr."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config["model"] not in FINETUNED:
        return [{"params": [p for _, p in trainable], "lr": config["lr"]}]
    groups = [{"params": [p for name, p in trainable if name.startswith("encoder.") == (group == "encoder")],
               "lr": config[key], "name": group} for group, key in LR_KEYS.items()]
    return [group for group in groups if group["params"]]


def lr_key(group):
    """The key whose value a group's lr takes (a resumed run's --lr or --encoder_lr)."""
    return LR_KEYS.get(group.get("name"), "lr")


def warm_up(optimizer, steps):
    """Linear warm-up of every group's lr over the first ``steps`` optimiser steps (lr/steps, 2 lr/steps, ...,
    lr); the count and the target lr live in the groups, so the optimizer's state in a checkpoint resumes it
    exactly. ReduceLROnPlateau's cuts take effect once it is over."""
    if not steps:
        return optimizer
    for group in optimizer.param_groups:  # the first step's lr from the start: the first epoch's history shows it
        group.update(warmup_lr=group["lr"], warmup_step=0, lr=group["lr"] / steps)

    def before_step(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            if group["warmup_step"] < steps:
                group["warmup_step"] += 1
                group["lr"] = group["warmup_lr"] * group["warmup_step"] / steps
    optimizer.register_step_pre_hook(before_step)
    return optimizer


def describe(config):
    """What main.py prints about a fine-tuned model's training, or ''."""
    if config["model"] not in FINETUNED:
        return ""
    return (f"fine-tuning {config['encoder']}: encoder lr {config['encoder_lr']:g}, head lr {config['lr']:g}, "
            f"warm-up {config['warmup_steps']} steps, {config['frozen_layers']} layers frozen"
            + (", gradient checkpointing" if config["grad_checkpointing"] else ""))



