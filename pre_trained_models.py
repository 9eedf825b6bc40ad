"""Predict the genres of audio files with a trained model, or evaluate a checkpoint on FMA's test split.

Each track is turned into a mel-spectrogram by the same function training used
(utils.mel_spectrogram_db), cut into windows as wide as the model's input (hop: half a window by
default), and the genre probabilities of its windows are averaged. A track shorter than one window
is padded. Windows of many tracks are batched together; audio is decoded in background workers.

    python pre_trained_models.py --checkpoint=runs/crnn/best.pt song.mp3 album/
    python pre_trained_models.py --checkpoint=runs/crnn/best.pt --top_k=1 --json music/ > genres.jsonl
    python pre_trained_models.py --checkpoint=runs/crnn/best.pt --output=genres.csv --max_windows=8 music/
    # the original project's bare state_dicts need the model's name
    python pre_trained_models.py --checkpoint=../shared/reference/original_weights/CRNN.pt --model=crnn song.mp3
    # the original's use of this script: metrics.json and figures for the test split
    python pre_trained_models.py --checkpoint=runs/crnn/best.pt --evaluate=True --data_dir=data --subset=small

Exit status: 0 when every file was predicted, 1 when any failed (each failure has an error line on
stderr), 2 for a usage error (bad checkpoint, no audio files, ...).
"""
import allocator

allocator.keep_large_allocations()  # before torch allocates: evaluation keeps freed tensors (allocator.py)

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import models_utils
import utils
from main import pick_device  # cuda, then mps, then cpu; a clear error for an unusable device
from models import MODELS
from models_utils import CheckpointError

AUDIO_EXTENSIONS = {".mp3", ".wav", ".flac", ".ogg"}
TRUNCATED_FRACTION = 0.9  # decoding less than this fraction of the declared duration means truncated


class UsageError(Exception):
    """A problem the user must fix before anything can be predicted; str() is the whole message."""


# -----------------------------------------------------------------------------
# model loading

