"""Multi-label classification over FMA's genre tree (target=genres_all, multilabel.py): the label matrix,
the metrics against scikit-learn, threshold tuning, a real end-to-end run on the demo's sub-genres and
prediction with tree paths.

    python -m pytest tests/training/test_multilabel.py -q
"""
import csv
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import experiments
import main
import models_utils
import pre_trained_models
from fma_genres import configurator, multilabel, tasks
from fma_genres.data import demo_data
from fma_genres.reporting import wandb_logging
from fma_genres.runtime.errors import ConfigError

SINGLE, TREE_TASK = tasks.TASKS["genre_top"], tasks.TASKS["genres_all"]
batch_loss = SINGLE.loss

# A hand-made tree: Rock > Punk > Hardcore, Rock > Indie, Jazz > Bebop.
TREE = {"id": [1, 2, 3, 4, 5, 6], "parent": [0, 1, 2, 1, 0, 5],
        "title": ["Rock", "Punk", "Hardcore", "Indie", "Jazz", "Bebop"]}


def test_label_matrix_adds_ancestors_drops_rare_genres_and_counts_what_it_leaves_out():
    genre_lists = pd.Series({10: [3], 11: [2], 12: [], 13: [6], 14: [5, 2], 15: [4], 16: [6]})
    matrix, report = multilabel.label_matrix(genre_lists, train_ids=[10, 11, 12, 13, 14, 15], tree=TREE,
                                             min_genre_tracks=2)
    # training positives: Rock 4 (10, 11, 14, 15), Punk 3, Hardcore 1, Indie 1, Jazz 2 (13, 14), Bebop 1
    assert list(matrix.columns) == [5, 1, 2]  # tree order (by title path): Jazz, Rock, Rock > Punk
    assert matrix.loc[10].tolist() == [0, 1, 1]  # Hardcore: its ancestors Punk and Rock
    assert matrix.loc[14].tolist() == [1, 1, 1]
    assert matrix.loc[15].tolist() == [0, 1, 0]  # Indie dropped, Rock stays
    assert matrix.loc[16].tolist() == [1, 0, 0]  # a held-out track: Bebop dropped, Jazz stays
    assert 12 not in matrix.index and set(matrix.index) == {10, 11, 13, 14, 15, 16}
    assert report == {"tracks_without_genre": 1, "tracks_without_kept_genre": 0, "genres_seen": 6, "genres_kept": 3,
                      "genres_dropped": 3, "min_genre_tracks": 2}
    matrix, report = multilabel.label_matrix(pd.Series({10: [3], 11: [6]}), [10, 11], TREE, 2)
    assert matrix.empty and report["tracks_without_kept_genre"] == 2


def test_tree_paths():
    assert multilabel.genre_path(3, TREE) == "Rock > Punk > Hardcore"
    assert multilabel.genre_path(5, TREE) == "Jazz"
    assert multilabel.tree_order([6, 4, 3, 1, 5, 2], TREE) == [5, 6, 1, 4, 2, 3]


