"""Zero-shot genres with CLAP (pre_trained_models.py --zero_shot=True): a tiny random CLAP saved locally with
a tiny word-level tokenizer built with the `tokenizers` package; tracks scored over exactly the given
genres, the score is CLAP's own softmax(logit_scale x cosine), --evaluate writes a checkpoint's report, and
what does not fit is refused with the way forward. Nothing is downloaded (HF_HUB_OFFLINE=1).

    python -m pytest tests/encoders/test_zero_shot.py -q
"""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import test_probes  # this folder's too
import torch
from test_probes import write_wav

from conftest import clean_env
from test_encoders import MISSING, ROOT, needs_packages, save_clap, save_whisper

GENRES = test_probes.GENRES
music = test_probes.music  # its fixture: 3 genres x 3 WAV clips of 30 s
WORDS = "this audio is a song folk jazz rock pop".split()


def save_clap_with_tokenizer(folder):
    """The tiny CLAP of test_encoders.py, with a word-level tokenizer over the prompts' words saved beside it
    (ids 0-3 are RoBERTa's specials, so <pad> is 1, the text model's pad_token_id)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    path = save_clap(folder)
    vocab = {word: i for i, word in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    if MISSING:
        pytest.skip(f"{MISSING} not installed")
    return save_clap_with_tokenizer(tmp_path_factory.mktemp("weights"))


def predict_command(*args, env):
    return subprocess.run([sys.executable, "pre_trained_models.py", "--zero_shot=True", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@needs_packages
@pytest.mark.slow  # pre_trained_models.py as a subprocess, twice
def test_zero_shot_scores_each_track_over_exactly_the_given_genres(clap, tmp_path):
    env = {**clean_env(tmp_path), "HF_HUB_OFFLINE": "1"}
    tracks = [write_wav(tmp_path / "a.wav", 30.0, 220.0, 1), write_wav(tmp_path / "b.wav", 12.0, 440.0, 2)]
    broken = tmp_path / "broken.mp3"
    broken.write_text("not audio\n" * 100)
    table = tmp_path / "genres.csv"
    result = predict_command("--genres=Rock,Jazz,Folk", f"--encoder_weights={clap}", "--json", "--top_k=3",
                             f"--output={table}", "--num_workers=1", *tracks, broken, env=env)
    assert result.returncode == 1, result.stderr[-3000:]  # one file failed, the others were predicted
    assert f"error: {broken}" in result.stderr and "1 of 3 files could not be predicted" in result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["path"] for line in lines] == [str(t) for t in tracks]
    for line in lines:
        assert sorted(p["genre"] for p in line["predictions"]) == sorted(GENRES)
        assert abs(sum(p["probability"] for p in line["predictions"]) - 1) < 1e-5
    rows = list(csv.DictReader(table.open()))
    assert list(rows[0]) == ["path", "windows", "Rock", "Jazz", "Folk", "error"]  # the genres as given, in order
    assert [row["windows"] for row in rows[:2]] == ["3", "1"]  # the encoder's 10 s windows, as for a probe
    for row in rows[:2]:
        assert abs(sum(float(row[genre]) for genre in GENRES) - 1) < 1e-5 and not row["error"]
    assert rows[2]["path"] == str(broken) and rows[2]["error"] and rows[2]["Rock"] == ""


@needs_packages
def test_a_tracks_score_is_clap_own_softmax_of_scale_times_cosine(clap, tmp_path):
    """A 10 s track is one window: its scores are CLAP's forward pass's logits_per_audio (logit_scale_a x
    cosine of the projected embeddings) through a softmax, computed here by transformers alone."""
    import transformers

    import utils
    from fma_genres.inference import predict, probe_windows, zero_shot

    track = write_wav(tmp_path / "t.wav", 10.0, 330.0, 3)
    prompt = "{genre}"  # one word each: the tiny random text tower's embeddings of them differ the most
    model, checkpoint = zero_shot.load_zero_shot(GENRES, prompt, str(clap), "cpu")

    clap_model = transformers.ClapModel.from_pretrained(clap).eval()
    text = transformers.AutoTokenizer.from_pretrained(clap)(list(GENRES), padding=True, return_tensors="pt")
    audio = transformers.ClapFeatureExtractor.from_pretrained(clap)([utils.load_audio(track, 48000)], sampling_rate=48000,
                                                                    return_tensors="pt")
    with torch.inference_mode():
        logits = clap_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                            input_features=audio["input_features"], is_longer=audio["is_longer"]).logits_per_audio[0]
    expected = logits.softmax(0).double().numpy()
    assert np.ptp(expected) > 0.01, "the genres' scores differ: the comparison below is not vacuous"

    windows = probe_windows.track_windows(track, checkpoint["preprocessing"])
    rows = model.encoder.embed_layers(torch.from_numpy(windows))[None]  # (1 track, 1 window, 1 layer, dim)
    with torch.inference_mode():
        assert np.abs(model(rows)[1][0].double().numpy() - expected).max() < 1e-5
    # prediction stores the window's embedding as float16 (the cache's rows): each component is off by 2**-11 of
    # itself at most, so the unit vector by 2**-11, a cosine by twice that once renormalised, a logit by
    # logit_scale times that, and a softmax probability by no more than its logits' largest change
    ((_, scores, n_windows, error),) = predict.predict(model, checkpoint, [track])
    assert error is None and n_windows == 1
    assert np.abs(scores - expected).max() < 2 * clap_model.logit_scale_a.exp().item() * 2.0 ** -11


@needs_packages
def test_zero_shot_evaluate_writes_a_checkpoints_report_and_reuses_the_embedding_cache(clap, music, tmp_path, capsys):
    import pre_trained_models

    out, cache = tmp_path / "evaluation", tmp_path / "cache"
    args = ["--zero_shot=True", "--evaluate=True", "--dataset=folder", f"--data_dir={music}", f"--cache_dir={cache}",
            f"--encoder_weights={clap}", f"--out_dir={out}"]
    assert pre_trained_models.main(args) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert "on 3 clips" in first and "Embedding cache" in first
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "zero_shot" and metrics["checkpoint"] == f"zero-shot CLAP {clap}"
    assert metrics["test_examples"] == 3 and 0 <= metrics["test_accuracy"] <= 1
    # what a checkpoint's --evaluate writes (evaluation.report): the task's scores and the split's settings
    for key in ("test_loss", "target", "per_class", "roc_auc", "confusion_matrix", "epoch", "dataset", "split"):
        assert key in metrics, key
    assert list(metrics["per_class"]) == list(GENRES)  # the dataset's genres are the prompts' genres
    assert {p.name for p in out.glob("*.png")} >= {"confusion_matrix.png", "roc_curves.png"}
    assert pre_trained_models.main(args) == 0
    assert "[0 computed now" in capsys.readouterr().out  # the test clips' CLAP embeddings, cached the first time


@needs_packages
def test_what_zero_shot_cannot_do_is_refused_with_the_way_forward(clap, tmp_path, capsys):
    import pre_trained_models

    refused = {
        "drop --checkpoint": ["--zero_shot", "--checkpoint=best.pt", "a.mp3"],
        "--export needs a trained checkpoint": ["--zero_shot", "--export=m.onnx"],
        "--embeddings needs a trained checkpoint": ["--zero_shot", "--embeddings=e.npz", "a.mp3"],
        "--plot needs a trained checkpoint": ["--zero_shot", "--plot=figures", "a.mp3"],
        "drop --genres=Rock,Jazz": ["--zero_shot", "--evaluate", "--genres=Rock,Jazz", "--data_dir=data"],
        "--genres is for --zero_shot=True": ["--checkpoint=best.pt", "--genres=Rock,Jazz", "a.mp3"],
        "must hold {genre}": ["--zero_shot", "--prompt=This is {style} music", "a.mp3"],
        "or --zero_shot=True": ["a.mp3"],
    }
    for message, argv in refused.items():
        with pytest.raises(SystemExit) as stop:
            pre_trained_models.parse_args(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err, argv

    track = write_wav(tmp_path / "a.wav", 10.0, 220.0, 4)
    whisper, no_tokenizer = save_whisper(tmp_path), save_clap(tmp_path)  # a CLAP saved without its tokenizer
    capsys.readouterr()
    weights = {f"--encoder_weights={whisper}": "they are a whisper model, not clap",
               f"--encoder_weights={no_tokenizer}": "no tokenizer for the text prompts",
               "--encoder_weights=nobody/no-such-clap": "HF_HUB_OFFLINE",
               "--genres=Rock": "at least two different genres",
               "--genres=tree": "--genres=tree reads FMA's genre tree from genres.csv: give --data_dir"}
    for option, message in weights.items():
        assert pre_trained_models.main(["--zero_shot", option, str(track)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], option  # one paragraph (transformers' bars aside)


def test_the_genres_are_fmas_top_genres_of_the_subset_a_list_or_the_genre_tree(tmp_path):
    from fma_genres.inference.zero_shot import chosen_genres

    assert len(chosen_genres()) == 8 and "Rock" in chosen_genres() and "Jazz" not in chosen_genres()
    assert len(chosen_genres(subset="medium")) == 16 and {"Jazz", "Old-Time / Historic"} <= set(chosen_genres(subset="large"))
    assert chosen_genres(" Rock, Jazz ,Folk") == ["Rock", "Jazz", "Folk"]
    (tmp_path / "fma_metadata").mkdir()
    (tmp_path / "fma_metadata" / "genres.csv").write_text(
        "genre_id,#tracks,parent,title,top_level\n12,10,0,Rock,12\n25,4,12,Punk,12\n10,8,0,Pop,10\n")
    assert chosen_genres("tree", data_dir=tmp_path) == ["Rock", "Punk", "Pop"]
