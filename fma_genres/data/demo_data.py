"""Generate a small synthetic dataset in the exact FMA layout, so everything runs offline.

It writes, under DATA_DIR (default data/demo):

    fma_metadata/tracks.csv   two header rows, index track_id, FMA's column groups and names
    fma_metadata/genres.csv   the 8 top-level genres of fma_small with their real FMA ids
    fma_small/<tid[:3]>/<tid>.mp3   44.1 kHz mono MP3 clips of synthetic music (a stereo mix's channel mean)

The eight fma_small genres get their own synthetic "music" (tempo range, drum pattern, bass, chord and
melody registers, timbres, noise), varied per track (key, tempo, notes, mix), deterministic from the
seed. With subgenres=True (main.py's demo with target=genres_all, in its own folder) each genre has two
sub-genres (SUBGENRES): a track is in one of them or in its top genre only; a sub-genre adds its own
pulsing tone (a frequency of its own) to the genre's music, and tracks.csv's genres / genres_all and
genres.csv's tree say so, as FMA's do. Splits are official-style: stratified 80/10/10 per genre and artist-filtered. The real loaders
read it unchanged (``fma.load_metadata(DATA_DIR, "small")``). A second run with the same parameters
returns at once; an interrupted run resumes.

    python -m fma_genres.data.demo_data                                   # data/demo, 10 tracks per genre, 30 s clips
    python -m fma_genres.data.demo_data --data_dir=/tmp/demo --tracks_per_genre=20 --seed=1 --duration=30
    python -m fma_genres.data.demo_data --data_dir=data/demo_genres_all --subgenres   # with the sub-genre tree
"""
import argparse
import json
import os
import pathlib
import shutil
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import soundfile as sf
import soxr

SAMPLE_RATE = 44100  # the files', as FMA's
# Rendered at half that rate, then resampled: the pipeline keeps only what lies below 11.025 kHz (it reads at
# 22,050 Hz, utils.PREPROCESSING) and every sound here was made to lie there, at half the synthesis time.
SYNTH_RATE = 22050
MARKER = "demo_dataset.json"
VERSION = 3  # bump when the synthesis changes, so old demo folders are regenerated
GENRE_IDS = {"Electronic": 15, "Experimental": 38, "Folk": 17, "Hip-Hop": 21, "Instrumental": 1235,
             "International": 2, "Pop": 10, "Rock": 12}  # FMA's own ids (genres.csv)
# Two sub-genres per top genre (ids in FMA's style, not checked against FMA's genres.csv).
SUBGENRES = {"Electronic": {"Techno": 181, "House": 182}, "Experimental": {"Noise": 32, "Experimental Pop": 76},
             "Folk": {"Free-Folk": 33, "Psych-Folk": 94}, "Hip-Hop": {"Rap": 539, "Abstract Hip-Hop": 580},
             "Instrumental": {"Ambient": 107, "Soundtrack": 18}, "International": {"Latin America": 46, "Europe": 130},
             "Pop": {"Synth-Pop": 362, "Power-Pop": 360}, "Rock": {"Punk": 25, "Indie-Rock": 66}}
# Each sub-genre's tone: 16 frequencies a third of an octave or more apart (distinct mel bands), at this gain.
SUBGENRE_HZ = dict(zip([g for subs in SUBGENRES.values() for g in subs], np.geomspace(250, 8000, 16)))
SUBGENRE_GAIN = 0.08
KNOWN_BROKEN = {98565, 98567, 98569, 99134, 108925, 133297}  # real broken fma_small ids: never reuse
BED_GAIN = 10 ** (-12 / 20)
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PENTATONIC, HIJAZ = (0, 3, 5, 7, 10), (0, 1, 4, 5, 7, 8, 10)

