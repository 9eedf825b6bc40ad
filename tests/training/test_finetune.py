"""finetune.py through main.py: init_from a checkpoint with other genres (features loaded, classifier new),
freeze=features (only the classifier and no BatchNorm statistic moves), refusals, the original's bare
state_dicts, and fine-tuning beating training from scratch at equal epochs on data made for it."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import main
import models_utils
from fma_genres import configurator
from fma_genres.inference import predict
from fma_genres.runtime.errors import ConfigError
from fma_genres.training import finetune
from models import CNN1D, build_model
from models_utils import CheckpointError

PITCHES = (220.0, 440.0, 880.0)
DISTRACTORS = 4
RATE, SECONDS = 22050, 2.3  # 99 frames: n_frames=96 for the CNN1D


def write_clip(path, pitch, seed):
    """The genre's tone hidden among two louder distractor tones of random pitch: easy to learn from many
    clips, while a model that sees one clip per genre cannot tell the genre's tone from the distractors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    audio = 0.15 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(t.size)
    for distractor in rng.uniform(150, 2000, DISTRACTORS):
        audio += 0.3 * np.sin(2 * np.pi * distractor * t + rng.uniform(0, 6))
    sf.write(path, audio.astype(np.float32), RATE, format="WAV")
    return path


def make_csv(root, genres, splits, seed):
    """A CSV dataset: per genre ``splits`` = {split: number of clips}."""
    rows = ["path,genre,split"]
    for g, genre in enumerate(genres):
        for split, count in splits.items():
            for k in range(count):
                path = write_clip(root / genre / f"{split}{k}.wav", PITCHES[g], seed + 1000 * g + 10 * k + len(split))
                rows.append(f"{path.relative_to(root)},{genre},{split}")
    (root / "tracks.csv").write_text("\n".join(rows) + "\n")
    return root / "tracks.csv"


def run(csv_path, out_dir, cache_dir, *extra):
    assert main.main(["--dataset=csv", f"--data_dir={csv_path}", f"--out_dir={out_dir}", f"--cache_dir={cache_dir}",
                      "--model=cnn1d", "--n_frames=96", "--faithful=False", "--wandb_mode=disabled", "--num_workers=0",
                      "--cache_workers=1", "--seed=0", *extra]) == 0
    return out_dir


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A CNN1D trained on many clips of three genres (genres a_low, a_mid, a_high)."""
    root = tmp_path_factory.mktemp("source")
    csv_path = make_csv(root / "data", ["a_low", "a_mid", "a_high"], {"training": 20, "validation": 3, "test": 3}, 0)
    return run(csv_path, root / "run", root / "cache", "--epochs=8", "--batch_size=10", "--lr=0.003") / "best.pt"


def accuracy_of(out_dir):
    return json.loads((out_dir / "metrics.json").read_text())["test_accuracy"]


@pytest.mark.parametrize("genres, epochs, tuning, measured", [
    (["x_low", "y_mid", "z_high"], 4, ["--freeze=features"], "new genres: tuned 0.79, scratch 0.29"),
    (["a_low", "a_mid", "a_high"], 2, [], "the source's genres: tuned 0.83, scratch 0.33"),
])
def test_fine_tuning_beats_training_from_scratch_at_equal_epochs(source, tmp_path, genres, epochs, tuning, measured):
    """A new small dataset (one training clip per genre) of tones like the source's, under new or the same names."""
    csv_path = make_csv(tmp_path / "data", genres, {"training": 1, "validation": 3, "test": 8}, 77)
    common = (f"--epochs={epochs}", "--batch_size=3")
    scratch = accuracy_of(run(csv_path, tmp_path / "scratch", tmp_path / "cache", *common))
    tuned = accuracy_of(run(csv_path, tmp_path / "tuned", tmp_path / "cache", *common, f"--init_from={source}", *tuning))
    print(f"test accuracy after {epochs} epochs on 3 training clips: tuned {tuned:.2f}, scratch {scratch:.2f} "
          f"(measured with {measured})")
    assert tuned >= scratch + 0.3, (tuned, scratch)


def test_other_genres_get_a_new_classifier_on_loaded_frozen_features(source, tmp_path, capsys):
    csv_path = make_csv(tmp_path / "data", ["x_low", "y_mid"], {"training": 2, "validation": 1, "test": 1}, 5)
    out_dir = tmp_path / "run"
    tune = (csv_path, out_dir, tmp_path / "cache", f"--init_from={source}", "--freeze=features", "--batch_size=2")
    run(*tune, "--epochs=1")
    run(*tune, "--epochs=2", "--resume=True")  # the optimizer over the classifier alone resumes too
    out = capsys.readouterr().out
    assert (f"init_from={source}: loaded layer1.0, layer1.3, layer2.0, layer2.3, layer3.0, layer3.3; new (its genres "
            f"['a_high', 'a_low', 'a_mid'] are not this dataset's): fc1") in out
    tuned, before = models_utils.load_checkpoint(out_dir / "last.pt"), models_utils.load_checkpoint(source)
    total = models_utils.count_parameters(models_utils.model_from_checkpoint(tuned), trainable=False)
    counts = f"258 trainable of {total:,} parameters"  # trainable: the classifier, 2 x 128 + 2
    assert f"model: cnn1d (corrected), {counts}, on cpu" in out and f"=== cnn1d (corrected), {counts}, " in out
    assert tuned["class_names"] == ["x_low", "y_mid"] and tuned["training"]["epoch"] == 2
    assert tuned["config"]["init_from"] == str(source) and tuned["config"]["freeze"] == "features"
    for key, value in before["state_dict"].items():  # weights and BatchNorm statistics: the source's, unchanged
        if not key.startswith(("fc1.", "standardise.")):
            assert torch.equal(tuned["state_dict"][key], value), key
    # the input's standardisation (faithful=False): each run's own training split's statistics, in the model
    scaling = {run: (c["state_dict"]["standardise.mean"].item(), c["state_dict"]["standardise.std"].item())
               for run, c in (("source", before), ("tuned", tuned))}
    assert scaling["source"][0] < -1 and scaling["source"][1] > 1 and scaling["tuned"] != scaling["source"], scaling
    assert tuned["state_dict"]["fc1.weight"].shape == (2, 128)


