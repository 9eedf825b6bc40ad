"""Refresh README's picture of the web page: start app.py, upload audio files in headless chromium, and
save a screenshot of the whole page. Also the browser helpers of tests/test_app.py (one place for both).

Needs requirements-app.txt and Debian's chromium + chromium-driver (apt-get install chromium
chromium-driver); run from the project root:

    python tools/app_screenshot.py --checkpoint=runs/demo_crnn/latest/best.pt --out=docs/app.png song.mp3 clip.mp3
"""
import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fma_genres.runtime import atomic  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# No connections but to the page: this machine's network may be closed, and Chromium's own would be refused.
# No throttling of tabs in the background: the tests run several sessions of the page at once, one per tab.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                  "--disable-backgrounding-occluded-windows")
FILE_INPUT = "#audio_files input[type=file]"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(checkpoint, *options, env=None, cwd=None, seconds=120):
    """(process, URL) of `python app.py` on a free loopback port, once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), f"--checkpoint={checkpoint}", f"--port={port}",
                                *options], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"app.py ended with status {process.returncode}: {process.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"app.py did not answer at {url} within {seconds} s")
            time.sleep(0.2)


def stop_app(process):
    """Stop app.py; returns what it printed."""
    process.terminate()
    output, _ = process.communicate(timeout=30)
    return output


def headless_chromium(user_data_dir, width=1200, height=1600, microphone=None):
    """A selenium driver of Debian's chromium through its packaged chromedriver (never a downloaded browser).
    microphone: a WAV file that chromium's fake capture device plays as the microphone (permission granted)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    fake_microphone = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={Path(microphone).resolve()}") if microphone else ()
    for flag in (*CHROMIUM_FLAGS, *fake_microphone, f"--window-size={width},{height}", f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)


def send_files(driver, paths, seconds=60):
    """Give `paths` to the page's file input (the page keeps earlier uploads, each with its section)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(lambda d: d.find_elements(By.CSS_SELECTOR, FILE_INPUT))
    driver.find_element(By.CSS_SELECTOR, FILE_INPUT).send_keys("\n".join(str(Path(p).resolve()) for p in paths))


def wait_sections(driver, sections, seconds=60):
    """The page's result sections, once there are `sections` of them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".genres, .track-error")) == sections)
    return driver.find_elements(By.CSS_SELECTOR, ".track")


def upload(driver, paths, sections, seconds=60):
    """Upload `paths` and wait for `sections` result sections in all; returns them."""
    send_files(driver, paths, seconds)
    return wait_sections(driver, sections, seconds)


def save_small_png(png, path):
    """The screenshot in 256 colours (a third of the bytes; README's picture lives in git), atomically."""
    from PIL import Image  # matplotlib's dependency

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(path, lambda f: f.write(buffer.getvalue()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="audio files to upload")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", help="model of a bare state_dict (the original project's weights)")
    parser.add_argument("--out", default="docs/app.png", help="PNG to write")
    args = parser.parse_args()
    options = [f"--model={args.model}"] if args.model else []
    process, url = start_app(args.checkpoint, *options,
                             env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        with tempfile.TemporaryDirectory() as profile:
            driver = headless_chromium(profile)
            try:
                driver.get(url)
                upload(driver, args.files, len(args.files))
                time.sleep(1)  # the plots' images finish loading
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(1200, height + 200)  # the whole page in one screenshot
                time.sleep(1)
                save_small_png(driver.get_screenshot_as_png(), Path(args.out))
            finally:
                driver.quit()
    finally:
        stop_app(process)
    print(f"{args.out}: the page after uploading {len(args.files)} files")


if __name__ == "__main__":
    main()
