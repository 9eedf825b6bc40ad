"""models.py: exact parameter counts, shapes for other sizes, the registry, the original's weights, and the
model contract (head, embed, the Standardise layer)."""
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models import CNN1D, CNN2D, CRNN, MODELS, accepted_args, build_model, standardisation_state
from models_utils import count_parameters

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "original_weights"
ORIGINAL_COUNTS = {"cnn1d": 236_680, "cnn2d": 37_912_576, "crnn": 438_808}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("faithful", [True, False])
def test_parameter_counts_match_the_original(name, faithful):
    assert count_parameters(build_model(name, **accepted_args(name, faithful=faithful))) == ORIGINAL_COUNTS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch,n_frames,n_classes", [(1, 1291, 8), (5, 1291, 8), (5, 431, 8), (5, 431, 16)])
def test_output_shapes_and_probabilities(name, batch, n_frames, n_classes):
    torch.manual_seed(0)
    model = build_model(name, n_frames=n_frames, n_classes=n_classes).eval()
    with torch.no_grad():
        logits, probs = model(torch.randn(batch, 128, n_frames) * 20 - 40)
    assert logits.shape == probs.shape == (batch, n_classes)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(batch))
    assert (probs >= 0).all()


def test_sizes_follow_constructor_arguments():
    # The fully connected sizes derive from n_mels / n_frames / n_classes, never hard-coded.
    assert CNN1D(n_frames=431).fc1.in_features == 128 * 11
    assert CNN1D(n_mels=64).fc1.in_features == 64 * 38
    assert CNN2D(n_mels=64, n_frames=431).fc1.in_features == 16 * 13 * 104
    assert CRNN(n_mels=256).lstm.input_size == 256
    assert CRNN(n_classes=16).fc1.out_features == 16


@pytest.mark.parametrize("model_class,kwargs", [(CNN1D, {"n_frames": 20}), (CNN2D, {"n_mels": 10}),
                                                (CRNN, {"n_mels": 64})])
def test_too_small_input_is_a_clear_error(model_class, kwargs):
    with pytest.raises(ValueError, match="needs"):
        model_class(**kwargs)


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        build_model("resnet50")
    for name in MODELS:
        assert name in str(error.value)


def twin_models(model_class, **kwargs):
    """The same seeded weights (made here, no reference files needed) in a faithful and a corrected model."""
    torch.manual_seed(0)
    faithful = model_class(faithful=True, **kwargs).eval()
    corrected = model_class(faithful=False, **kwargs).eval()
    corrected.load_state_dict(faithful.state_dict())
    return faithful, corrected


def test_cnn1d_faithful_logits_are_the_corrected_logits_through_relu():
    faithful, corrected = twin_models(CNN1D, n_frames=200)
    x = torch.randn(6, 128, 200, generator=torch.Generator().manual_seed(1)) * 20 - 40
    with torch.no_grad():
        raw = corrected(x)[0]
        assert (raw < 0).any()  # so the quirk has something to clip
        torch.testing.assert_close(faithful(x)[0], torch.relu(raw), rtol=0, atol=0)  # eval: ReLU, no dropout
        faithful.train()
        corrected.train()
        torch.manual_seed(2)
        train_logits = faithful(x)[0]
        torch.manual_seed(2)
        train_raw = corrected(x)[0]
    # in training the quirk's Dropout(0.3) then zeroes about 30% of the ReLU'd logits, scaling the rest by 1/0.7
    positive = train_raw > 0
    kept = train_logits[positive] != 0
    assert 0.1 < 1 - kept.float().mean() < 0.5
    torch.testing.assert_close(train_logits[positive][kept], train_raw[positive][kept] / 0.7, rtol=1e-5, atol=1e-5)


