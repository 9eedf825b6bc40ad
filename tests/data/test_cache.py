"""cache.py (with utils.py's audio -> mel dB): agreement with librosa, broken-audio report, parallel
build, reuse, rebuild on new parameters, resume after kill -9, disk space (before and during a
build), reuse across track lists and a previous version's folders, concurrent builders and shards."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest

from conftest import kill_mid_build, write_mp3
from fma_genres.data import cache as mel_cache
from fma_genres.data.cache import build_cache
from fma_genres.data.fma import load_metadata
from fma_genres.inference.audio_windows import track_windows
from fma_genres.runtime.errors import AudioError, DataError
from utils import PREPROCESSING, clip_spectrogram, fix_width, load_audio, mel_spectrogram_db

SMALL = dict(PREPROCESSING, n_frames=100)  # the 2.5 s fixture clips have 107 frames


def librosa_db(path):
    """The reference: librosa's own decode, mel-spectrogram and power_to_db (docs/faithfulness.md: Preprocessing)."""
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


@pytest.mark.parametrize("name, message", [("empty", "empty file"), ("text", "could not decode it as audio"),
                                           ("missing", "not found")])
def test_load_audio_errors_name_the_file(clips, name, message):
    with pytest.raises(AudioError, match=message) as err:
        load_audio(clips[name])
    assert str(clips[name]) in str(err.value)


@pytest.mark.parametrize("decode", [load_audio, lambda path: next(track_windows(path, PREPROCESSING, hop=645))],
                         ids=["training", "prediction"])
def test_a_small_non_audio_mp3_is_described_by_what_is_wrong(tmp_path, decode):
    """FMA's broken 108925.mp3 (1,371 bytes, no audio frames): libsndfile calls it a file that does not exist."""
    path = tmp_path / "108925.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1371, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as err:
        decode(path)
    message = str(err.value)
    assert message.startswith(f"{path}: could not decode it as audio: no audio frames could be read from its "
                              f"1,371 bytes")
    assert message.index("1,371 bytes") < message.index("libsndfile: File does not exist")  # only the detail
    assert "Replace it with a good copy" in message


def test_full_width_cache_matches_librosa_and_reports_broken(clips, tmp_path, capsys):
    names = list(clips)
    cache = build_cache(frame_of([clips[n] for n in names]), tmp_path, "small", workers=2,
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
                "text": "could not decode it as audio", "missing": "not found"}
    for name, reason in expected.items():
        assert reason in report.loc[ids[name], "reason"]
        assert report.loc[ids[name], "path"] == str(clips[name])
        assert report.loc[ids[name], "status"] == ("missing" if name == "missing" else "broken")
        with pytest.raises(KeyError):
            cache[ids[name]]


def test_parallel_build_equals_serial_and_reference(fma_small, tmp_path):
    tracks, _ = load_metadata(fma_small, "small")
    serial = build_cache(tracks, tmp_path / "one", "small", SMALL, workers=1, progress=False)
    parallel = build_cache(tracks, tmp_path / "two", "small", SMALL, workers=2, progress=False)
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
from fma_genres.data import cache
cache.CHUNK_ROWS, cache.SAVE_EVERY_ROWS = 2, 4  # small steps, so a kill lands mid-build
paths = json.loads(sys.argv[1])
tracks = pd.DataFrame({"path": paths}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))
cache.build_cache(tracks, sys.argv[2], "small", dict(utils.PREPROCESSING, n_frames=100), workers=1)
"""


@pytest.mark.slow  # a builder process killed with -9, then a second build
def test_resume_after_kill_9(fma_small, tmp_path):
    tracks, _ = load_metadata(fma_small, "small")
    paths = [tracks["path"].iloc[i % 32] for i in range(120)]  # 120 rows, reusing the 32 clips
    reference = {p: clip_spectrogram(p, SMALL)[0] for p in set(paths)}
    build = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, json.dumps(paths), str(tmp_path)],
                             cwd=Path(mel_cache.__file__).resolve().parents[2], stderr=subprocess.DEVNULL)
    folder, status = kill_mid_build(build, (tmp_path, "small-*"), 12)
    done = int(np.count_nonzero(status))
    assert 0 < done < 120, "the kill must land halfway through the build"
    mels = np.load(folder / "mels.npy", mmap_mode="r")
    for row in np.flatnonzero(status):  # every row marked done was fully written before the kill
        assert_float16_close(mels[row], reference[paths[row]])
    cache = build_cache(frame_of(paths), tmp_path, "small", SMALL, workers=2, progress=False)
    assert cache.path == folder and cache.computed == 120 - done and len(cache.track_ids) == 120
    for track_id, path in enumerate(paths, start=1):
        assert_float16_close(cache[track_id], reference[path])


# ----------------------------------------------------------------------------- workers and disk space

def test_default_workers_follow_the_cpu_affinity(fma_small, tmp_path, capsys):
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    tracks, _ = load_metadata(fma_small, "small")
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # as taskset or a SLURM job with one core would
    try:
        build_cache(tracks.iloc[:8], tmp_path, "small", SMALL)
    finally:
        os.sched_setaffinity(0, allowed)
    assert "(1 workers)" in capsys.readouterr().err


def test_refuses_to_start_without_disk_space(fma_small, tmp_path, monkeypatch):
    tracks, _ = load_metadata(fma_small, "small")
    needed = 32 * 128 * 100 * 2  # rows x mels x frames x float16
    real = shutil.disk_usage

    def disk_with(free):
        monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))

    disk_with(needed - 1)
    with pytest.raises(DataError) as err:
        build_cache(tracks, tmp_path, "small", SMALL, progress=False)
    message = str(err.value)
    for part in ("Not enough disk space", str(tmp_path), "32 tracks", "0.8 MiB", "--cache_dir"):
        assert part in message
    assert not list(tmp_path.glob("small-*")), "a refused build leaves no folder behind"
    disk_with(needed)
    assert build_cache(tracks, tmp_path, "small", SMALL, progress=False).computed == 32


FULL_DISK_BUILD = """
import json, subprocess, sys
import pandas as pd
import utils
from fma_genres.data import cache
from fma_genres.runtime.errors import DataError
cache.SAVE_EVERY_ROWS = 4  # saves progress often, as a long build does
paths, disk = json.loads(sys.argv[1]), sys.argv[2]
tracks = pd.DataFrame({"path": paths}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))
build = lambda: cache.build_cache(tracks, disk, "small", dict(utils.PREPROCESSING, n_frames=100), workers=2,
                                  progress=False)
