"""Predict the genres of audio files with a trained model, write their embeddings, export the model to
ONNX, or evaluate a checkpoint on FMA's test split. The command line only: the work is in fma_genres/inference/:
predict.py (windows, batching, embeddings), export.py (ONNX) and evaluation.py (--evaluate).

Each track is cut into windows as wide as the model's input (hop: half a window by default), each
window's own stretch of audio is turned into dB by training's clip function (utils.mel_spectrogram_db:
top_db relative to that window), and the genre probabilities of its windows are averaged. A track no
longer than one window (an FMA clip) gets exactly the input training gave it; a shorter one is padded.
Audio is decoded as a stream in background workers (audio_windows.py), so memory does not grow with a
track's length, and --max_windows decodes only the windows it keeps. Windows of many tracks are
batched together. --evaluate scores the test split the checkpoint was trained with.

A multi-label checkpoint (main.py's target=genres_all) prints, per track, the genres at or above their
thresholds (tuned on validation) with their place in FMA's tree, most specific first ("Rock > Punk
0.71"); --top_k=K shows the K most probable instead, whatever the thresholds; --json and --output carry
every genre's probability; --evaluate reports the multi-label metrics; an ensemble of multi-label
checkpoints averages their probabilities and uses their mean thresholds (fma_genres/tasks.py).

    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt song.mp3 album/
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --top_k=1 --json music/ > genres.jsonl
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --output=genres.csv --max_windows=8 music/
    # one PNG per track: top-k genres, the mel-spectrogram the model saw, probabilities per window (plots.py)
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --plot=figures/ song.mp3 album/
    # the original project's bare state_dicts need the model's name
    python pre_trained_models.py --checkpoint=../shared/reference/original_weights/CRNN.pt --model=crnn song.mp3
    # the original's use of this script: metrics.json and figures for the test split
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --evaluate=True   # its own data_dir and split
    # per track, the input of the model's last Linear layer averaged over windows (fma_genres/inference/predict.py lists the sizes)
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --embeddings=music.npz music/
    # an ensemble: the mean of the members' probabilities (same target and genres; --evaluate: same split); members of
    # other preprocessing (a probe with a CNN) each predict a track from their own windows, and their track means are averaged
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --checkpoint=runs/cnn1d/latest/best.pt song.mp3
    # raw mel dB in, probabilities out (multi-label: sigmoids, thresholds and genre tree in the metadata);
    # checked with onnxruntime against PyTorch before it is written. A probe: audio windows in where its encoder
    # exports (Dasheng), else its head on the encoder's embeddings (it says so; metadata input_kind)
    python pre_trained_models.py --checkpoint=runs/crnn/latest/best.pt --export=crnn.onnx
    # zero-shot with CLAP, no checkpoint: scores against "This audio is a {genre} song." (docs/encoders.md)
    python pre_trained_models.py --zero_shot=True --genres=Rock,Jazz,Folk song.mp3 album/
    python pre_trained_models.py --zero_shot=True --evaluate=True --data_dir=data --subset=small

Exit status: 0 when every file was predicted (or embedded, or the export verified), 1 when any failed
(each failure has an error line on stderr), 2 for a usage error (bad checkpoint, no audio files, ...).
"""
import argparse
import csv
import io
import sys
from pathlib import Path

from tqdm import tqdm

import utils
from fma_genres import configurator, tasks
from fma_genres.data import datasets, fma
from fma_genres.inference import evaluation, export, predict, zero_shot
from fma_genres.reporting import plots
from fma_genres.runtime import allocator, atomic, devices, errors
from fma_genres.runtime.errors import ConfigError, UsageError
from models import MODELS
from models_utils import CheckpointError

MAIN_PY = Path(__file__).with_name("main.py")  # read for its defaults (main_split_defaults), never imported


# -----------------------------------------------------------------------------
# output

def write_csv(path, rows, class_names):
    """All probabilities per track (failed tracks with their error), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "windows", *class_names, "error"])
    for track, probabilities, n_windows, error in rows:
        values = [""] * len(class_names) if probabilities is None else [f"{p:.6f}" for p in probabilities]
        writer.writerow([str(track), n_windows, *values, error or ""])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(Path(path), lambda f: f.write(text.getvalue().encode()))


def audio_files(inputs, task):
    files = predict.find_audio_files(inputs)
    if not files:
        raise UsageError(f"No audio files to {task} in {' '.join(inputs)}: give audio files or folders "
                         f"containing {', '.join(sorted(utils.AUDIO_EXTENSIONS))} files.")
    return files


def each_track(args, model, checkpoint, files, device, outputs=None, on_window=None):
    """inference.predict's results, with a progress bar on many files and an error line for each failure."""
    reading = predict.Reading(args.hop, args.max_windows, args.batch_size, min(args.num_workers, len(files)))
    results = predict.predict(model, checkpoint, files, reading, device, outputs, on_window)
    for track, vector, n_windows, error in tqdm(results, total=len(files), unit="track",
                                                disable=len(files) < 10 or None, file=sys.stderr):
        if error:
            tqdm.write(f"error: {track}: {error}", file=sys.stderr)
        yield track, vector, n_windows, error


