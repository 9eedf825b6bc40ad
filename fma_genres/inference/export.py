"""ONNX export of a trained model: raw mel dB in, genre probabilities out, checked with onnxruntime.

The graph takes a float32 batch of mel dB spectrograms, shape (batch, n_mels, n_frames) with a dynamic
batch size, exactly as utils.clip_spectrogram computes them (before any standardisation: a model
trained on standardised input carries its mean and std inside the graph), and returns the (batch,
n_classes) genre probabilities of its task (tasks.py): softmax, or for a multi-label model one sigmoid
per genre. The class names, the model, its forward pass, the preprocessing (utils.PREPROCESSING's keys)
and the task's own entries (output_kind; multi-label: thresholds, genre_ids, genre_tree) are in the
model's metadata_props, as JSON values. Before the file is
written, onnxruntime and PyTorch score the same batch and must agree to within MAX_DIFFERENCE.

    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --export=crnn.onnx
"""
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import utils
from fma_genres import tasks
from fma_genres.runtime import atomic

MAX_DIFFERENCE = 1e-4  # largest accepted |onnxruntime - PyTorch| probability
INPUT_NAME, OUTPUT_NAME = "mel_db", "probabilities"


class ExportError(Exception):
    """The exported graph disagrees with PyTorch, or the export failed; str() says what to do."""


class Probabilities(torch.nn.Module):
    """The model's probabilities alone (its task's: softmax or sigmoids): the one output of the graph."""

    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, mel_db):
        return self.task.window_probabilities(self.model, mel_db)


def metadata(checkpoint):
    """metadata_props of the graph: what a user needs to prepare its input and read its output."""
    model_args = checkpoint["model_args"]
    props = {"class_names": checkpoint["class_names"], "model": checkpoint["model"],
             "faithful": model_args.get("faithful", True), "input": f"{INPUT_NAME}: float32 (batch, "
             f"{model_args['n_mels']}, {model_args['n_frames']}) mel dB before standardisation",
             "output": f"{OUTPUT_NAME}: float32 (batch, {len(checkpoint['class_names'])}) in class_names order"}
    props.update({key: checkpoint["preprocessing"][key] for key in utils.PREPROCESSING})
    props.update({"target": tasks.of(checkpoint).name, **tasks.of(checkpoint).onnx_metadata(checkpoint)})
    return {key: json.dumps(value) for key, value in props.items()}


def example_batch(checkpoint, batch, seed):
    """Spectrogram-like dB in [-80, 0]; the scale matters, since faithful CNN1D's ReLU zeroes most logits."""
    args = checkpoint["model_args"]
    generator = torch.Generator().manual_seed(seed)
    return -80.0 * torch.rand(batch, args["n_mels"], args["n_frames"], generator=generator)


def onnx_bytes(model, checkpoint):
    """The serialised ONNX model (dynamic batch, metadata included)."""
    # The exporter's notes (torchvision absent, LSTM weights set during tracing, a deprecated pytree
    # check) are harmless and not the user's to act on; the verification below is what counts.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(Probabilities(model, tasks.of(checkpoint)).eval(), (example_batch(checkpoint, 2, seed=0),),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"mel_db": {0: torch.export.Dim("batch")}}, dynamo=True,
                                    verbose=False)
    proto = program.model_proto
    for key, value in metadata(checkpoint).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def max_difference(model, checkpoint, serialized, batch=3):
    """max |onnxruntime - PyTorch| probability on a batch of another size than the export's example."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # small batches: threads would only compete with the rest
    session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    mel_db = example_batch(checkpoint, batch, seed=1)
    with torch.no_grad():
        expected = Probabilities(model, tasks.of(checkpoint))(mel_db).numpy()
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: mel_db.numpy()})
    return float(np.abs(got - expected).max())


def export_onnx(model, checkpoint, path):
    """Write `model` (in eval mode, on the CPU) to `path` as ONNX once onnxruntime agrees with PyTorch;
    returns the max abs probability difference."""
    model = model.cpu().eval()
    serialized = onnx_bytes(model, checkpoint)
    difference = max_difference(model, checkpoint, serialized)
    if not difference < MAX_DIFFERENCE:
        raise ExportError(f"The ONNX graph of {checkpoint['model']} disagrees with PyTorch by up to {difference:.2e} "
                          f"in probability (limit {MAX_DIFFERENCE:.0e}), so {path} was not written. Report it "
                          f"with the versions of torch, onnxscript and onnxruntime.")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(Path(path), lambda f: f.write(serialized))
    return difference