# Fixed arrays: 8 clips x 4 genres; genre 3 has no positive (left out of every average).
TARGETS = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0],
                    [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
PROBABILITIES = np.array([[.9, .2, .6, .1], [.3, .8, .4, .2], [.7, .4, .2, .3], [.2, .3, .7, .1],
                          [.4, .1, .3, .4], [.5, .6, .9, .2], [.1, .5, .1, .1], [.8, .2, .35, .3]])


def test_macro_and_micro_pr_auc_and_roc_auc_match_scikit_learn():
    scores = multilabel.ranking_metrics(TARGETS, PROBABILITIES)
    y, p = TARGETS[:, :3], PROBABILITIES[:, :3]
    assert scores["pr_auc_macro"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert scores["pr_auc_micro"] == pytest.approx(average_precision_score(y, p, average="micro"))
    assert scores["roc_auc_macro"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert scores["roc_auc_micro"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert scores["average_precision"][1] == pytest.approx(average_precision_score(y[:, 1], p[:, 1]))
    assert scores["average_precision"][3] is None and scores["roc_auc"][3] is None
    assert scores["left_out_genres"] == 1


def test_thresholds_maximise_f1_on_a_case_with_a_known_optimum():
    targets = np.array([[1], [1], [0], [1], [0], [0]])
    probabilities = np.array([[.9], [.8], [.7], [.4], [.3], [.1]])
    # F1 per threshold: 0.9 -> 0.5, 0.8 -> 0.8, 0.7 -> 0.667, 0.4 -> 0.857 (the optimum), 0.3 -> 0.75, 0.1 -> 0.667
    assert multilabel.tune_thresholds(targets, probabilities) == [pytest.approx(0.4)]
    at = multilabel.threshold_metrics(targets, probabilities, [0.4])
    assert at["f1"][0] == pytest.approx(6 / 7) and at["precision"][0] == pytest.approx(0.75) and at["recall"][0] == 1
    # a genre without positives (column 3 of the fixed arrays) keeps the default threshold and leaves the macro F1
    thresholds = multilabel.tune_thresholds(TARGETS, PROBABILITIES)
    assert thresholds[3] == multilabel.DEFAULT_THRESHOLD
    at = multilabel.threshold_metrics(TARGETS, PROBABILITIES, thresholds)
    assert at["f1_macro"] == pytest.approx(np.mean(at["f1"][:3]))


def test_top_genre_accuracy_counts_only_clips_with_one_top_genre():
    genres = {"ids": [1, 2, 5], "tree": TREE}  # Rock, Punk, Jazz: top-level Rock and Jazz
    targets = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1], [1, 0, 0]])
    probabilities = np.array([[.9, .1, .2], [.6, .1, .5], [.9, .1, .9], [.3, .9, .4]])
    assert multilabel.top_genre_accuracy(targets, probabilities, genres) == (pytest.approx(1 / 3), 3)


def scores(targets, probabilities, genres):
    return {**TREE_TASK.scores(targets, probabilities, None, genres), "test_loss": 0.3}


def wandb_entries(metrics, targets, probabilities):
    """The task's entries as W&B objects (wandb_logging converts the plain data)."""
    result = {"targets": targets, "probabilities": probabilities}
    return wandb_logging.logged_entries(TREE_TASK.wandb_entries(metrics, result, metrics["class_names"]))


def test_wandb_entries_and_figures_of_a_multilabel_report():
    genres = {"ids": [1, 2, 5, 4], "tree": TREE, "thresholds": [0.5, 0.5, 0.5, 0.5]}  # Rock, Punk, Jazz, Indie
    metrics = scores(TARGETS, PROBABILITIES, genres)
    entries = wandb_entries(metrics, TARGETS, PROBABILITIES)
    assert {"test/pr_auc_macro", "test/roc_auc_micro", "test/f1_macro", "test/top_genre_accuracy", "test/left_out_genres",
            "test/per_genre", "test/average_precision_per_genre", "test/pr/Rock", "test/pr/Jazz"} <= set(entries)
    assert "test/pr/Indie" not in entries  # no positive in these clips: no curve
    table = entries["test/per_genre"]
    assert [row[:3] for row in table.data] == [["Rock", "Rock", 4], ["Punk", "Rock > Punk", 3], ["Jazz", "Jazz", 4],
                                                ["Indie", "Rock > Indie", 0]]
    figures = TREE_TASK.figures(metrics, TARGETS, PROBABILITIES, metrics["class_names"])
    assert set(figures) == {"average_precision.png", "pr_curves.png"}
    for figure in figures.values():
        plt.close(figure)


def test_the_summary_table_nests_sub_genres_under_their_parent_by_support():
    genres = {"ids": [1, 2, 5, 4], "tree": TREE, "thresholds": [0.5, 0.5, 0.5, 0.5]}  # Rock, Punk, Jazz, Indie
    metrics = scores(TARGETS, PROBABILITIES, genres)
    lines = multilabel.format_table(metrics, genres).splitlines()
    # Rock and Jazz both have 4 positives (a tie goes by title); Punk (3) before Indie (0) under Rock
    assert [line[:32].rstrip() for line in lines[1:5]] == ["Jazz", "Rock", "  Punk", "  Indie"]
    assert lines[5].startswith("PR-AUC macro 0.939") and "1 genres without both positives" in lines[5]


def test_a_genre_title_with_a_slash_makes_one_wandb_key():
    tree = {**TREE, "title": ["Old-Time / Historic", *TREE["title"][1:]]}
    genres = {"ids": [1, 2, 5], "tree": tree, "thresholds": [0.5] * 3}
    metrics = scores(TARGETS[:, :3], PROBABILITIES[:, :3], genres)
    assert "test/pr/Old-Time - Historic" in wandb_entries(metrics, TARGETS[:, :3], PROBABILITIES[:, :3])


def test_single_label_loss_is_plain_cross_entropy():
    logits, targets, weights = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0]), torch.tensor([1.0, 2.0, 0.5, 1.0])
    assert torch.equal(batch_loss(logits, targets), torch.nn.functional.cross_entropy(logits, targets))
    assert torch.equal(batch_loss(logits, targets, weights), torch.nn.functional.cross_entropy(logits, targets, weights))
    assert torch.equal(batch_loss(logits, targets, reduction="sum"),
                       torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))