# Each genre is a tempo range plus parts on a 16-step bar. Genres differ on purpose in which mel bands
# carry energy (sub-bass, low-mid, mid, bright, broadband) and in rhythm, so that a small model learns
# them from a handful of clips. Part keys: drum sound or note wave, pattern ('x' = onset; a pattern of
# 32 spans two bars), gain in dB, pan (-1 left .. 1 right), MIDI register (lo, hi), note decay in s,
# chord intervals, vibrato depth, distortion drive. The bed is a steady noise texture (hiss, rumble,
# wind) in a frequency band of the genre's own: it marks every frame, so even the clip's quiet moments
# say which genre it is, and a small model picks it up in a few epochs.
STYLES = {
    "Electronic": dict(bed=(7200, 11000), bpm=(122, 132), scale=MINOR, parts=[
        dict(drum="kick", pattern="x...x...x...x...", gain=0),
        dict(drum="open_hat", pattern="..x...x...x...x.", gain=-8, pan=0.3),
        dict(drum="hat", pattern="xxxxxxxxxxxxxxxx", gain=-16, pan=-0.3),
        dict(wave="saw", pattern="x.xxx.xxx.xxx.xx", register=(33, 45), decay=0.12, gain=-6),
        dict(wave="square", pattern="xxxxxxxxxxxxxxxx", register=(79, 91), decay=0.08, gain=-12, pan=0.5),
    ]),
    "Experimental": dict(bed=(4700, 7200), bpm=(60, 180), scale=None, parts=[]),  # no pulse: see _experimental
    "Folk": dict(bed=(830, 1290), bpm=(92, 112), scale=MAJOR, parts=[
        dict(wave="pluck", pattern="x.x.x.x.x.x.x.x.", register=(52, 64), decay=0.6, chord=(0, 4, 7),
             gain=-4, pan=-0.3),
        dict(wave="pluck", pattern="x..x..x.x..x..x.", register=(64, 76), decay=0.4, gain=-6, pan=0.3),
        dict(wave="triangle", pattern="x.......x.......", register=(40, 52), decay=0.8, gain=-8),
    ]),
    "Hip-Hop": dict(bed=(40, 400), bpm=(82, 94), scale=MINOR, parts=[
        dict(drum="boom", pattern="x.........x..x..", gain=0),
        dict(drum="snare", pattern="....x.......x...", gain=-4),
        dict(drum="hat", pattern="x.x.x.x.x.x.x.x.", gain=-18, pan=0.4),
        dict(wave="sine", pattern="x.....x...x.....", register=(28, 38), decay=0.7, gain=-2),
        dict(wave="square", pattern="x.......x...x...x.......x.......", register=(60, 70), decay=0.5,
             gain=-20, pan=-0.4),
    ]),
    "Instrumental": dict(bed=(420, 830), bpm=(62, 76), scale=MAJOR, parts=[
        dict(wave="pad", pattern="x...............", register=(45, 57), decay=6.0, chord=(0, 7, 12, 16),
             gain=-4),
        dict(wave="sine", pattern="x.....x.x...x...", register=(84, 96), decay=1.2, vibrato=0.006,
             gain=-10, pan=0.4),
    ]),
    "International": dict(bed=(1300, 2000), bpm=(100, 118), scale=HIJAZ, parts=[
        dict(drum="tabla", pattern="x..x..x...x..x..", gain=-2, pan=-0.2),
        dict(drum="shaker", pattern="xxxxxxxxxxxxxxxx", gain=-18, pan=0.4),
        dict(wave="buzz", pattern="x...............", register=(36, 41), decay=8.0, chord=(0, 7), gain=-12),
        dict(wave="saw", pattern="x.xx..x.x.x.x...", register=(69, 81), decay=0.3, vibrato=0.02,
             gain=-12, pan=0.2),
    ]),
    "Pop": dict(bed=(2000, 3000), bpm=(100, 116), scale=MAJOR, parts=[
        dict(drum="kick", pattern="x.......x.x.....", gain=-2),
        dict(drum="clap", pattern="....x.......x...", gain=-4),
        dict(wave="triangle", pattern="x.......x.......", register=(60, 67), decay=2.0, chord=(0, 4, 7),
             gain=-8),
        dict(wave="triangle", pattern="x.x.x.xxx.x.x.x.", register=(72, 84), decay=0.25, vibrato=0.01,
             gain=-6, pan=0.2),
        dict(wave="sine", pattern="x...x...x...x...", register=(36, 43), decay=0.4, gain=-6),
    ]),
    "Rock": dict(bed=(3000, 4700), bpm=(136, 160), scale=PENTATONIC, parts=[
        dict(drum="kick", pattern="x.x.....x.x.....", gain=-2),
        dict(drum="snare", pattern="....x.......x...", gain=-2),
        dict(drum="crash", pattern="x.x.x.x.x.x.x.x.", gain=-14, pan=0.5),
        dict(wave="saw", pattern="x.x.x.x.x.x.x.x.", register=(40, 52), decay=0.5, chord=(0, 7, 12),
             drive=6.0, gain=-4, pan=-0.4),
        dict(wave="saw", pattern="x.x.x.x.x.x.x.x.", register=(40, 52), decay=0.5, chord=(0, 7, 12),
             drive=6.0, gain=-4, pan=0.4),
    ]),
}