def exit_status(failed, total, what):
    if failed:
        print(f"{failed} of {total} files could not be {what} (see the error lines above).", file=sys.stderr)
    return 1 if failed else 0


def load_members(args, device, genres=None):
    """[(path, model, checkpoint)] of every --checkpoint given, or [(its name, model, checkpoint)] of
    --zero_shot's CLAP over ``genres`` (default: --genres's, zero_shot.chosen_genres)."""
    if args.zero_shot:
        genres = genres or zero_shot.chosen_genres(args.genres, args.subset, args.data_dir)
        model, checkpoint = zero_shot.load_zero_shot(genres, args.prompt, args.encoder_weights, device)
        return [(f"zero-shot CLAP {model.encoder.weights}", model, checkpoint)]
    return [(path, *predict.load_predictor(path, args.model, device, args.encoder_weights)) for path in args.checkpoints]


def as_one_model(members):
    """(model, checkpoint): the only member, or the members' ensemble (inference.ensemble)."""
    if len(members) == 1:
        return members[0][1:]
    try:
        return predict.ensemble(members)
    except ValueError as error:
        raise UsageError(str(error)) from None


def spectrogram_model(model, checkpoint, what):
    """UsageError for a probe checkpoint, or a mixed ensemble, in a mode made for mel-spectrogram windows."""
    if not predict.reads_spectrograms(model, checkpoint):
        kind = ("an ensemble of members with different preprocessing" if isinstance(model, predict.TrackEnsemble)
                else f"a {checkpoint['model']} model on {checkpoint['preprocessing']['encoder']}'s audio windows")
        raise UsageError(f"{what}; this is {kind}, which has none: drop --plot (the table, --json, --output "
                         f"and --evaluate work with it).")


def run_prediction(args):
    """Predict every file named on the command line (with an ensemble's mean probabilities); returns the exit status."""
    device = devices.pick_device(args.device)
    model, checkpoint = as_one_model(load_members(args, device))
    files = audio_files(args.inputs, "predict")
    class_names, task = checkpoint["class_names"], tasks.of(checkpoint)
    widths = max(len(str(f)) for f in files), max(map(len, class_names))
    if args.plot:
        spectrogram_model(model, checkpoint, "--plot draws the spectrogram a model saw")
    hop = (args.hop or predict.default_hop(checkpoint)) if args.plot else None
    recorder = plots.WindowRecorder(hop) if args.plot else None
    rows, figure_names = [], set()
    for track, probabilities, n_windows, error in each_track(args, model, checkpoint, files, device,
                                                             predict.window_outputs(checkpoint), recorder):
        rows.append((track, probabilities, n_windows, error))
        windows = recorder.pop(len(rows) - 1) if recorder else None  # a failed file's windows are dropped too
        if error:
            continue
        if recorder:
            figure = plots.track_figure(track.name, *windows, checkpoint, hop,
                                        predict.shown_genres(probabilities, checkpoint, args.top_k))
            plots.save_png(figure, Path(args.plot) / plots.png_name(track, figure_names))
        tqdm.write(task.prediction_line(track, probabilities, checkpoint, args.top_k, args.json, widths), file=sys.stdout)
    if args.output:
        write_csv(args.output, rows, class_names)
    return exit_status(sum(row[3] is not None for row in rows), len(files), "predicted")


def run_embeddings(args):
    """Write the embedding of every file named on the command line to args.embeddings; returns the exit status."""
    device = devices.pick_device(args.device)
    model, checkpoint = predict.load_predictor(args.checkpoint, args.model, device, args.encoder_weights)
    files = audio_files(args.inputs, "embed")
    rows = [(track, vector, n_windows) for track, vector, n_windows, error
            in each_track(args, model, checkpoint, files, device, predict.embeddings) if error is None]
    if rows:
        predict.save_embeddings(args.embeddings, rows, checkpoint)
        what = ("the probe's mix of the encoder's layers over the track's windows, what its head reads"
                if predict.reads_encoder(checkpoint) else
                f"the input of {checkpoint['model']}'s last Linear layer, averaged over windows")
        print(f"{args.embeddings}: {len(rows)} embeddings of size {rows[0][1].size} ({what})", file=sys.stderr)
    return exit_status(len(files) - len(rows), len(files), "embedded")