def load_predictor(path, model_name=None, device="cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint of this project or an original bare state_dict.

    Both are read with torch.load(weights_only=True), so a checkpoint can never run code.
    """
    try:
        checkpoint = models_utils.load_checkpoint(path, device)
    except CheckpointError:
        state_dict = read_bare_state_dict(path, device)
        if state_dict is None:
            raise
        checkpoint = original_checkpoint(state_dict, model_name, path)
    if model_name is not None and model_name != checkpoint["model"]:
        raise CheckpointError(f"{path} holds a {checkpoint['model']!r} model but --model={model_name} was given. "
                              f"Drop --model (this project's checkpoints name their model) or give the right one.")
    try:
        model = models_utils.model_from_checkpoint(checkpoint, device)
    except CheckpointError:
        fits = [name for name in MODELS if name != checkpoint["model"] and weights_fit(name, checkpoint)]
        hint = f" They fit --model={fits[0]}." if fits else ""
        raise CheckpointError(f"The weights in {path} do not fit model {checkpoint['model']!r} "
                              f"{checkpoint['model_args']}.{hint}") from None
    normalisation = checkpoint["normalisation"]
    if normalisation.get("mean") is not None:
        model = Standardised(model, normalisation["mean"], normalisation["std"])
    return model, checkpoint


class Standardised(torch.nn.Module):
    """A model trained on standardised dB (faithful=False) made to take raw dB like every other model."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model, self.mean, self.std = model, float(mean), float(std)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def read_bare_state_dict(path, device="cpu"):
    """The original project's checkpoint format: a plain dict of tensors without a "format" key, else None."""
    try:
        state_dict = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # load_checkpoint has already explained why the file cannot be read
        return None
    if (isinstance(state_dict, dict) and state_dict and "format" not in state_dict
            and all(isinstance(v, torch.Tensor) for v in state_dict.values())):
        return state_dict
    return None


def original_checkpoint(state_dict, model_name, path):
    """A checkpoint dict describing the original's bare weights: FMA small genres, faithful forward pass."""
    if model_name is None:
        fits = [name for name in MODELS if weights_fit(name, {"state_dict": state_dict, "model_args": {}})]
        hint = f" (these weights fit --model={fits[0]})" if fits else ""
        raise CheckpointError(f"{path} is a bare state_dict (the original project's format), which does not "
                              f"say which model it belongs to: add --model=cnn1d|crnn{hint}.")
    model_args = {"n_mels": utils.PREPROCESSING["n_mels"], "n_frames": utils.PREPROCESSING["n_frames"],
                  "n_classes": len(utils.FMA_SMALL_GENRES), "faithful": True}
    return {"model": model_name, "model_args": model_args, "state_dict": state_dict,
            "class_names": list(utils.FMA_SMALL_GENRES), "preprocessing": dict(utils.PREPROCESSING),
            "normalisation": {"mean": None, "std": None}}


def weights_fit(name, checkpoint):
    """Whether checkpoint's state_dict loads into model `name` (used only to suggest the right --model)."""
    try:
        MODELS[name](**checkpoint["model_args"]).load_state_dict(checkpoint["state_dict"])
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


# -----------------------------------------------------------------------------
# audio files and windows

def find_audio_files(inputs):
    """Files given by name (any extension) plus audio files found recursively in folders; each file once."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                print(f"warning: no {'/'.join(sorted(AUDIO_EXTENSIONS))} files in folder {item}", file=sys.stderr)
            files.extend(found)
        else:
            files.append(item)  # a missing file is reported by the worker with the others
    return list(dict.fromkeys(files))


def window_starts(total_frames, n_frames, hop, max_windows=None):
    """First frame of each window; at most max_windows of them, evenly spaced over the track.

    Windows start every `hop` frames while they fit entirely, so a tail shorter than `hop` is left out;
    an FMA clip (about 1,292 frames) gives exactly the one window the original used.
    """
    starts = list(range(0, max(total_frames - n_frames, 0) + 1, hop))
    if max_windows and len(starts) > max_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return starts


def track_windows(mel, n_frames, hop, max_windows=None):
    """(windows, n_mels, n_frames) float32 array of a whole-track mel-spectrogram; a short track is padded."""
    if mel.shape[1] < n_frames:
        return utils.fix_width(mel, n_frames)[0][None]
    return np.stack([mel[:, s:s + n_frames] for s in window_starts(mel.shape[1], n_frames, hop, max_windows)])


def check_complete(path, seconds):
    """AudioError when a file decodes to far less audio than its header declares: a truncated download
    decodes "successfully" to a short signal (SPEC section 2), which must not pass for a short track."""
    declared = sf.info(path).duration
    if seconds < TRUNCATED_FRACTION * declared:
        raise utils.AudioError(f"{path}: decodes to {seconds:.2f} s of audio but its header declares "
                               f"{declared:.2f} s: the file is truncated or corrupt. Download or copy it again.")


def silence_decoder_notes(worker_id):
    """DataLoader worker_init_fn: libmpg123 prints resync notes on stderr; failures get our own error line."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


class TrackWindows(Dataset):
    """Item i: (i, normalised windows of file i, None) or (i, None, reason it failed). Runs in DataLoader workers."""

    def __init__(self, files, preprocessing, hop, max_windows):
        self.files, self.preprocessing, self.hop, self.max_windows = files, preprocessing, hop, max_windows

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        if not path.is_file():
            return i, None, "file not found; check the path"
        try:
            audio = utils.load_audio(path, self.preprocessing["sample_rate"])
            check_complete(path, len(audio) / self.preprocessing["sample_rate"])
            mel = utils.mel_spectrogram_db(audio, self.preprocessing)
        except utils.AudioError as error:  # its message starts with the path, which the error line shows
            return i, None, str(error).removeprefix(f"{path}: ")
        except Exception as error:  # one undecodable file must not stop the others
            return i, None, f"could not decode it as audio ({type(error).__name__}: {error})".strip()
        windows = track_windows(mel, self.preprocessing["n_frames"], self.hop, self.max_windows)
        return i, torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)), None


# -----------------------------------------------------------------------------
# prediction

