"""Every tool downstream of training with encoder checkpoints (probes): ensembles of a probe with a CNN
(per track, --evaluate through each member's cache), experiments.py tune and repeat with --encoder,
--embeddings, ONNX export (the whole model where the encoder exports, else the head on embeddings) and
the web page's functions (app.py). Tiny random local encoders and generated WAV clips (test_probes.py's);
nothing is downloaded. The non-slow tests build their probe checkpoints here, untrained; the slow ones
train them with main.py (1 epoch).

    python -m pytest tests/encoders/test_downstream.py -q
"""
import csv
import json

import numpy as np
import onnxruntime
import pytest
import test_probes
import torch
from test_probes import GENRES, write_wav

import app
import experiments
import models_utils
import pre_trained_models as ptm
from fma_genres.inference import export, predict, probe_windows
from models import CNN1D
from test_encoders import needs_packages

music, weights = test_probes.music, test_probes.weights  # its fixtures: 3 genres x 3 WAV clips, tiny encoders
N_FRAMES = 96  # the CNNs' windows: quick, and a 30 s clip gets many of them


def tone_stats(encoder):
    """Per-feature mean and std of the encoder's embeddings of tones like the tests' (test_probes.write_wav's:
    a sine and a little noise): a standardisation under which an untrained head's probabilities are not one-hot."""
    t = torch.arange(encoder.window_samples) / encoder.sample_rate
    tones = [0.3 * torch.sin(2 * torch.pi * 55.0 * k * t) + 0.05 * torch.randn(t.shape) for k in range(1, 9)]
    rows = encoder.embed_layers(torch.stack(tones))
    return rows.mean(0), rows.std(0) + 1e-3


def probe_checkpoint(path, encoder_name, encoder_weights, head="mlp", seed=0):
    """An untrained probe on a tiny local encoder, standardised by tone_stats."""
    from fma_genres.encoders import load_encoder
    from fma_genres.encoders.embedding_cache import checkpoint_preprocessing
    from models import ProbeHead

    encoder = load_encoder(encoder_name, str(encoder_weights), "cpu")
    torch.manual_seed(seed)
    probe = ProbeHead(encoder.layers, encoder.dim, len(GENRES), head)
    probe.standardise.use(*tone_stats(encoder))
    model_args = {"layers": encoder.layers, "dim": encoder.dim, "n_classes": len(GENRES), "head": head}
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        "probe", model_args, probe.state_dict(), list(GENRES), checkpoint_preprocessing(encoder)), path)
    return path


def finetuned_checkpoint(path, encoder_weights, seed=0):
    """An untrained fine-tuned Dasheng as main.py's finetune_encoder=True saves one: the tiny encoder's weights
    and a fresh MLP probe, standardised by tone_stats."""
    from fma_genres.encoders import load_encoder
    from fma_genres.encoders.embedding_cache import checkpoint_preprocessing
    from models import build_model

    encoder = load_encoder("dasheng", str(encoder_weights), "cpu")
    torch.manual_seed(seed)
    model_args = {"encoder": "dasheng", "architecture": encoder.architecture(), "layers": encoder.layers,
                  "dim": encoder.dim, "n_classes": len(GENRES), "head": "mlp", "augment": False}
    model = build_model("finetuned", **model_args)
    model.encoder.load_state_dict(encoder.model.state_dict())
    model.standardise.use(*tone_stats(encoder))
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        "finetuned", model_args, model.state_dict(), list(GENRES), checkpoint_preprocessing(encoder)), path)
    return path


def cnn_checkpoint(path, seed):
    """An untrained, standardised CNN1D on 96-frame windows."""
    import utils

    torch.manual_seed(seed)
    model = models_utils.init_weights(CNN1D(n_mels=128, n_frames=N_FRAMES, n_classes=len(GENRES), faithful=False))
    model.standardise.use(-45.0, 18.0)
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": N_FRAMES, "n_classes": len(GENRES), "faithful": False},
        model.state_dict(), list(GENRES), {**utils.PREPROCESSING, "n_frames": N_FRAMES}), path)
    return path


