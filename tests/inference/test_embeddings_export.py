"""Embeddings (inference.embeddings, --embeddings) and ONNX export (export.py, --export), and docs/prediction.md's
scikit-learn and librosa snippets, run as the page prints them.

Audio files are real WAV/MP3/FLAC files written here with soundfile; checkpoints are built here in
the project's format (100-frame windows, so every model is quick); ONNX files are read back with
onnxruntime.

    python -m pytest tests/inference/test_embeddings_export.py -q
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import soundfile as sf
import torch

import models_utils
import pre_trained_models as ptm
import utils
from fma_genres.inference import audio_windows, export, predict
from models import MODELS, accepted_args

ROOT = Path(__file__).resolve().parents[2]
N_FRAMES = 100
PREPROCESSING = {**utils.PREPROCESSING, "n_frames": N_FRAMES}
GENRES = ["Blues", "Jazz", "Metal"]
MEAN, STD = -45.0, 18.0


def tone(seconds, rate, seed, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (110 + 70 * seed) * t) * (1 + np.sin(2 * np.pi * (0.5 + seed) * t)) / 2
    x = x + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    return (np.stack([x, np.roll(x, 200)], axis=1) if channels == 2 else x).astype(np.float32)


def write_checkpoint(path, name, faithful):
    """A randomly initialised model in the project's checkpoint format; faithful=False is standardised."""
    torch.manual_seed(0)
    model_args = accepted_args(name, n_mels=128, n_frames=N_FRAMES, n_classes=len(GENRES), faithful=faithful)
    model = models_utils.init_weights(MODELS[name](**model_args))
    if faithful:  # random weights on raw dB give one-hot probabilities, which would hide differences
        with torch.no_grad():
            logit_scale = model.eval()(-80.0 * torch.rand(4, 128, N_FRAMES))[0].std()
            model.head.weight.div_(logit_scale)
            model.head.bias.div_(logit_scale)
    else:
        model.standardise.use(MEAN, STD)
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        name, model_args, model.state_dict(), GENRES, PREPROCESSING), path)
    return path


