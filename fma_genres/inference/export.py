"""ONNX export of a trained model: its input in, genre probabilities out, checked with onnxruntime.

A CNN's graph takes a float32 batch of mel dB spectrograms, shape (batch, n_mels, n_frames) with a dynamic
batch size, exactly as utils.clip_spectrogram computes them (before any standardisation: a model
trained on standardised input carries its mean and std inside the graph). An encoder checkpoint's (a probe)
graph is the whole model where its encoder exports: audio windows (batch, windows, samples) at the
encoder's rate in (Dasheng, whose mel front end is torch); otherwise (Whisper and CLAP compute their
features in numpy) the head on the encoder's embeddings (batch, windows, layers, dim), the rows the
embedding cache holds, and the command says so. Either returns the (batch, n_classes) genre probabilities
of its task (tasks.py): softmax, or for a multi-label model one sigmoid per genre. The class names, the
model, the input (input_kind), the preprocessing and the task's own entries (output_kind; multi-label:
thresholds, genre_ids, genre_tree) are in the model's metadata_props, as JSON values. Before the file is
written, onnxruntime and PyTorch score the same batch and must agree to within MAX_DIFFERENCE.

    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --export=crnn.onnx
"""
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime
import torch

import utils
from fma_genres import tasks
from fma_genres.runtime import atomic
from models import FinetunedEncoder

MAX_DIFFERENCE = 1e-4  # largest accepted |onnxruntime - PyTorch| probability
OUTPUT_NAME = "probabilities"


class ExportError(Exception):
    """The exported graph disagrees with PyTorch, or the export failed; str() says what to do."""


class Probabilities(torch.nn.Module):
    """The model's probabilities alone (its task's: softmax or sigmoids): the one output of the graph."""

    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return self.task.window_probabilities(self.model, x)


class AudioProbabilities(Probabilities):
    """An encoder checkpoint's whole model: audio windows (batch, windows, samples) -> the probe's
    probabilities (its mean over the windows). A probe's frozen encoder turns the windows into embedding
    rows first; a fine-tuned encoder (models.FinetunedEncoder) takes the windows itself."""

    def __init__(self, model, task):
        super().__init__(model, task)
        self.encoder_model = getattr(model.encoder, "model", model.encoder)  # a submodule: its weights are kept

    def forward(self, audio):
        if isinstance(self.model, FinetunedEncoder):
            return super().forward(audio)
        batch, windows, samples = audio.shape
        rows = self.model.encoder.forward_layers(audio.reshape(batch * windows, samples))
        return super().forward(rows.reshape(batch, windows, *rows.shape[1:]))


class HeadProbabilities(Probabilities):
    """An encoder checkpoint's probe alone: embedding rows (batch, windows, layers, dim) -> probabilities."""

    def __init__(self, model, task):
        super().__init__(model.probe, task)


@dataclass(frozen=True)
class GraphInput:
    """What a graph takes: its input's name, the module that reads it, a batch like it, its dynamic axes."""
    name: str
    module: type
    example: Callable  # (model, checkpoint, batch, windows, generator) -> float32 tensor
    describe: Callable  # checkpoint -> the metadata's "input" text
    dynamic: tuple      # names of the input's leading axes that vary


def mel_example(model, checkpoint, batch, windows, generator):
    """Spectrogram-like dB in [-80, 0]; the scale matters, since faithful CNN1D's ReLU zeroes most logits."""
    args = checkpoint["model_args"]
    return -80.0 * torch.rand(batch, args["n_mels"], args["n_frames"], generator=generator)


def audio_example(model, checkpoint, batch, windows, generator):
    """Noise at a music-like level, windows of the encoder's length."""
    p = checkpoint["preprocessing"]
    return 0.1 * torch.randn(batch, windows, round(p["window_seconds"] * p["sample_rate"]), generator=generator)


def embeddings_example(model, checkpoint, batch, windows, generator):
    """Rows at the scale of the training split's embeddings (the probe's standardisation statistics)."""
    p, standardise = checkpoint["preprocessing"], model.probe.standardise
    noise = torch.randn(batch, windows, p["layers"], p["dim"], generator=generator)
    return standardise.mean + standardise.std * noise


MEL = GraphInput("mel_db", Probabilities, mel_example, lambda c: (
    f"mel_db: float32 (batch, {c['model_args']['n_mels']}, {c['model_args']['n_frames']}) mel dB before "
    f"standardisation"), ("batch",))
AUDIO = GraphInput("audio", AudioProbabilities, audio_example, lambda c: (
    f"audio: float32 (batch, windows, {round(c['preprocessing']['window_seconds'] * c['preprocessing']['sample_rate'])})"
    f" mono windows at {c['preprocessing']['sample_rate']} Hz (probe_windows.track_windows), encoder included"), (
    "batch", "windows"))