def table(tmp_path, tracks, *checkpoints):
    """pre_trained_models.py's CSV of these tracks with these checkpoints (several: their ensemble)."""
    output = tmp_path / "genres.csv"
    argv = [*(f"--checkpoint={c}" for c in checkpoints), f"--output={output}", "--num_workers=0", *map(str, tracks)]
    assert ptm.main(argv) == 0
    return np.array([[float(row[g]) for g in GENRES] for row in csv.DictReader(output.open())])


def predicted(model, checkpoint, files):
    rows = list(predict.predict(model, checkpoint, files))
    assert all(error is None for *_, error in rows), rows
    return np.stack([vector for _, vector, _, _ in rows])


# ----------------------------------------------------------------------------- ensembles

def test_an_ensemble_of_one_preprocessing_averaged_per_track_equals_the_per_window_mean(tmp_path):
    """Members of one preprocessing keep today's Ensemble (mean per window); averaging their per-track means
    (what a probe with a CNN needs) gives the same over the same windows, to float rounding."""
    members = [(path, *predict.load_predictor(cnn_checkpoint(path, seed))) for seed, path in
               enumerate([tmp_path / "a.pt", tmp_path / "b.pt"])]
    track = write_wav(tmp_path / "song.wav", 9.0, 220.0, seed=3)
    model, checkpoint = predict.ensemble(members)
    assert isinstance(model, predict.Ensemble)
    per_window = predicted(model, checkpoint, [track])
    per_track = predicted(predict.TrackEnsemble([(m, c, 1) for _, m, c in members]), checkpoint, [track])
    alone = [predicted(m, c, [track]) for _, m, c in members]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different models
    np.testing.assert_allclose(per_track, per_window, atol=1e-6)
    np.testing.assert_allclose(per_track, (alone[0] + alone[1]) / 2, atol=1e-6)


@needs_packages
def test_a_probe_and_a_cnn_average_their_track_probabilities_and_other_genres_are_refused(weights, tmp_path, capsys):
    probe = probe_checkpoint(tmp_path / "probe.pt", "dasheng", weights["dasheng"])
    cnn = cnn_checkpoint(tmp_path / "cnn.pt", seed=1)
    tracks = [write_wav(tmp_path / "long.wav", 25.0, 220.0, seed=1), write_wav(tmp_path / "short.wav", 4.0, 330.0, 2)]

    alone = table(tmp_path, tracks, probe), table(tmp_path, tracks, cnn)
    np.testing.assert_allclose(table(tmp_path, tracks, probe, cnn), (alone[0] + alone[1]) / 2, atol=2e-6)
    # --plot needs spectrograms, which the probe's member lacks
    assert ptm.main([f"--checkpoint={probe}", f"--checkpoint={cnn}", f"--plot={tmp_path}", str(tracks[0])]) == 2
    assert "drop --plot" in capsys.readouterr().err
    other = torch.load(cnn, weights_only=True)
    other["class_names"] = other["class_names"][::-1]
    torch.save(other, tmp_path / "other.pt")
    assert ptm.main([f"--checkpoint={probe}", f"--checkpoint={tmp_path / 'other.pt'}", str(tracks[0])]) == 2
    error = capsys.readouterr().err
    assert "their genres differ" in error and str(probe) in error and str(tmp_path / "other.pt") in error


# ----------------------------------------------------------------------------- experiments.py with --encoder

def encoder_args(music, cache, encoder_weights):
    return ["--dataset=folder", f"--data_dir={music}", f"--cache_dir={cache}", "--encoder=dasheng",
            f"--encoder_weights={encoder_weights}", "--batch_size=4", "--epochs=1", "--wandb_mode=disabled",
            "--cache_workers=1", "--num_workers=0"]


