"""A local web page for trying a trained model on your own music: upload songs (several at once) or record
from the microphone, and see for each its top genres as bars, the mel-spectrogram the model saw, for a
track longer than one window the genre probabilities over time, and an audio player. A header names the
checkpoint's model, genres and training summary. An encoder checkpoint (a probe on a pretrained encoder, or
the encoder fine-tuned with it: main.py's encoder=...) reads windows of audio: its page shows no spectrogram (the header says so) and its timeline is the
probabilities of each window alone. Built with Gradio, an optional dependency:

    pip install -r requirements-app.txt
    python app.py --checkpoint=runs/crnn/latest/best.pt          # then open http://127.0.0.1:7860
    python app.py --checkpoint=runs/crnn/latest/best.pt --port=8080 --max_mb=50 --top_k=5

The page is served on 127.0.0.1 only (this computer), with Gradio's analytics and share links off, so
nothing leaves the machine. The genres come from pre_trained_models.py's own code (load_predictor,
window_outputs, predict and shown_genres of fma_genres/inference/predict.py), so a file gets exactly the
genres `python pre_trained_models.py --checkpoint=... FILE` prints; the pictures are plots.py's, as --plot
draws them. A file over --max_mb is refused by the server while it arrives (nothing is stored);
one that cannot be used (not audio, empty, truncated) gets a message on the page, and the server goes on
serving. Each upload predicts only its new files, below the session's earlier results; a session's
uploads are deleted when its tab closes. Uploads are predicted one at a time through a queue of at
most --max_queue waiting; beyond it a user is told the page is busy.
"""
import argparse
import html
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import models_utils
from fma_genres import tasks
from fma_genres.inference import predict
from fma_genres.reporting import plots
from fma_genres.runtime import allocator, devices
from fma_genres.runtime.errors import ConfigError
from models import MODELS
from models_utils import CheckpointError

INSTALL_HINT = "pip install -r requirements-app.txt"
# Gradio's default theme loads its fonts from Google; the page must work offline.
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
CSS = """
.genres { display: grid; grid-template-columns: max-content 1fr max-content; gap: 4px 10px; align-items: center; }
.genre-bar { height: 14px; background: #3b82f6; border-radius: 3px; }
.track-error { color: #b91c1c; font-weight: 600; }
"""


# -----------------------------------------------------------------------------
# what the page shows, without Gradio (tested directly)

