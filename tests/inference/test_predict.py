"""pre_trained_models.py: windows, batching, outputs, the original weights, evaluation and bad input.

Audio files are real MP3/WAV files written here with soundfile; the checkpoint comes from a real
(tiny) main.py run; the command line runs as a real subprocess for the end-to-end cases.

    python -m pytest tests/inference/test_predict.py -q
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import models_utils
import pre_trained_models as ptm
import utils
from fma_genres.data import fma
from fma_genres.inference import audio_windows, predict
from models import CNN1D, CRNN

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "original_weights"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"original weights not found at {REFERENCE} "
                                     "(reference data lives outside the repository)")


def run_cli(*args, script="pre_trained_models.py"):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def tone(seconds, rate, channels, seed):
    """A pulsing tone with a little noise; different seeds give different spectra."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (110 + 70 * seed) * t) * (1 + np.sin(2 * np.pi * (0.5 + seed) * t)) / 2
    x = x + 0.02 * rng.standard_normal(t.size)
    return (np.stack([x, np.roll(x, 200)], axis=1) if channels == 2 else x).astype(np.float32)


AUDIO = {  # name: (seconds, sample rate, channels); short, 30 s and 3 min; mono and stereo; 22.05 and 48 kHz
    "short_mono_22k.wav": (3, 22050, 1),
    "short_stereo_48k.mp3": (3, 48000, 2),
    "clip_stereo_48k.mp3": (30, 48000, 2),
    "clip_mono_22k.wav": (30, 22050, 1),
    "long_mono_22k.mp3": (180, 22050, 1),
    "nested/LONG_STEREO_48K.WAV": (180, 48000, 2),  # upper-case extension in a subfolder
}


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    for seed, (name, (seconds, rate, channels)) in enumerate(AUDIO.items()):
        path = root / name
        path.parent.mkdir(exist_ok=True)
        sf.write(path, tone(seconds, rate, channels, seed), rate, format=path.suffix[1:].upper())
    (root / "cover.jpg").write_bytes(b"\xff\xd8 not audio, and not picked up from a folder")
    return root


@pytest.fixture(scope="module")
def tiny_run(fma_small, tmp_path_factory):
    """A real (one-epoch, 100-frame) CNN1D training run of main.py on the FMA-format fixture (2.5 s clips)."""
    out = tmp_path_factory.mktemp("run")
    result = run_cli(f"--data_dir={fma_small}", "--download=False", f"--cache_dir={out / 'cache'}",
                     "--n_frames=100", "--epochs=1", "--model=cnn1d", "--batch_size=8", "--wandb_mode=disabled",
                     f"--out_dir={out / 'cnn1d'}", script="main.py")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out / "cnn1d" / "best.pt"


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """A full-width (1,291 frames) standardised CNN1D checkpoint in the project's format."""
    torch.manual_seed(0)
    model = models_utils.init_weights(CNN1D(faithful=False))
    model.standardise.use(-45.0, 18.0)
    path = tmp_path_factory.mktemp("wide") / "cnn1d.pt"
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": 1291, "n_classes": 8, "faithful": False}, model.state_dict(),
        fma.FMA_SMALL_GENRES, utils.PREPROCESSING), path)
    return path


def direct_probabilities(model, windows, mean=-45.0, std=18.0):
    """Each window's probabilities, straight from the bare model (no code of pre_trained_models)."""
    windows = torch.from_numpy(np.stack(windows).astype(np.float32))
    with torch.no_grad():
        return model((windows - mean) / std)[1].double().numpy()


# ----------------------------------------------------------------------------- windows

def test_window_starts():
    assert audio_windows.window_starts(100, 1291, 645) == [0]          # shorter than a window: one (padded) window
    assert audio_windows.window_starts(1291, 1291, 645) == [0]
    assert audio_windows.window_starts(1292, 1291, 645) == [0]          # an FMA clip: the original's single crop
    assert audio_windows.window_starts(7752, 1291, 645) == [645 * k for k in range(11)]  # 3 min
    assert audio_windows.window_starts(7752, 1291, 645, max_windows=4) == [0, 1935, 4515, 6450]
    assert audio_windows.window_starts(7752, 1291, 645, max_windows=1) == [0]
    assert audio_windows.window_starts(7752, 1291, 645, max_windows=50) == [645 * k for k in range(11)]
    assert audio_windows.window_starts(400, 128, 100) == [0, 100, 200]