def _midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=float) - 69) / 12)


def _band_noise(rng, n, lo, hi):
    """White noise band-limited to [lo, hi] Hz (FFT mask: cheap and exact enough here)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SYNTH_RATE)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9)


def _sweep(f0, f1, n, decay):
    """A decaying sine whose pitch falls exponentially from f0 to f1 (kick and hand drums)."""
    t = np.arange(n) / SYNTH_RATE
    freq = f1 + (f0 - f1) * np.exp(-t / 0.04)
    return np.sin(2 * np.pi * np.cumsum(freq) / SYNTH_RATE) * np.exp(-t / decay)


def _drum(name, rng):
    """One hit of a drum sound; drawn once per track, so a track keeps its kit."""
    n = lambda s: int(s * SYNTH_RATE)
    env = lambda s, d: np.exp(-np.arange(n(s)) / SYNTH_RATE / d)
    if name == "kick":
        return _sweep(rng.uniform(140, 180), rng.uniform(48, 60), n(0.35), 0.09)
    if name == "boom":  # long 808-style sub kick: hip-hop's energy sits in the lowest bands
        return _sweep(rng.uniform(110, 130), rng.uniform(40, 50), n(0.9), 0.35)
    if name == "tabla":
        return _sweep(rng.uniform(380, 440), rng.uniform(260, 320), n(0.3), 0.12)
    band, dur, decay = {"snare": ((900, 6000), 0.25, 0.07), "clap": ((1000, 2600), 0.2, 0.05),
                        "hat": ((8000, 11000), 0.05, 0.012), "open_hat": ((7000, 11000), 0.2, 0.06),
                        "shaker": ((4500, 7500), 0.08, 0.02), "crash": ((3500, 10000), 1.0, 0.35)}[name]
    hit = _band_noise(rng, n(dur), *band) * env(dur, decay)
    if name == "snare":  # the drum head's tone under the wires
        hit += 0.5 * _sweep(220, 180, n(dur), 0.05)
    return hit


def _note(freq, n, wave, decay, vibrato, rng):
    """A note of n samples: additive harmonics (below 11 kHz), vibrato, attack and exponential decay."""
    t = np.arange(n) / SYNTH_RATE
    inst = freq * (1 + vibrato * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t))
    # z**k is harmonic k; plucked strings lose their upper harmonics first (damping grows with k).
    z = np.exp(1j * 2 * np.pi * np.cumsum(inst) / SYNTH_RATE - (3.0 * t if wave == "pluck" else 0))
    k = np.arange(1, max(1, min(24, int(11000 / freq))) + 1)
    amps = {"sine": k == 1, "triangle": (k % 2) / k ** 2, "square": (k % 2) / k, "saw": 1 / k,
            "pluck": 1 / k, "pad": 1 / k ** 1.5, "buzz": 1 / np.sqrt(k)}[wave].astype(float)
    x, zk = np.zeros(n), np.ones(n, dtype=complex)
    for a in amps[:np.flatnonzero(amps)[-1] + 1]:
        zk *= z
        if a:
            x += a * zk.imag
    attack = 0.25 if wave in ("pad", "buzz") else 0.005
    release = np.minimum((n - np.arange(n)) / (0.01 * SYNTH_RATE), 1)  # no click at the note's end
    return x * np.minimum(t / attack, 1) * np.exp(-t / decay) * release / amps.sum()


def _place(out, sound, start, gain):
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += gain * sound[:end - start]


def _render_part(part, style, n, key, step, rng):
    """One part as a mono signal: hits or notes at the pattern's onsets, repeated bar after bar."""
    out = np.zeros(n)
    pattern, gain = part["pattern"], 10 ** (part.get("gain", 0) / 20)
    onsets = [i for i, c in enumerate(pattern) if c == "x"]
    hit = _drum(part["drum"], rng) if "drum" in part else None
    scale = np.array([o + d for o in range(0, 128, 12) for d in style["scale"]])
    lo, hi = part.get("register", (0, 0))
    choices = scale[(scale + key >= lo) & (scale + key <= hi)] + key if hit is None else None
    for bar in range(int(n / (step * len(pattern))) + 1):
        for j, i in enumerate(onsets):
            start = int(round((bar * len(pattern) + i) * step + rng.normal(0, 0.003) * SYNTH_RATE))
            start = max(start, 0)
            if hit is not None:
                _place(out, hit, start, gain * rng.uniform(0.8, 1.0))
                continue
            following = onsets[j + 1] if j + 1 < len(onsets) else len(pattern) + onsets[0]
            length = int((following - i) * step)
            root = rng.choice(choices)
            for interval in part.get("chord", (0,)):
                tone = _note(_midi_hz(root + interval), length, part["wave"], part["decay"],
                             part.get("vibrato", 0.0), rng)
                _place(out, tone, start, gain)
    if "drive" in part:  # distorted guitar: clipping spreads the chords across the spectrum
        out = np.tanh(part["drive"] * out) * gain
    return out


