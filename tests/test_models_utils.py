"""models_utils.py: initialisation, compilation, checkpoints and figures."""
import copy
import io
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import models_utils
from fma_genres import tasks
from fma_genres.inference import predict
from fma_genres.metrics import classification_metrics
from fma_genres.report_figures import plot_confusion_matrix, plot_roc_curves
from fma_genres.runtime import atomic
from models import CNN1D, CRNN, build_model
from models_utils import (
    CheckpointError,
    compile_model,
    init_weights,
    load_checkpoint,
    model_from_checkpoint,
    plot_training_curves,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


def conv_and_linear(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]


@pytest.mark.parametrize("method", ["kaiming", "xavier"])
def test_init_weights_changes_weights_zeroes_biases_and_keeps_the_lstm(method):
    torch.manual_seed(0)
    model = CRNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, method)
    after = model.state_dict()
    for layer in conv_and_linear(model):
        assert torch.count_nonzero(layer.bias) == 0
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    assert torch.equal(before["lstm.weight_ih_l0"], after["lstm.weight_ih_l0"])  # PyTorch's default kept


@pytest.mark.parametrize("method", ["kaiming", "xavier"])
def test_init_weights_follows_the_documented_bounds(method):
    torch.manual_seed(0)
    layer = init_weights(CNN1D(), method).fc1   # Linear(4864, 8)
    fan_in, fan_out = layer.weight.shape[1], layer.weight.shape[0]
    # kaiming_uniform(a=0, leaky_relu): gain sqrt(2/(1+a^2)) = sqrt(2), bound = gain*sqrt(3/fan_in)
    bound = np.sqrt(6 / fan_in) if method == "kaiming" else np.sqrt(6 / (fan_in + fan_out))
    weights = layer.weight.detach().abs()
    assert weights.max() <= bound
    assert weights.max() > 0.95 * bound  # uniform over the whole range, not a narrower default


def test_unknown_init_method_is_rejected():
    with pytest.raises(ValueError, match="kaiming"):
        init_weights(CNN1D(), "orthogonal")


def make_checkpoint(model):
    return models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": 431, "n_classes": 4, "faithful": True}, model.state_dict(),
        ["a", "b", "c", "d"], {"sample_rate": 22050, "n_frames": 431}, run={"training": {"epoch": 3}})


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = CNN1D(n_frames=431, n_classes=4).eval()
    path = tmp_path / "sub" / "best.pt"
    save_checkpoint(make_checkpoint(model), path)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint["training"]["epoch"] == 3 and checkpoint["class_names"] == ["a", "b", "c", "d"]
    assert checkpoint["version"] == models_utils.CHECKPOINT_VERSION
    rebuilt = model_from_checkpoint(checkpoint)
    x = torch.randn(2, 128, 431)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], model(x)[0])
    assert not rebuilt.training


def test_a_saved_checkpoint_carries_the_models_standardisation(tmp_path):
    torch.manual_seed(0)
    model = CNN1D(n_frames=431, n_classes=4).eval()
    model.standardise.use(-47.3, 16.1)
    save_checkpoint(make_checkpoint(model), tmp_path / "best.pt")
    checkpoint = load_checkpoint(tmp_path / "best.pt")
    assert "normalisation" not in checkpoint  # the state_dict holds it, once
    rebuilt = model_from_checkpoint(checkpoint)
    assert rebuilt.standardise.mean.item() == pytest.approx(-47.3) and rebuilt.standardise.std.item() == pytest.approx(16.1)
    x = torch.randn(2, 128, 431) * 20 - 40
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], model(x)[0])
        assert not torch.allclose(rebuilt(x)[0], CNN1D(n_frames=431, n_classes=4).eval()(x)[0])


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(make_checkpoint(CNN1D(n_frames=431, n_classes=4)), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"not picklable": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    (b"this is text, not a checkpoint", "could not be read"),
    ("bare_state_dict", "not a checkpoint of this project"),
    ("list", "not a checkpoint of this project"),
    ("truncated", "could not be read"),
])
def test_bad_checkpoints_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content == "bare_state_dict":
        torch.save(CNN1D().state_dict(), path)
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "truncated":
        save_checkpoint(make_checkpoint(CNN1D(n_frames=431, n_classes=4)), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_checkpoint_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "fma-genre-classifier", "x": Exploit()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_incompatible_weights_are_a_clear_error(tmp_path):
    checkpoint = make_checkpoint(CNN1D(n_frames=431, n_classes=4))
    checkpoint["model_args"]["n_classes"] = 8
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(checkpoint)


def png_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@pytest.mark.parametrize("n_classes", [8, 16])
@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_figure(n_classes, normalize):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, (n_classes, n_classes))
    names = [f"genre{i}" for i in range(n_classes)]
    fig = plot_confusion_matrix(cm, names, normalize=normalize)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    values = np.array([float(t.get_text()) for t in ax.texts]).reshape(n_classes, n_classes)
    expected = cm / cm.sum(axis=1, keepdims=True) if normalize else cm
    np.testing.assert_allclose(values, expected, atol=0.005)
    assert png_bytes(fig).startswith(b"\x89PNG")