def test_window_average_equals_mean_of_direct_window_probabilities(music, wide_checkpoint):
    model, checkpoint = predict.load_predictor(wide_checkpoint)
    files = [music / "short_mono_22k.wav", music / "nested/LONG_STEREO_48K.WAV", music / "clip_mono_22k.wav"]
    # batch_size 4: the long track's 11 windows share batches with the other tracks' windows; two
    # workers (files 0 and 2 in one, file 1 in the other) send their windows interleaved
    results = list(predict.predict(model, checkpoint, files, predict.Reading(batch_size=4, num_workers=2)))
    bounded = list(predict.predict(model, checkpoint, files[1:2], predict.Reading(max_windows=4, batch_size=3)))
    assert [(r[0], r[2], r[3]) for r in results] == [(files[0], 1, None), (files[1], 11, None), (files[2], 1, None)]
    raw = CNN1D(faithful=False)
    raw.load_state_dict(checkpoint["state_dict"])
    raw.standardise.use(None, None)  # direct_probabilities standardises by hand
    raw.eval()
    windows = [list(audio_windows.track_windows(f, utils.PREPROCESSING, hop=645)) for f in files]
    per_window = direct_probabilities(raw, windows[1])
    assert per_window.std(axis=0).max() > 1e-3  # the windows disagree, so averaging is really tested
    np.testing.assert_allclose(results[1][1], per_window.mean(axis=0), atol=1e-6)
    chosen = list(audio_windows.track_windows(files[1], utils.PREPROCESSING, hop=645, max_windows=4))
    np.testing.assert_allclose(bounded[0][1], direct_probabilities(raw, chosen).mean(axis=0), atol=1e-6)
    assert bounded[0][2] == 4
    for k in (0, 2):  # 3 s, padded to one window; a 30 s clip: one window
        np.testing.assert_allclose(results[k][1], direct_probabilities(raw, windows[k])[0], atol=1e-6)


# ----------------------------------------------------------------------------- command line

def test_table_for_files_and_folders(music, tiny_run):
    result = run_cli(f"--checkpoint={tiny_run}", music / "clip_stereo_48k.mp3", music)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first = music / "clip_stereo_48k.mp3"  # named first, then found again in the folder: predicted once
    expected = [first] + sorted(music / name for name in AUDIO if music / name != first)
    assert [line.split()[0] for line in lines] == [str(p) for p in expected]
    class_names = torch.load(tiny_run, weights_only=True)["class_names"]
    for line in lines:
        cells = line.split()[1:]
        genres, probabilities = cells[0::2], [float(p) for p in cells[1::2]]
        assert len(genres) == 3 and set(genres) <= set(class_names)
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.001
    for column in (1, 2, 3):  # aligned: every line's genre and probability columns start at the same offsets
        assert len({line.index(" " + line.split()[column] + " ", len(line.split()[0])) for line in lines}) == 1


def test_json_lines_and_csv(music, tiny_run, tmp_path):
    out = tmp_path / "genres.csv"
    result = run_cli(f"--checkpoint={tiny_run}", "--json", "--top_k=2", "--max_windows=30", "--batch_size=7",
                     f"--output={out}", music)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    rows = list(csv.DictReader(out.open()))
    class_names = torch.load(tiny_run, weights_only=True)["class_names"]
    assert list(rows[0]) == ["path", "windows", *class_names, "error"]
    assert [r["path"] for r in records] == [r["path"] for r in rows] == [str(music / n) for n in sorted(AUDIO)]
    for record, row in zip(records, rows):
        assert set(record) == {"path", "predictions"} and len(record["predictions"]) == 2
        probabilities = {name: float(row[name]) for name in class_names}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4) and row["error"] == ""
        best = sorted(probabilities.items(), key=lambda item: -item[1])[:2]
        assert [(p["genre"], p["probability"]) for p in record["predictions"]] == \
               [(genre, pytest.approx(p, abs=2e-6)) for genre, p in best]
    # 100-frame windows every 50 frames: 3 s (130 frames) -> 1 window; 30 s -> 24; 3 min -> 154, capped at 30
    assert {Path(r["path"]).name: int(r["windows"]) for r in rows} == {
        "short_mono_22k.wav": 1, "short_stereo_48k.mp3": 1, "clip_stereo_48k.mp3": 24,
        "clip_mono_22k.wav": 24, "long_mono_22k.mp3": 30, "LONG_STEREO_48K.WAV": 30}


