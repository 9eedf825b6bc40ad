"""Shared fixtures: tiny datasets in FMA's own format (tracks.csv with its two header rows, genres.csv,
real MP3 clips under fma_<subset>/<tid[:3]>/<tid>.mp3)."""
import os

# Before anything loads torch (and its OpenMP runtime, which reads this once): idle OpenMP threads sleep
# instead of spinning. The suite runs two xdist workers plus their subprocesses on two cores, where spinning
# threads burn the cores the other processes wait for; measured on tests/training + test_main_run +
# test_preemption, 2 workers: 217 s -> 180 s of CPU, 123 s -> 105 s wall. Numbers are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import signal
import time

import numpy as np
import pandas as pd
import pytest

from fma_genres.runtime.locks import alive

# FMA's real ids and titles of its 16 top-level genres, the 8 of fma_small first.
GENRE_IDS = {"Electronic": 15, "Experimental": 38, "Folk": 17, "Hip-Hop": 21, "Instrumental": 1235,
             "International": 2, "Pop": 10, "Rock": 12, "Jazz": 4, "Blues": 3, "Classical": 5, "Country": 9,
             "Easy Listening": 13, "Old-Time / Historic": 8, "Soul-RnB": 14, "Spoken": 20}
SMALL_GENRES = sorted(list(GENRE_IDS)[:8])

# The full suite only (pytest.ini's `slow` marker): modules of end-to-end runs, training for epochs,
# subprocesses, servers, torchrun, a browser, prediction and export, and the demo data's synthesis. The fast
# tier, `python -m pytest -m "not slow"`, is the rest: config, models, tasks, data, cache and the training
# step (355 tests, 35 s on a quiet 2-core machine). A slow test in a fast module carries @pytest.mark.slow itself.
SLOW_MODULES = {
    "test_allocator.py", "test_app.py", "test_audio_windows.py", "test_benchmarks.py", "test_demo_data.py",
    "test_distributed.py", "test_download.py", "test_embeddings_export.py", "test_encoders.py", "test_experiments.py", "test_finetune.py",
    "test_main_run.py", "test_predict.py", "test_preemption.py", "test_quickstart.py", "test_signals.py",
    "test_studies.py", "test_unbalanced.py", "test_wandb.py",
}


# The full suite's longest modules (seconds of one worker, `--durations=0` on a quiet 2-core machine), run
# first: pytest.ini gives xdist whole files (--dist=loadfile: a module's fixtures are built once, by one
# worker) in collection order, so the two workers start with the longest and end together on short ones.
LONGEST_MODULES = ["test_benchmarks.py", "test_experiments.py", "test_docs_commands.py", "test_studies.py",
                   "test_downstream.py", "test_distributed.py", "test_main_run.py", "test_unbalanced.py",
                   "test_models_utils.py", "test_app.py", "test_predict.py", "test_multilabel.py", "test_cache.py"]


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    rank = {name: k for k, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order stays


def write_mp3(path, seconds, seed=0, pitch=220.0, rate=44100):
    """A stereo 44.1 kHz MP3 of a noisy chord (distinct per seed), written by libsndfile."""
    import soundfile as sf  # here: the GPU runners, which run tests/test_cuda.py, have no soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    left = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.1 * np.sin(2 * np.pi * 3.01 * pitch * t)
    right = 0.3 * np.sin(2 * np.pi * 1.5 * pitch * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
    audio = np.stack([left, right], axis=1) + 0.02 * rng.standard_normal((t.size, 2))
    sf.write(path, audio.astype(np.float32), rate, format="MP3")
    return path


def write_metadata(root, rows):
    """tracks.csv and genres.csv as FMA writes them. rows: dicts with track_id, subset, split, genre
    (None for no top genre), artist_id."""
    meta = root / "fma_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    columns = pd.MultiIndex.from_tuples([
        ("album", "id"), ("artist", "id"), ("artist", "name"), ("set", "split"), ("set", "subset"),
        ("track", "duration"), ("track", "genre_top"), ("track", "genres"), ("track", "genres_all"),
        ("track", "title")])
    data = [[r["track_id"] % 97, r["artist_id"], f"Artist {r['artist_id']}", r["split"], r["subset"],
             180 + r["track_id"] % 60, r["genre"],
             f"[{GENRE_IDS.get(r['genre'], 76)}]", f"[{GENRE_IDS.get(r['genre'], 76)}, 76]",
             f"Track {r['track_id']}"] for r in rows]
    tracks = pd.DataFrame(data, columns=columns,
                          index=pd.Index([r["track_id"] for r in rows], name="track_id"))
    tracks.to_csv(meta / "tracks.csv")
    genres = pd.DataFrame({"#tracks": [1000] * len(GENRE_IDS), "parent": [0] * len(GENRE_IDS),
                           "title": list(GENRE_IDS), "top_level": list(GENRE_IDS.values())},
                          index=pd.Index(list(GENRE_IDS.values()), name="genre_id"))
    genres.loc[76] = [500, 38, "Experimental Pop", 38]
    genres.to_csv(meta / "genres.csv")


