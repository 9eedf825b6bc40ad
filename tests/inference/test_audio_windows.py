"""audio_windows.py: per-window dB like a training clip, bitwise the cache for a clip, bounded decoding.

Audio files are real MP3/WAV files written here with soundfile; the memory bound is measured in a real
subprocess (its peak resident memory while it predicts a 20-minute file).

    python -m pytest tests/inference/test_audio_windows.py -q
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import models_utils
import utils
from fma_genres.data import cache as mel_cache, fma
from fma_genres.inference import audio_windows
from fma_genres.inference.audio_windows import track_windows
from fma_genres.runtime import errors
from models import CNN1D

ROOT = Path(__file__).resolve().parents[2]
P = utils.PREPROCESSING
SPAN = audio_windows.segment_samples(P)


def noisy_tone(seconds, rate, channels=1, seed=0, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    x = amplitude * (np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.1 * np.random.default_rng(seed).standard_normal(t.size))
    return (np.stack([x, np.roll(x, 100)], axis=1) if channels == 2 else x).astype(np.float32)


def reference_window(audio, start):
    """Training's clip path applied to the window's own stretch of audio (the definition, spelled out)."""
    segment = audio[start * P["hop_length"]:start * P["hop_length"] + SPAN]
    return utils.fix_width(utils.mel_spectrogram_db(segment), P["n_frames"])[0].astype(np.float16)


def assert_within_a_float16_step(actual, expected):
    """Each cell at most one float16 step (at its own magnitude: 2**-4 dB from 64 dB) from expected's."""
    expected = expected.astype(np.float32)
    step = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(actual.astype(np.float32) - expected) <= step)