def test_crnn_faithful_lstm_input_is_the_reshape_and_corrected_the_transpose():
    faithful, corrected = twin_models(CRNN, n_frames=64)
    x = torch.randn(2, 128, 64, generator=torch.Generator().manual_seed(3)) * 20 - 40
    seen = {}
    for name, model in (("faithful", faithful), ("corrected", corrected)):
        model.lstm.register_forward_hook(lambda module, inputs, output, name=name: seen.update({name: inputs[0]}))
    with torch.no_grad():
        conv = faithful.conv_block(x.unsqueeze(1))  # (B, 128, 1, T')
        faithful(x), corrected(x)
    batch, channels, _, steps = conv.shape
    assert torch.equal(seen["faithful"], conv.reshape(batch, steps, channels))  # quirk 2: channels and time mixed
    assert torch.equal(seen["corrected"], conv.squeeze(2).transpose(1, 2))  # step t = the 128 channels at t
    assert not torch.equal(seen["faithful"], seen["corrected"])


def test_no_model_takes_an_argument_it_ignores():
    """CNN2D had no quirk, so it takes no faithful; accepted_args drops it for the models without one."""
    assert "faithful" not in inspect.signature(CNN2D).parameters
    with pytest.raises(TypeError, match="faithful"):
        CNN2D(faithful=False)
    assert accepted_args("cnn2d", n_frames=64, faithful=False) == {"n_frames": 64}
    assert accepted_args("crnn", n_frames=64, faithful=False) == {"n_frames": 64, "faithful": False}


def reference_input():
    """The deterministic input that expected_outputs.json describes."""
    b, m, t = np.meshgrid(np.arange(2), np.arange(128), np.arange(1291), indexing="ij")
    return torch.from_numpy((-30 + 20 * np.sin(0.3 * t + 0.2 * m * (b + 1)) - 0.3 * m).astype(np.float32))


def original_weights(file_name):
    if not REFERENCE.is_dir():
        pytest.skip(f"the original's weights are not here ({REFERENCE} is absent)")
    return torch.load(REFERENCE / file_name, map_location="cpu", weights_only=True)


def test_parameter_names_match_the_original():
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent")
    keys = json.loads((REFERENCE / "state_dict_keys.json").read_text())
    for original_name, name in (("CNNGH1D", "cnn1d"), ("CRNN", "crnn")):
        state = {k: v for k, v in MODELS[name]().state_dict().items() if k not in standardisation_state()}
        assert [(k, list(v.shape)) for k, v in state.items()] == [(k, shape) for k, shape in keys[original_name]]


@pytest.mark.parametrize("file_name,name", [("CNNGH1D.pt", "cnn1d"), ("CRNN.pt", "crnn")])
@pytest.mark.parametrize("mode", ["faithful", "corrected"])
def test_original_weights_reproduce_expected_outputs(file_name, name, mode):
    state_dict = original_weights(file_name)
    expected = json.loads((REFERENCE / "expected_outputs.json").read_text())[file_name[:-3]][mode]
    model = build_model(name, faithful=mode == "faithful")
    model.load_state_dict({**standardisation_state(), **state_dict}, strict=True)  # the original fed raw dB
    with torch.no_grad():
        logits, probs = model.eval()(reference_input())
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, torch.tensor(expected["probabilities"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_class,size,smallest", [(CNN1D, "n_frames", 95), (CNN2D, "n_frames", 16),
                                                       (CNN2D, "n_mels", 16), (CRNN, "n_frames", 8),
                                                       (CRNN, "n_mels", 128)])
def test_documented_minimum_sizes_are_exact(model_class, size, smallest):
    model = model_class(**{size: smallest}).eval()
    shape = {"n_mels": 128, "n_frames": 1291, size: smallest}
    with torch.no_grad():
        assert model(torch.randn(1, shape["n_mels"], shape["n_frames"]))[0].shape == (1, 8)
    with pytest.raises(ValueError, match=f">= {smallest}"):
        model_class(**{size: smallest - 1})


# ----------------------------------------------------------------------------- the model contract

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_CASES = [("cnn1d", {"n_frames": 200}), ("cnn2d", {"n_mels": 32, "n_frames": 64}), ("crnn", {"n_frames": 64})]