def run_export(args):
    """Write the checkpoint's model as ONNX to args.export, checked against PyTorch; returns the exit status."""
    model, checkpoint = predict.load_predictor(args.checkpoint, args.model, encoder_weights=args.encoder_weights)
    try:
        difference, graph_input, note = export.export_onnx(model, checkpoint, args.export)
    except export.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if graph_input is export.MEL:
        forward = "faithful" if checkpoint["model_args"].get("faithful", True) else "corrected"
        what = f"{checkpoint['model']} ({forward} forward pass), input mel_db"
    else:
        what = f"{checkpoint['model']} on {checkpoint['preprocessing']['encoder']}, input {graph_input.name}"
    if note:
        print(f"note: {note}.")
    print(f"{args.export}: {what}; onnxruntime vs PyTorch: max abs probability difference {difference:.1e} "
          f"(limit {export.MAX_DIFFERENCE:.0e})")
    return 0


# -----------------------------------------------------------------------------
# evaluation on the test split (fma_genres/inference/evaluation.py)

def main_split_defaults():
    """main.py's defaults of the keys that define the split, read from its text (an entry point is never imported)."""
    defaults = configurator.script_defaults(MAIN_PY)
    return {key: defaults[key] for key in configurator.keys_where("defines_split", defaults)}


def run_evaluation(args):
    """Evaluate the checkpoint (or the ensemble of --checkpoint's) on the test split it was trained with."""
    device = devices.pick_device(args.device)
    if args.zero_shot:
        return run_zero_shot_evaluation(args, device)
    members = load_members(args, device)
    args.data_dir = args.data_dir or evaluation.recorded_data_dir(members)
    settings = evaluation.shared_split_settings(args, members, main_split_defaults())
    return evaluation.report(args, members, *as_one_model(members), settings, device)


def run_zero_shot_evaluation(args, device):
    """Score --zero_shot's CLAP on the test split of --data_dir (its genres are the dataset's): trained on
    nothing, any split is fair, so the command line's split keys (or main.py's defaults) choose it."""
    if not args.data_dir:
        raise UsageError("--zero_shot=True --evaluate=True needs --data_dir: the folder holding fma_metadata/ and "
                         "fma_<subset>/ (the layout download_data.sh writes), or a folder or CSV dataset.")
    defaults = main_split_defaults()
    settings = {**defaults, **evaluation.given_settings(args, defaults)}
    data = evaluation.test_data(args, {}, settings)
    members = load_members(args, device, data.class_names)
    args.out_dir = args.out_dir or str(Path("runs") / "zero_shot" / "evaluation")
    return evaluation.report(args, members, *members[0][1:], settings, device, data)


# -----------------------------------------------------------------------------
# command line

