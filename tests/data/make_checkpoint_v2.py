"""How tests/data/checkpoint_v2_cnn2d.pt and predictions_format_2.json were made (tests/test_models_utils.py).

The fixture is a format-2 checkpoint, the layout of main at git e3dbcd5, where the input normalisation was a
"normalisation" entry beside the weights and pre_trained_models wrapped the model to apply it. It is a
16-mel x 20-frame CNN2D, faithful=False and standardised, with moved batch-norm statistics (about 115 KB).
predictions_format_2.json holds what that code predicted, for it and for checkpoint_v1_cnn1d.pt, on fixed
inputs: later formats must load both and give the same probabilities and embeddings. To remake them, run
this file with that commit's code (it cannot run on later ones, whose make_checkpoint writes a newer format):

    git archive e3dbcd5 | tar -x -C /tmp/e3dbcd5 && cp tests/data/make_checkpoint_v2.py /tmp/e3dbcd5/tests/data/
    cd /tmp/e3dbcd5 && python tests/data/make_checkpoint_v2.py --out=<this folder>
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch

import models_utils
from fma_genres.inference import predict
from models import build_model
from utils import PREPROCESSING

GENRES = ["Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental", "International", "Pop", "Rock"]
MODEL_ARGS = {"n_mels": 16, "n_frames": 20, "n_classes": len(GENRES), "faithful": False}
NORMALISATION = {"mean": -41.25, "std": 17.5}
INPUTS = {  # per fixture: the shape of its input, made as torch.randn(shape, seed 0) * 20 - 40
    "checkpoint_v1_cnn1d.pt": (2, 16, 100),
    "checkpoint_v2_cnn2d.pt": (3, 16, 20),
}


def fixed_input(shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 20 - 40


def v2_checkpoint():
    """best.pt of a standardised CNN2D after its batch norms saw a few batches (random weights, seed 0)."""
    torch.manual_seed(0)
    model = models_utils.init_weights(build_model("cnn2d", **MODEL_ARGS))
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from 0 and 1
            model.train()((fixed_input((8, 16, 20)) - NORMALISATION["mean"]) / NORMALISATION["std"] * 1.5 + 0.3)
    config = {"model": "cnn2d", "faithful": False, "standardise": True, "n_frames": 20, "seed": 0}
    training = {"epoch": 1, "metrics": None, "history": [], "best_val_score": 0.5, "best_epoch": 1}
    preprocessing = {**PREPROCESSING, "n_mels": 16, "n_frames": 20}
    checkpoint = models_utils.make_checkpoint("cnn2d", MODEL_ARGS, model.state_dict(), GENRES, preprocessing,
                                              NORMALISATION, config, {"commit": "e3dbcd5"}, training)
    return models_utils.without_resume_state(checkpoint)


def predictions(path, shape):
    """Today's probabilities and embeddings of checkpoint ``path`` on its fixed input."""
    model, _ = predict.load_predictor(path)
    x = fixed_input(shape)
    with torch.no_grad():
        return {"input": f"torch.randn{shape} seed 0 * 20 - 40",
                "shape": list(shape), "probabilities": predict.probabilities(model, x).tolist(),
                "embeddings": predict.embeddings(model, x).tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    out = parser.parse_args().out
    assert models_utils.CHECKPOINT_VERSION == 2, "run this with the format-2 code (see the docstring)"
    models_utils.save_checkpoint(v2_checkpoint(), out / "checkpoint_v2_cnn2d.pt")
    expected = {name: predictions(out / name, shape) for name, shape in INPUTS.items()}
    (out / "predictions_format_2.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