@pytest.mark.parametrize("n_classes", [8, 16])
def test_roc_figure_has_one_curve_per_class_with_auc(n_classes):
    rng = np.random.default_rng(0)
    y_true = np.arange(200) % n_classes
    probs = 0.1 * rng.random((200, n_classes))
    probs[np.arange(200), y_true] += 1.0  # a perfect ranking: every AUC is 1
    fig = plot_roc_curves(y_true, probs / probs.sum(1, keepdims=True), [f"g{i}" for i in range(n_classes)])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:-1] == [f"g{i} (AUC 1.00)" for i in range(n_classes)] and labels[-1] == "chance"
    assert ax.get_xlabel() == "False positive rate" and ax.get_ylabel() == "True positive rate"
    assert len(png_bytes(fig)) > 1000


def test_nan_probabilities_are_flagged_not_a_crash_of_the_report(tmp_path):
    names = ["a", "b", "c"]
    targets = np.arange(30) % 3
    probabilities = np.full((30, 3), 0.1)
    probabilities[np.arange(30), targets] = 0.8
    probabilities[4, 1] = np.nan  # a diverged model: sklearn's roc_auc_score raises on NaN
    probabilities[7] = np.inf
    with pytest.warns(RuntimeWarning, match="2 of 30 examples have non-finite"):
        metrics = classification_metrics(targets, probabilities, names)
    assert metrics["non_finite_rows"] == 2
    assert metrics["roc_auc"] == {"a": None, "b": None, "c": None}  # row 7 touches every class
    probabilities[7] = [0.1, 0.8, 0.1]  # row 7 is of class b
    with pytest.warns(RuntimeWarning, match="1 of 30"):
        metrics = classification_metrics(targets, probabilities, names)
    assert metrics["roc_auc"] == {"a": 1.0, "b": None, "c": 1.0} and metrics["non_finite_rows"] == 1
    models_utils.save_report(tmp_path, metrics, targets, probabilities, names)  # as at the end of training
    assert json.loads((tmp_path / "metrics.json").read_text())["roc_auc"]["b"] is None
    assert (tmp_path / "roc_curves.png").read_bytes().startswith(b"\x89PNG")


def test_training_curves_figure():
    history = [{"epoch": e, "train_loss": 2 - 0.1 * e, "val_loss": 2.1 - 0.1 * e, "train_accuracy": None,
                "val_accuracy": 0.1 * e} for e in range(1, 6)]
    fig = plot_training_curves(history)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "validation"]
    assert [line.get_label() for line in acc_ax.get_lines()] == ["validation"]  # no train accuracy given
    np.testing.assert_allclose(acc_ax.get_lines()[0].get_ydata(), [0.1 * e for e in range(1, 6)])
    assert png_bytes(fig).startswith(b"\x89PNG")


