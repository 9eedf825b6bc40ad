"""utils.py audio -> mel dB -> float16 cache: agreement with librosa, broken-audio report, parallel
build, reuse, rebuild on new parameters, resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest

import utils
from conftest import write_mp3
from utils import (PREPROCESSING, AudioError, DataError, build_cache, clip_spectrogram, fix_width,
                   load_audio, load_metadata, mel_spectrogram_db)

SMALL = dict(PREPROCESSING, n_frames=100)  # the 2.5 s fixture clips have 107 frames


def librosa_db(path):
    """The reference: librosa's own decode, mel-spectrogram and power_to_db (SPEC section 3)."""
    y, sr = librosa.load(path, sr=22050)
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr), ref=1.0, amin=1e-10, top_db=80)


def assert_float16_close(stored, reference):
    """stored (float16) is reference rounded to float16: within half a float16 step (0.03 dB at
    64-128 dB) plus 1e-3 dB of torchaudio-vs-librosa difference."""
    assert stored.dtype == np.float16 and stored.shape == reference.shape
    step = np.spacing(np.abs(reference).astype(np.float16)).astype(np.float64)
    assert np.all(np.abs(stored.astype(np.float64) - reference) <= step / 2 + 1e-3)


def frame_of(paths, ids=None):
    ids = ids or range(1, len(paths) + 1)
    return pd.DataFrame({"path": [str(p) for p in paths]}, index=pd.Index(list(ids), name="track_id"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Real MP3s at full FMA length, plus the kinds of broken files FMA small contains."""
    root = tmp_path_factory.mktemp("clips")
    full = write_mp3(root / "full.mp3", 30.0, seed=1)
    data = full.read_bytes()
    (root / "truncated.mp3").write_bytes(data[:len(data) // 3])
    (root / "empty.mp3").write_bytes(b"")
    (root / "text.mp3").write_text("not audio at all\n" * 200)
    return {"full": full, "slightly_short": write_mp3(root / "slightly_short.mp3", 29.5, seed=2),
            "short": write_mp3(root / "short.mp3", 3.0, seed=3), "truncated": root / "truncated.mp3",
            "empty": root / "empty.mp3", "text": root / "text.mp3", "missing": root / "missing.mp3"}


def test_decode_and_mel_match_librosa(clips):
    audio = load_audio(clips["full"])
    expected, _ = librosa.load(clips["full"], sr=22050)
    assert audio.dtype == np.float32 and np.array_equal(audio, expected)
    mel = mel_spectrogram_db(audio)
    reference = librosa_db(clips["full"])
    assert mel.dtype == np.float32 and mel.shape == reference.shape == (128, 1292)
    assert np.abs(mel - reference).max() < 1e-3
    assert mel.max() - mel.min() <= 80.0 + 1e-3  # top_db floor per clip


def test_fix_width_crops_or_pads_with_minimum():
    mel = np.arange(12, dtype=np.float32).reshape(2, 6) - 50
    cropped, padded = fix_width(mel, 4)
    assert padded == 0 and np.array_equal(cropped, mel[:, :4])
    wide, padded = fix_width(mel, 9)
    assert padded == 3 and wide.shape == (2, 9) and np.all(wide[:, 6:] == -50)


@pytest.mark.parametrize("name, message", [("empty", "empty file"), ("text", "cannot decode"),
                                           ("missing", "not found")])
def test_load_audio_errors_name_the_file(clips, name, message):
    with pytest.raises(AudioError, match=message) as err:
        load_audio(clips[name])
    assert str(clips[name]) in str(err.value)


def test_full_width_cache_matches_librosa_and_reports_broken(clips, tmp_path, capsys):
    names = list(clips)
    cache = build_cache(frame_of([clips[n] for n in names]), tmp_path, "small", num_workers=2,
                        progress=False)
    ids = {name: i for i, name in enumerate(names, start=1)}
    assert cache.track_ids == [ids["full"], ids["slightly_short"]]
    assert cache.summary() == (f"Mel cache {cache.path}: 1 ok, 1 padded, 4 broken, 1 missing "
                               f"(report: {cache.path / 'report.csv'})")
    assert cache.summary() in capsys.readouterr().out
    assert_float16_close(cache[ids["full"]], librosa_db(clips["full"])[:, :1291])
    reference = librosa_db(clips["slightly_short"])
    width = reference.shape[1]
    assert 1200 < width < 1291
    stored = cache[ids["slightly_short"]]
    assert_float16_close(stored[:, :width], reference)
    assert_float16_close(stored[:, width:], np.full((128, 1291 - width), reference.min()))
    report = pd.read_csv(cache.path / "report.csv").set_index("track_id")
    assert report.loc[ids["slightly_short"], "status"] == "padded"
    assert f"padded {1291 - width} frames" in report.loc[ids["slightly_short"], "reason"]
    expected = {"truncated": "far shorter", "short": "far shorter", "empty": "empty file",
                "text": "cannot decode", "missing": "not found"}
    for name, reason in expected.items():
        assert reason in report.loc[ids[name], "reason"]
        assert report.loc[ids[name], "path"] == str(clips[name])
        assert report.loc[ids[name], "status"] == ("missing" if name == "missing" else "broken")
        with pytest.raises(KeyError):
            cache[ids[name]]


def test_parallel_build_equals_serial_and_reference(fma_small, tmp_path):
    tracks, _ = load_metadata(fma_small, "small")
    serial = build_cache(tracks, tmp_path / "one", "small", SMALL, num_workers=1, progress=False)
    parallel = build_cache(tracks, tmp_path / "two", "small", SMALL, num_workers=2, progress=False)
    assert serial.computed == parallel.computed == 32 and serial.path.name == parallel.path.name
    assert np.array_equal(np.load(serial.path / "mels.npy"), np.load(parallel.path / "mels.npy"))
    for track_id in tracks.index[::5]:
        assert parallel[track_id].shape == (128, 100)
        assert_float16_close(parallel[track_id], librosa_db(tracks.loc[track_id, "path"])[:, :100])


def test_reuse_and_new_folder_when_parameters_change(fma_small, tmp_path):
    tracks, _ = load_metadata(fma_small, "small")
    first = build_cache(tracks, tmp_path, "small", SMALL, progress=False)
    stamp = os.stat(first.path / "mels.npy").st_mtime_ns
    again = build_cache(tracks, tmp_path, "small", dict(SMALL, top_db=80), progress=False)
    assert again.path == first.path and again.computed == 0
    assert os.stat(first.path / "mels.npy").st_mtime_ns == stamp
    other = build_cache(tracks, tmp_path, "small", dict(SMALL, top_db=40.0), progress=False)
    assert other.path != first.path and other.computed == 32
    assert json.loads((other.path / "params.json").read_text())["preprocessing"]["top_db"] == 40.0
    some = tracks.index[0]
    assert other[some].min() > first[some].min() and other[some].max() == first[some].max()
    narrower = build_cache(tracks.iloc[:4], tmp_path, "small", dict(SMALL, n_frames=90), progress=False)
    assert narrower.path not in (first.path, other.path) and narrower[some].shape == (128, 90)


def test_clear_errors_for_missing_audio_and_parameters(fma_small, tmp_path):
    with pytest.raises(DataError, match="download_data.sh"):
        build_cache(frame_of([tmp_path / "a.mp3", tmp_path / "b.mp3"]), tmp_path, "small", SMALL)
    with pytest.raises(ValueError, match="top_db"):
        build_cache(frame_of([tmp_path / "a.mp3"]), tmp_path, "small", {"sample_rate": 22050})


KILLED_BUILD = """
import json, sys
import pandas as pd
import utils
utils.CHUNK_ROWS, utils.SAVE_EVERY_ROWS = 2, 4  # small steps, so a kill lands mid-build
paths = json.loads(sys.argv[1])
tracks = pd.DataFrame({"path": paths}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))
utils.build_cache(tracks, sys.argv[2], "small", dict(utils.PREPROCESSING, n_frames=100), num_workers=1)
"""


def test_resume_after_kill_9(fma_small, tmp_path):
    tracks, _ = load_metadata(fma_small, "small")
    paths = [tracks["path"].iloc[i % 32] for i in range(120)]  # 120 rows, reusing the 32 clips
    reference = {p: clip_spectrogram(p, SMALL)[0] for p in set(paths)}
    build = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, json.dumps(paths), str(tmp_path)],
                             cwd=Path(utils.__file__).parent, stderr=subprocess.DEVNULL)
    done, deadline = 0, time.monotonic() + 120
    while done < 12 and build.poll() is None and time.monotonic() < deadline:
        for status_file in tmp_path.glob("small-*/status.npy"):
            done = int(np.count_nonzero(np.load(status_file)))
        time.sleep(0.01)
    os.kill(build.pid, signal.SIGKILL)
    build.wait()
    folder = next(tmp_path.glob("small-*"))
    status = np.load(folder / "status.npy")
    done = int(np.count_nonzero(status))
    assert 0 < done < 120, "the kill must land halfway through the build"
    mels = np.load(folder / "mels.npy", mmap_mode="r")
    for row in np.flatnonzero(status):  # every row marked done was fully written before the kill
        assert_float16_close(mels[row], reference[paths[row]])
    cache = build_cache(frame_of(paths), tmp_path, "small", SMALL, num_workers=2, progress=False)
    assert cache.path == folder and cache.computed == 120 - done and len(cache.track_ids) == 120
    for track_id, path in enumerate(paths, start=1):
        assert_float16_close(cache[track_id], reference[path])
