"""Probes on pretrained encoders through the suite's own commands: main.py trains a probe on the embedding
cache (encoder=dasheng|whisper|clap), resumes it and reports it (W&B offline, hardest clips included);
pre_trained_models.py predicts files with it (long tracks in the encoder's windows, CSV) and --evaluate
scores it on its test split. Tiny random encoders saved locally (tests/test_encoders.py's), generated
WAV clips in a folder dataset; nothing is downloaded (HF_HUB_OFFLINE=1). The commands run in this process
(their main()), except torchrun's: each would otherwise import torch and transformers anew.

    python -m pytest tests/encoders/test_probes.py -q
"""
import csv
import functools
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import test_encoders  # this folder's
from conftest import clean_env
from test_encoders import ROOT, needs_packages  # this folder's: pytest puts it on sys.path

GENRES = ("Folk", "Jazz", "Rock")
weights = test_encoders.weights  # its fixture: the tiny random encoders, saved locally


def write_wav(path, seconds, pitch, seed, rate=16000):
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * noise).astype(np.float32), rate)
    return path


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """A folder dataset: 3 genres x 3 WAV clips of 30 s (each genre its own pitch): one each for training,
    validation and test."""
    root = tmp_path_factory.mktemp("music")
    for g, genre in enumerate(GENRES):
        for k in range(3):
            write_wav(root / genre / f"{k}.wav", 30.0, 110.0 * (g + 1), seed=10 * g + k)
    return root



def run(script, *args, env, check=True):
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_here(capsys, script, *args):
    """The script's main() in this process (transformers is imported once, not by every command: ~3 s of
    CPU each); what it printed, as run()'s result."""
    import main
    import pre_trained_models

    capsys.readouterr()
    assert {"main.py": main.main, "pre_trained_models.py": pre_trained_models.main}[script](list(map(str, args))) == 0
    return types.SimpleNamespace(stdout=capsys.readouterr().out)