try:
    build()
except DataError as e:
    print("ERROR", e, flush=True)
subprocess.run(["mount", "-o", "remount,size=4m", disk], check=True)  # the user frees some space
print("COMPUTED", build().computed, flush=True)
"""


@pytest.mark.slow  # builder processes on a full disk
def test_disk_full_during_the_build_says_so_and_resumes(fma_small, tmp_path):
    """A real full disk: a tmpfs exactly as big as the rows, so the cache's own small files fill it
    before the last rows are written (a private mount namespace, where the system allows one)."""
    tracks, _ = load_metadata(fma_small, "small")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"mount -t tmpfs -o size={32 * 128 * 100 * 2} tmpfs {disk} && exec \"$0\" -c \"$1\" \"$2\" {disk}"
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, sys.executable,
               FULL_DISK_BUILD, json.dumps(tracks["path"].tolist())]
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    result = subprocess.run(command, cwd=Path(mel_cache.__file__).resolve().parents[2], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    error = next(line for line in result.stdout.splitlines() if line.startswith("ERROR"))
    assert f"The disk holding the spectrogram cache {disk}/small-" in error and "is full" in error
    assert "rerun the same command to resume" in error and "move those files away" not in error
    computed = int(result.stdout.split("COMPUTED")[1])
    assert 0 < computed < 32, "the rerun computes only the rows the full disk stopped"


# ----------------------------------------------------------------------------- reuse across track lists

def previous_version_folder(root, tracks, broken):
    """A complete folder exactly as the previous version (utils.build_cache) wrote it: named
    <subset>-<sha1 of params>[:8]; params.json; float16 mels.npy; int8 status.npy; report.csv."""
    ids = sorted(int(t) for t in tracks.index)
    params = {"subset": "small", "preprocessing": SMALL, "track_ids": ids}
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    folder = root / f"small-{digest}"
    folder.mkdir(parents=True)
    mels = np.lib.format.open_memmap(folder / "mels.npy", mode="w+", dtype=np.float16, shape=(len(ids), 128, 100))
    status = np.full(len(ids), mel_cache.OK, dtype=np.int8)
    for row, track_id in enumerate(ids):
        if track_id == broken:
            status[row] = mel_cache.BROKEN
        else:
            mels[row] = clip_spectrogram(tracks.loc[track_id, "path"], SMALL)[0]
    mels.flush()
    (folder / "params.json").write_text(json.dumps(params, indent=1))
    np.save(folder / "status.npy", status)
    pd.DataFrame({"track_id": [broken], "path": [tracks.loc[broken, "path"]], "status": ["broken"],
                  "reason": ["cannot decode it: not audio"]}).to_csv(folder / "report.csv", index=False)
    return folder


def folder_stamps(root):
    return {str(f): os.stat(f).st_mtime_ns for f in sorted(root.rglob("*"))}


def test_a_folder_of_the_previous_version_is_reused_for_any_of_its_tracks(fma_small, tmp_path):
    tracks, _ = load_metadata(fma_small, "small")
    tracks = tracks[tracks.index < 90000]
    broken = int(tracks.index[5])
    folder = previous_version_folder(tmp_path, tracks, broken)
    stamps = folder_stamps(tmp_path)
    same = build_cache(tracks, tmp_path, "small", SMALL, progress=False)
    test_split = tracks[tracks["split"] == "test"]  # what --evaluate asks for
    evaluation = build_cache(test_split, tmp_path, "small", SMALL, progress=False)
    assert same.path == evaluation.path == folder and same.computed == evaluation.computed == 0
    assert folder_stamps(tmp_path) == stamps, "reading a complete cache writes nothing"
    assert broken not in same and np.array_equal(evaluation[test_split.index[0]], same[test_split.index[0]])


def test_a_new_track_list_copies_the_rows_other_folders_have(fma_small, tmp_path, capsys):
    tracks, _ = load_metadata(fma_small, "small")
    tracks = tracks[tracks.index < 90000]
    broken = int(tracks.index[5])
    first = previous_version_folder(tmp_path / "cache", tracks.iloc[:20], broken)
    second = build_cache(tracks.iloc[4:], tmp_path / "cache", "small", SMALL, progress=False)
    assert second.path != first and second.computed == 12  # rows 20..31; rows 4..19 are copied
    assert "12 computed now, 16 copied from other folders, 0 reused" in capsys.readouterr().out
    fresh = build_cache(tracks.iloc[4:], tmp_path / "fresh", "small", SMALL, progress=False)
    others = lambda array: np.delete(array, 1, axis=0)  # row 1 is the track the first folder calls broken
    assert np.array_equal(others(np.load(second.path / "mels.npy")), others(np.load(fresh.path / "mels.npy")))
    assert np.array_equal(others(second.status), others(fresh.status)) and broken not in second
    report = pd.read_csv(second.path / "report.csv")
    assert report.to_dict("records") == [{"track_id": broken, "path": tracks.loc[broken, "path"],
                                          "status": "broken", "reason": "cannot decode it: not audio"}]


# ----------------------------------------------------------------------------- several builders at once

BUILDER = """
import json, os, sys, time
import pandas as pd
import utils
from fma_genres.data import cache
paths, root, go, shard = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
tracks = pd.DataFrame({"path": paths}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))
print("ready", flush=True)
while not os.path.exists(go):  # every builder starts at the same moment
    time.sleep(0.01)
