"""Fine-tuning: a run that starts from another model's weights (init_from) and may train only its classifier.

    python main.py --dataset=folder --data_dir=data/gtzan/genres --init_from=runs/crnn/latest/best.pt
    python main.py --init_from=original_weights/CRNN.pt --model=crnn --freeze=features ...   # original weights

Every weight whose name and shape fit is loaded; the classifier (the model's ``head``) starts afresh,
near zero, when the genres differ. The input preprocessing must be the source's (checked before the cache is
built); the input standardisation (the model's Standardise layer) is never loaded: when used, it comes from
the new training split like any run's. The
source stays recorded as config["init_from"] in every checkpoint and in the W&B config.
Tests: python -m pytest tests/training/test_finetune.py -q
"""
import types

import torch
import torch.nn as nn

import models_utils
from models_utils import CheckpointError

FREEZE = ("none", "features")  # features: every layer but the classifier, BatchNorm statistics included
# A new classifier starts near zero, its init's weights scaled down (BiT zero-initialises its heads; not
# exactly zero, as the faithful CNN1D's ReLU on the logits passes no gradient at 0): its first outputs
# are near-uniform instead of a random head's large logits on the loaded features, which took many
# epochs to unlearn. Measured in tests/training/test_finetune.py's setting (one clip of each of 3 new genres,
# freeze=features): test accuracy 0.79 after 4 epochs with this scale (0.29 from scratch); at full scale
# 0.04 after 6 epochs, 0.46 after 10 at lr=0.01.
NEW_HEAD_SCALE = 0.01
# A model that may start from another kind's checkpoint, and where that one's weights go in it: a fine-tuned
# encoder from a probe of the same encoder (LP-FT, docs/encoders.md: Fine-tuning), into its probe.
SOURCES = {"finetuned": {"probe": "probe."}}


def read_source(path, model_name):
    """init_from as a checkpoint dict: this project's, or the original's bare state_dict of ``model_name``."""
    try:
        source = models_utils.load_checkpoint(path)
    except CheckpointError:
        state_dict = models_utils.read_bare_state_dict(path)
        if state_dict is None:
            raise
        source = models_utils.original_checkpoint(state_dict, model_name, path)
    if source["model"] != model_name and source["model"] not in SOURCES.get(model_name, {}):
        raise CheckpointError(f"init_from={path} holds a {source['model']} model but this run trains a "
                              f"{model_name}: add --model={source['model']}.")
    return source


def checked_preprocessing(config, preprocessing):
    """``preprocessing``, once it is known to be init_from's (a fine-tuned model must get the input it knows)."""
    if not config["init_from"] or config["resume"]:  # a resumed run already checked it
        return preprocessing
    source = read_source(config["init_from"], config["model"])["preprocessing"]
    differs = [f"{key}={preprocessing.get(key)} (the source's {value})" for key, value in source.items()
               if preprocessing.get(key) != value]
    if differs:
        raise CheckpointError(f"init_from={config['init_from']} was trained on other spectrograms than this run "
                              f"would make: {', '.join(differs)}. Fine-tune with the source's settings"
                              f"{' (--n_frames=' + str(source['n_frames']) + ')' if 'n_frames' in source else ''}.")
    return preprocessing


def head_prefix(model):
    """The state_dict prefix of the model's classifier head, whose outputs are the genres."""
    return next(name for name, module in model.named_modules() if module is model.head) + "."


def output_layer(head):
    """The Linear layer of ``head`` that gives the genres: the head itself, or its last (a probe's MLP)."""
    return [module for module in head.modules() if isinstance(module, torch.nn.Linear)][-1]


def load_features(model, path, model_name, class_names):
    """Load init_from's weights that fit into ``model`` (the head's only when the genres are the same, in
    the same order; never a CNN's input standardisation, but a probe's per-feature one); print the layers
    loaded and the new ones; return their parameter names."""
    source = read_source(path, model_name)
    head = head_prefix(model)
    same_genres = list(source["class_names"]) == list(class_names)
    own = {key: value for key, value in model.state_dict().items() if not key.startswith("standardise.")}
    prefix = SOURCES.get(model_name, {}).get(source["model"], "")
    weights = {prefix + key: value for key, value in source["state_dict"].items()}
    loaded = {key: value for key, value in weights.items()
              if key in own and own[key].shape == value.shape and (same_genres or not key.startswith(head))}
    if not loaded:
        raise CheckpointError(f"No weight of init_from={path} fits this {model_name}: it was trained with "
                              f"another input size or model.")
    model.load_state_dict(loaded, strict=False)
    if not same_genres:
        with torch.no_grad():
            output_layer(model.head).weight.mul_(NEW_HEAD_SCALE)
    new = [key for key in own if key not in loaded]
    layers = lambda keys: ", ".join(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys)) or "none"
    why = "" if same_genres else f" (its genres {list(source['class_names'])} are not this dataset's)"
    print(f"init_from={path}: loaded {layers(loaded)}; new{why}: {layers(new)}")
    return list(loaded), new


def freeze(model, mode):
    """freeze=features: only the head trains; BatchNorm layers stay on their running statistics."""
    if mode == "none":
        return model
    head = {id(parameter) for parameter in model.head.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) in head
    return keep_frozen_batchnorm_in_eval(model)


def keep_frozen_batchnorm_in_eval(model):
    """BatchNorm layers whose parameters are all frozen stay on their running statistics in training too."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.train = types.MethodType(stay_in_eval, module)  # model.train() then leaves it in eval mode
    return model


def stay_in_eval(module, mode=True):
    return nn.Module.train(module, False)