def tid_path(root, subset, track_id):
    tid = f"{track_id:06d}"
    return root / f"fma_{subset}" / tid[:3] / f"{tid}.mp3"


@pytest.fixture(scope="session")
def fma_small(tmp_path_factory):
    """An FMA-format small subset: 8 genres x 4 tracks (2 training, 1 validation, 1 test; one artist
    per split and genre), 2.5 s clips (107 frames: use n_frames <= 107). The metadata also lists
    2 medium tracks and one large track without a top genre, whose audio is not written."""
    root = tmp_path_factory.mktemp("fma")
    rows = []
    for g, genre in enumerate(SMALL_GENRES):
        for k, split in enumerate(["training", "training", "validation", "test"]):
            track_id = 1000 * (g + 1) + k + 2
            rows.append(dict(track_id=track_id, subset="small", split=split, genre=genre,
                             artist_id=10 * g + (0 if k < 2 else k)))
            write_mp3(tid_path(root, "small", track_id), 2.5, seed=track_id, pitch=110.0 * (g + 1))
    rows += [dict(track_id=90001, subset="medium", split="training", genre="Jazz", artist_id=901),
             dict(track_id=90002, subset="medium", split="test", genre="Blues", artist_id=902),
             dict(track_id=90003, subset="large", split="training", genre=None, artist_id=903)]
    write_metadata(root, rows)
    return root


def clean_env(tmp_path):
    """For a child process: no W&B key, mode or network settings inherited from the machine, W&B files
    under tmp_path (HOME too, so no ~/.netrc key is found)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_DIR=str(tmp_path / "wandb_dir"), PYTHONUNBUFFERED="1")
    (tmp_path / "home").mkdir()
    (tmp_path / "wandb_dir").mkdir()
    return env


def default_sigint():
    """preexec_fn for a child process that must receive SIGINT. A parent that ignores SIGINT (nohup,
    `cmd &` in a script, some job runners) passes that on to its children, and Python then installs no
    KeyboardInterrupt handler: the child would rightly ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def keyboard_interrupt_handler():
    """Python's own SIGINT handler for the test's duration (pytest itself may run with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def wait_for(path, process, seconds=300):
    """Wait until ``path`` exists while ``process`` (main.py or torchrun) still runs; fail clearly otherwise."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"{process.args[:2]} ended before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.05)



def ends_within(pid, seconds):
    """Whether process ``pid`` ends (or is a zombie) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_mid_build(build, folder_glob, rows):
    """SIGKILL the cache-building process ``build`` once ``rows`` rows of its folder, ``folder_glob`` = (root,
    pattern) such as (tmp_path, "small-*"), are marked done; returns (the folder, its status array)."""
    root, pattern = folder_glob
    done, deadline = 0, time.monotonic() + 120
    while done < rows and build.poll() is None and time.monotonic() < deadline:
        for status_file in root.glob(f"{pattern}/status.npy"):
            done = int(np.count_nonzero(np.load(status_file)))
        time.sleep(0.01)
    os.kill(build.pid, signal.SIGKILL)
    build.wait()
    folder = next(root.glob(pattern))
    return folder, np.load(folder / "status.npy")