def predict(model, checkpoint, files, hop=None, max_windows=None, batch_size=32, device="cpu", num_workers=0):
    """Yield (path, probabilities or None, number of windows, error or None) for each file, in order.

    Windows from consecutive tracks share batches; a track's probabilities are the mean of its windows'.
    """
    preprocessing = checkpoint["preprocessing"]
    dataset = TrackWindows(files, preprocessing, hop or preprocessing["n_frames"] // 2, max_windows)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=keep_item,
                        worker_init_fn=silence_decoder_notes)
    tracks = []    # per file: [probability sum, windows still queued, windows, error]
    queue = []     # (file index, window) waiting for a batch
    emitted = 0
    for i, windows, error in loader:
        tracks.append([0.0, 0, 0, error] if windows is None else [0.0, len(windows), len(windows), None])
        queue.extend((i, w) for w in ([] if windows is None else windows))
        while len(queue) >= batch_size:
            run_batch(model, queue[:batch_size], tracks, device)
            queue = queue[batch_size:]
        emitted = yield from finished_tracks(files, tracks, emitted)
    if queue:
        run_batch(model, queue, tracks, device)
    yield from finished_tracks(files, tracks, emitted)


def keep_item(item):
    """DataLoader collate_fn: items are already whole tracks (a module function so workers can pickle it)."""
    return item


@torch.no_grad()
def run_batch(model, queue, tracks, device):
    indices, windows = zip(*queue)
    _, probabilities = model(torch.stack(windows).to(device))
    for i, p in zip(indices, probabilities.double().cpu().numpy()):
        tracks[i][0] = tracks[i][0] + p
        tracks[i][1] -= 1


def finished_tracks(files, tracks, emitted):
    """Yield the tracks, from index `emitted` on, whose windows have all been through the model."""
    while emitted < len(tracks) and tracks[emitted][1] == 0:
        total, _, n_windows, error = tracks[emitted]
        yield files[emitted], (None if error else total / n_windows), n_windows, error
        emitted += 1
    return emitted


# -----------------------------------------------------------------------------
# output

def top_k(probabilities, class_names, k):
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[j], float(probabilities[j])) for j in order]


def table_line(path, predictions, path_width, genre_width):
    return f"{str(path):<{path_width}}" + "".join(f"  {genre:<{genre_width}} {p:5.3f}" for genre, p in predictions)