@pytest.mark.parametrize("faithful", [True, False], ids=["faithful", "corrected"])
@pytest.mark.parametrize("name,sizes", CONTRACT_CASES, ids=[name for name, _ in CONTRACT_CASES])
def test_forward_is_the_head_of_the_embedding(name, sizes, faithful):
    """forward(x) = head(embed(x)) in eval mode and, with the same dropout draws, in training mode; the head
    is one of the model's own layers (what fine-tuning replaces), reading the embedding's width."""
    torch.manual_seed(0)
    model = build_model(name, **accepted_args(name, faithful=faithful, **sizes))
    model.standardise.use(-40.0, 15.0)
    x = torch.randn(4, sizes.get("n_mels", 128), sizes["n_frames"], generator=torch.Generator().manual_seed(1)) * 20 - 40
    assert any(module is model.head for module in model.modules())
    with torch.no_grad():
        for mode in (False, True):
            model.train(mode)
            torch.manual_seed(2)
            logits, probabilities = model(x)
            torch.manual_seed(2)
            features = model.embed(x)
            assert features.shape == (4, model.head.in_features)
            assert torch.equal(logits, model.head(features))
            torch.testing.assert_close(probabilities, torch.softmax(logits, dim=1))


def test_the_faithful_cnn1d_head_keeps_the_quirk():
    """Quirk 1 lives in the head: its logits are ReLU'd (none negative), the corrected head's are not."""
    faithful, corrected = twin_models(CNN1D, n_frames=200)
    features = torch.randn(6, faithful.head.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        raw = corrected.head(features)
        assert (raw < 0).any()
        assert torch.equal(faithful.head(features), torch.relu(raw))


@pytest.mark.parametrize("name,sizes", CONTRACT_CASES, ids=[name for name, _ in CONTRACT_CASES])
def test_a_model_with_statistics_standardises_its_input(name, sizes):
    """A model whose Standardise layer holds (mean, std) gives what a raw-dB model gives on (x - mean) / std;
    without statistics it is exactly the raw-dB model (the faithful pass stays bit-identical)."""
    torch.manual_seed(0)
    model = build_model(name, **sizes).eval()
    x = torch.randn(3, sizes.get("n_mels", 128), sizes["n_frames"], generator=torch.Generator().manual_seed(4)) * 20 - 40
    with torch.no_grad():
        assert torch.equal(model.standardise(x), x)
        on_standardised = model((x + 40.0) / 15.0)[0]
        model.standardise.use(-40.0, 15.0)
        torch.testing.assert_close(model(x)[0], on_standardised, rtol=1e-5, atol=1e-5)
        model.standardise.use(None, None)  # back to raw dB
        assert not torch.allclose(model(x)[0], on_standardised, atol=1e-2)
    assert [k for k in model.state_dict() if k.startswith("standardise.")] == ["standardise.mean", "standardise.std"]


def test_standardise_on_cached_float16_db_is_todays_formula():
    """The cache's float16 dB -> float32 -> (x - mean) / std with the split's float64 statistics, as the
    dataset computed it before the model did: equal within float32 rounding."""
    cached = (torch.rand(4, 128, 300, generator=torch.Generator().manual_seed(5)) * -80).half().numpy()
    mean, std = -53.712345678901, 17.345678901234  # not representable in float32, as real statistics are
    x = torch.from_numpy(cached.astype(np.float32))
    today = (x - mean) / std
    layer = build_model("cnn1d", n_frames=300).standardise.use(mean, std)
    torch.testing.assert_close(layer(x), today, rtol=2 * torch.finfo(torch.float32).eps, atol=1e-6)


# code that scales the model's input: (x - mean) / std, in place or not, or a wrapper model
STANDARDISING = [r"-\s*[\w.\[\]\"']*mean[\w\"'\]]*\)\s*/\s*[\w.\[\]\"']*std", r"\.sub_\([^)]*mean",
                 r"class Standardised\b"]


def test_only_the_model_standardises_its_input():
    """One implementation (models.Standardise): no dataset, preloader, predictor, exporter or page scales
    the input itself."""
    code = [path for folder in ("", "fma_genres/**/", "benchmarks/", "tools/") for path in ROOT.glob(f"{folder}*.py")]
    offenders = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in sorted(code) if path.name != "models.py"
                 for line in path.read_text().splitlines() if any(re.search(p, line) for p in STANDARDISING)]
    assert len(code) > 20 and offenders == []