def test_without_freeze_the_features_are_loaded_and_the_classifier_kept_fresh(source):
    model = build_model("cnn1d", n_mels=128, n_frames=96, n_classes=3, faithful=False)
    fresh = model.fc1.weight.detach().clone()
    loaded, new = finetune.load_features(model, source, "cnn1d", ["p", "q", "r"])
    assert new == ["fc1.weight", "fc1.bias"] and "layer2.3.running_mean" in loaded
    assert torch.allclose(model.fc1.weight, fresh * finetune.NEW_HEAD_SCALE)  # new, started near zero
    assert torch.equal(model.layer2[0].weight, models_utils.load_checkpoint(source)["state_dict"]["layer2.0.weight"])
    same = build_model("cnn1d", n_mels=128, n_frames=96, n_classes=3, faithful=False)
    _, new = finetune.load_features(same, source, "cnn1d", ["a_high", "a_low", "a_mid"])  # the same genres
    assert new == [] and torch.equal(same.fc1.weight, models_utils.load_checkpoint(source)["state_dict"]["fc1.weight"])


class WithProbe(CNN1D):
    """A CNN1D with a Linear layer defined after its head (say, an auxiliary output): not the classifier."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.probe = torch.nn.Linear(4, 2)


def test_fine_tuning_takes_the_models_head_not_its_last_linear_layer():
    model = finetune.freeze(WithProbe(n_frames=96, n_classes=3), "features")
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["fc1.weight", "fc1.bias"]
    assert finetune.head_prefix(model) == "fc1."
    x = torch.randn(2, 128, 96) * 20 - 40
    with torch.no_grad():  # embeddings are what that head reads, and the logits are the head's of them
        embeddings = predict.embeddings(model.eval(), x)
        assert embeddings.shape == (2, model.fc1.in_features) and torch.equal(model.head(embeddings), model(x)[0])


def test_the_originals_bare_state_dicts_are_a_source_too(tmp_path):
    original = build_model("cnn1d", n_mels=128, n_frames=1291, n_classes=8)
    weights = {k: v for k, v in original.state_dict().items() if not k.startswith("standardise.")}
    torch.save(weights, tmp_path / "CNN1D.pt")  # the original's format: tensors only, no Standardise layer
    model = build_model("cnn1d", n_mels=128, n_frames=1291, n_classes=10)
    loaded, new = finetune.load_features(model, tmp_path / "CNN1D.pt", "cnn1d", [str(k) for k in range(10)])
    assert new == ["fc1.weight", "fc1.bias"] and torch.equal(model.layer1[0].weight, original.layer1[0].weight)
    with pytest.raises(CheckpointError, match="No weight of init_from"):
        finetune.load_features(build_model("crnn", n_classes=10), tmp_path / "CNN1D.pt", "crnn", list("abcdefghij"))


@pytest.mark.parametrize("extra, message", [
    (["--n_frames=100"], "was trained on other spectrograms than this run would make: n_frames=100 (the source's 96)"),
    (["--model=crnn"], "holds a cnn1d model but this run trains a crnn: add --model=cnn1d"),
])
def test_a_source_that_does_not_fit_is_refused_before_any_work(source, tmp_path, extra, message):
    csv_path = make_csv(tmp_path / "data", ["x", "y"], {"training": 1, "validation": 1, "test": 1}, 9)
    with pytest.raises(SystemExit) as error:
        run(csv_path, tmp_path / "run", tmp_path / "cache", f"--init_from={source}", *extra)
    assert message in str(error.value.code) and not (tmp_path / "cache").exists()


def test_freeze_needs_a_source():
    with pytest.raises(ConfigError, match="freeze=features needs init_from"):
        configurator.make_config({"freeze": "features"}, main.CONFIG)


def test_a_probes_mlp_head_starts_afresh_near_zero_for_new_genres(tmp_path):
    """init_from a probe with an MLP head (a Sequential, no .weight of its own) on other genres: the features'
    layer mix loads, the head's layers stay new, and its output layer starts scaled down near zero."""
    source = build_model("probe", layers=3, dim=8, n_classes=3, head="mlp")
    path = tmp_path / "probe.pt"
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        "probe", {"layers": 3, "dim": 8, "n_classes": 3, "head": "mlp"}, source.state_dict(), ["a", "b", "c"],
        {}), path)
    torch.manual_seed(0)
    model = build_model("probe", layers=3, dim=8, n_classes=4, head="mlp")
    fresh = finetune.output_layer(model.head).weight.abs().mean().item()
    loaded, new = finetune.load_features(model, path, "probe", ["w", "x", "y", "z"])
    assert loaded and all(key.startswith("head.") for key in new) and not any(k.startswith("head.") for k in loaded)
    assert finetune.output_layer(model.head).weight.abs().mean().item() == pytest.approx(
        fresh * finetune.NEW_HEAD_SCALE)