@pytest.fixture(scope="module")
def repeated(music, weights, tmp_path_factory):
    """experiments.py repeat --encoder=dasheng over 2 seeds (the seeds' ensemble evaluated), and a CNN trained
    by main.py on the same data and split."""
    folder = tmp_path_factory.mktemp("repeat")
    cache = folder / "cache"
    assert experiments.run(["repeat", *encoder_args(music, cache, weights["dasheng"]), "--head=linear",
                            "--seeds=0,1", f"--dir={folder}"]) == 0
    cnn = folder / "cnn"
    status = experiments.main_runs.run_main(experiments.main_runs.main_command(
        ["--dataset=folder", f"--data_dir={music}", f"--cache_dir={cache}", "--model=cnn1d", f"--n_frames={N_FRAMES}",
         "--faithful=False", "--batch_size=4", "--epochs=1", "--wandb_mode=disabled", "--num_workers=0",
         "--cache_workers=1"], out_dir=str(cnn)), cnn)
    assert status == 0, (cnn / "main.log").read_text()[-3000:]
    return folder, cache, cnn


@needs_packages
@pytest.mark.slow  # 2 probe runs and the ensemble's evaluation
def test_repeat_over_seeds_with_an_encoder_and_its_seeds_ensemble(repeated):
    folder, _, _ = repeated
    ensemble = json.loads((folder / "ensemble" / "metrics.json").read_text())
    assert [m["checkpoint"] for m in ensemble["members"]] == [str(folder / f"seed_{s}" / "best.pt") for s in (0, 1)]
    for seed, member in enumerate(ensemble["members"]):
        own = json.loads((folder / f"seed_{seed}" / "metrics.json").read_text())
        assert member["test_accuracy"] == own["test_accuracy"] and own["model"] == "probe"
    assert "Ensemble of the 2 seeds" in (folder / "summary.md").read_text()


