"""W&B as a reviewer sees it: a real offline run of main.py, read back through W&B's own reader.

One run (module fixture): main.py as a subprocess with no W&B key, mode or network settings, so it
chooses offline itself; the conftest FMA-format data (16/8/8 clips), CNN1D, 2 epochs of 8 batches (shorter
than the default log_interval of 25), watch on, in a group. Then that run resumed with nothing left to
train and the upload keys off: the final logging alone, a few seconds.

The records are read with `wandb leet inspect --json` (W&B 0.31's CLI prints the run's .wandb log as one
JSON object per record: run, config, history, summary, artifact ...) and `--summary --json` (the run's
final summary as one object): the public reader of offline runs, the one docs/wandb.md points reviewers to.
A W&B Table is stored in a run_table artifact; its record's manifest gives the local copy of the table's
JSON and of the media it references, which is where the tests read rows, images and audio.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import main
import models_utils
from conftest import clean_env
from fma_genres import configurator
from fma_genres.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CLIPS, BATCH_SIZE, N_FRAMES = 16, 2, 96  # fma_small: 2 training clips per genre
RUN_NAME = "cnn1d n_frames=96 epochs=2 batch_size=2 seed=0"  # the model, what differs from the defaults, seed
TAGS = ["model:cnn1d", "subset:small", "split:official", "faithful:True", "dataset:fma"]
# Every key the run logs besides watch's gradients/* and parameters/*; docs/wandb.md lists each of them.
KEYS = {"train/loss", "train/epoch", "train/epoch_loss", "train/accuracy", "train/lr", "train/epoch_seconds",
        "val/loss", "val/accuracy", "val/best_accuracy", "val/best_epoch",
        "test/accuracy", "test/loss", "test/balanced_accuracy", "test/macro_f1", "test/epoch", "test/per_genre", "test/f1_per_genre_table",
        "test/confusion_matrix_table", "test/roc_table", "test/pr_table", "test/hardest_clips",
        "test/figures/confusion_matrix", "test/figures/confusion_matrix_normalized", "test/figures/roc_curves",
        "test/figures/curves"}


class OfflineRun:
    """The records of one offline run, as `wandb leet inspect` prints them."""

    def __init__(self, run_dir, env):
        self.records = [json.loads(line) for line in leet(run_dir, env).splitlines()]
        self.summary = json.loads(leet(run_dir, env, "--summary"))["summary"]
        (self.run,) = self.of("run")

    def of(self, kind):
        return [record[kind] for record in self.records if record["type"] == kind]

    def history(self, key):
        """(step, row) of every history row that holds ``key``."""
        return [(row["step"]["num"], row["item"]) for row in self.of("history") if key in row["item"]]

    def table(self, key):
        """The rows (dicts by column) of the Table logged as ``key``, with media cells' paths made local."""
        for artifact in self.of("artifact"):
            files = {entry["path"]: entry["local_path"] for entry in artifact["manifest"]["contents"]}
            if f"{key}.table.json" in files:
                table = json.loads(Path(files[f"{key}.table.json"]).read_text())
                rows = [dict(zip(table["columns"], row)) for row in table["data"]]
                for cell in (v for row in rows for v in row.values() if isinstance(v, dict) and "path" in v):
                    cell["local_path"] = files[cell["path"]]
                return rows
        raise AssertionError(f"no table {key} among the run's artifacts")