def _experimental(n, rng):
    """No pulse: sparse pitch glides, band-noise bursts and silences at random times."""
    left, right = np.zeros(n), np.zeros(n)
    t0 = 0.0
    while t0 < n / SYNTH_RATE:
        length = int(rng.uniform(0.3, 2.5) * SYNTH_RATE)
        if rng.random() < 0.5:
            t = np.arange(length) / SYNTH_RATE
            f = np.geomspace(*rng.uniform(150, 6000, 2), length)
            event = np.sin(2 * np.pi * np.cumsum(f) / SYNTH_RATE) * np.sin(np.pi * t / t[-1]) ** 2
        else:
            lo = rng.uniform(200, 6000)
            event = _band_noise(rng, length, lo, lo * rng.uniform(1.2, 2.0)) * np.hanning(length)
        pan = rng.uniform(-1, 1)
        start = int(t0 * SYNTH_RATE)
        _place(left, event, start, 0.4 * np.sqrt((1 - pan) / 2))
        _place(right, event, start, 0.4 * np.sqrt((1 + pan) / 2))
        t0 += rng.exponential(0.9) + (length / SYNTH_RATE) * rng.uniform(0.2, 1.0)
    return np.stack([left, right], axis=1)


def synthesize(genre, duration, rng):
    """A stereo float32 clip (n, 2) at SAMPLE_RATE of the genre's synthetic music, peak well below full scale."""
    n = int(round(duration * SYNTH_RATE))
    style = STYLES[genre]
    if style["parts"]:
        key = int(rng.integers(-2, 3))  # small transpositions keep each genre in its register
        step = 60.0 / rng.uniform(*style["bpm"]) / 4 * SYNTH_RATE  # samples per 16th note
        mix = np.zeros((n, 2))
        for part in style["parts"]:
            pan = np.clip(part.get("pan", 0.0) + rng.normal(0, 0.1), -1, 1)
            mono = _render_part(part, style, n, key, step, rng)
            mix += mono[:, None] * np.sqrt([(1 - pan) / 2, (1 + pan) / 2])
    else:
        mix = _experimental(n, rng)
    t = np.arange(n) / SYNTH_RATE
    swell = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
    mix += (BED_GAIN * swell * _band_noise(rng, n, *style["bed"]))[:, None]
    mix += rng.normal(0, 1e-4, mix.shape)  # a little hiss, as real recordings have
    peak = np.abs(mix).max()
    mix = mix * 10 ** (rng.uniform(-6, -2) / 20) / peak
    return soxr.resample(mix, SYNTH_RATE, SAMPLE_RATE).astype(np.float32)


def subgenre_tone(subgenre, duration, rng):
    """A sub-genre's mark: its own frequency, pulsing at a slow random rate (stereo float32 (n, 2))."""
    t = np.arange(int(round(duration * SAMPLE_RATE))) / SAMPLE_RATE
    pulse = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
    tone = SUBGENRE_GAIN * pulse * np.sin(2 * np.pi * SUBGENRE_HZ[subgenre] * t)
    return np.repeat(tone[:, None], 2, axis=1).astype(np.float32)


