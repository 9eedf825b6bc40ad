"""The web page (app.py) in a real headless browser, its checks without a browser, and --plot's PNGs.

The browser tests start `python app.py` as a real server on a free loopback port and drive it in Debian's
chromium through its packaged driver (/usr/bin/chromedriver; .ci/run installs both), with the helpers
of tools/app_screenshot.py (which draws README's picture). They are skipped,
with the reason, where gradio, selenium or chromium is missing. The checkpoint is a small untrained
CNN1D (96 frames: a 12 s track has 10 windows), so the genres are arbitrary but deterministic.

    python -m pytest tests/test_app.py -q
"""
import json
import socket
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

import app
import audio_windows
import inference
import models_utils
import plots
import pre_trained_models as ptm
import utils
from conftest import clean_env, write_mp3
from models import CNN1D
from tools import app_screenshot as page

N_FRAMES = 96


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 96-frame CNN1D checkpoint with a training record and metrics.json, and audio files to give it."""
    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    model = models_utils.init_weights(CNN1D(n_mels=128, n_frames=N_FRAMES, n_classes=8, faithful=False))
    checkpoint = models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": N_FRAMES, "n_classes": 8, "faithful": False}, model.state_dict(),
        utils.FMA_SMALL_GENRES, {**utils.PREPROCESSING, "n_frames": N_FRAMES}, {"mean": -45.0, "std": 18.0},
        config={"model": "cnn1d", "subset": "small", "split": "official", "select_metric": "macro_f1"},
        training={"epoch": 7, "best_val_score": 0.4321})
    models_utils.save_checkpoint(checkpoint, root / "run" / "best.pt")
    (root / "run" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.375, "macro_f1": 0.25}))
    write_mp3(root / "song.mp3", 12, seed=1)
    write_mp3(root / "other" / "song.mp3", 1.5, seed=2, pitch=440.0)  # same name, shorter than one window
    (root / "broken.mp3").write_bytes(b"ID3 this is not audio")
    (root / "empty.mp3").write_bytes(b"")
    data = (root / "song.mp3").read_bytes()
    (root / "truncated.mp3").write_bytes(data[:len(data) // 3])  # what an interrupted download leaves
    return root


def cli_predictions(checkpoint, path, capsys):
    """[(genre, probability)] that `pre_trained_models.py --json` prints for one file (run in-process)."""
    capsys.readouterr()
    assert ptm.main([f"--checkpoint={checkpoint}", "--json", "--num_workers=0", str(path)]) == 0
    line = json.loads(capsys.readouterr().out)
    return [(p["genre"], p["probability"]) for p in line["predictions"]]


# ----------------------------------------------------------------------------- without a browser

def test_windows_recorded_are_those_the_model_saw_and_average_to_the_prediction(tiny):
    model, checkpoint = ptm.load_predictor(tiny / "run" / "best.pt")
    hop = 40  # not a divisor of the window: each window adds its last 40 columns
    recorder = plots.WindowRecorder(hop)
    [(_, probabilities, n_windows, error)] = inference.predict(model, checkpoint, [tiny / "song.mp3"], hop,
                                                                on_window=recorder)
    spectrogram, window_probabilities = recorder.pop(0)
    windows = list(audio_windows.track_windows(tiny / "song.mp3", checkpoint["preprocessing"], hop))
    assert error is None and n_windows == len(windows) == len(window_probabilities) > 1
    assert spectrogram.shape == (128, (n_windows - 1) * hop + N_FRAMES) and not np.isnan(spectrogram).any()
    for k, window in enumerate(windows):
        np.testing.assert_array_equal(spectrogram[:, k * hop + N_FRAMES - hop:k * hop + N_FRAMES], window[:, -hop:])
    np.testing.assert_allclose(window_probabilities.mean(axis=0), probabilities, rtol=1e-12)
    assert recorder.pop(0) is None  # popped: nothing kept


def test_bad_files_get_a_message_naming_the_fix_and_good_ones_are_still_predicted(tiny):
    model, checkpoint = ptm.load_predictor(tiny / "run" / "best.pt")
    names = ["broken.mp3", "empty.mp3", "truncated.mp3", "song.mp3"]
    results = app.analyse([tiny / name for name in names], model, checkpoint, top_k=2, max_mb=1.0)
    errors = {result["name"]: result["error"] for result in results}
    assert "could not decode it as audio" in errors["broken.mp3"]
    assert "empty file" in errors["empty.mp3"]
    assert "truncated" in errors["truncated.mp3"]
    assert errors["song.mp3"] is None and len(results[3]["predictions"]) == 2 and results[3]["figure"] is not None
    [too_large] = app.analyse([tiny / "song.mp3"], model, checkpoint, max_mb=0.01)
    assert "over this page's limit of 0.01 MB" in too_large["error"] and "--max_mb" in too_large["error"]


def test_header_names_model_genres_and_training(tiny):
    _, checkpoint = ptm.load_predictor(tiny / "run" / "best.pt")
    header = app.checkpoint_summary(checkpoint, tiny / "run" / "best.pt")
    for text in ("cnn1d", "corrected", ", ".join(utils.FMA_SMALL_GENRES), "FMA small", "epoch 7",
                 "best validation macro_f1 0.432", "test accuracy 0.375, macro F1 0.250"):
        assert text in header


def test_a_demo_checkpoint_is_described_as_trained_on_the_demo_data(tiny, tmp_path):
    _, checkpoint = ptm.load_predictor(tiny / "run" / "best.pt")
    checkpoint["config"].update(demo=True, data_dir="data/demo")
    header = app.checkpoint_summary(checkpoint, tmp_path / "best.pt")
    assert "trained on the synthetic demo data (data/demo, not FMA)" in header and "FMA small" not in header


def test_app_without_gradio_says_how_to_install_it(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets where it is not installed
    assert app.main([f"--checkpoint={tiny / 'run' / 'best.pt'}"]) == 2
    assert "pip install -r requirements-app.txt" in capsys.readouterr().err


def test_a_port_in_use_is_a_clear_error(tiny, capsys):
    pytest.importorskip("gradio", reason="gradio is not installed: pip install -r requirements-app.txt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main([f"--checkpoint={tiny / 'run' / 'best.pt'}", f"--port={port}"]) == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


def test_plot_writes_one_png_per_track(tiny, tmp_path, capsys):
    files = [tiny / "song.mp3", tiny / "other" / "song.mp3", tiny / "broken.mp3"]
    status = ptm.main([f"--checkpoint={tiny / 'run' / 'best.pt'}", f"--plot={tmp_path / 'figures'}",
                       "--num_workers=0", *map(str, files)])
    assert status == 1  # the broken file: an error line, no PNG
    assert "broken.mp3" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["song-2.png", "song.png"]
    long, short = (matplotlib.image.imread(tmp_path / "figures" / name) for name in ("song.png", "song-2.png"))
    assert long.shape[0] > short.shape[0]  # the 12 s track has a timeline panel, the 1.5 s one has not
    with pytest.raises(SystemExit):
        ptm.parse_args([f"--checkpoint={tiny}", "--plot=figures", "--max_windows=2", "song.mp3"])


# ----------------------------------------------------------------------------- in a browser

@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """`python app.py` on a free loopback port; its URL."""
    pytest.importorskip("gradio", reason="gradio is not installed: pip install -r requirements-app.txt")
    work = tmp_path_factory.mktemp("server")
    process, url = page.start_app(tiny / "run" / "best.pt", "--max_mb=5", cwd=work,
                                  env={**clean_env(work), "GRADIO_TEMP_DIR": str(work / "uploads")})
    yield url
    page.stop_app(process)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium driven by its packaged chromedriver."""
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -r requirements-app.txt")
    missing = [str(p) for p in (page.CHROMIUM, page.CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)")
    driver = page.headless_chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


def shown_predictions(section):
    from selenium.webdriver.common.by import By

    names = [e.text for e in section.find_elements(By.CSS_SELECTOR, ".genre-name")]
    return list(zip(names, [float(e.text) for e in section.find_elements(By.CSS_SELECTOR, ".genre-probability")]))


def test_page_shows_the_genres_pre_trained_models_prints(server, browser, tiny, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    long, short = tiny / "song.mp3", tiny / "other" / "song.mp3"
    browser.get(server)
    sections = page.upload(browser, [long, short], sections=2)
    browser.save_screenshot(str(tmp_path / "page.png"))
    header = browser.find_element(By.ID, "checkpoint").text
    assert "cnn1d" in header and "Electronic, Experimental, Folk" in header and "epoch 7" in header
    for section, path in zip(sections, (long, short)):
        expected = cli_predictions(tiny / "run" / "best.pt", path, capsys)
        assert [genre for genre, _ in shown_predictions(section)] == [genre for genre, _ in expected]
        np.testing.assert_allclose([p for _, p in shown_predictions(section)], [p for _, p in expected], atol=5e-4)
        assert section.find_elements(By.TAG_NAME, "audio")  # the player
        assert section.find_elements(By.TAG_NAME, "img")  # spectrogram and timeline
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_broken_upload_gets_a_message_and_the_next_upload_works(server, browser, tiny, tmp_path, capsys):
    browser.get(server)
    [section] = page.upload(browser, [tiny / "broken.mp3"], sections=1)
    assert section.text.startswith("broken.mp3: could not decode it as audio")
    broken, section = page.upload(browser, [tiny / "song.mp3"], sections=2)  # on the same page
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert broken.text.startswith("broken.mp3: could not decode it as audio")
    expected = cli_predictions(tiny / "run" / "best.pt", tiny / "song.mp3", capsys)
    assert [genre for genre, _ in shown_predictions(section)] == [genre for genre, _ in expected]