EMBEDDINGS = GraphInput("embeddings", HeadProbabilities, embeddings_example, lambda c: (
    f"embeddings: float32 (batch, windows, {c['preprocessing']['layers']}, {c['preprocessing']['dim']}) the "
    f"{c['preprocessing']['encoder']} encoder's per-layer embeddings of each window (an embedding cache row); "
    f"the encoder is not in the graph"), ("batch", "windows"))


def graph_inputs(checkpoint):
    """The inputs to try, in order: an encoder checkpoint's whole model first, then its head alone."""
    return (AUDIO, EMBEDDINGS) if "encoder" in checkpoint["preprocessing"] else (MEL,)


def metadata(checkpoint, graph_input, note=None):
    """metadata_props of the graph: what a user needs to prepare its input and read its output."""
    props = {"class_names": checkpoint["class_names"], "model": checkpoint["model"], "input_kind": graph_input.name,
             "input": graph_input.describe(checkpoint),
             "output": f"{OUTPUT_NAME}: float32 (batch, {len(checkpoint['class_names'])}) in class_names order"}
    if graph_input is MEL:
        props["faithful"] = checkpoint["model_args"].get("faithful", True)
        props.update({key: checkpoint["preprocessing"][key] for key in utils.PREPROCESSING})
    else:
        props.update({key: value for key, value in checkpoint["preprocessing"].items()})
        props["head"] = checkpoint["model_args"].get("head")
    if note:
        props["input_note"] = note
    props.update({"target": tasks.of(checkpoint).name, **tasks.of(checkpoint).onnx_metadata(checkpoint)})
    return {key: json.dumps(value) for key, value in props.items()}


def example_batch(model, checkpoint, graph_input, batch, windows, seed):
    return graph_input.example(model, checkpoint, batch, windows, torch.Generator().manual_seed(seed))


def onnx_bytes(model, checkpoint, graph_input, note=None):
    """The serialised ONNX model (dynamic batch, and windows for an encoder's, metadata included)."""
    # The exporter's notes (torchvision absent, LSTM weights set during tracing, a deprecated pytree
    # check) are harmless and not the user's to act on; the verification below is what counts.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    module = graph_input.module(model, tasks.of(checkpoint)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(module, (example_batch(model, checkpoint, graph_input, 2, 2, seed=0),),
                                    input_names=[graph_input.name], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({k: torch.export.Dim(axis) for k, axis in enumerate(graph_input.dynamic)},),
                                    dynamo=True, verbose=False)
    proto = program.model_proto
    for key, value in metadata(checkpoint, graph_input, note).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def max_difference(model, checkpoint, serialized, graph_input, batch=3, windows=3):
    """max |onnxruntime - PyTorch| probability on a batch of other sizes than the export's example."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # small batches: threads would only compete with the rest
    session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    x = example_batch(model, checkpoint, graph_input, batch, windows, seed=1)
    with torch.no_grad():
        expected = graph_input.module(model, tasks.of(checkpoint))(x).numpy()
    (got,) = session.run([OUTPUT_NAME], {graph_input.name: x.numpy()})
    return float(np.abs(got - expected).max())


def verified_bytes(model, checkpoint, graph_input, note=None):
    """(the graph's bytes, max abs probability difference) once onnxruntime agrees with PyTorch; else
    ExportError saying why."""
    try:
        serialized = onnx_bytes(model, checkpoint, graph_input, note)
        difference = max_difference(model, checkpoint, serialized, graph_input)
    except Exception as error:  # whatever stops the exporter: reported, or the next input tried
        lines = str(error).strip().splitlines()
        reason = next((line for line in lines if line.startswith("<class")), lines[0] if lines else "")[:300]
        raise ExportError(f"torch.onnx could not export it ({type(error).__name__}: {reason})") from None
    if not difference < MAX_DIFFERENCE:
        raise ExportError(f"its ONNX graph disagrees with PyTorch by up to {difference:.2e} in probability (limit "
                          f"{MAX_DIFFERENCE:.0e})")
    return serialized, difference


def export_onnx(model, checkpoint, path):
    """Write `model` (in eval mode, on the CPU) to `path` as ONNX once onnxruntime agrees with PyTorch;
    returns (max abs probability difference, the GraphInput written, None or why an encoder checkpoint's
    whole model was not: then the graph is its head on embeddings)."""
    model, note = model.cpu().eval(), None
    *whole, last = graph_inputs(checkpoint)
    for graph_input in whole:  # an encoder checkpoint's whole model, where its encoder exports
        try:
            serialized, difference = verified_bytes(model, checkpoint, graph_input)
            break
        except ExportError as error:
            note = (f"the whole model ({checkpoint['preprocessing']['encoder']} encoder included) was not exported: "
                    f"{error}; the graph is the head on the encoder's embeddings")
    else:
        graph_input = last
        try:
            serialized, difference = verified_bytes(model, checkpoint, last, note)
        except ExportError as error:
            raise ExportError(f"The {last.name} graph of {checkpoint['model']}: {error}, so {path} was not written. "
                              f"Report it with the versions of torch, onnxscript and onnxruntime.") from None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(Path(path), lambda f: f.write(serialized))
    return difference, graph_input, note