def _add_subgenres(tracks):
    """Each genre's tracks in turn (per split) in its first sub-genre, its second, or the top genre only;
    genres / genres_all as FMA writes them (genres_all: the genre and its ancestors)."""
    tracks = tracks.copy()
    sub = pd.Series("", index=tracks.index)
    for (genre, _), group in tracks.groupby([("track", "genre_top"), ("set", "split")]):
        names = [*SUBGENRES[genre], ""]
        offset = list(GENRE_IDS).index(genre)  # so the single held-out clips differ between genres
        for k, tid in enumerate(group.index):
            sub[tid] = names[(k + offset) % 3]
    top_ids = tracks[("track", "genre_top")].map(GENRE_IDS)
    sub_ids = [SUBGENRES[genre].get(name) for genre, name in zip(tracks[("track", "genre_top")], sub)]
    tracks[("track", "genres")] = [f"[{s or g}]" for g, s in zip(top_ids, sub_ids)]
    tracks[("track", "genres_all")] = [f"[{g}, {s}]" if s else f"[{g}]" for g, s in zip(top_ids, sub_ids)]
    return tracks, sub


def _plan(tracks_per_genre, seed):
    """The metadata DataFrame (real FMA columns) with stratified, artist-filtered 80/10/10 splits."""
    if tracks_per_genre < 3:
        raise ValueError(f"tracks_per_genre must be at least 3 (one track each for training, validation "
                         f"and test); got {tracks_per_genre}.")
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(0.1 * tracks_per_genre)))
    splits = ["training"] * (tracks_per_genre - 2 * n_held) + ["validation"] * n_held + ["test"] * n_held
    pool = np.setdiff1d(np.arange(2, 156000), list(KNOWN_BROKEN))  # fma_small's id range
    ids = rng.permutation(np.sort(rng.choice(pool, len(GENRE_IDS) * tracks_per_genre, replace=False)))
    rows, artist = [], 0
    for g, genre in enumerate(GENRE_IDS):
        for split in ("training", "validation", "test"):
            count = splits.count(split)
            while count:  # an artist's tracks all go to one split
                artist += 1
                size = min(count, int(rng.integers(2, 5)) if split == "training" else 1)
                for _ in range(size):
                    rows.append((int(ids[len(rows)]), genre, split, artist))
                count -= size
    frame = {}
    for tid, genre, split, artist in rows:
        gid = GENRE_IDS[genre]
        frame[tid] = {
            ("album", "id"): 10000 + artist, ("album", "title"): f"Demo {genre} Album {artist}",
            ("album", "type"): "Album", ("album", "tracks"): sum(r[3] == artist for r in rows),
            ("artist", "id"): artist, ("artist", "name"): f"Demo {genre} Artist {artist}",
            ("artist", "location"): "Synthetic",
            ("set", "split"): split, ("set", "subset"): "small",
            ("track", "bit_rate"): 320000, ("track", "duration"): int(rng.integers(120, 360)),
            ("track", "genre_top"): genre, ("track", "genres"): f"[{gid}]",
            ("track", "genres_all"): f"[{gid}]", ("track", "interest"): int(rng.integers(100, 5000)),
            ("track", "license"): "Attribution-NonCommercial-ShareAlike 3.0 International",
            ("track", "listens"): int(rng.integers(50, 3000)), ("track", "number"): 1,
            ("track", "tags"): "[]", ("track", "title"): f"{genre} demo {tid:06d}",
        }
    tracks = pd.DataFrame.from_dict(frame, orient="index").sort_index().sort_index(axis=1)
    tracks.index.name = "track_id"
    return tracks


def _genres(tracks, subgenres=False):
    counts = tracks[("track", "genre_top")].value_counts()
    rows = {gid: {"#tracks": int(counts.get(name, 0)), "parent": 0, "title": name, "top_level": gid}
            for name, gid in GENRE_IDS.items()}
    if subgenres:
        tagged = tracks[("track", "genres_all")].value_counts()
        rows.update({sid: {"#tracks": sum(n for text, n in tagged.items() if f" {sid}]" in text), "parent": gid,
                           "title": name, "top_level": gid}
                     for top, gid in GENRE_IDS.items() for name, sid in SUBGENRES[top].items()})
    genres = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    genres.index.name = "genre_id"
    return genres