@needs_packages
@pytest.mark.slow  # a CNN run (the probes are the repeat fixture's) and one evaluation
def test_evaluate_a_probe_with_a_cnn_reads_each_members_own_cache(repeated, tmp_path):
    folder, cache, cnn = repeated
    probe = folder / "seed_0" / "best.pt"
    out = tmp_path / "evaluation"
    assert ptm.main([f"--checkpoint={probe}", f"--checkpoint={cnn / 'best.pt'}", "--evaluate=True",
                     f"--cache_dir={cache}", f"--out_dir={out}", "--num_workers=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == 3 and metrics["model"] == "probe + cnn1d"
    members = [json.loads((run / "metrics.json").read_text()) for run in (probe.parent, cnn)]
    for member, own in zip(metrics["members"], members):  # each read its own cache: its training's test figures
        assert member["test_accuracy"] == own["test_accuracy"] and abs(member["test_loss"] - own["test_loss"]) < 1e-4
    # the log loss of the mean of the probabilities is at most the mean of the members' log losses (convexity)
    assert 0 < metrics["test_loss"] <= (members[0]["test_loss"] + members[1]["test_loss"]) / 2 + 1e-6


@needs_packages
@pytest.mark.slow  # a 1-epoch probe trial
def test_tune_with_an_encoder_searches_the_probes_space(repeated, music, weights, tmp_path, capsys):
    _, cache, _ = repeated  # its embedding cache: the trials do not compute it again
    folder = tmp_path / "study"
    assert experiments.run(["tune", *encoder_args(music, cache, weights["dasheng"]), "--trials=1",
                            f"--dir={folder}"]) == 0
    assert "study tune_probe_dasheng: searches lr, weight_decay, head; fixed: batch_size;" in capsys.readouterr().out
    import optuna

    trials = optuna.load_study(study_name="tune_probe_dasheng", storage=f"sqlite:///{folder / 'study.db'}").trials
    assert [set(t.params) for t in trials] == [{"lr", "weight_decay", "head"}]
    for trial in trials:
        checkpoint = torch.load(folder / f"trial_{trial.number}" / "best.pt", weights_only=True)
        assert checkpoint["model"] == "probe" and checkpoint["model_args"]["head"] == trial.params["head"]


def test_tune_searches_a_fine_tuned_encoders_learning_rate_beside_the_probes_keys():
    space = experiments.default_space(experiments.main_config({"encoder": "dasheng", "finetune_encoder": True}))
    assert space is experiments.FINETUNE_SPACE and {"encoder_lr", "lr", "head"} <= set(space)
    assert experiments.default_space(experiments.main_config({"encoder": "clap"})) is experiments.PROBE_SPACE
    assert "encoder_lr" not in experiments.PROBE_SPACE and "model" not in experiments.FINETUNE_SPACE


# ----------------------------------------------------------------------------- embeddings and ONNX

@needs_packages
def test_embeddings_of_a_probe_are_its_layer_mix_of_the_tracks_windows(weights, tmp_path):
    checkpoint_path = probe_checkpoint(tmp_path / "probe.pt", "dasheng", weights["dasheng"])
    track = write_wav(tmp_path / "song.wav", 25.0, 220.0, seed=1)
    assert ptm.main([f"--checkpoint={checkpoint_path}", f"--embeddings={tmp_path / 'e.npz'}", "--num_workers=0",
                     str(track)]) == 0
    saved = np.load(tmp_path / "e.npz")
    model, checkpoint = predict.load_predictor(checkpoint_path)
    windows = probe_windows.track_windows(track, checkpoint["preprocessing"])
    rows = model.encoder.embed_layers(torch.from_numpy(windows)).half().float()  # the cache's float16 rows
    with torch.no_grad():
        expected = model.probe.embed(rows[None])[0].numpy()  # what the head reads
    assert saved["embeddings"].shape == (1, checkpoint["preprocessing"]["dim"]) and list(saved["windows"]) == [2]
    np.testing.assert_allclose(saved["embeddings"][0], expected, atol=1e-5)


def onnx_session(path):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    return session, props


@needs_packages
@pytest.mark.slow  # an ONNX export of the encoder and its check
def test_onnx_export_of_a_dasheng_probe_is_the_whole_model_on_audio_windows(weights, tmp_path, capsys):
    checkpoint_path = probe_checkpoint(tmp_path / "probe.pt", "dasheng", weights["dasheng"])
    assert ptm.main([f"--checkpoint={checkpoint_path}", f"--export={tmp_path / 'probe.onnx'}"]) == 0
    out = capsys.readouterr().out
    assert "input audio" in out and "note:" not in out
    session, props = onnx_session(tmp_path / "probe.onnx")
    assert props["input_kind"] == "audio" and props["encoder"] == "dasheng" and props["class_names"] == list(GENRES)
    model, checkpoint = predict.load_predictor(checkpoint_path)
    windows = np.stack([probe_windows.track_windows(write_wav(tmp_path / f"{k}.wav", 20.0, 110.0 * (k + 1), k),
                                                    checkpoint["preprocessing"]) for k in range(2)])
    (got,) = session.run(["probabilities"], {"audio": windows})
    with torch.no_grad():
        expected = export.AudioProbabilities(model, export.tasks.of(checkpoint))(torch.from_numpy(windows)).numpy()
    assert got.shape == (2, len(GENRES)) and expected.std(axis=0).max() > 1e-3  # two tracks, told apart
    np.testing.assert_allclose(got, expected, atol=export.MAX_DIFFERENCE)


@needs_packages
@pytest.mark.slow  # an ONNX export attempt, then the head's
def test_onnx_export_of_a_whisper_probe_is_its_head_on_embeddings_and_says_so(weights, tmp_path, capsys):
    checkpoint_path = probe_checkpoint(tmp_path / "probe.pt", "whisper", weights["whisper"], head="linear")
    assert ptm.main([f"--checkpoint={checkpoint_path}", f"--export={tmp_path / 'probe.onnx'}"]) == 0
    out = capsys.readouterr().out
    assert "note: the whole model (whisper encoder included) was not exported" in out and "input embeddings" in out
    session, props = onnx_session(tmp_path / "probe.onnx")
    assert props["input_kind"] == "embeddings" and "head on the encoder's embeddings" in props["input_note"]
    model, checkpoint = predict.load_predictor(checkpoint_path)
    p = checkpoint["preprocessing"]
    rows = model.probe.standardise.mean + model.probe.standardise.std * torch.randn(4, 2, p["layers"], p["dim"])
    (got,) = session.run(["probabilities"], {"embeddings": rows.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(rows)[1].numpy(), atol=export.MAX_DIFFERENCE)


@needs_packages
@pytest.mark.slow  # five commands and an ONNX export
def test_a_fine_tuned_encoder_predicts_joins_a_cnn_exports_and_serves_the_page(weights, tmp_path, capsys):
    """The same tools with a fine-tuned encoder's checkpoint (its model takes the audio windows itself)."""
    tuned, cnn = finetuned_checkpoint(tmp_path / "tuned.pt", weights["dasheng"]), cnn_checkpoint(tmp_path / "cnn.pt", 1)
    tracks = [write_wav(tmp_path / "long.wav", 25.0, 220.0, seed=1), write_wav(tmp_path / "short.wav", 4.0, 330.0, 2)]
    model, checkpoint = predict.load_predictor(tuned)
    windows = torch.from_numpy(probe_windows.track_windows(tracks[0], checkpoint["preprocessing"])).half().float()
    with torch.no_grad():  # the long track: the model on its 2 windows (float16, as the audio cache holds them)
        expected_probabilities, expected_embedding = model(windows[None])[1][0], model.embed(windows[None])[0]
    alone = table(tmp_path, tracks, tuned), table(tmp_path, tracks, cnn)
    np.testing.assert_allclose(alone[0][0], expected_probabilities, atol=1e-5)
    assert alone[0].std(axis=0).max() > 1e-3  # the two tracks told apart
    np.testing.assert_allclose(table(tmp_path, tracks, tuned, cnn), (alone[0] + alone[1]) / 2, atol=2e-6)

    # two fine-tuned seeds form one ensemble of one preprocessing (experiments.py repeat's)
    other = finetuned_checkpoint(tmp_path / "tuned_1.pt", weights["dasheng"], seed=1)
    np.testing.assert_allclose(table(tmp_path, tracks, tuned, other), (alone[0] + table(tmp_path, tracks, other)) / 2,
                               atol=2e-6)

    assert ptm.main([f"--checkpoint={tuned}", f"--embeddings={tmp_path / 'e.npz'}", "--num_workers=0",
                     str(tracks[0])]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npz")["embeddings"][0], expected_embedding, atol=1e-5)

    assert ptm.main([f"--checkpoint={tuned}", f"--export={tmp_path / 'tuned.onnx'}"]) == 0
    session, props = onnx_session(tmp_path / "tuned.onnx")
    assert props["input_kind"] == "audio" and props["model"] == "finetuned" and "note:" not in capsys.readouterr().out
    (got,) = session.run(["probabilities"], {"audio": windows[None].numpy()})
    np.testing.assert_allclose(got[0], expected_probabilities, atol=export.MAX_DIFFERENCE)

    long, short = app.analyse(tracks, model, checkpoint, top_k=2)
    assert [label for label, _ in long["predictions"]] == [GENRES[k] for k in np.argsort(-alone[0][0])[:2]]
    assert short["predictions"] and "dasheng" in app.checkpoint_summary(checkpoint, tuned)


# ----------------------------------------------------------------------------- the web page (app.py)

@needs_packages
def test_the_page_predicts_with_a_probe_and_leaves_out_the_spectrogram(weights, tmp_path):
    checkpoint_path = probe_checkpoint(tmp_path / "probe.pt", "dasheng", weights["dasheng"])
    model, checkpoint = predict.load_predictor(checkpoint_path)
    header = app.checkpoint_summary(checkpoint, checkpoint_path)
    assert "mlp head on the dasheng encoder" in header and "no mel-spectrogram" in header
    tracks = [write_wav(tmp_path / "long.wav", 25.0, 220.0, seed=1), write_wav(tmp_path / "short.wav", 4.0, 330.0, 2),
              tmp_path / "missing.wav"]
    long, short, missing = app.analyse(tracks, model, checkpoint, top_k=2)
    expected = predicted(model, checkpoint, tracks[:1])[0]
    assert [label for label, _ in long["predictions"]] == [GENRES[k] for k in np.argsort(-expected)[:2]]
    assert long["figure"] is not None and len(long["figure"].axes) >= 1  # the timeline of its 2 windows
    assert long["figure"].axes[0].get_title().startswith("genre probabilities per window")
    assert short["predictions"] and short["figure"] is None  # one window: nothing over time to draw
    assert "not found" in missing["error"]