def write_csv(path, rows, class_names):
    """All probabilities per track (failed tracks with their error), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "windows", *class_names, "error"])
    for track, probabilities, n_windows, error in rows:
        values = [""] * len(class_names) if probabilities is None else [f"{p:.6f}" for p in probabilities]
        writer.writerow([str(track), n_windows, *values, error or ""])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    utils.atomic_write(Path(path), lambda f: f.write(text.getvalue().encode()))


def run_prediction(args):
    """Predict every file named on the command line; returns the exit status."""
    device = pick_device(args.device)
    model, checkpoint = load_predictor(args.checkpoint, args.model, device)
    files = find_audio_files(args.inputs)
    if not files:
        raise UsageError(f"No audio files to predict in {' '.join(args.inputs)}: give audio files or folders "
                         f"containing {', '.join(sorted(AUDIO_EXTENSIONS))} files.")
    class_names = checkpoint["class_names"]
    workers = min(args.num_workers, len(files))
    path_width, genre_width = max(len(str(f)) for f in files), max(map(len, class_names))
    rows, failed = [], 0
    results = predict(model, checkpoint, files, args.hop, args.max_windows, args.batch_size, device, workers)
    for track, probabilities, n_windows, error in tqdm(results, total=len(files), unit="track",
                                                       disable=len(files) < 10 or None, file=sys.stderr):
        rows.append((track, probabilities, n_windows, error))
        if error:
            failed += 1
            tqdm.write(f"error: {track}: {error}", file=sys.stderr)
        elif args.json:
            predictions = [{"genre": genre, "probability": round(p, 6)}
                           for genre, p in top_k(probabilities, class_names, args.top_k)]
            tqdm.write(json.dumps({"path": str(track), "predictions": predictions}), file=sys.stdout)
        else:
            line = table_line(track, top_k(probabilities, class_names, args.top_k), path_width, genre_width)
            tqdm.write(line, file=sys.stdout)
    if args.output:
        write_csv(args.output, rows, class_names)
    if failed:
        print(f"{failed} of {len(files)} files could not be predicted (see the error lines above).", file=sys.stderr)
    return 1 if failed else 0


# -----------------------------------------------------------------------------
# evaluation on FMA's test split

def run_evaluation(args):
    """Evaluate the checkpoint on the test split; write metrics.json and figures like training does.

    The test clips go through the training pipeline (cache, first n_frames, broken clips reported),
    so the numbers compare with main.py's test results, not with the windowed prediction above.
    """
    import test  # the project's test.py (python and pytest.ini put the project root first on sys.path)

    if not args.data_dir:
        raise UsageError("--evaluate=True needs --data_dir: the folder holding fma_metadata/ and "
                         "fma_<subset>/ (the layout download_data.sh writes).")
    device = pick_device(args.device)
    model, checkpoint = load_predictor(args.checkpoint, args.model, device)
    tracks, class_names = utils.load_metadata(args.data_dir, args.subset)
    if list(class_names) != list(checkpoint["class_names"]):
        raise UsageError(f"The checkpoint was trained on the genres {checkpoint['class_names']} but "
                         f"{args.data_dir} (subset {args.subset}) has {class_names}: evaluate it on the "
                         f"subset it was trained on (--subset).")
    test_tracks = utils.split_tracks(tracks, mode=args.split)["test"]
    cache = utils.build_cache(test_tracks, args.cache_dir or Path(args.data_dir) / "cache", args.subset,
                              preprocessing=checkpoint["preprocessing"])
    # make_loaders wants three splits; only "test" is used. faithful=True feeds raw dB (the model
    # standardises itself when its checkpoint says so), so no statistics are computed.
    loaders, _ = utils.make_loaders(cache, dict.fromkeys(("train", "val", "test"), test_tracks),
                                    args.batch_size, faithful=True, device=device)
    result = test.test(model, loaders["test"], device)
    scores = models_utils.classification_metrics(result["targets"], result["probabilities"], class_names)
    metrics = {"test_accuracy": scores.pop("accuracy"), "test_loss": result["loss"], **scores,
               "test_examples": result["examples"], "checkpoint": str(args.checkpoint),
               "model": checkpoint["model"], "epoch": checkpoint.get("epoch"), "split": args.split,
               "subset": args.subset}
    out_dir = Path(args.out_dir or Path(args.checkpoint).parent / "evaluation")
    models_utils.save_report(out_dir, metrics, result["targets"], result["probabilities"], class_names)
    print(f"test split of FMA {args.subset} ({args.split}): loss {result['loss']:.4f}, accuracy "
          f"{metrics['test_accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f} on {result['examples']} clips; "
          f"metrics.json and figures in {out_dir}")
    return 0


# -----------------------------------------------------------------------------
# command line

BOOLEAN_FLAGS = ("json", "evaluate")


def expand_boolean_flags(argv, parser):
    """--json=True / --json=false (main.py's --key=value style) -> --json / --no-json for argparse."""
    expanded = []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name.lstrip("-") in BOOLEAN_FLAGS and name.startswith("--") and value:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                parser.error(f"{name} takes True or False, got {value!r}")
            arg = name if value.lower() in ("true", "1", "yes") else "--no-" + name[2:]
        expanded.append(arg)
    return expanded


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR", help="audio files and folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="a .pt written by main.py, or an original bare state_dict")
    parser.add_argument("--model", choices=sorted(MODELS), help="model of a bare state_dict (original weights)")
    parser.add_argument("--top_k", type=int, default=3, help="genres shown per track")
    parser.add_argument("--hop", type=int, help="frames between window starts (default: half a window)")
    parser.add_argument("--max_windows", type=int, help="at most this many evenly spaced windows per track")
    parser.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                        help="one JSON object per line (also --json=True)")
    parser.add_argument("--output", help="CSV file for all genre probabilities per track")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--num_workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)),
                        help="audio decoding processes (default: one core left for the model)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=False,
                        help="evaluate on the test split of --data_dir instead of predicting files")
    parser.add_argument("--data_dir", help="with --evaluate: folder with fma_metadata/ and fma_<subset>/")
    parser.add_argument("--subset", default="small", help="with --evaluate: small, medium, large or full")
    parser.add_argument("--split", default="official", choices=["official", "random"], help="with --evaluate")
    parser.add_argument("--cache_dir", help="with --evaluate: spectrogram cache (default: <data_dir>/cache)")
    parser.add_argument("--out_dir", help="with --evaluate: report folder (default: <checkpoint folder>/evaluation)")
    args = parser.parse_args(expand_boolean_flags(sys.argv[1:] if argv is None else argv, parser))
    for name in ("top_k", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("hop", "max_windows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.evaluate and not args.inputs:
        parser.error("give at least one audio file or folder to predict (or --evaluate=True --data_dir=...)")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return run_evaluation(args) if args.evaluate else run_prediction(args)
    except (UsageError, CheckpointError, utils.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
