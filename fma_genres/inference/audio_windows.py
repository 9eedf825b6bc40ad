"""An audio file -> the dB mel-spectrogram windows a model sees, decoded in bounded memory.

Used by pre_trained_models.py, whose DataLoader workers run TrackWindows (files -> windows). Each window
of n_frames frames is computed from its own stretch of audio (``segment_samples``: the samples its frames
see) by training's clip path, utils.mel_spectrogram_db then utils.fix_width, and stored as float16 like
the training cache. So the top_db floor of a window is relative to that window's loudest frame (a quiet
intro of a loud track keeps its detail), and a track no longer than one window's audio (segment_samples,
30.0 s: an FMA clip) gives the input training gave the model for it, bit for bit on any CPU: the row of
the spectrogram cache. Both sides run the same code on the same samples: the whole file read in one
call, utils.resample, then utils.mel_spectrogram_db on one thread (whose sums do not depend on the
caller's thread count), fix_width and float16.

    for window in track_windows("song.mp3", utils.PREPROCESSING, hop=645, max_windows=8):
        ...  # float16 (n_mels, n_frames)

Decoding streams, whatever the track's length: soundfile blocks -> channel mean -> soxr.ResampleStream
(quality HQ, which is load_audio's soxr_hq) -> windows as soon as their audio is complete, so a worker
holds about one window of audio (~3 MB), not the whole track (a 2-hour MP3 decodes to 2.5 GB of 44.1 kHz
stereo float32). Measured against load_audio's one-shot decoding and soxr.resample, on a 200 s 44.1 kHz
stereo MP3 written by libsndfile: max abs difference 0.0 (blocks of 1,000 to 77,777 frames; the same
from 48, 32 and 11.025 kHz). Only the MP3 decoder can differ: its output depends on the size of each import 

read, by up to 9e-8 on mono MP3s and up to 0.15 on MPEG-2 (22.05 kHz) MP3s with bitstream errors, as
libsndfile's own encoder writes them; hence a file up to WHOLE_FILE_SECONDS long is read and resampled
in one call, by load_audio's own code. With max_windows, only the chosen windows are decoded: the file is sought to
each, with SEEK_PRE_ROLL samples of resampler warm-up that keep the audio within 3e-7 of one-shot
resampling (same MP3; 0.06 without warm-up), i.e. within one float16 step of the dB values.
"""
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

import utils
from fma_genres.runtime import errors

BLOCK_FRAMES = 65536     # frames decoded at a time (1.5 s at 44.1 kHz)
WHOLE_FILE_SECONDS = 60  # a file up to this long is read in one call, exactly as utils.load_audio reads it
SEEK_PRE_ROLL = 1024     # samples (at the model's rate) decoded before a sought window; 256 suffice
WINDOWS_PER_ITEM = 8     # windows a DataLoader worker sends at a time (2.6 MB at 1,291 frames)
TRUNCATED_FRACTION = 0.9  # decoding less than this fraction of the declared duration means truncated


def segment_samples(preprocessing):
    """Samples of audio behind one window: its n_frames centred frames, the last one's second half included."""
    p = preprocessing
    return (p["n_frames"] - 1) * p["hop_length"] + p["n_fft"] // 2


def window_starts(total_frames, n_frames, hop, max_windows=None):
    """First frame of each window; at most max_windows of them, evenly spaced over the track.

    Windows start every `hop` frames while they fit entirely, so a tail shorter than `hop` is left out;
    an FMA clip (about 1,292 frames) gives exactly the one window the original used.
    """
    starts = list(range(0, max(total_frames - n_frames, 0) + 1, hop))
    if max_windows and len(starts) > max_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return starts


def window_db(segment, preprocessing):
    """float16 (n_mels, n_frames): a window's audio through training's clip path, as the cache stores it."""
    return utils.fix_width(utils.mel_spectrogram_db(segment, preprocessing), preprocessing["n_frames"])[0].astype(
        np.float16)


class MonoStream:
    """A SoundFile read block by block as mono float32 at `rate`: what utils.load_audio returns, in pieces
    (a file up to WHOLE_FILE_SECONDS in one piece: see the module docstring)."""

    def __init__(self, path, sound_file, rate):
        self.path, self.file, self.rate, self.native = path, sound_file, rate, sound_file.samplerate
        self.block = -1 if sound_file.frames <= WHOLE_FILE_SECONDS * self.native else BLOCK_FRAMES
        common = math.gcd(self.native, rate)
        self.native_step, self.step = self.native // common, rate // common  # the two sample grids meet here
        if sound_file.seekable():
            sound_file.seek(0)  # as soundfile.read (so load_audio) does: it changes an MP3 decoder's state
        self.frames_read = 0
        self.resampler = self.new_resampler()

    def new_resampler(self):  # a file read in one call is resampled in one call, by load_audio's code
        if self.native == self.rate or self.block < 0:
            return None
        import soxr  # here, as soundfile below: only decoding needs them (benchmarks/gpu.py runs without)

        return soxr.ResampleStream(
            self.native, self.rate, 1, dtype="float32", quality="HQ")

    def read(self):
        """(samples at `rate`, whether the file has ended)."""
        block = self.file.read(self.block, dtype="float32", always_2d=True)
        mono = block.mean(axis=1)
        if not np.isfinite(mono).all():
            raise errors.AudioError(f"{self.path}: decodes to non-finite samples (NaN or infinity) about "
                                   f"{self.frames_read / self.native:.1f} s in: the file is corrupt. Download "
                                   f"or convert it again.")
        self.frames_read += len(block)
        if self.block < 0:  # the rest of the file, exactly as utils.load_audio resamples it
            return utils.resample(mono, self.native, self.rate), True
        ended = len(block) < self.block
        return (mono if self.resampler is None else self.resampler.resample_chunk(mono, last=ended)), ended

    def seek(self, sample):
        """Continue from a point at most `sample` (at `rate`) where both grids meet; returns that point,
        or None when the file cannot seek (reading on is then the only way there)."""
        import soundfile as sf

        m = sample // self.step
        try:
            self.file.seek(m * self.native_step)
        except (sf.SoundFileError, RuntimeError):
            return None
        self.frames_read, self.resampler = m * self.native_step, self.new_resampler()
        return m * self.step

    def length(self):
        """Samples of the whole track at `rate` once it has ended, as load_audio pads or crops it."""
        return math.ceil(self.frames_read * self.rate / self.native)

    def seconds(self):
        return self.frames_read / self.native