@pytest.mark.slow  # torch.compile
def test_compile_model_gives_the_eager_results_and_trains():
    torch.manual_seed(0)
    model = CNN1D(n_frames=100).eval()
    compiled = compile_model(model)  # the inductor backend in main.py's mode
    x = torch.randn(4, 128, 100) * 20 - 40
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], model(x)[0], atol=1e-4, rtol=0)
    compiled.train()
    before = model.fc1.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.cross_entropy(compiled(x)[0], torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert not torch.equal(before, model.fc1.weight)  # gradients reach the original module's weights


COMPILE_A_LINEAR = """
import torch, models_utils
import torch._inductor.config as inductor_config
compiled = models_utils.compile_model(torch.nn.Linear(64, 8))
if {run}:
    with torch.no_grad():
        compiled(torch.randn(16, 64))
print(inductor_config.autotune_num_choices_displayed)
"""


def compile_a_linear(tmp_path, run=True, **environment):
    """A fresh process compiling a Linear as main.py compiles, with an empty inductor cache (so autotuning runs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1", **environment}
    return subprocess.run([sys.executable, "-c", COMPILE_A_LINEAR.format(run=run)], env=env, capture_output=True,
                          text=True, timeout=600, check=True)


@pytest.mark.slow  # inductor compiles and autotunes the matmul: ~30 s on 2 busy cores
def test_compiling_keeps_inductors_autotuning_tables_out_of_the_output(tmp_path):
    result = compile_a_linear(tmp_path)
    assert "AUTOTUNE" not in result.stderr and "Autotune Choices Stats" not in result.stderr, result.stderr


@pytest.mark.slow  # inductor compiles
def test_inductors_own_variable_still_asks_for_the_autotuning_tables(tmp_path):
    result = compile_a_linear(tmp_path, run=False, TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED="5")
    assert result.stdout.split() == ["5"]  # what inductor read from it: compile_model leaves it


@pytest.mark.slow  # inductor compiles forward and backward to C++: ~30 s per model on 2 cores
@pytest.mark.parametrize("name", ["cnn2d", "crnn"])
def test_compiled_channels_last_model_gives_the_eager_logits_and_gradients(name):
    # what compile=auto runs for these two models (main.py): channels_last layout, then torch.compile
    torch.manual_seed(0)
    model = build_model(name, n_frames=32).eval()  # eval: no dropout, so both passes are deterministic
    compiled = compile_model(copy.deepcopy(model).to(memory_format=torch.channels_last))
    x = torch.randn(4, 128, 32) * 20 - 40
    targets = torch.tensor([0, 1, 2, 3])
    logits = {}
    for key, module in (("eager", model), ("compiled", compiled)):
        logits[key] = module(x)[0]
        torch.nn.functional.cross_entropy(logits[key], targets).backward()
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=1e-4, rtol=0)
    for (param_name, param), compiled_param in zip(model.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(compiled_param.grad, param.grad, atol=1e-4, rtol=1e-3, msg=param_name)


class InterruptWhilePickled:
    """Sends this process a Ctrl-C (SIGINT) while torch.save is pickling the checkpoint."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (7,))


def test_ctrl_c_during_save_completes_the_file_then_interrupts(tmp_path, keyboard_interrupt_handler):
    path = tmp_path / "last.pt"
    checkpoint = {**make_checkpoint(CNN1D(n_frames=431, n_classes=4)), "marker": InterruptWhilePickled()}
    with pytest.raises(KeyboardInterrupt):  # not torch's RuntimeError from a half-written zip
        save_checkpoint(checkpoint, path)
    assert torch.load(path, weights_only=False)["marker"] == 7  # complete, renamed into place
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


DATA = Path(__file__).parent / "fixtures"
V1, V2 = DATA / "checkpoint_v1_cnn1d.pt", DATA / "checkpoint_v2_cnn2d.pt"


def test_a_format_1_checkpoint_still_loads_and_predicts_the_same():
    """tests/fixtures/checkpoint_v1_cnn1d.pt was written by the format-1 code's own main.save_epoch (git 5ad4953)
    for a 16-mel CNN1D after one Adam step (60 KB), with its logits on a fixed input."""
    expected = json.loads(V1.with_suffix(".json").read_text())
    assert expected["version"] == 1 and "optimizer" in expected["keys"]  # the old layout, for real
    checkpoint = load_checkpoint(V1)
    assert checkpoint["version"] == models_utils.CHECKPOINT_VERSION and "faithful" not in checkpoint
    assert "normalisation" not in checkpoint and checkpoint["state_dict"]["standardise.std"] == 1  # raw dB
    assert checkpoint["training"]["epoch"] == 1 and "optimizer" in checkpoint["training"]
    assert checkpoint["config"]["standardise"] is False and checkpoint["provenance"] == {}
    x = torch.randn(*expected["shape"], generator=torch.Generator().manual_seed(0)) * 20 - 40
    with torch.no_grad():
        logits = model_from_checkpoint(checkpoint)(x)[0]
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-5)
    assert checkpoint["class_names"] == expected["class_names"]