@needs_packages
@pytest.mark.slow  # four commands: 10-25 s in all on a busy 2-core machine
@pytest.mark.parametrize("name", ["dasheng", "whisper", "clap"])
def test_a_probe_trains_resumes_predicts_and_evaluates_with_the_suites_commands(name, weights, music, tmp_path,
                                                                                capsys, monkeypatch):
    for key in [key for key in os.environ if key.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for key, value in clean_env(tmp_path).items():  # W&B's files and HOME under tmp_path
        monkeypatch.setenv(key, value)
    run = functools.partial(run_here, capsys)  # this test's commands run in-process
    out, cache = tmp_path / "run", tmp_path / "cache"
    train = ["main.py", "--dataset=folder", f"--data_dir={music}", f"--cache_dir={cache}", f"--encoder={name}",
             f"--encoder_weights={weights[name]}", "--head=mlp", "--batch_size=4", f"--out_dir={out}",
             f"--wandb_mode={'offline' if name == 'dasheng' else 'disabled'}", "--hardest_clips=2", "--cache_workers=1"]
    first = run(*train, "--epochs=1")
    assert f"model: probe (mlp head on {name})" in first.stdout and "Embedding cache" in first.stdout
    best = torch.load(out / "best.pt", weights_only=True)
    p = best["preprocessing"]
    assert best["model"] == "probe" and best["config"]["encoder"] == name
    assert (p["encoder"], p["encoder_weights"], p["windows"]) == (name, str(weights[name]), 3)
    assert best["model_args"] == {"layers": p["layers"], "dim": p["dim"], "n_classes": 3, "head": "mlp"}
    assert best["state_dict"]["standardise.std"].shape == (p["layers"], p["dim"])  # per feature, from training
    assert not torch.allclose(best["state_dict"]["standardise.std"], torch.ones(p["layers"], p["dim"]))

    resumed = run(*train, "--epochs=2", "--resume=True")
    assert "resuming after epoch 1" in resumed.stdout and "[0 computed now, " in resumed.stdout  # the cache reused
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["training"]["epoch"] == 2 and len(last["training"]["history"]) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == 3 and 0 <= metrics["test_accuracy"] <= 1

    # prediction: an FMA-length clip gets the cache's 3 windows, a 52 s track 5, a 4 s one 1 (padded)
    long_track, short_track = write_wav(tmp_path / "long.wav", 52.0, 220.0, 1), write_wav(tmp_path / "s.wav", 4.0, 330.0, 2)
    clip = music / "Jazz" / "0.wav"
    table = tmp_path / "genres.csv"
    run("pre_trained_models.py", f"--checkpoint={out / 'best.pt'}", f"--output={table}", "--num_workers=1",
        clip, long_track, short_track)
    rows = {row["path"]: row for row in csv.DictReader(table.open())}
    assert [rows[str(f)]["windows"] for f in (clip, long_track, short_track)] == ["3", "5", "1"]
    for row in rows.values():
        assert abs(sum(float(row[genre]) for genre in GENRES) - 1) < 1e-5
    # the clip's prediction is the probe on its cache row (float16 embeddings: a float16 step's tolerance)
    from fma_genres.data import datasets
    from fma_genres.encoders.embedding_cache import EmbeddingCache
    from fma_genres.inference import predict

    data = datasets.load(datasets.DataSettings.from_config({**best["config"], "data_dir": str(music)}))
    track_id = data.tracks.index[data.tracks["path"] == str(clip)][0]
    folder = next(f for f in (cache / "embeddings").iterdir() if track_id in EmbeddingCache(f))
    model, _ = predict.load_predictor(out / "best.pt", device="cpu")
    expected = model(torch.from_numpy(EmbeddingCache(folder)[track_id][None].astype(np.float32)))[1][0]
    predicted = torch.tensor([float(rows[str(clip)][genre]) for genre in GENRES])
    assert torch.allclose(predicted, expected.double().float(), atol=2e-3)

    # --evaluate: the test split it was trained with, through the embedding cache, as training's test
    evaluation = run("pre_trained_models.py", f"--checkpoint={out / 'best.pt'}", "--evaluate=True",
                     f"--cache_dir={cache}", f"--out_dir={tmp_path / 'evaluation'}")
    assert "on 3 clips" in evaluation.stdout
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert abs(evaluated["test_loss"] - metrics["test_loss"]) < 1e-4 and evaluated["test_accuracy"] == metrics["test_accuracy"]

    # the encoder's weights given again (pre_trained_models.py's --encoder_weights): weights that are not there
    # say how to fix it
    from fma_genres.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="/nowhere/weights.*--encoder_weights="):
        predict.load_predictor(out / "best.pt", encoder_weights="/nowhere/weights.pt")


@needs_packages
@pytest.mark.slow  # the demo's sub-genre clips (24 of 3 s), one epoch of a Dasheng probe, a prediction
def test_a_probe_learns_fmas_genre_tree_as_multi_label(weights, tmp_path, capsys, monkeypatch):
    """target=genres_all with a probe: the demo's FMA-format data with sub-genres, one sigmoid per genre of
    the tree, thresholds tuned on validation, and a prediction that names genres by their tree paths. The
    encoder's windows are 1 s here, so 3 s clips give the cache its 3 windows (30 s clips: 25 s more)."""
    from fma_genres.data.demo_data import make_demo_dataset
    from fma_genres.encoders import DashengEncoder

    monkeypatch.setattr(DashengEncoder, "window_seconds", 1.0)
    demo = make_demo_dataset(tmp_path / "demo", tracks_per_genre=3, duration=3.0, subgenres=True)
    run = functools.partial(run_here, capsys)  # in-process, as the test above
    out = tmp_path / "run"
    run("main.py", f"--data_dir={demo}", "--download=False", "--target=genres_all", "--min_genre_tracks=1",
        "--encoder=dasheng", f"--encoder_weights={weights['dasheng']}", "--epochs=1", "--batch_size=4",
        f"--out_dir={out}", "--wandb_mode=disabled", "--cache_workers=1")
    best = torch.load(out / "best.pt", weights_only=True)
    genres = best["genres"]
    assert best["model"] == "probe" and best["target"] == "genres_all"
    assert best["model_args"]["n_classes"] == len(genres["ids"]) == len(genres["thresholds"]) > 8  # sub-genres too
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["select_metric"] == "pr_auc_macro" and 0 <= metrics["pr_auc_macro"] <= 1
    clip = sorted((demo / "fma_small").rglob("*.mp3"))[0]
    predicted = run("pre_trained_models.py", f"--checkpoint={out / 'best.pt'}", "--json", "--top_k=3",
                    "--num_workers=1", clip)
    shown = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert len(shown["genres"]) == 3 and set(shown["probabilities"]) == set(best["class_names"])