def open_audio(path):
    """A SoundFile; AudioError with the reason when the file is empty or not audio."""
    import soundfile as sf

    if path.stat().st_size == 0:
        raise errors.AudioError(f"{path}: empty file (0 bytes). Download it again or remove it.")
    try:
        return sf.SoundFile(path)
    except (sf.SoundFileError, RuntimeError) as error:
        raise utils.undecodable(path, error) from None


def truncated(path, seconds, declared):
    """A truncated download decodes "successfully" to a short signal (docs/data.md: Broken tracks): it must not pass for a short track."""
    return errors.AudioError(f"{path}: decodes to {seconds:.2f} s of audio but its header declares {declared:.2f} s: "
                            f"the file is truncated or corrupt. Download or copy it again.")


def track_windows(path, preprocessing, hop, max_windows=None):
    """Yield the float16 (n_mels, n_frames) windows of an audio file, in order (see the module docstring).

    Windows start every `hop` frames while they fit (window_starts); with max_windows, the evenly spaced
    ones of the length the file declares, and decoding stops after the last one. A track shorter than one
    window gives one window, padded. AudioError for a file that is empty, not audio, truncated or corrupt.
    """
    p, path = preprocessing, Path(path)
    span, hop_length, n_frames = segment_samples(p), p["hop_length"], p["n_frames"]
    with open_audio(path) as sound_file:
        stream = MonoStream(path, sound_file, p["sample_rate"])
        declared = sound_file.frames / stream.native
        total_frames = 1 + math.ceil(sound_file.frames * stream.rate / stream.native) // hop_length
        chosen = window_starts(total_frames, n_frames, hop, max_windows)
        # Without a limit that bites, windows follow the audio that arrives, not the declared length.
        chosen = None if len(chosen) == len(window_starts(total_frames, n_frames, hop)) else chosen
        audio, start, count, ended = np.empty(0, np.float32), 0, 0, False  # audio[0] is sample `start`
        while not ended:
            if chosen is not None and count == len(chosen):
                return  # every chosen window is out: the rest of the file is never decoded
            first = (count * hop if chosen is None else chosen[count]) * hop_length
            if first + span <= start + len(audio):
                yield window_db(audio[first - start:first - start + span], p)
                count += 1
                continue
            if first - SEEK_PRE_ROLL > start + len(audio) + BLOCK_FRAMES:  # over a block away: seek there
                sought = stream.seek(first - SEEK_PRE_ROLL)
                audio, start = (audio, start) if sought is None else (audio[:0], sought)
            samples, ended = stream.read()
            audio = np.concatenate([audio, samples])
            unneeded = max(min(first - start, len(audio)), 0)  # samples before the next window
            audio, start = audio[unneeded:], start + unneeded
        if stream.seconds() < TRUNCATED_FRACTION * declared:
            raise truncated(path, stream.seconds(), declared)
        length = stream.length()
        if length == 0:
            raise errors.AudioError(f"{path}: decodes to no audio at all. Download it again or remove it.")
        audio = np.pad(audio[:max(length - start, 0)], (0, max(length - start - len(audio), 0)))
        last_start = max(1 + length // hop_length - n_frames, 0)
        for frame in (range(count * hop, last_start + 1, hop) if chosen is None else chosen[count:]):
            if frame * hop_length >= length:  # a chosen window lies beyond the audio the file really has
                raise truncated(path, stream.seconds(), declared)
            yield window_db(audio[frame * hop_length - start:frame * hop_length - start + span], p)


def silence_decoder_notes(worker_id):
    """DataLoader worker_init_fn: libmpg123 prints resync notes on stderr; failures get our own error line."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


class TrackWindows(IterableDataset):
    """Items (file index, float16 windows or None, whether the file is done, error or None), a file's
    windows in pieces of WINDOWS_PER_ITEM; each DataLoader worker takes every n-th file."""

    def __init__(self, files, preprocessing, hop, max_windows):
        self.files, self.preprocessing, self.hop, self.max_windows = files, preprocessing, hop, max_windows

    def __iter__(self):
        worker = get_worker_info()
        for i in range(worker.id if worker else 0, len(self.files), worker.num_workers if worker else 1):
            yield from self.file_items(i)

    def file_items(self, i):
        path, piece = self.files[i], []
        if not path.is_file():
            yield i, None, True, "file not found; check the path"
            return
        try:
            for window in track_windows(path, self.preprocessing, self.hop, self.max_windows):
                piece.append(window)
                if len(piece) == WINDOWS_PER_ITEM:
                    yield i, torch.from_numpy(np.stack(piece)), False, None
                    piece = []
        except errors.AudioError as error:  # its message starts with the path, which the error line shows
            yield i, None, True, str(error).removeprefix(f"{path}: ")
            return
        except Exception as error:  # one undecodable file must not stop the others
            yield i, None, True, f"could not decode it as audio ({type(error).__name__}: {error})".strip()
            return
        yield i, torch.from_numpy(np.stack(piece)) if piece else None, True, None
