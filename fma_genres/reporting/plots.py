"""Pictures of one track's prediction, for pre_trained_models.py --plot and the web page (app.py).

The pictures come from what inference.predict computed, never from a second pass over the audio: a
WindowRecorder given to predict as on_window keeps every window the model saw and its genre
probabilities, and track_figure draws them (matplotlib Figure objects without pyplot, so the web
server's threads share no global figure state):

    recorder = plots.WindowRecorder(hop)
    for i, (path, probabilities, n_windows, error) in enumerate(
            inference.predict(model, checkpoint, files, inference.Reading(hop), on_window=recorder)):
        spectrogram, window_probabilities = recorder.pop(i)
        shown = inference.shown_genres(probabilities, checkpoint, k)
        figure = plots.track_figure(path.name, spectrogram, window_probabilities, checkpoint, hop, shown)
        plots.save_png(figure, "song.png")

A figure has up to three panels: the top-k genres as bars (left out by the web page, which draws its own
bars as text), the mel-spectrogram the model saw (its windows placed at their start, each window's own
dB scale), and for a track longer than one window, the probabilities of the leading genres in each window
over time (which part of the track sounds like what).
"""
import io
from pathlib import Path

import numpy as np

from fma_genres.runtime import atomic

TIMELINE_GENRES = 5  # genres drawn over time: more lines would not be readable


class WindowRecorder:
    """inference.predict's on_window: per file, the spectrogram columns its windows add and their vectors.

    Window k of a file starts at frame k * hop (predict without max_windows); only the columns it adds
    to the previous windows are kept, so a long track costs hop frames per window, not a whole window.
    """

    def __init__(self, hop):
        self.hop, self.pieces, self.vectors = hop, {}, {}  # hop None: audio windows (an encoder's), not kept

    def __call__(self, index, window, vector):
        self.vectors.setdefault(index, []).append(vector)
        if self.hop is None:
            return
        pieces = self.pieces.setdefault(index, [])
        n_frames = window.shape[-1]
        new = n_frames if not pieces else min(self.hop, n_frames)
        pieces.append(window[:, n_frames - new:].numpy())

    def pop(self, index):
        """(spectrogram (n_mels, frames) float32 with NaN where no window reached, (windows, n_classes)),
        or None for a file without windows (one that could not be read); no spectrogram (None) for audio windows."""
        pieces, vectors = self.pieces.pop(index, None), self.vectors.pop(index, None)
        if vectors is None:
            return None
        if pieces is None:
            return None, np.stack(vectors)
        n_mels, n_frames = pieces[0].shape
        spectrogram = np.full((n_mels, (len(pieces) - 1) * self.hop + n_frames), np.nan, np.float32)
        spectrogram[:, :n_frames] = pieces[0]
        for k, piece in enumerate(pieces[1:], start=1):
            end = k * self.hop + n_frames
            spectrogram[:, end - piece.shape[1]:end] = piece
        return spectrogram, np.stack(vectors)


def track_figure(title, spectrogram, window_probabilities, checkpoint, hop, predictions=None):
    """The figure of one track; title: None for none; predictions: [(label, probability)] bars
    (inference.shown_genres), or None for none; spectrogram None for an encoder checkpoint's audio windows
    (then the timeline is over window numbers, and a track of one window without bars has no figure: None)."""
    from matplotlib.figure import Figure  # here, not at start-up: a one-file prediction needs no plot

    timeline = len(window_probabilities) > 1
    spectrogram_row = spectrogram is not None
    rows = [kind for kind, shown in (("bars", predictions), ("spectrogram", spectrogram_row), ("timeline", timeline))
            if shown]
    if not rows:
        return None
    heights = {"bars": 0.25 + 0.3 * len(predictions or ()), "spectrogram": 2.6, "timeline": 2.2}
    figure = Figure(figsize=(10, 0.6 + sum(heights[row] for row in rows)), layout="constrained")
    axes = dict(zip(rows, figure.subplots(len(rows), 1, squeeze=False,
                                          gridspec_kw={"height_ratios": [heights[row] for row in rows]})[:, 0]))
    if title:
        figure.suptitle(title)
    if predictions:
        draw_bars(axes["bars"], predictions)
    if spectrogram_row:
        seconds_per_frame = checkpoint["preprocessing"]["hop_length"] / checkpoint["preprocessing"]["sample_rate"]
        draw_spectrogram(figure, axes["spectrogram"], spectrogram, seconds_per_frame)
    if timeline and spectrogram_row:
        draw_timeline(axes["timeline"], window_probabilities, checkpoint, hop, seconds_per_frame)
        axes["timeline"].sharex(axes["spectrogram"])
    elif timeline:
        draw_window_timeline(axes["timeline"], window_probabilities, checkpoint)
    return figure


def draw_bars(ax, predictions):
    labels, values = zip(*predictions)
    bars = ax.barh(range(len(labels)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{p:.3f}" for p in values], padding=3, fontsize=9)
    ax.set(yticks=range(len(labels)), xlim=(0, 1.08), xlabel="probability (mean over windows)")
    ax.set_yticklabels(labels)
    ax.invert_yaxis()  # the most likely genre on top


def draw_spectrogram(figure, ax, spectrogram, seconds_per_frame):
    image = ax.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                      extent=(0, spectrogram.shape[1] * seconds_per_frame, 0, spectrogram.shape[0]))
    figure.colorbar(image, ax=ax, label="dB", pad=0.01)
    ax.set(xlabel="time (s)", ylabel="mel band", title="mel-spectrogram the model saw")


def draw_timeline(ax, window_probabilities, checkpoint, hop, seconds_per_frame):
    """The leading genres' probabilities per window, at each window's centre."""
    n_frames = checkpoint["model_args"]["n_frames"]
    centres = (np.arange(len(window_probabilities)) * hop + n_frames / 2) * seconds_per_frame
    leading = np.argsort(-window_probabilities.mean(axis=0), kind="stable")[:TIMELINE_GENRES]
    for j in leading:
        ax.plot(centres, window_probabilities[:, j], marker=".", label=checkpoint["class_names"][j])
    ax.set(xlabel="time (s, window centre)", ylabel="probability", ylim=(0, 1.02),
           title=f"genre probabilities per window ({n_frames * seconds_per_frame:.1f} s windows)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def draw_window_timeline(ax, window_probabilities, checkpoint):
    """An encoder checkpoint's timeline: the leading genres' probabilities of each window alone, by window."""
    p = checkpoint["preprocessing"]
    numbers = np.arange(1, len(window_probabilities) + 1)
    for j in np.argsort(-window_probabilities.mean(axis=0), kind="stable")[:TIMELINE_GENRES]:
        ax.plot(numbers, window_probabilities[:, j], marker=".", label=checkpoint["class_names"][j])
    ax.set(xlabel=f"window ({p['window_seconds']:g} s each, spread evenly over the track)", ylabel="probability",
           ylim=(0, 1.02), xticks=numbers, title=f"genre probabilities per window ({p['encoder']} windows)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def png_name(track, used):
    """song.png for song.mp3, or song-2.png, ... when another folder's song.mp3 took it (added to `used`)."""
    name, n = f"{track.stem}.png", 1
    while name in used:
        n += 1
        name = f"{track.stem}-{n}.png"
    used.add(name)
    return name


def png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_png(figure, path):
    """Write the figure to path as PNG, atomically."""
    data = png_bytes(figure)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(Path(path), lambda f: f.write(data))