def _write_atomic(path, write):
    """write(tmp_path) then os.replace: a crash never leaves a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _render_track(job):
    """Worker: synthesize one track from its own seed (plus its sub-genre's tone, if any) and write the MP3."""
    path, genre, duration, seed, tid, subgenre = job
    rng = np.random.default_rng([seed, tid])  # per track: independent of worker order and of the pool
    audio = synthesize(genre, duration, rng)
    if subgenre:  # its own generator: the genre's music stays the same clip as without sub-genres
        audio = audio + subgenre_tone(subgenre, duration, np.random.default_rng([seed, tid, 1]))
    # Mono: the channel mean of the stereo mix, which is what the pipeline reads of a stereo file (utils.load_audio),
    # so the spectrograms are the mix's, at half the MP3 encoding time.
    mono = audio.mean(axis=1)
    _write_atomic(pathlib.Path(path), lambda tmp: sf.write(tmp, mono, SAMPLE_RATE, format="MP3"))


def _mp3_path(data_dir, tid):
    tid = f"{tid:06d}"
    return data_dir / "fma_small" / tid[:3] / f"{tid}.mp3"


def make_demo_dataset(data_dir="data/demo", tracks_per_genre=10, seed=0, duration=30.0, num_workers=None,
                      subgenres=False):
    """Write (or complete) the demo dataset under data_dir and return data_dir as a Path; subgenres=True:
    the sub-genre tree and tones (the module docstring)."""
    data_dir = pathlib.Path(data_dir)
    meta = data_dir / "fma_metadata"
    params = {"version": VERSION, "tracks_per_genre": tracks_per_genre, "seed": seed, "duration": duration,
              **({"subgenres": True} if subgenres else {})}  # without: the marker of earlier demo folders
    marker = data_dir / MARKER
    old = json.loads(marker.read_text()) if marker.exists() else None
    if old is None and (meta / "tracks.csv").exists():
        raise FileExistsError(
            f"{meta / 'tracks.csv'} exists but was not written by demo_data.py (no {marker}). Refusing to "
            f"overwrite what looks like a real FMA dataset: pass another data_dir for the demo.")
    tracks = _plan(tracks_per_genre, seed)
    tracks, subgenre = _add_subgenres(tracks) if subgenres else (tracks, pd.Series("", index=tracks.index))
    paths = {tid: _mp3_path(data_dir, tid) for tid in tracks.index}
    if old == {**params, "complete": True} and all(path.exists() for path in paths.values()):
        return data_dir
    if old is not None and {k: v for k, v in old.items() if k != "complete"} != params:
        # Other parameters: every clip changes. Drop the old ones so the folder holds one dataset only,
        # and main.py's default spectrogram cache (data_dir/cache), which would describe the old clips.
        for stale in ("fma_small", "cache"):
            shutil.rmtree(data_dir / stale, ignore_errors=True)
    _write_atomic(marker, lambda tmp: tmp.write_text(json.dumps({**params, "complete": False})))
    _write_atomic(meta / "tracks.csv", lambda tmp: tracks.to_csv(tmp))
    _write_atomic(meta / "genres.csv", lambda tmp: _genres(tracks, subgenres).to_csv(tmp))

    jobs = [(str(paths[tid]), genre, duration, seed, tid, subgenre[tid])
            for tid, genre in tracks[("track", "genre_top")].items() if not paths[tid].exists()]
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(jobs)))
    print(f"demo dataset: writing {len(jobs)} of {len(tracks)} clips ({duration:g} s) to {data_dir} "
          f"with {workers} worker(s)", flush=True)
    start = time.time()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_render_track, jobs))
    _write_atomic(marker, lambda tmp: tmp.write_text(json.dumps({**params, "complete": True})))
    size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file()) / 2 ** 20
    counts = tracks[("set", "split")].value_counts()
    print(f"demo dataset: {len(tracks)} tracks, {len(GENRE_IDS)} genres, {counts.get('training', 0)}/"
          f"{counts.get('validation', 0)}/{counts.get('test', 0)} training/validation/test, "
          f"{size:.1f} MiB, done in {time.time() - start:.1f} s", flush=True)
    return data_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="data/demo")
    parser.add_argument("--tracks_per_genre", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--num_workers", type=int, default=None)
    parser.add_argument("--subgenres", action="store_true", help="two sub-genres per genre (target=genres_all)")
    args = parser.parse_args()
    make_demo_dataset(args.data_dir, args.tracks_per_genre, args.seed, args.duration, args.num_workers, args.subgenres)


if __name__ == "__main__":
    main()