def test_bce_loss_with_pos_weight():
    rows = {1: torch.tensor([1.0, 0.0]), 2: torch.tensor([1.0, 1.0]), 3: torch.tensor([0.0, 0.0]), 4: torch.tensor([1.0, 0.0])}
    weight = multilabel.pos_weight(rows, [1, 2, 3, 4])
    assert weight.tolist() == pytest.approx([1 / 3, 3.0])
    logits, targets = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 1.0]])
    expected = (-(1 / 3) * torch.log(torch.sigmoid(torch.tensor(0.5))) - 3 * torch.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert TREE_TASK.loss(logits, targets, pos_weight=weight).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("extra, message", [
    (["--model=cnn1d", "--faithful=True"], "Use --faithful=False"),
    (["--select_metric=accuracy"], "does not apply to target=genres_all"),
    (["--class_weights=True"], "use pos_weight=True"),
    (["--dataset=folder"], "needs FMA's genre tree"),
])
def test_nonsense_multilabel_combinations_are_refused(extra, message):
    overrides = configurator.parse_command_line(["--target=genres_all", *extra], main.CONFIG, main.__file__)[0]
    with pytest.raises(ConfigError, match=message):
        configurator.make_config(overrides, main.CONFIG)


def test_single_label_keys_keep_their_meaning():
    assert configurator.make_config({}, main.CONFIG)["select_metric"] == "accuracy"
    assert configurator.make_config({"target": "genres_all", "model": "crnn"}, main.CONFIG)["select_metric"] == "pr_auc_macro"
    for bad in ({"select_metric": "pr_auc_macro"}, {"pos_weight": True}):
        with pytest.raises(ConfigError, match="target=genre_top"):
            configurator.make_config(bad, main.CONFIG)


# ----------------------------------------------------------------------------- end to end on the demo's tree

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo with sub-genres: 8 genres x 6 clips (4/1/1), 3 s each."""
    return demo_data.make_demo_dataset(tmp_path_factory.mktemp("fma"), 6, 0, 3.0, None, True)


def train(demo, out_dir, *extra):
    assert main.main([f"--data_dir={demo}", f"--out_dir={out_dir}", "--target=genres_all", "--min_genre_tracks=2",
                      "--model=cnn1d", "--faithful=False", "--n_frames=96", "--batch_size=8", "--download=False",
                      "--wandb_mode=disabled", "--num_workers=0", "--pos_weight=True", *extra]) == 0


@pytest.fixture(scope="module")
def run_dir(demo, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    train(demo, out_dir, "--epochs=4")
    return out_dir


@pytest.mark.slow  # makes the demo dataset
def test_demo_subgenres_are_an_fma_style_tree(demo):
    genres = pd.read_csv(demo / "fma_metadata" / "genres.csv", index_col=0)
    assert len(genres) == 24 and genres.loc[25, "title"] == "Punk" and genres.loc[25, "parent"] == 12
    assert (genres.loc[genres["parent"] != 0, "top_level"] == genres.loc[genres["parent"] != 0, "parent"]).all()
    tracks = pd.read_csv(demo / "fma_metadata" / "tracks.csv", index_col=0, header=[0, 1])
    for genre_top, genres_all in zip(tracks[("track", "genre_top")], tracks[("track", "genres_all")]):
        ids = json.loads(genres_all)
        assert ids[0] == demo_data.GENRE_IDS[genre_top] and set(ids[1:]) <= set(demo_data.SUBGENRES[genre_top].values())
    tagged = {i for text in tracks[("track", "genres_all")] for i in json.loads(text)}
    assert tagged == set(genres.index)  # every sub-genre has tracks
    assert 0 < (tracks[("track", "genres_all")].str.count(",") == 0).sum() < 16  # some in their top genre only


@pytest.mark.slow  # trains main.py
def test_multilabel_training_end_to_end(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("pr_auc_macro", "pr_auc_micro", "roc_auc_macro", "roc_auc_micro", "f1_macro", "f1_micro",
                "top_genre_accuracy", "left_out_genres", "per_genre"):
        assert key in metrics, key
    assert metrics["target"] == "genres_all" and metrics["select_metric"] == "pr_auc_macro"
    assert metrics["labels"]["genres_kept"] == len(metrics["class_names"]) > 8  # top genres and sub-genres
    assert metrics["per_genre"]["Rock"]["path"] == "Rock" and metrics["top_genre_clips"] == 8
    assert any(" > " in row["path"] for row in metrics["per_genre"].values())
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.columns)[-1] == "val_pr_auc_macro" and history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    best = models_utils.load_checkpoint(run_dir / "best.pt")
    assert best["target"] == "genres_all" and best["class_names"] == metrics["class_names"]
    assert len(best["genres"]["thresholds"]) == len(best["genres"]["ids"]) == best["model_args"]["n_classes"]
    assert [row["threshold"] for row in metrics["per_genre"].values()] == best["genres"]["thresholds"]
    for name in ("average_precision.png", "pr_curves.png", "curves.png"):
        assert (run_dir / name).read_bytes().startswith(b"\x89PNG"), name


@pytest.mark.slow  # trains main.py twice
def test_a_resumed_multilabel_run_matches_the_uninterrupted_one(demo, run_dir, tmp_path):
    train(demo, tmp_path, "--epochs=2")
    train(demo, tmp_path, "--epochs=4", "--resume=True")
    resumed, uninterrupted = (models_utils.load_checkpoint(d / "last.pt") for d in (tmp_path, run_dir))
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["genres"] == uninterrupted["genres"]  # the thresholds of the last epoch too
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path, run_dir))
    assert a["per_genre"] == b["per_genre"] and a["pr_auc_macro"] == b["pr_auc_macro"]


def predict(checkpoint, *argv):
    return pre_trained_models.main([f"--checkpoint={checkpoint}", "--num_workers=0", *map(str, argv)])


@pytest.mark.slow  # reads the run main.py trains (run_dir)
def test_prediction_prints_tree_paths_and_respects_thresholds(run_dir, demo, tmp_path, capsys):
    song = next((demo / "fma_small").rglob("*.mp3"))
    assert predict(run_dir / "best.pt", "--json", song) == 0
    probabilities = json.loads(capsys.readouterr().out)["probabilities"]
    checkpoint = models_utils.load_checkpoint(run_dir / "best.pt")
    names = checkpoint["class_names"]
    child = next(k for k, g in enumerate(checkpoint["genres"]["ids"]) if multilabel.ancestors(g, checkpoint["genres"]["tree"]))
    parent = names.index(multilabel.genre_path(checkpoint["genres"]["ids"][child], checkpoint["genres"]["tree"]).split(" > ")[0])
    # thresholds just below the two chosen genres' probabilities and just above every other one's
    checkpoint["genres"]["thresholds"] = [probabilities[name] + (-1e-4 if k in (child, parent) else 1e-4)
                                         for k, name in enumerate(names)]
    models_utils.save_checkpoint(checkpoint, tmp_path / "tuned.pt")
    assert predict(tmp_path / "tuned.pt", song) == 0
    line = capsys.readouterr().out.strip()
    path = multilabel.genre_path(checkpoint["genres"]["ids"][child], checkpoint["genres"]["tree"])
    assert line == (f"{song}  {path} {probabilities[names[child]]:.2f}; {names[parent]} "
                    f"{probabilities[names[parent]]:.2f}")  # the most specific first
    assert predict(tmp_path / "tuned.pt", "--top_k=3", song) == 0  # the 3 most probable, whatever the thresholds
    shown = [part.rsplit(" ", 1)[0].split(" > ")[-1] for part in capsys.readouterr().out.strip().split("  ", 1)[1].split("; ")]
    assert shown == sorted(probabilities, key=lambda n: -probabilities[n])[:3]
    assert predict(tmp_path / "tuned.pt", f"--output={tmp_path / 'all.csv'}", song) == 0
    assert list(pd.read_csv(tmp_path / "all.csv").columns) == ["path", "windows", *names, "error"]


@pytest.mark.slow  # reads the run main.py trains (run_dir)
def test_evaluate_reports_the_multilabel_metrics(run_dir, demo, tmp_path, capsys):
    assert predict(run_dir / "best.pt", "--evaluate=True", f"--data_dir={demo}", f"--out_dir={tmp_path}") == 0
    out = capsys.readouterr().out
    assert "PR-AUC macro" in out and "top-genre accuracy" in out
    evaluated, trained = (json.loads(p.read_text()) for p in (tmp_path / "metrics.json", run_dir / "metrics.json"))
    assert evaluated["pr_auc_macro"] == pytest.approx(trained["pr_auc_macro"])


def shifted_member(run_dir, tmp_path):
    """A second multi-label checkpoint: run_dir's best.pt with every genre's logit raised by 1.5 and its own
    thresholds, so an ensemble's mean differs from either member."""
    checkpoint = models_utils.load_checkpoint(run_dir / "best.pt")
    n = checkpoint["model_args"]["n_classes"]
    bias = [k for k, v in checkpoint["state_dict"].items() if k.endswith("bias") and v.shape == (n,)][-1]  # the head's
    checkpoint["state_dict"][bias] = checkpoint["state_dict"][bias] + 1.5
    checkpoint["genres"]["thresholds"] = [0.2 + 0.6 * k / n for k in range(n)]
    models_utils.save_checkpoint(checkpoint, tmp_path / "shifted.pt")
    return tmp_path / "shifted.pt"


@pytest.mark.slow  # trains two checkpoints
def test_an_ensemble_of_multilabel_checkpoints_averages_probabilities_and_thresholds(run_dir, demo, tmp_path, capsys):
    from fma_genres.inference import predict as inference

    song, members = next((demo / "fma_small").rglob("*.mp3")), [run_dir / "best.pt", shifted_member(run_dir, tmp_path)]
    probabilities = []
    for member in members:
        assert predict(member, "--json", song) == 0
        probabilities.append(json.loads(capsys.readouterr().out)["probabilities"])
    assert predict(members[0], f"--checkpoint={members[1]}", "--json", song) == 0
    together = json.loads(capsys.readouterr().out)["probabilities"]
    for name, p in together.items():  # each member's sigmoids, averaged (not a softmax)
        assert p == pytest.approx((probabilities[0][name] + probabilities[1][name]) / 2, abs=2e-6)
    assert max(abs(probabilities[0][n] - probabilities[1][n]) for n in together) > 0.05  # the members differ
    _, checkpoint = inference.ensemble([(path, *inference.load_predictor(path)) for path in members])
    thresholds = [models_utils.load_checkpoint(path)["genres"]["thresholds"] for path in members]
    assert checkpoint["genres"]["thresholds"] == pytest.approx(np.mean(thresholds, axis=0).tolist())


@pytest.mark.slow  # trains a checkpoint, exports ONNX
def test_onnx_export_of_a_multilabel_checkpoint_gives_sigmoids_thresholds_and_tree(run_dir, tmp_path, capsys):
    import onnxruntime

    assert pre_trained_models.main([f"--checkpoint={run_dir / 'best.pt'}", f"--export={tmp_path / 'm.onnx'}"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    checkpoint = models_utils.load_checkpoint(run_dir / "best.pt")
    assert meta["target"] == "genres_all" and meta["thresholds"] == checkpoint["genres"]["thresholds"]
    assert meta["genre_tree"] == checkpoint["genres"]["tree"] and meta["genre_ids"] == checkpoint["genres"]["ids"]
    mel_db = -80.0 * torch.rand(4, checkpoint["model_args"]["n_mels"], checkpoint["model_args"]["n_frames"],
                                generator=torch.Generator().manual_seed(3))
    (got,) = session.run(None, {"mel_db": mel_db.numpy()})
    model = pre_trained_models.predict.load_predictor(run_dir / "best.pt")[0]
    with torch.no_grad():
        expected = torch.sigmoid(model(mel_db)[0]).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(got.sum(axis=1), 1.0, atol=1e-2)  # independent genres, not a softmax


@pytest.mark.slow
def test_repeat_summarises_multilabel_metrics_over_seeds_with_intervals(demo, tmp_path):
    folder = tmp_path / "repeat"
    assert experiments.run(["repeat", f"--data_dir={demo}", "--target=genres_all", "--min_genre_tracks=2",
                            "--model=cnn1d", "--faithful=False", "--n_frames=96", "--batch_size=8", "--epochs=1",
                            "--download=False", "--wandb_mode=disabled", "--num_workers=0", "--seeds=0,1",
                            f"--dir={folder}"]) == 0
    with open(folder / "summary.csv", newline="") as f:
        summary = {row["metric"]: row for row in csv.DictReader(f)}
    for metric in ("pr_auc_macro", "roc_auc_macro", "f1_macro", "f1_micro", "test_loss"):
        row = {k: float(v) for k, v in summary[metric].items() if k != "metric"}
        seeds = [json.loads((folder / f"seed_{s}" / "metrics.json").read_text())[metric] for s in (0, 1)]
        assert [row["seed_0"], row["seed_1"]] == pytest.approx(seeds, abs=1e-5)
        assert row["ci95_low"] <= row["mean"] <= row["ci95_high"] and row["mean"] == pytest.approx(sum(seeds) / 2, abs=1e-5)
    assert "f1_Rock" in summary and "| pr_auc_macro |" in (folder / "summary.md").read_text()
    ensemble = json.loads((folder / "ensemble" / "metrics.json").read_text())  # the seeds' multi-label ensemble
    assert ensemble["target"] == "genres_all" and len(ensemble["members"]) == 2
