"""The web page (app.py) in a real headless browser, its checks without a browser, and --plot's PNGs.

The browser tests start `python app.py` as a real server on a free loopback port and drive it in Debian's
chromium through its packaged driver (/usr/bin/chromedriver; .ci/run installs both), with the helpers
of tools/app_screenshot.py (which draws README's picture). They are skipped,
with the reason, where gradio, selenium or chromium is missing. The checkpoint is a small untrained
CNN1D (96 frames: a 12 s track has 10 windows), so the genres are arbitrary but deterministic; the
server takes 1 MB uploads and one waiting upload; several sessions are tabs of one chromium, whose fake
microphone plays a tone. A second server serves a multi-label checkpoint.

    python -m pytest tests/test_app.py -q
"""
import json
import select
import socket
import sys
import time
import types
import urllib.parse

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import torch

import app
import models_utils
import pre_trained_models as ptm
import utils
from conftest import clean_env, write_mp3
from fma_genres.data import fma
from fma_genres.inference import audio_windows, predict
from fma_genres.reporting import plots
from models import CNN1D
from tools import app_screenshot as page

N_FRAMES = 96
TONE_HZ = 330.0  # what the browser's fake microphone plays


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 96-frame CNN1D checkpoint with a training record and metrics.json, and audio files to give it."""
    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    model = models_utils.init_weights(CNN1D(n_mels=128, n_frames=N_FRAMES, n_classes=8, faithful=False))
    model.standardise.use(-45.0, 18.0)
    checkpoint = models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": N_FRAMES, "n_classes": 8, "faithful": False}, model.state_dict(),
        fma.FMA_SMALL_GENRES, {**utils.PREPROCESSING, "n_frames": N_FRAMES},
        run={"config": {"model": "cnn1d", "subset": "small", "split": "official", "select_metric": "macro_f1"},
             "training": {"epoch": 7, "best_val_score": 0.4321}})
    models_utils.save_checkpoint(checkpoint, root / "run" / "best.pt")
    (root / "run" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.375, "macro_f1": 0.25}))
    write_mp3(root / "song.mp3", 12, seed=1)
    write_mp3(root / "other" / "song.mp3", 1.5, seed=2, pitch=440.0)  # same name, shorter than one window
    write_mp3(root / "intro.mp3", 3, seed=3, pitch=330.0)
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
    return [(p["genre"], p["probability"]) for p in line.get("predictions", line.get("genres"))]


# ----------------------------------------------------------------------------- without a browser

def test_windows_recorded_are_those_the_model_saw_and_average_to_the_prediction(tiny):
    model, checkpoint = predict.load_predictor(tiny / "run" / "best.pt")
    hop = 40  # not a divisor of the window: each window adds its last 40 columns
    recorder = plots.WindowRecorder(hop)
    [(_, probabilities, n_windows, error)] = predict.predict(model, checkpoint, [tiny / "song.mp3"],
                                                                predict.Reading(hop), on_window=recorder)
    spectrogram, window_probabilities = recorder.pop(0)
    windows = list(audio_windows.track_windows(tiny / "song.mp3", checkpoint["preprocessing"], hop))
    assert error is None and n_windows == len(windows) == len(window_probabilities) > 1
    assert spectrogram.shape == (128, (n_windows - 1) * hop + N_FRAMES) and not np.isnan(spectrogram).any()
    for k, window in enumerate(windows):
        np.testing.assert_array_equal(spectrogram[:, k * hop + N_FRAMES - hop:k * hop + N_FRAMES], window[:, -hop:])
    np.testing.assert_allclose(window_probabilities.mean(axis=0), probabilities, rtol=1e-12)
    assert recorder.pop(0) is None  # popped: nothing kept


def test_bad_files_get_a_message_naming_the_fix_and_good_ones_are_still_predicted(tiny):
    model, checkpoint = predict.load_predictor(tiny / "run" / "best.pt")
    names = ["broken.mp3", "empty.mp3", "truncated.mp3", "song.mp3"]
    results = app.analyse([tiny / name for name in names], model, checkpoint, top_k=2)
    errors = {result["name"]: result["error"] for result in results}
    assert "could not decode it as audio" in errors["broken.mp3"]
    assert "empty file" in errors["empty.mp3"]
    assert "truncated" in errors["truncated.mp3"]
    assert errors["song.mp3"] is None and len(results[3]["predictions"]) == 2 and results[3]["figure"] is not None


def test_header_names_model_genres_and_training(tiny):
    _, checkpoint = predict.load_predictor(tiny / "run" / "best.pt")
    header = app.checkpoint_summary(checkpoint, tiny / "run" / "best.pt")
    for text in ("cnn1d", "corrected", ", ".join(fma.FMA_SMALL_GENRES), "FMA small", "epoch 7",
                 "best validation macro_f1 0.432", "test accuracy 0.375, macro F1 0.250"):
        assert text in header


def test_a_demo_checkpoint_is_described_as_trained_on_the_demo_data(tiny, tmp_path):
    _, checkpoint = predict.load_predictor(tiny / "run" / "best.pt")
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

def serve(checkpoint, work, *options):
    """`python app.py` on a free loopback port, its uploads in work/uploads: (process, page facts)."""
    pytest.importorskip("gradio", reason="gradio is not installed: pip install -r requirements-app.txt")
    uploads = work / "uploads"
    process, url = page.start_app(checkpoint, *options, cwd=work,
                                  env={**clean_env(work), "GRADIO_TEMP_DIR": str(uploads)})
    startup = []  # what it printed up to the line that gives its address (Gradio's launch lines come first)
    while not (startup and startup[-1].startswith("The page is at")) and process.poll() is None:
        startup.append(process.stdout.readline())
    return process, types.SimpleNamespace(url=url, uploads=uploads, startup="".join(startup))


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """The page of the tiny checkpoint: 1 MB uploads, one upload waiting at most."""
    process, served = serve(tiny / "run" / "best.pt", tmp_path_factory.mktemp("server"), "--max_mb=1",
                            "--max_queue=1")
    yield served
    page.stop_app(process)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium driven by its packaged chromedriver; its microphone plays a 330 Hz tone."""
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -r requirements-app.txt")
    missing = [str(p) for p in (page.CHROMIUM, page.CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)")
    folder = tmp_path_factory.mktemp("chromium")
    t = np.arange(3 * 22050) / 22050
    sf.write(folder / "tone.wav", (0.4 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32), 22050, subtype="PCM_16")
    driver = page.headless_chromium(folder / "profile", microphone=folder / "tone.wav")
    yield driver
    driver.quit()


def shown_predictions(section):
    from selenium.webdriver.common.by import By

    names = [e.text for e in section.find_elements(By.CSS_SELECTOR, ".genre-name")]
    return list(zip(names, [float(e.text) for e in section.find_elements(By.CSS_SELECTOR, ".genre-probability")]))


def assert_shows(section, expected):
    """The section's genres and probabilities are those pre_trained_models.py printed (3 decimals on the page)."""
    assert [genre for genre, _ in shown_predictions(section)] == [genre for genre, _ in expected]
    np.testing.assert_allclose([p for _, p in shown_predictions(section)], [p for _, p in expected], atol=5e-4)


def stored(uploads, name):
    """The server's copies of an uploaded file called ``name``."""
    return sorted(uploads.rglob(name))


def until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not true after {seconds} s"
        time.sleep(0.1)


def toasts(driver, seconds=30):
    """The text of the page's pop-up messages, once one shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: " ".join(
        e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")).strip())


def test_page_shows_the_genres_pre_trained_models_prints(server, browser, tiny, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    long, short = tiny / "song.mp3", tiny / "other" / "song.mp3"
    browser.get(server.url)
    sections = page.upload(browser, [long, short], sections=2)
    browser.save_screenshot(str(tmp_path / "page.png"))
    header = browser.find_element(By.ID, "checkpoint").text
    assert "cnn1d" in header and "Electronic, Experimental, Folk" in header and "epoch 7" in header
    for section, path in zip(sections, (long, short)):
        assert_shows(section, cli_predictions(tiny / "run" / "best.pt", path, capsys))
        assert section.find_elements(By.TAG_NAME, "audio")  # the player
        assert section.find_elements(By.TAG_NAME, "img")  # spectrogram and timeline
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_next_upload_predicts_only_its_new_files_below_the_earlier_results(server, browser, tiny, capsys):
    browser.get(server.url)
    [section] = page.upload(browser, [tiny / "intro.mp3"], sections=1)
    expected = cli_predictions(tiny / "run" / "best.pt", tiny / "intro.mp3", capsys)
    assert_shows(section, expected)
    [copy] = stored(server.uploads, "intro.mp3")
    copy.unlink()  # predicted again, it would now be an error
    intro, broken = page.upload(browser, [tiny / "broken.mp3"], sections=2)  # on the same page
    assert_shows(intro, expected)
    assert broken.text.startswith("broken.mp3: could not decode it as audio")


def post_upload(url, name, content, chunk=64 * 1024):
    """POST a file to the page's upload route as a browser would, in chunks, reading the answer as soon as
    there is one: (HTTP status, body), or (None, "") when the server cut the connection mid-upload."""
    host, port = urllib.parse.urlsplit(url)[1].split(":")
    boundary = "----fma-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: audio/mpeg\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        try:
            connection.sendall(head)
            for start in range(0, len(body), chunk):
                if select.select([connection], [], [], 0.02)[0]:
                    break  # the server answered before the whole file arrived
                connection.sendall(body[start:start + chunk])
            answer = b""
            while data := connection.recv(65536):
                answer += data
        except (ConnectionResetError, BrokenPipeError):
            return None, ""
    status, _, rest = answer.partition(b"\r\n")
    return int(status.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(errors="replace")


def test_the_server_refuses_an_upload_over_max_mb_while_it_arrives(server):
    def stored_bytes():
        return sum(p.stat().st_size for p in server.uploads.rglob("*") if p.is_file())

    status, answer = post_upload(server.url, "small.mp3", b"\1" * 5_000)  # the route stores what it is given
    assert status == 200 and "small.mp3" in answer and stored(server.uploads, "small.mp3")
    before = stored_bytes()
    status, answer = post_upload(server.url, "big.mp3", b"\1" * 5_000_000)
    assert (status, answer) in ((413, "File size exceeded maximum allowed size of 1000000 bytes."), (None, ""))
    assert stored_bytes() - before <= 1_000_000 and not stored(server.uploads, "big.mp3")


def test_the_page_says_a_file_is_over_max_mb(server, browser, tiny, tmp_path):
    from selenium.webdriver.common.by import By

    big = tmp_path / "big.mp3"
    big.write_bytes((tiny / "song.mp3").read_bytes() * 6)  # 1.3 MB
    browser.get(server.url)
    page.send_files(browser, [big])
    assert "up to 1 MB each" in browser.find_element(By.ID, "audio_files").text
    message = toasts(browser)
    assert "exceed the maximum allowed size" in message and "big.mp3" in message
    assert not stored(server.uploads, "big.mp3")


def test_the_server_prints_its_address_and_no_public_link(server):
    assert server.startup.strip().endswith(f"The page is at {server.url.rstrip('/')} (this computer only). Ctrl-C stops it.")
    assert "share" not in server.startup and "public" not in server.startup


def test_a_microphone_recording_is_predicted_like_the_file_it_made(server, browser, tiny, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    wait = WebDriverWait(browser, 60)
    record = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#microphone button.record-button"))
    record.click()  # chromium's fake microphone plays the browser fixture's tone
    time.sleep(2)
    browser.find_element(By.CSS_SELECTOR, "#microphone button.stop-button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".genres, .track-error"))
    [section] = browser.find_elements(By.CSS_SELECTOR, ".track")
    [recording] = stored(server.uploads, "audio.wav")  # what the browser recorded and sent
    audio, rate = sf.read(recording, always_2d=True)
    spectrum = np.abs(np.fft.rfft(audio.mean(axis=1)))
    assert abs(np.argmax(spectrum) * rate / len(audio) - TONE_HZ) < 5 and len(audio) > rate  # the tone, > 1 s
    assert section.text.startswith("microphone recording")
    assert_shows(section, cli_predictions(tiny / "run" / "best.pt", recording, capsys))


def file_input_says(driver, text, seconds=60):
    """Wait until the file input's progress shows ``text`` ("processing", "queue: 1/1")."""
    from selenium.webdriver.common.by import By

    until(lambda: text in driver.find_element(By.ID, "audio_files").text, seconds)


def test_three_sessions_at_once_one_too_many_is_told_busy_and_a_closed_session_deletes_its_uploads(server, browser,
                                                                                                  tiny, tmp_path):
    # A's upload: seconds of work (30 s tracks), so that B's and C's arrive while it is predicted
    write_mp3(tmp_path / "long.mp3", 30, seed=4)
    many = [tmp_path / f"copy_{k}.mp3" for k in range(6)]
    for path in many:
        path.write_bytes((tmp_path / "long.mp3").read_bytes())
    uploads = {"a": many, "b": [tiny / "other" / "song.mp3"], "c": [tiny / "intro.mp3"]}
    # chromium opens at most 6 connections to one server, and each session holds one or two (heartbeat,
    # events): end the earlier tests' session first, or C's upload would wait for a free one
    browser.get("about:blank")
    handles = {}
    for name in uploads:
        browser.switch_to.new_window("tab")  # a session of its own
        browser.get(server.url)
        handles[name] = browser.current_window_handle
    # A's upload is predicted, B's waits (--max_queue=1), C's is one too many
    for name, state in (("a", "processing"), ("b", "queue: 1/1"), ("c", None)):
        browser.switch_to.window(handles[name])
        page.send_files(browser, uploads[name])
        if state:
            file_input_says(browser, state)
    assert "This application is currently busy. Please try again." in toasts(browser)
    for name, paths in uploads.items():  # A and B get their own files' results, not each other's
        browser.switch_to.window(handles[name])
        expected = [p.name for p in paths] if name != "c" else []
        assert [s.text.split("\n")[0] for s in page.wait_sections(browser, len(expected), 120)] == expected
    browser.switch_to.window(handles["c"])  # trying again works, and predicts the refused file too
    *shown, broken = page.upload(browser, [tiny / "broken.mp3"], sections=2)
    assert [s.text.split("\n")[0] for s in shown] == ["intro.mp3"] and broken.text.startswith("broken.mp3")
    browser.switch_to.window(handles["a"])
    browser.close()  # A's session ends: its files go, the others' stay
    until(lambda: not any(stored(server.uploads, path.name) for path in many))
    assert stored(server.uploads, "intro.mp3") and stored(server.uploads, "broken.mp3")
    for name in "bc":
        browser.switch_to.window(handles[name])
        browser.close()
    browser.switch_to.window(browser.window_handles[0])


def test_a_multilabel_checkpoint_shows_the_genres_above_their_thresholds(browser, tmp_path, tiny, capsys):
    ids, tree = [1, 2, 3, 4, 5], {"id": [1, 2, 3, 4, 5], "parent": [0, 1, 2, 1, 0],
                                  "title": ["Rock", "Punk", "Hardcore", "Indie", "Jazz"]}
    torch.manual_seed(0)
    model = models_utils.init_weights(CNN1D(n_mels=128, n_frames=N_FRAMES, n_classes=len(ids), faithful=False))
    model.standardise.use(-45.0, 18.0)
    # thresholds 0 and above 1: Rock > Punk, Rock and Jazz are shown whatever the (untrained) model says
    checkpoint = models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": N_FRAMES, "n_classes": len(ids), "faithful": False}, model.state_dict(),
        tree["title"], {**utils.PREPROCESSING, "n_frames": N_FRAMES}, genres={"ids": ids, "tree": tree, "thresholds": [0.0, 0.0, 1.01, 1.01, 0.0]})
    models_utils.save_checkpoint(checkpoint, tmp_path / "run" / "best.pt")
    process, served = serve(tmp_path / "run" / "best.pt", tmp_path)
    try:
        browser.get(served.url)
        [section] = page.upload(browser, [tiny / "song.mp3"], sections=1)
        expected = cli_predictions(tmp_path / "run" / "best.pt", tiny / "song.mp3", capsys)
        assert expected[0][0] == "Rock > Punk" and {genre for genre, _ in expected[1:]} == {"Rock", "Jazz"}
        assert_shows(section, expected)
    finally:
        page.stop_app(process)