@needs_reference
def test_original_weights_reproduce_expected_outputs():
    expected = json.loads((REFERENCE / "expected_outputs.json").read_text())
    b, m, t = np.meshgrid(np.arange(2), np.arange(128), np.arange(1291), indexing="ij")
    x = torch.from_numpy((-30 + 20 * np.sin(0.3 * t + 0.2 * m * (b + 1)) - 0.3 * m).astype(np.float32))
    for name, file in (("cnn1d", "CNNGH1D"), ("crnn", "CRNN")):
        model, checkpoint = predict.load_predictor(REFERENCE / f"{file}.pt", name)
        assert checkpoint["class_names"] == fma.FMA_SMALL_GENRES
        assert checkpoint["preprocessing"] == utils.PREPROCESSING
        assert model.standardise.mean == 0 and model.standardise.std == 1 and checkpoint["model_args"]["faithful"]
        with torch.no_grad():
            logits, probabilities = model(x)
        np.testing.assert_allclose(logits.numpy(), expected[file]["faithful"]["logits"], atol=1e-4)
        np.testing.assert_allclose(probabilities.numpy(), expected[file]["faithful"]["probabilities"], atol=1e-5)


@needs_reference
def test_original_crnn_predicts_from_the_command_line(music):
    result = run_cli(f"--checkpoint={REFERENCE / 'CRNN.pt'}", "--model=crnn", "--json=True", "--top_k=8",
                     music / "clip_stereo_48k.mp3")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    assert sorted(p["genre"] for p in predictions) == fma.FMA_SMALL_GENRES
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_evaluate_writes_the_training_report(fma_small, tiny_run, tmp_path):
    result = run_cli(f"--checkpoint={tiny_run}", "--evaluate=True", f"--data_dir={fma_small}", "--subset=small",
                     f"--cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = tiny_run.parent / "evaluation"
    metrics = json.loads((report / "metrics.json").read_text())
    training = json.loads((tiny_run.parent / "metrics.json").read_text())  # main.py's own test evaluation
    assert metrics["test_examples"] == 8 and np.sum(metrics["confusion_matrix"]) == 8
    assert metrics["test_accuracy"] == pytest.approx(training["test_accuracy"])
    assert metrics["test_loss"] == pytest.approx(training["test_loss"], rel=1e-5)
    assert metrics["class_names"] == training["class_names"]
    assert metrics["confusion_matrix"] == training["confusion_matrix"] and metrics["macro_f1"] == training["macro_f1"]
    scores = {"test_accuracy", "test_loss", "macro_f1", "per_class", "roc_auc", "confusion_matrix", "class_names",
              "non_finite_rows", "test_examples"}  # test.evaluate's, in both reports
    assert scores <= set(metrics) and scores <= set(training)
    assert (metrics["split"], metrics["subset"], metrics["epoch"]) == ("official", "small", 1)
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png", "roc_curves.png"):
        assert (report / name).read_bytes().startswith(b"\x89PNG")


def test_evaluate_reads_the_data_folder_the_checkpoint_records(fma_small, tiny_run, tmp_path, capsys):
    status, out, err = run_main(capsys, f"--checkpoint={tiny_run}", "--evaluate=True",
                                f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'report'}")
    assert status == 0, err
    assert "\ntest split of FMA small (official): " in out
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["test_examples"] == 8
    status, out, err = run_main(capsys, f"--checkpoint={tiny_run}", "--evaluate=True", f"--data_dir={tmp_path}",
                                f"--cache_dir={tmp_path / 'cache'}")  # given, it wins; the error names both
    assert status == 2 and f"{tmp_path}/fma_metadata/tracks.csv not found" in err
    assert f"was trained on the data in {fma_small}, which --evaluate uses when --data_dir is not given" in err


def with_config(tiny_run, path, **changes):
    """A copy of the tiny run's checkpoint, as if trained with other config values."""
    checkpoint = torch.load(tiny_run, weights_only=True)
    checkpoint["config"].update(changes)
    torch.save(checkpoint, path)
    return path


def test_evaluate_uses_the_split_the_checkpoint_was_trained_with(fma_small, tiny_run, tmp_path, capsys):
    checkpoint = with_config(tiny_run, tmp_path / "random.pt", split="random", seed=1, train_size=0.75)
    status, out, err = run_main(capsys, f"--checkpoint={checkpoint}", "--evaluate=True", f"--data_dir={fma_small}",
                                f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'report'}")
    assert status == 0, err
    assert "(random, seed 1, train_size 0.75)" in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (metrics["split"], metrics["seed"], metrics["train_size"]) == ("random", 1, 0.75)
    tracks, _ = fma.load_metadata(fma_small, "small")
    test_ids = {seed: sorted(fma.split_tracks(tracks, "random", 0.75, seed)["test"].index) for seed in (0, 1)}
    assert test_ids[0] != test_ids[1]  # seed 0's test split would hold clips this checkpoint trained on
    evaluated = json.loads(next((tmp_path / "cache").glob("*/params.json")).read_text())["track_ids"]
    assert evaluated == test_ids[1] and metrics["test_examples"] == len(test_ids[1])


def test_evaluate_refuses_split_options_that_contradict_the_checkpoint(fma_small, tiny_run, tmp_path, capsys):
    checkpoint = with_config(tiny_run, tmp_path / "random.pt", split="random", seed=1, train_size=0.75)
    common = (f"--checkpoint={checkpoint}", "--evaluate=True", f"--data_dir={fma_small}")
    for options, named in ((["--split=official"], "--split=official (trained with random)"),
                           (["--seed=0", "--train_size=0.75"], "--seed=0 (trained with 1)"),
                           (["--subset=medium"], "--subset=medium (trained with small)")):
        status, out, err = run_main(capsys, *common, *options)
        assert (status, out) == (2, "") and named in err and "Drop these options" in err
    assert not (tmp_path / "evaluation").exists()


# ----------------------------------------------------------------------------- bad input

def test_bad_audio_files_are_reported_and_the_rest_predicted(music, tiny_run, tmp_path):
    good = music / "clip_mono_22k.wav"
    mp3 = (music / "clip_stereo_48k.mp3").read_bytes()
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "notes.ogg").write_text("these are lyrics, not audio\n" * 50)
    (folder / "truncated.mp3").write_bytes(mp3[: len(mp3) // 3])   # decodes, but to 10 of 30 s
    (folder / "header_only.flac").write_bytes(mp3[:200])
    (folder / "a_directory.wav").mkdir()                             # not a file: skipped by the search
    out = tmp_path / "genres.csv"
    result = run_cli(f"--checkpoint={tiny_run}", f"--output={out}", good, folder, tmp_path / "missing.mp3")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout.split()[0] == str(good)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    bad = ["empty.mp3", "header_only.flac", "notes.ogg", "truncated.mp3"]
    assert [line.split()[1] for line in errors] == [f"{folder / n}:" for n in bad] + [f"{tmp_path / 'missing.mp3'}:"]
    assert "empty" in errors[0] and "truncated" in errors[3] and "not found" in errors[4]
    assert "5 of 6 files" in result.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows["clip_mono_22k.wav"]["error"] == "" and float(rows["clip_mono_22k.wav"]["Rock"]) >= 0
    assert all(rows[n]["error"] and rows[n]["Rock"] == "" for n in bad + ["missing.mp3"])


def test_missing_checkpoint_is_one_clear_message(music, tmp_path):
    result = run_cli(f"--checkpoint={tmp_path / 'nowhere.pt'}", music / "short_mono_22k.wav")
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: Checkpoint {tmp_path / 'nowhere.pt'} does not exist")


def run_main(capsys, *args):
    status = ptm.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, " ".join(captured.err.split())


def test_checkpoints_of_other_formats_are_refused(music, tmp_path, capsys):
    audio = music / "short_mono_22k.wav"
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    a_list = tmp_path / "list.pt"
    torch.save([1, 2, 3], a_list)
    marker = tmp_path / "code_ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    exploit = tmp_path / "exploit.pt"
    torch.save({"format": "fma-genre-classifier", "payload": Exploit()}, exploit)
    for path, message in ((text, "could not be read"), (a_list, "not a checkpoint of this project"),
                          (exploit, "could not be read")):
        status, out, err = run_main(capsys, f"--checkpoint={path}", audio)
        assert (status, out) == (2, "") and err.startswith("error: ") and message in err and str(path) in err
    assert not marker.exists()  # weights_only=True: a checkpoint never runs code


def test_bare_state_dicts_need_the_matching_model(music, tiny_run, tmp_path, capsys):
    audio = music / "short_mono_22k.wav"
    bare = tmp_path / "CRNN.pt"
    torch.save(CRNN().state_dict(), bare)
    status, _, err = run_main(capsys, f"--checkpoint={bare}", audio)
    assert status == 2 and "bare state_dict" in err and "--model=crnn" in err
    status, _, err = run_main(capsys, f"--checkpoint={bare}", "--model=cnn1d", audio)
    assert status == 2 and f"weights in {bare} do not fit model 'cnn1d'" in err and "fit --model=crnn" in err
    status, _, err = run_main(capsys, f"--checkpoint={tiny_run}", "--model=crnn", audio)
    assert status == 2 and "holds a 'cnn1d' model but --model=crnn" in err
    status, out, err = run_main(capsys, f"--checkpoint={bare}", "--model=crnn", "--json", audio)
    assert status == 0 and json.loads(out)["path"] == str(audio)


def test_flag_forms_and_invalid_values(capsys):
    assert ptm.parse_args(["--checkpoint=c.pt", "--json", "a.mp3"]).json is True
    assert ptm.parse_args(["--checkpoint=c.pt", "--json=false", "a.mp3"]).json is False
    assert ptm.parse_args(["--checkpoint", "c.pt", "--evaluate=True", "--data_dir=d"]).evaluate is True
    for bad in (["--checkpoint=c.pt"], ["--checkpoint=c.pt", "--top_k=0", "a.mp3"],
                ["--checkpoint=c.pt", "--json=maybe", "a.mp3"], ["--checkpoint=c.pt", "--model=vgg", "a.mp3"]):
        with pytest.raises(SystemExit) as exit_info:
            ptm.parse_args(bad)
        assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_an_unusable_device_is_one_usage_error_line(music, tiny_run, capsys):
    for mode in ([music / "short_mono_22k.wav"], ["--evaluate=True", "--data_dir=nowhere"]):
        status = ptm.main([f"--checkpoint={tiny_run}", "--device=cuda:99", *map(str, mode)])
        captured = capsys.readouterr()
        assert (status, captured.out) == (2, "")  # the usage-error status the module docstring promises
        assert captured.err.startswith("error: device='cuda:99' cannot be used") and captured.err.count("\n") == 1


def test_subset_choices_are_the_subsets_utils_knows(capsys):
    with pytest.raises(SystemExit):
        ptm.parse_args(["--help"])
    assert "--subset {" + ",".join(fma.SUBSETS) + "}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        ptm.parse_args(["--checkpoint=c.pt", "--evaluate=True", "--data_dir=d", "--subset=full"])
    assert exit_info.value.code == 2 and "invalid choice: 'full'" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_default_decoding_workers_follow_the_cpu_affinity():
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # as taskset -c 0 would: one core, whatever the host has
        assert ptm.parse_args(["--checkpoint=c.pt", "a.mp3"]).num_workers == 1
    finally:
        os.sched_setaffinity(0, allowed)


def test_no_audio_in_folder(tiny_run, tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("no music here")
    status, out, err = run_main(capsys, f"--checkpoint={tiny_run}", tmp_path)
    assert (status, out) == (2, "") and f"No audio files to predict in {tmp_path}" in err