BOOLEAN_FLAGS = ("json", "evaluate", "zero_shot")


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
    parser.add_argument("--checkpoint", action="append", dest="checkpoints", default=[],
                        help="a .pt written by main.py, or an original bare state_dict; several: their ensemble")
    parser.add_argument("--zero_shot", action=argparse.BooleanOptionalAction, default=False,
                        help="no checkpoint: CLAP scores each genre's text prompt (--encoder_weights: CLAP's, "
                             f"default {zero_shot.DEFAULT_WEIGHTS})")
    parser.add_argument("--genres", help="with --zero_shot: Rock,Jazz,... or tree (genres.csv's; needs --data_dir); "
                                         "default: FMA's top genres of --subset (small: 8, medium: 16)")
    parser.add_argument("--prompt", default=zero_shot.DEFAULT_PROMPT,
                        help="with --zero_shot: the text template, {genre} is each genre's name (default: %(default)r)")
    parser.add_argument("--model", choices=sorted(MODELS), help="model of a bare state_dict (original weights)")
    parser.add_argument("--top_k", type=int, help=f"genres shown per track (default {tasks.DEFAULT_TOP_K}); multi-label: "
                                                  f"the K most probable instead of those above their thresholds")
    parser.add_argument("--encoder_weights", help="a probe's encoder weights (hub name, folder or .pt; default: those "
                                                  "its checkpoint records), or --zero_shot's CLAP weights")
    parser.add_argument("--hop", type=int, help="frames between window starts (default: half a window; a probe's "
                                                "windows are its encoder's, spread evenly)")
    parser.add_argument("--max_windows", type=int, help="at most this many evenly spaced windows per track")
    parser.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                        help="one JSON object per line (also --json=True)")
    parser.add_argument("--output", help="CSV file for all genre probabilities per track")
    parser.add_argument("--plot", metavar="DIR", help="write a PNG per track into DIR: genres, spectrogram, timeline")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--num_workers", type=int, default=max(1, min(8, devices.available_cpus() - 1)),
                        help="audio decoding processes (default: one core left for the model)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--embeddings", metavar="FILE.npz", help="write each file's embedding instead of its genres")
    parser.add_argument("--export", metavar="FILE.onnx", help="write the model as ONNX (no audio files needed)")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=False,
                        help="evaluate on the test split of --data_dir instead of predicting files")
    parser.add_argument("--data_dir", help="with --evaluate: folder with fma_metadata/ and fma_<subset>/, or the "
                                           "genre folder or CSV of a folder or csv dataset (default: the checkpoint's)")
    # The test split is the checkpoint's own (its training config); these are for the original's weights
    # and --zero_shot (trained on nothing: any split, main.py's defaults unless given).
    parser.add_argument("--dataset", choices=sorted(datasets.DATASETS),
                        help="with --evaluate: the kind of --data_dir (default: the checkpoint's; --zero_shot: fma)")
    parser.add_argument("--subset", choices=fma.SUBSETS, help="with --evaluate: FMA subset (default: the checkpoint's)")
    parser.add_argument("--split", choices=fma.SPLIT_MODES, help="with --evaluate: (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, help="with --evaluate and a random split (default: the checkpoint's)")
    parser.add_argument("--train_size", type=float, help="with --evaluate and a random split (default: the checkpoint's)")
    parser.add_argument("--cache_dir", help="with --evaluate: spectrogram cache (default: <data_dir>/cache)")
    parser.add_argument("--out_dir", help="with --evaluate: report folder (default: <checkpoint folder>/evaluation; "
                                          "--zero_shot: runs/zero_shot/evaluation)")
    args = parser.parse_args(expand_boolean_flags(sys.argv[1:] if argv is None else argv, parser))
    args.checkpoint = args.checkpoints[0] if args.checkpoints else None
    check_zero_shot(args, parser)
    if len(args.checkpoints) > 1 and (args.embeddings or args.export):
        parser.error(f"--{'embeddings' if args.embeddings else 'export'} takes one --checkpoint, not an ensemble")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    for name in ("top_k", "hop", "max_windows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    modes = [f"--{mode}" for mode in ("evaluate", "embeddings", "export") if getattr(args, mode)]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} are separate tasks: give one of them per command")
    if args.plot and (modes or args.max_windows):
        parser.error(f"--plot draws the genres predicted for whole tracks: drop {(modes or ['--max_windows'])[0]}")
    if args.export and args.inputs:
        parser.error("--export needs no audio files: drop them")
    if not (args.evaluate or args.export or args.inputs):
        parser.error("give at least one audio file or folder to predict (or --evaluate=True --data_dir=...)")
    return args


def check_zero_shot(args, parser):
    """Exactly one of --checkpoint and --zero_shot; zero-shot's own keys only with it, and only where it fits."""
    if not args.zero_shot:
        if not args.checkpoints:
            parser.error("give --checkpoint=FILE.pt (a model trained by main.py), or --zero_shot=True to score "
                         "genres with CLAP's text prompts and no training")
        given = [f"--{key}" for key in ("genres", "prompt") if getattr(args, key) != parser.get_default(key)]
        if given:
            parser.error(f"{given[0]} is for --zero_shot=True: a checkpoint's genres are those it was trained on")
        return
    if args.model or args.checkpoints:
        parser.error("--zero_shot=True scores genres with CLAP's text prompts and needs no checkpoint: drop "
                     f"{'--checkpoint' if args.checkpoints else '--model'} (or drop --zero_shot to use the checkpoint)")
    modes = [f"--{mode}" for mode in ("embeddings", "export", "plot") if getattr(args, mode)]
    if modes:
        parser.error(f"{modes[0]} needs a trained checkpoint; --zero_shot=True predicts genres (table, --json, "
                     f"--output) and --evaluate: drop {modes[0]}")
    if args.evaluate and args.genres:
        parser.error("with --zero_shot=True --evaluate=True the genres are those of the test split's dataset "
                     f"(--data_dir, --subset): drop --genres={args.genres}")
    try:
        zero_shot.check_prompt(args.prompt)
    except UsageError as error:
        parser.error(str(error))


def main(argv=None):
    args = parse_args(argv)
    run = (run_evaluation if args.evaluate else run_export if args.export
           else run_embeddings if args.embeddings else run_prediction)
    try:
        return run(args)
    except (UsageError, ConfigError, CheckpointError, errors.DataError, errors.DiskFullError) as error:  # --device too
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    allocator.keep_large_allocations()  # before the model allocates: evaluation keeps freed tensors (allocator.py)
    sys.exit(main())