def test_a_format_2_checkpoint_migrates_its_normalisation_into_the_model():
    """tests/fixtures/checkpoint_v2_cnn2d.pt (a standardised CNN2D, format 2: its {"mean", "std"} beside the
    weights, and model_args' faithful, which CNN2D no longer takes) loads as the current format."""
    raw = torch.load(V2, weights_only=True)
    assert raw["version"] == 2 and raw["normalisation"] == {"mean": -41.25, "std": 17.5}  # the old layout, for real
    assert raw["model_args"]["faithful"] is False
    checkpoint = load_checkpoint(V2)
    assert checkpoint["version"] == models_utils.CHECKPOINT_VERSION and "normalisation" not in checkpoint
    assert "faithful" not in checkpoint["model_args"] and checkpoint["config"]["standardise"] is True
    model = model_from_checkpoint(checkpoint)
    assert (model.standardise.mean.item(), model.standardise.std.item()) == (-41.25, 17.5)


@pytest.mark.parametrize("path", [V1, V2], ids=["format-1", "format-2"])
def test_older_formats_predict_what_the_format_2_code_predicted(path):
    """predictions_format_2.json: the probabilities and embeddings main's format-2 code (git e3dbcd5) gave
    for each fixture (tests/fixtures/make_checkpoint_v2.py made them), on an AVX-512 CPU. On this CPU the
    migrated model gives within 1e-6 what format 2's wrapper gave (the model fed (x - mean) / std, computed
    here), and within 1e-5 the stored figures: another kernel set rounds differently (1.7e-6 seen with
    ATEN_CPU_CAPABILITY=default)."""
    expected = json.loads((DATA / "predictions_format_2.json").read_text())[path.name]
    model, checkpoint = predict.load_predictor(path)
    task = tasks.of(checkpoint)
    x = torch.randn(*expected["shape"], generator=torch.Generator().manual_seed(0)) * 20 - 40
    wrapped = copy.deepcopy(model)  # format 2: a raw-dB model behind a wrapper that standardised its input
    mean, std = wrapped.standardise.mean.clone(), wrapped.standardise.std.clone()
    wrapped.standardise.use(None, None)
    with torch.no_grad():
        probabilities, embeddings = task.window_probabilities(model, x), predict.embeddings(model, x)
        then = task.window_probabilities(wrapped, (x - mean) / std), predict.embeddings(wrapped, (x - mean) / std)
    assert probabilities.max(dim=1).values.min() < 0.9  # not saturated: a change would show
    torch.testing.assert_close(probabilities, then[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(embeddings, then[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(probabilities, torch.tensor(expected["probabilities"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(embeddings, torch.tensor(expected["embeddings"]), rtol=1e-5, atol=1e-5)


def test_a_checkpoint_from_a_newer_version_is_refused_with_the_fix(tmp_path):
    checkpoint = make_checkpoint(CNN1D(n_frames=431, n_classes=4))
    checkpoint["version"] = models_utils.CHECKPOINT_VERSION + 1
    save_checkpoint(checkpoint, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer version of this project"):
        load_checkpoint(tmp_path / "new.pt")


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(make_checkpoint(CNN1D(n_frames=431, n_classes=4)), path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~atomic.UMASK  # e.g. 0644 under the common umask 022


@pytest.mark.parametrize("config, described", [
    ({"demo": True, "data_dir": "data/demo", "subset": "small", "split": "official"},
     "the synthetic demo data (data/demo, not FMA)"),
    ({"demo": False, "dataset": "fma", "subset": "small", "split": "official"}, "FMA small (official split)"),
    ({"demo": False, "dataset": "folder", "data_dir": "genres", "subset": "small"}, "folder genres")])
def test_the_summary_names_the_data_a_run_trained_on(config, described):
    class_names = ["a", "b"]
    scores = classification_metrics([0, 1], [[0.9, 0.1], [0.2, 0.8]], class_names)
    metrics = {**scores, "parameters": 258, "total_parameters": 1_000, "report_epoch": "best", "reported_epoch": 1,
               "select_metric": "accuracy", "best_val_score": 1.0, "best_epoch": 1, "test_loss": 0.2,
               "test_accuracy": 1.0, "test_examples": 2, "training_seconds": 3.0}
    history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.5, "val_loss": 0.4, "val_accuracy": 1.0,
                "lr": 1e-3, "seconds": 3.0}]
    summary = models_utils.format_summary({**config, "model": "cnn1d", "faithful": True, "out_dir": "runs/x"},
                                          history, metrics)
    assert f"=== cnn1d (faithful), 258 trainable of 1,000 parameters, {described} ===" in summary