def checkpoint_summary(checkpoint, path):
    """The header: model, genres and how the checkpoint was trained (its config, training state and metrics.json)."""
    config, training = checkpoint.get("config") or {}, checkpoint.get("training") or {}
    lines = [f"{model_line(checkpoint)} from `{path}`",
             f"{len(checkpoint['class_names'])} genres: {', '.join(checkpoint['class_names'])}"]
    trained = []
    if config.get("subset"):
        trained.append(f"trained on {models_utils.describe_data(config)}")
    if training.get("epoch") is not None:
        trained.append(f"epoch {training['epoch']}")
    if training.get("best_val_score") is not None:
        trained.append(f"best validation {config.get('select_metric', 'accuracy')} {training['best_val_score']:.3f}")
    metrics = read_metrics(Path(path).parent / "metrics.json")
    if metrics.get("test_accuracy") is not None and metrics.get("macro_f1") is not None:
        trained.append(f"test accuracy {metrics['test_accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    lines.append(", ".join(trained) if trained else "no training record (e.g. the original project's weights)")
    return "  \n".join(lines)


def model_line(checkpoint):
    """The header's model: a CNN and its forward pass, or an encoder checkpoint's head, encoder and weights."""
    if predict.reads_encoder(checkpoint):
        p = checkpoint["preprocessing"]
        return (f"**{checkpoint['model']}** ({checkpoint['model_args'].get('head')} head on the {p['encoder']} encoder, "
                f"weights `{p['encoder_weights']}`; {p['window_seconds']:g} s windows of audio, no mel-spectrogram "
                f"to show)")
    forward = "faithful" if checkpoint["model_args"].get("faithful", True) else "corrected"
    return f"**{checkpoint['model']}** ({forward} forward pass)"


def read_metrics(path):
    """metrics.json beside the checkpoint, or {} when there is none (or it cannot be read: the header is optional)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def analyse(paths, model, checkpoint, top_k=None, device="cpu"):
    """One dict per file: name, path, error (None when predicted), predictions [(label, p)] and figure."""
    paths = [Path(p) for p in paths]
    results = [{"name": p.name, "path": str(p), "error": None, "predictions": None, "figure": None} for p in paths]
    # pre_trained_models.py's default; an encoder's windows are its own (audio: no spectrogram is drawn)
    hop = None if predict.reads_encoder(checkpoint) else predict.default_hop(checkpoint)
    recorder = plots.WindowRecorder(hop)
    # num_workers=0: the windows are decoded in this process (the page serves one request at a time)
    predicted = predict.predict(model, checkpoint, paths, predict.Reading(hop), device=device,
                                  outputs=predict.window_outputs(checkpoint), on_window=recorder)
    for k, (result, (_, probabilities, _, error)) in enumerate(zip(results, predicted)):
        windows = recorder.pop(k)
        if error:
            result["error"] = error
            continue
        result["predictions"] = predict.shown_genres(probabilities, checkpoint, top_k)
        result["figure"] = plots.track_figure(None, *windows, checkpoint, hop)  # the page names the track; None:
        # nothing to draw (an encoder checkpoint's track of one window)
    return results


def new_files(paths, shown):
    """The uploaded paths not yet analysed in this session (the file input keeps every earlier upload)."""
    seen = {result["path"] for result in shown}
    return [str(p) for p in paths or [] if str(p) not in seen]


class SessionUploads:
    """The files each browser session uploaded, deleted when the session ends (its tab closes), so a
    long-running page keeps no one's music. Gradio stores an upload as <temp dir>/<content hash>/<name>
    (with a converted .wav beside a recording), so the folder goes, unless another session uploaded
    the same content."""

    def __init__(self):
        self.folders, self.lock = {}, threading.Lock()

    def add(self, session, paths):
        with self.lock:
            self.folders.setdefault(session, set()).update(str(Path(p).parent) for p in paths)

    def end(self, session):
        with self.lock:
            mine = self.folders.pop(session, set())
            kept = set().union(*self.folders.values())
        for folder in mine - kept:
            shutil.rmtree(folder, ignore_errors=True)


def genre_bars(predictions):
    """The top-k genres as HTML bars (text in the page, so it can be read, copied and tested)."""
    rows = "".join(f'<span class="genre-name">{html.escape(label)}</span>'
                   f'<div class="genre-bar" style="width: {100 * p:.1f}%"></div>'
                   f'<span class="genre-probability">{p:.3f}</span>' for label, p in predictions)
    return f'<div class="genres">{rows or "no genre above its threshold"}</div>'


def error_html(result):
    return f'<p class="track-error">{html.escape(result["name"])}: {html.escape(result["error"])}</p>'


# -----------------------------------------------------------------------------
# the page

def build_page(gr, model, checkpoint, args):
    """The Gradio Blocks: header, inputs (files, microphone), then one section per analysed file, kept for
    the browser session (gr.State); a session's uploads are deleted when it ends."""
    uploads = SessionUploads()

    def add_results(paths, shown, session, name=None):
        todo = new_files(paths, shown)
        uploads.add(session, todo)
        results = analyse(todo, model, checkpoint, args.top_k, args.device)
        for result in results if name else []:
            result["name"] = name
        return shown + results

    def on_files(paths, shown, request: gr.Request):
        return add_results(paths, shown, request.session_hash)

    def on_recording(path, shown, request: gr.Request):
        return add_results([path] if path else [], shown, request.session_hash, "microphone recording")

    def on_end(request: gr.Request):
        uploads.end(request.session_hash)

    # delete_cache: uploads no session claimed (refused by a full queue, then abandoned) go after a day,
    # and every upload when the server stops
    with gr.Blocks(title="Music genres", delete_cache=(3600, 86400)) as page:
        gr.Markdown("## Music genres\n" + checkpoint_summary(checkpoint, args.checkpoint), elem_id="checkpoint")
        with gr.Row():
            files = gr.File(label=f"Audio files (up to {args.max_mb:g} MB each)", file_count="multiple",
                            type="filepath", elem_id="audio_files")
            microphone = gr.Audio(label="Or record", sources=["microphone"], type="filepath", elem_id="microphone")
        results = gr.State([])
        # one queue for both inputs; progress on the input: "queue: 2/3" while waiting, then "processing"
        files.upload(on_files, inputs=[files, results], outputs=results, show_progress_on=files,
                     concurrency_id="predict")
        microphone.stop_recording(on_recording, inputs=[microphone, results], outputs=results,
                                  show_progress_on=microphone, concurrency_id="predict")
        page.unload(on_end)

        @gr.render(inputs=results)
        def show(results):
            for result in results:
                with gr.Column(elem_classes="track"):
                    if result["error"]:
                        gr.HTML(error_html(result))
                        continue
                    gr.Markdown(f"### {result['name']}")
                    gr.HTML(genre_bars(result["predictions"]))
                    gr.Audio(value=result["path"], label=result["name"], interactive=False)
                    if result["figure"] is not None:
                        gr.Plot(value=result["figure"], format="png", show_label=False)
    # One prediction at a time: it already uses every core. Waiting uploads beyond max_queue are refused
    # at once (the page says "This application is currently busy. Please try again.") rather than hanging.
    return page.queue(max_size=args.max_queue, default_concurrency_limit=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt written by main.py")
    parser.add_argument("--model", choices=sorted(MODELS), help="model of a bare state_dict (the original project's weights)")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
    parser.add_argument("--max_mb", type=float, default=200.0, help="largest audio file accepted, in MB")
    parser.add_argument("--max_queue", type=int, default=20, help="uploads waiting to be predicted at most; "
                        "more are told the page is busy")
    parser.add_argument("--top_k", type=int, help=f"genres shown per track (default {tasks.DEFAULT_TOP_K}); multi-label: "
                        "the genres above their thresholds unless given")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    args = parser.parse_args(argv)
    if (args.top_k is not None and args.top_k < 1) or args.max_mb <= 0 or args.max_queue < 1:
        parser.error("--top_k and --max_queue must be at least 1 and --max_mb above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no calls home
    try:
        import gradio as gr  # here: an optional dependency, and seconds of start-up
    except ImportError:
        print(f"error: app.py needs Gradio, which the core install leaves out: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        args.device = devices.pick_device(args.device)
        model, checkpoint = predict.load_predictor(args.checkpoint, args.model, args.device)
    except (ConfigError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    page = build_page(gr, model, checkpoint, args)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    try:  # quiet: Gradio's own lines would suggest share=True, a public link this page never makes
        page.launch(server_name="127.0.0.1", server_port=args.port, share=False, ssr_mode=False, theme=theme,
                    css=CSS, footer_links=[], max_file_size=int(args.max_mb * 1e6), quiet=True,
                    prevent_thread_lock=True)
    except OSError as error:  # Gradio's "Cannot find empty port": another program serves on it
        print(f"error: cannot serve on 127.0.0.1:{args.port} ({error}). Give another --port.", file=sys.stderr)
        return 2
    print(f"The page is at http://127.0.0.1:{args.port} (this computer only). Ctrl-C stops it.", flush=True)
    page.block_thread()
    return 0


if __name__ == "__main__":
    allocator.keep_large_allocations()  # as pre_trained_models.py: prediction keeps freed tensors (allocator.py)
    sys.exit(main())