def test_a_clip_gives_bitwise_the_row_of_the_training_cache(tmp_path):
    clips = {  # FMA's own format first (44.1 kHz stereo MP3, 29.98 s), then other rates, mono, WAV, a padded clip
        "fma.mp3": (29.98, 44100, 2), "mono.mp3": (29.98, 44100, 1), "48k.mp3": (30.0, 48000, 2),
        "22k.wav": (30.0, 22050, 1), "short.mp3": (28.0, 44100, 2)}
    paths = []
    for seed, (name, (seconds, rate, channels)) in enumerate(clips.items()):
        paths.append(tmp_path / name)
        sf.write(paths[-1], noisy_tone(seconds, rate, channels, seed), rate, format=paths[-1].suffix[1:].upper())
    tracks = pd.DataFrame({"path": [str(p) for p in paths]}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))
    cache = mel_cache.build_cache(tracks, tmp_path / "cache", "small", P, workers=1, progress=False)
    threads = torch.get_num_threads()
    try:  # the cache's workers run one thread; prediction here runs on a main process's threads, any number
        for n_threads, (track_id, path) in zip([1, 2, 3, 4, 8], zip(tracks.index, paths)):
            torch.set_num_threads(n_threads)
            windows = list(track_windows(path, P, hop=P["n_frames"] // 2))
            assert torch.get_num_threads() == n_threads  # the caller's threads are left as they were
            assert len(windows) == 1 and windows[0].dtype == np.float16
            assert np.array_equal(windows[0], cache[track_id]), path.name  # bit for bit what training fed the model
    finally:
        torch.set_num_threads(threads)


def test_each_window_is_floored_relative_to_its_own_loudest_frame(tmp_path):
    # 30 s almost silent (-74 dB), then 30 s loud: on the whole track's scale the intro is at the floor
    quiet_then_loud = np.concatenate([noisy_tone(30, 22050, amplitude=1e-4), noisy_tone(30, 22050, amplitude=0.5)])
    path = tmp_path / "intro.wav"
    sf.write(path, quiet_then_loud, 22050, subtype="FLOAT")
    intro, loud = track_windows(path, P, hop=P["n_frames"])
    whole_track = utils.mel_spectrogram_db(quiet_then_loud)[:, :P["n_frames"]]
    assert np.mean(whole_track == whole_track.min()) > 0.9   # what dB over the whole track would feed the model
    assert np.mean(intro == intro.min()) < 0.01              # per window: the intro keeps its detail
    assert intro.max() < loud.max() - 60
    np.testing.assert_array_equal(intro, reference_window(quiet_then_loud, 0))
    np.testing.assert_array_equal(loud, reference_window(quiet_then_loud, P["n_frames"]))


def test_long_track_windows_follow_the_definition_and_sought_windows_match_decoded_ones(tmp_path):
    path = tmp_path / "long.wav"  # 48 kHz: the sample grids of 48 and 22.05 kHz meet every 320 / 147 samples
    sf.write(path, noisy_tone(100, 48000, 2), 48000)
    audio = utils.load_audio(path)
    starts = audio_windows.window_starts(1 + len(audio) // P["hop_length"], P["n_frames"], 645)
    windows = list(track_windows(path, P, hop=645))
    assert len(windows) == len(starts) == 5
    for window, start in zip(windows, starts):  # resampled in blocks here, in one call there
        assert_within_a_float16_step(window, reference_window(audio, start))
    chosen = list(track_windows(path, P, hop=645, max_windows=2))  # windows 0 and 4: the file is sought to 4
    assert len(chosen) == 2
    np.testing.assert_array_equal(chosen[0], windows[0])
    # the seek's resampler warm-up leaves the audio within 3e-7: at most one float16 step of the dB values
    assert_within_a_float16_step(chosen[1], windows[4])


def test_max_windows_decodes_only_the_chosen_windows(tmp_path):
    audio = noisy_tone(300, 22050)
    audio[100 * 22050:200 * 22050] = np.nan  # a corrupt middle: decoding it is an error
    path = tmp_path / "corrupt_middle.wav"
    sf.write(path, audio, 22050, subtype="FLOAT")
    with pytest.raises(errors.AudioError, match="non-finite samples .* about 9[0-9].[0-9] s in"):
        list(track_windows(path, P, hop=645))
    chosen = list(track_windows(path, P, hop=645, max_windows=2))  # the first and the last window only
    assert len(chosen) == 2 and all(np.isfinite(w).all() for w in chosen)


def test_a_truncated_file_is_an_error_not_a_short_track(tmp_path):
    path = tmp_path / "song.mp3"
    sf.write(path, noisy_tone(70, 44100), 44100, format="MP3")
    data = path.read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[:len(data) // 3])  # its header still declares 70 s
    for max_windows in (None, 2):  # all 3 windows as they come; the first and the last, sought
        with pytest.raises(errors.AudioError, match="decodes to 2[0-9].[0-9]+ s of audio but its header declares 70.00 s"):
            list(track_windows(tmp_path / "cut.mp3", P, hop=645, max_windows=max_windows))


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    from pathlib import Path
    from fma_genres.inference import predict as inference
    model, checkpoint = inference.load_predictor(sys.argv[1])
    hop = checkpoint["preprocessing"]["n_frames"]  # windows side by side: half the work of the default hop
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    for _ in range(2):  # warm-up: every buffer, and the allocators' caches, once
        list(inference.predict(model, checkpoint, [Path(sys.argv[2])], inference.Reading(hop, batch_size=4)))
    before = peak()
    tracemalloc.start()  # NumPy reports its arrays to tracemalloc
    (_, probabilities, windows, error), = inference.predict(model, checkpoint, [Path(sys.argv[3])], inference.Reading(hop, batch_size=4))
    print(json.dumps({"growth": peak() - before, "numpy_peak": tracemalloc.get_traced_memory()[1],
                      "windows": windows, "error": error}))
""")


def test_predicting_a_long_file_needs_far_less_memory_than_its_decoded_audio(tmp_path):
    checkpoint = tmp_path / "cnn1d.pt"
    models_utils.save_checkpoint(models_utils.make_checkpoint(
        "cnn1d", {"n_mels": 128, "n_frames": 1291, "n_classes": 8, "faithful": True}, CNN1D().state_dict(),
        fma.FMA_SMALL_GENRES, P), checkpoint)
    minutes, rate = 20, 22050
    warm_up, long = tmp_path / "warm_up.wav", tmp_path / "long.wav"
    sf.write(warm_up, noisy_tone(240, rate), rate, subtype="PCM_16")
    with sf.SoundFile(long, "w", rate, 1, subtype="PCM_16") as f:  # written a minute at a time
        for minute in range(minutes):
            f.write(noisy_tone(60, rate, seed=minute))
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(checkpoint), str(warm_up), str(long)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.splitlines()[-1])
    decoded = minutes * 60 * rate * 4  # float32 mono at the model's rate: 106 MB (a 2-hour track: 635 MB)
    assert probe["error"] is None and probe["windows"] == (minutes * 60 * rate // 512 + 1) // 1291
    print(f"predicting {minutes} min: peak memory +{probe['growth'] / 1e6:.1f} MB, NumPy peak "
          f"{probe['numpy_peak'] / 1e6:.1f} MB (decoded audio {decoded / 1e6:.0f} MB)")
    # Decoding it whole grew the peak by 1 GB (10x the decoded audio: the file, its mean, the STFT) and
    # NumPy's by 212 MB; streaming: by 5 to 30 MB (allocator noise, flat in the length) and 11 MB.
    assert probe["growth"] < decoded / 2 and probe["numpy_peak"] < decoded / 5