def docs_block(containing):
    """docs/prediction.md's python code block that contains `containing` (the tests run what users read)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "prediction.md").read_text(), re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return block


def run_main(capsys, *args):
    status = ptm.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# ----------------------------------------------------------------------------- embeddings

@torch.no_grad()
def test_embedding_sizes_are_the_documented_ones():
    sizes = {name: predict.embeddings(MODELS[name]().eval(), torch.zeros(1, 128, 1291)).shape
             for name in MODELS}
    assert sizes == {"cnn1d": (1, 4864), "cnn2d": (1, 64), "crnn": (1, 128)}
    assert {name: MODELS[name]().head.in_features for name in MODELS} == {k: v[1] for k, v in sizes.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_embedding_is_the_head_input_averaged_over_windows(name, tmp_path):
    """The (corrected, linear) head of the averaged embedding gives the average of the windows' logits, so
    the embedding is what the head reads, of standardised input, batched across tracks."""
    long_track, short_track = tmp_path / "long.wav", tmp_path / "short.flac"
    sf.write(long_track, tone(8, 22050, seed=1), 22050)       # 8 s: several 100-frame windows
    sf.write(short_track, tone(1, 44100, seed=2, channels=2), 44100)  # shorter than a window: padded
    model, checkpoint = predict.load_predictor(write_checkpoint(tmp_path / "model.pt", name, faithful=False))
    results = list(predict.predict(model, checkpoint, [long_track, short_track], predict.Reading(batch_size=3),
                                     outputs=predict.embeddings))
    assert [(path, n, error) for path, _, n, error in results] == [(long_track, 5, None), (short_track, 1, None)]
    fc = model.head
    for path, embedding, _, _ in results:
        windows = torch.from_numpy(np.stack(list(audio_windows.track_windows(path, PREPROCESSING, N_FRAMES // 2))))
        with torch.no_grad():
            logits = model(windows.float())[0].double()
            from_embedding = torch.from_numpy(embedding) @ fc.weight.double().T + fc.bias.double()
        assert len(windows) == 1 or logits.std(dim=0).max() > 1e-4  # the windows differ: averaging is tested
        np.testing.assert_allclose(from_embedding.numpy(), logits.mean(dim=0).numpy(), atol=1e-4)


def test_embeddings_file_reloads_and_feeds_the_readme_classifier(tmp_path, monkeypatch):
    music = tmp_path / "music"
    for label, seeds in (("low", (0, 1, 2, 3, 4)), ("high", (7, 8, 9, 10, 11))):
        (music / label).mkdir(parents=True)
        for seed in seeds:
            sf.write(music / label / f"{seed}.wav", tone(2, 22050, seed), 22050)
    (music / "low" / "broken.mp3").write_bytes(b"not audio")
    checkpoint = write_checkpoint(tmp_path / "crnn.pt", "crnn", faithful=True)
    result = subprocess.run([sys.executable, str(ROOT / "pre_trained_models.py"), f"--checkpoint={checkpoint}",
                             "--embeddings=music.npz", "--num_workers=0", music], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # the broken file is reported and left out; the rest written
    assert f"error: {music / 'low' / 'broken.mp3'}:" in result.stderr
    assert "music.npz: 10 embeddings of size 128" in result.stderr
    data = np.load(tmp_path / "music.npz")  # no allow_pickle: plain arrays only
    expected_paths = sorted(str(p) for p in music.rglob("*.wav"))
    assert data["paths"].tolist() == expected_paths
    assert data["embeddings"].shape == (10, 128) and data["embeddings"].dtype == np.float32
    assert data["windows"].tolist() == [1] * 10
    assert data["class_names"].tolist() == GENRES and str(data["model"]) == "crnn"
    assert np.isfinite(data["embeddings"]).all() and data["embeddings"].std(axis=0).max() > 0
    monkeypatch.chdir(tmp_path)  # the docs' example reads music.npz from the working folder
    namespace = {}
    exec(docs_block("cross_val_score"), namespace)
    assert namespace["labels"] == [Path(p).parent.name for p in expected_paths]


# ----------------------------------------------------------------------------- ONNX export

@pytest.mark.parametrize("faithful", [True, False], ids=["faithful", "corrected"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_matches_pytorch_with_dynamic_batch_and_metadata(name, faithful, tmp_path, capsys):
    checkpoint_path = write_checkpoint(tmp_path / f"{name}.pt", name, faithful)
    onnx_path = tmp_path / "out" / f"{name}.onnx"
    status, out, err = run_main(capsys, f"--checkpoint={checkpoint_path}", f"--export={onnx_path}")
    assert status == 0, err
    printed = float(re.search(r"max abs probability difference ([0-9.e+-]+)", out).group(1))
    assert printed < 1e-4

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", 128, N_FRAMES]]
    props = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    assert props["class_names"] == GENRES and props["model"] == name
    assert props["faithful"] == (faithful or name == "cnn2d")  # CNN2D's forward pass is the original's either way
    assert {key: props[key] for key in utils.PREPROCESSING} == PREPROCESSING

    bare = MODELS[name](**accepted_args(name, n_mels=128, n_frames=N_FRAMES, n_classes=len(GENRES), faithful=faithful))
    bare.load_state_dict(torch.load(checkpoint_path, weights_only=True)["state_dict"])  # its Standardise buffers too
    assert bare.standardise.mean.item() == (0.0 if faithful else MEAN)
    bare.eval()
    spectrograms = [audio_windows.window_db(tone(3, 22050, seed)[:N_FRAMES * 512], PREPROCESSING)
                    for seed in range(5)]
    for batch in (1, 5):  # another size than the export's example: the batch dimension is dynamic
        mel_db = np.stack(spectrograms[:batch]).astype(np.float32)
        x = torch.from_numpy(mel_db)
        with torch.no_grad():  # standardisation, when the model was trained with it, is in the graph too
            expected = bare(x)[1].numpy()
        (got,) = session.run(["probabilities"], {"mel_db": mel_db})
        assert got.shape == (batch, len(GENRES)) and (batch == 1 or expected.std(axis=0).max() > 0.01)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_that_disagrees_is_not_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "MAX_DIFFERENCE", 0.0)  # nothing can pass: the refusal path runs for real
    checkpoint_path = write_checkpoint(tmp_path / "cnn1d.pt", "cnn1d", faithful=True)
    status, out, err = run_main(capsys, f"--checkpoint={checkpoint_path}", f"--export={tmp_path / 'm.onnx'}")
    assert status == 1 and "disagrees with PyTorch" in err and "m.onnx was not written" in err
    assert list(tmp_path.iterdir()) == [checkpoint_path]


def test_modes_are_exclusive_and_export_takes_no_audio(tmp_path, capsys):
    for args in (["--export=m.onnx", "song.mp3"], ["--export=m.onnx", "--embeddings=e.npz", "song.mp3"],
                 ["--evaluate=True", "--embeddings=e.npz"]):
        with pytest.raises(SystemExit) as exit_info:
            ptm.parse_args(["--checkpoint=x.pt", *args])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--export needs no audio files" in err and "--embeddings and --export are separate tasks" in err
    assert "--evaluate and --embeddings are separate tasks" in err


# ----------------------------------------------------------------------------- the docs' librosa input

def test_the_docs_librosa_input_matches_the_project_mel_function(tmp_path):
    """Within 1e-3 dB of utils.clip_spectrogram (measured: 2.3e-4 dB at most) on a stereo 44.1 kHz MP3,
    a mono 22.05 kHz WAV a little short of 30 s (padded) and a 48 kHz FLAC."""
    namespace = {}
    code = docs_block("def mel_db")
    exec(code[:code.index("session = ")], namespace)  # the function; the session needs an exported model
    for name, seconds, rate, channels in (("a.mp3", 30, 44100, 2), ("b.wav", 28, 22050, 1), ("c.flac", 30, 48000, 2)):
        path = tmp_path / name
        sf.write(path, tone(seconds, rate, seed=3, channels=channels), rate)
        expected, _ = utils.clip_spectrogram(path)
        got = namespace["mel_db"](path)
        assert got.shape == expected.shape == (128, 1291) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
