"""A local web page for trying a trained model on your own music: upload songs (several at once) or record
from the microphone, and see for each its top genres as bars, the mel-spectrogram the model saw, for a
track longer than one window the genre probabilities over time, and an audio player. A header names the
checkpoint's model, genres and training summary. Built with Gradio, an optional dependency:

    pip install -r requirements-app.txt
    python app.py --checkpoint=runs/crnn/latest/best.pt          # then open http://127.0.0.1:7860
    python app.py --checkpoint=runs/crnn/latest/best.pt --port=8080 --max_mb=50 --top_k=5

The page is served on 127.0.0.1 only (this computer), with Gradio's analytics and share links off, so
nothing leaves the machine. The genres come from pre_trained_models.py's own code (load_predictor,
window_outputs, inference.predict, shown_genres), so a file gets exactly the genres
`python pre_trained_models.py --checkpoint=... FILE` prints; the pictures are plots.py's, as --plot
draws them. A file that cannot be
used (not audio, empty, truncated, over --max_mb) gets a message on the page and the server goes on
serving. Files are predicted one request at a time (Gradio's queue), each in the server's own process.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no calls home

import argparse
import html
import json
import sys
from pathlib import Path

import inference
import models_utils
import plots
import pre_trained_models as ptm
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
    forward = "faithful" if checkpoint["model_args"].get("faithful", True) else "corrected"
    lines = [f"**{checkpoint['model']}** ({forward} forward pass) from `{path}`",
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


def read_metrics(path):
    """metrics.json beside the checkpoint, or {} when there is none (or it cannot be read: the header is optional)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def analyse(paths, model, checkpoint, top_k=None, max_mb=200.0, device="cpu"):
    """One dict per file: name, path, error (None when predicted), predictions [(label, p)] and figure."""
    paths = [Path(p) for p in paths]
    results = [{"name": p.name, "path": str(p), "error": too_large(p, max_mb), "predictions": None, "figure": None}
               for p in paths]
    todo = [i for i, result in enumerate(results) if result["error"] is None]
    hop = inference.default_hop(checkpoint)  # pre_trained_models.py's default
    recorder = plots.WindowRecorder(hop)
    # num_workers=0: the windows are decoded in this process (the page serves one request at a time)
    predicted = inference.predict(model, checkpoint, [paths[i] for i in todo], hop, device=device,
                                  outputs=ptm.window_outputs(checkpoint), on_window=recorder)
    for k, (i, (_, probabilities, _, error)) in enumerate(zip(todo, predicted)):
        windows = recorder.pop(k)
        if error:
            results[i]["error"] = error
            continue
        results[i]["predictions"] = ptm.shown_genres(probabilities, checkpoint, top_k)
        results[i]["figure"] = plots.track_figure(None, *windows, checkpoint, hop)  # the page names the track
    return results


def too_large(path, max_mb):
    size_mb = path.stat().st_size / 1e6
    if size_mb > max_mb:
        return (f"{size_mb:.1f} MB is over this page's limit of {max_mb:g} MB: restart app.py with a larger "
                f"--max_mb, or use pre_trained_models.py, which has no limit.")
    return None


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
    """The Gradio Blocks: header, inputs (files, microphone), then one section per analysed file."""
    def on_files(paths):
        return analyse(paths or [], model, checkpoint, args.top_k, args.max_mb, args.device)

    def on_recording(path):
        results = on_files([path] if path else [])
        for result in results:
            result["name"] = "microphone recording"
        return results

    with gr.Blocks(title="Music genres") as page:
        gr.Markdown("## Music genres\n" + checkpoint_summary(checkpoint, args.checkpoint), elem_id="checkpoint")
        with gr.Row():
            files = gr.File(label="Audio files", file_count="multiple", type="filepath", elem_id="audio_files")
            microphone = gr.Audio(label="Or record", sources=["microphone"], type="filepath")
        results = gr.State([])
        files.upload(on_files, inputs=files, outputs=results)
        microphone.stop_recording(on_recording, inputs=microphone, outputs=results)

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
                    gr.Plot(value=result["figure"], format="png", show_label=False)
    return page


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pt written by main.py")
    parser.add_argument("--model", choices=sorted(MODELS), help="model of a bare state_dict (the original project's weights)")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
    parser.add_argument("--max_mb", type=float, default=200.0, help="largest audio file accepted, in MB")
    parser.add_argument("--top_k", type=int, help=f"genres shown per track (default {ptm.DEFAULT_TOP_K}); multi-label: "
                        "the genres above their thresholds unless given")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    args = parser.parse_args(argv)
    if (args.top_k is not None and args.top_k < 1) or args.max_mb <= 0:
        parser.error("--top_k must be at least 1 and --max_mb above 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import gradio as gr
    except ImportError:
        print(f"error: app.py needs Gradio, which the core install leaves out: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        args.device = ptm.choose_device(args.device)
        model, checkpoint = ptm.load_predictor(args.checkpoint, args.model, args.device)
    except (ptm.UsageError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    page = build_page(gr, model, checkpoint, args)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    try:
        page.launch(server_name="127.0.0.1", server_port=args.port, share=False, ssr_mode=False, theme=theme,
                    css=CSS, footer_links=[])
    except OSError as error:  # Gradio's "Cannot find empty port": another program serves on it
        print(f"error: cannot serve on 127.0.0.1:{args.port} ({error}). Give another --port.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