@needs_packages
@pytest.mark.slow  # torchrun's two ranks each load the encoder, then one process builds the same cache
def test_two_ranks_fill_the_embedding_cache_one_process_would(weights, music, tmp_path):
    """Under torchrun the ranks of a machine share the embedding cache's rows (the mel cache's shards): the
    folder they fill is the one a single process fills, row for row (a float16 step apart at most: each
    process runs the encoder on its own threads)."""
    from fma_genres.encoders.embedding_cache import EmbeddingCache

    env = {**clean_env(tmp_path), "HF_HUB_OFFLINE": "1"}
    keys = ["--dataset=folder", f"--data_dir={music}", "--encoder=dasheng", f"--encoder_weights={weights['dasheng']}",
            "--prepare_only=True", "--cache_workers=1", "--wandb_mode=disabled"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "main.py", *keys, f"--cache_dir={tmp_path / 'two'}", f"--out_dir={tmp_path / 'run_two'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "nothing was trained" in two.stdout
    rank_0 = int(re.search(r"\[(\d+) computed now", two.stdout).group(1))
    assert 0 < rank_0 < 9, two.stdout  # rank 0 computed its share, rank 1 the rest
    one = run("main.py", *keys, f"--cache_dir={tmp_path / 'one'}", f"--out_dir={tmp_path / 'run_one'}", env=env)
    assert "[9 computed now" in one.stdout
    (folder_two,), (folder_one,) = ((tmp_path / name / "embeddings").iterdir() for name in ("two", "one"))
    assert folder_two.name == folder_one.name  # the same tracks, encoder, weights and preprocessing
    caches = EmbeddingCache(folder_two), EmbeddingCache(folder_one)
    for track_id in caches[1].track_ids:
        a, b = (cache[track_id].astype(np.float32) for cache in caches)
        assert np.allclose(a, b, rtol=2 ** -10, atol=1e-6), track_id


def test_the_encoder_keys_choose_the_probe_and_refuse_what_does_not_fit():
    from fma_genres import configurator
    from fma_genres.runtime.errors import ConfigError
    from main import CONFIG

    probe = configurator.make_config({"encoder": "dasheng", "head": "mlp"}, CONFIG)
    assert probe["model"] == "probe" and configurator.make_config({}, CONFIG)["model"] == "crnn"
    assert configurator.runs_folder(probe, "runs").name == "probe"
    assert configurator.naming_defaults(probe, CONFIG)["encoder"] == "mel", "a probe's W&B name shows its encoder"
    refused = {
        "trust_remote_code": {"encoder": "mert"},
        "is a CNN on mel-spectrograms, but encoder=whisper": {"encoder": "whisper", "model": "cnn1d"},
        "--encoder=dasheng|whisper|clap": {"model": "probe"},
        "drop --data_augmentation": {"encoder": "clap", "data_augmentation": True},
        "choose one of linear, mlp": {"encoder": "clap", "head": "deep"},
    }
    for message, overrides in refused.items():
        with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
            configurator.make_config(overrides, CONFIG)
    assert "encoder_weights" in configurator.keys_where("names_run", CONFIG)
    assert not set(configurator.keys_where("may_change_on_resume", CONFIG)) & {"encoder", "encoder_weights", "head"}


def test_each_encoder_has_a_probe_config_for_fma_small_and_medium():
    from fma_genres import configurator
    from fma_genres.encoders import ENCODERS
    from main import CONFIG

    for name in ENCODERS:
        for subset in ("small", "medium"):
            path = ROOT / "configs" / f"probe_{name}_{subset}.py"
            config = configurator.make_config(configurator.read_config_file(path, CONFIG), CONFIG)
            assert (config["model"], config["encoder"], config["subset"], config["split"]) == ("probe", name, subset,
                                                                                             "official")