built = cache.build_cache(tracks, root, "small", dict(utils.PREPROCESSING, n_frames=100), workers=1,
                          progress=False, shard=shard)
print("COMPUTED", built.computed, flush=True)
"""


def start_builder(paths, root, go, shard=None):
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, json.dumps(paths), str(root), str(go),
                                json.dumps(shard)], cwd=Path(mel_cache.__file__).resolve().parents[2],
                               stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline().strip() == "ready"
    return builder


def computed_by(builder):
    out, _ = builder.communicate(timeout=120)
    assert builder.returncode == 0, out
    return int(out.split("COMPUTED")[1])


@pytest.fixture(scope="module")
def single_build(fma_small, tmp_path_factory):
    """The 32 fixture tracks built by one process: (paths in row order, folder)."""
    tracks, _ = load_metadata(fma_small, "small")
    paths = tracks["path"][tracks.index < 90000].tolist()
    return paths, build_cache(frame_of(paths), tmp_path_factory.mktemp("single"), "small", SMALL, progress=False).path


def assert_same_folder(folder, reference):
    for name in ("mels.npy", "status.npy", "params.json", "report.csv"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow  # two builder processes
def test_two_runs_started_together_share_the_rows(single_build, tmp_path):
    paths, reference = single_build
    first, second = (start_builder(paths, tmp_path / "cache", tmp_path / "go") for _ in range(2))
    (tmp_path / "go").touch()
    assert computed_by(first) + computed_by(second) == 32, "every row is computed exactly once"
    assert_same_folder(tmp_path / "cache" / reference.name, reference)
    assert not list((tmp_path / "cache" / reference.name / "locks").iterdir()), "every lock is released"


@pytest.mark.slow  # two builder processes
def test_shards_fill_disjoint_rows_and_wait_for_each_other(single_build, tmp_path):
    paths, reference = single_build
    first, second = (start_builder(paths, tmp_path / "cache", tmp_path / f"go{i}", shard=[i, 2]) for i in (0, 1))
    (tmp_path / "go0").touch()
    assert "waiting for 16 rows" in first.stdout.readline(), "shard 0 waits once its own rows are done"
    status = np.load(tmp_path / "cache" / reference.name / "status.npy")
    assert np.array_equal(np.flatnonzero(status), np.arange(0, 32, 2))  # one-row chunks in a 32-row folder
    (tmp_path / "go1").touch()
    assert computed_by(first) == computed_by(second) == 16
    assert_same_folder(tmp_path / "cache" / reference.name, reference)