def leet(run_dir, env, *options):
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *options, str(run_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_main(argv, env):
    result = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def runs(fma_small, tmp_path_factory):
    """(first run, the same run resumed with the upload keys off, out_dir, main.py's stdout of the first)."""
    tmp = tmp_path_factory.mktemp("wandb")
    env, out_dir = clean_env(tmp), tmp / "run"
    stdout = run_main([f"--data_dir={fma_small}", f"--cache_dir={tmp / 'cache'}", f"--out_dir={out_dir}",
                       "--model=cnn1d", f"--n_frames={N_FRAMES}", "--epochs=2", f"--batch_size={BATCH_SIZE}",
                       "--compile=False", "--num_workers=0", "--download=False", "--watch=True",
                       "--wandb_group=seeds"], env)  # no wandb_mode: main.py picks offline, no key exists
    (first,) = (tmp / "wandb_dir" / "wandb").glob("offline-run-*")
    run_main([f"--out_dir={out_dir}", "--resume=True", "--hardest_clips=2", "--upload_audio=False",
              "--upload_checkpoints=False"], env)
    (resumed,) = set((tmp / "wandb_dir" / "wandb").glob("offline-run-*")) - {first}
    return OfflineRun(first, env), OfflineRun(resumed, env), out_dir, stdout.replace(str(first), "<run>")


def metrics_of(out_dir):
    return json.loads((out_dir / "metrics.json").read_text())


def test_the_run_is_offline_without_a_key_prompt_or_network_and_says_how_to_review_it(runs):
    run, _, out_dir, stdout = runs
    assert "W&B: the run is saved offline in <run>" in stdout
    assert "wandb leet <run>" in stdout and "wandb sync <run>" in stdout
    config = run.run["config"]["update"]
    assert run.run["project"] == "MusicGenreClassificationDefinitive" and config["n_frames"] == N_FRAMES
    assert config["parameters"] == metrics_of(out_dir)["parameters"]
    assert config["provenance"]["command"].startswith("python main.py --data_dir=")


def test_run_name_tags_and_group(runs):
    run, resumed, _, _ = runs
    assert run.run["display_name"] == RUN_NAME and run.run["tags"] == TAGS and run.run["run_group"] == "seeds"
    # resuming continues the same W&B run (its id), under the same name; the group comes from the config
    assert resumed.run["run_id"] == run.run["run_id"] and resumed.run["display_name"] == RUN_NAME


def test_train_loss_has_a_point_at_the_end_of_every_epoch_shorter_than_log_interval(runs):
    run, _, out_dir, _ = runs
    points = run.history("train/loss")
    # step = examples seen in the run; each epoch (8 batches < log_interval 25) flushes its one interval
    assert [step for step, _ in points] == [TRAIN_CLIPS, 2 * TRAIN_CLIPS]
    history = models_utils.load_checkpoint(out_dir / "last.pt")["training"]["history"]
    # equal batches: the interval's mean batch loss is the epoch's loss, which history.csv records
    assert [row["train/loss"] for _, row in points] == pytest.approx([row["train_loss"] for row in history])
    assert [row["train/epoch"] for _, row in points] == [1, 2]


def test_summary_keys_follow_one_scheme_without_duplicates(runs):
    run, _, out_dir, _ = runs
    keys = {k for k in run.summary if not k.startswith(("_", "gradients/", "parameters/"))}
    assert keys == KEYS  # no test/test_accuracy beside test/accuracy, no bare "lr" or "parameters"
    metrics = metrics_of(out_dir)
    assert run.summary["test/accuracy"] == metrics["test_accuracy"]
    assert run.summary["test/loss"] == pytest.approx(metrics["test_loss"])
    assert run.summary["val/best_epoch"] == metrics["best_epoch"]
    assert run.summary["test/epoch"] == metrics["reported_epoch"]
    page = (ROOT / "docs" / "wandb.md").read_text()
    assert not [key for key in KEYS if f"`{key}`" not in page]  # the reviewer's list of keys


def test_per_genre_table_holds_every_genres_scores(runs):
    run, _, out_dir, _ = runs
    metrics = metrics_of(out_dir)
    rows = {row["genre"]: row for row in run.table("test/per_genre")}
    assert list(rows) == metrics["class_names"]
    for genre, row in rows.items():
        assert row == {"genre": genre, **metrics["per_class"][genre], "roc_auc": metrics["roc_auc"][genre]}


def test_hardest_clips_are_the_most_confidently_wrong_with_spectrogram_and_audio(runs):
    run, _, out_dir, _ = runs
    metrics = metrics_of(out_dir)
    wrong = metrics["test_examples"] - int(np.trace(metrics["confusion_matrix"]))
    assert wrong >= 1, "the 2-epoch model got every test clip right: nothing to check"
    rows = run.table("test/hardest_clips")
    assert len(rows) == min(main.CONFIG["hardest_clips"], wrong)
    confidences = [row["confidence"] for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    for row in rows:
        probabilities = {genre: row[f"p({genre})"] for genre in metrics["class_names"]}
        assert row["true"] != row["predicted"] and row["confidence"] == max(probabilities.values())
        assert row["confidence"] == probabilities[row["predicted"]]
        assert row["mel"]["_type"] == "image-file" and (row["mel"]["height"], row["mel"]["width"]) == (128, N_FRAMES)
        assert row["audio"]["_type"] == "audio-file"
        audio, rate = sf.read(row["audio"]["local_path"])
        assert rate == 22050 and len(audio) == N_FRAMES * 512  # the part of the clip the model saw


def test_watch_logs_gradient_and_parameter_histograms(runs):
    run, _, _, _ = runs
    (row,) = [row for _, row in run.history("gradients/fc1.weight._type")]  # batch 10 of 16, log_freq 10
    for kind in ("gradients", "parameters"):
        assert row[f"{kind}/fc1.weight._type"] == "histogram" and sum(row[f"{kind}/fc1.weight.values"]) > 0


def test_the_reported_checkpoint_is_a_model_artifact(runs):
    run, _, out_dir, _ = runs
    (model,) = [a for a in run.of("artifact") if a["type"] == "model"]
    (entry,) = model["manifest"]["contents"]
    assert model["name"] == "cnn1d-best" and entry["path"] == "best.pt"
    assert Path(entry["local_path"]).read_bytes() == (out_dir / "best.pt").read_bytes()


def test_upload_keys_keep_audio_and_checkpoints_off_wandb(runs):
    _, resumed, out_dir, _ = runs
    assert not [a for a in resumed.of("artifact") if a["type"] == "model"]
    rows = resumed.table("test/hardest_clips")
    assert 1 <= len(rows) <= 2 and all(row["audio"] is None for row in rows)
    assert all(row["mel"]["_type"] == "image-file" for row in rows)
    assert resumed.summary["test/accuracy"] == metrics_of(out_dir)["test_accuracy"]


@pytest.mark.parametrize("argv, expected", [
    (["--hardest_clips=-1"], "hardest_clips must be at least 0, got -1"),
    (["--upload_audio=sometimes"], "upload_audio='sometimes' is not valid: choose auto, True or False"),
])
def test_bad_wandb_keys_are_refused(argv, expected):
    with pytest.raises(ConfigError) as info:
        configurator.make_config(configurator.parse_command_line(argv, main.CONFIG, main.__file__)[0], main.CONFIG)
    assert expected in str(info.value)


def test_auto_keys_follow_the_wandb_keys():
    assert configurator.make_config({}, main.CONFIG)["upload_audio"] is True  # FMA: Creative Commons clips
    assert configurator.make_config({"demo": True}, main.CONFIG)["upload_audio"] is True  # synthetic
    assert configurator.make_config({"upload_audio": "False"}, main.CONFIG)["upload_audio"] is False
    # watch's hooks would make torch.compile recompile every step: compile=auto stays off with watch
    assert configurator.make_config({}, main.CONFIG)["compile"] is True and configurator.make_config({"watch": True}, main.CONFIG)["compile"] is False
    assert configurator.make_config({"watch": True, "compile": "True"}, main.CONFIG)["compile"] is True
