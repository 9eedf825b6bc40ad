"""Fine-tuning an encoder end to end with its probe (finetune_encoder=True; docs/encoders.md: Fine-tuning):
main.py trains a tiny random Dasheng on the audio cache with its own learning rate, a warm-up and frozen
layers, resumes exactly after SIGTERM mid-epoch, and pre_trained_models.py predicts and evaluates from the
checkpoint alone; Whisper's and CLAP's fine-tuned models in-process (gradients, frozen layers, gradient
checkpointing, augmentation only in training). Tiny random encoders (test_encoders.Weights), generated WAV
clips (test_probes.music), nothing downloaded (HF_HUB_OFFLINE=1).

    python -m pytest tests/encoders/test_finetune_encoder.py -q
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import test_probes  # this folder's too
import torch

import main
import models_utils
import pre_trained_models
import test_encoders  # this folder's
from conftest import clean_env, default_sigint, wait_for
from test_encoders import ROOT, needs_packages  # this folder's: pytest puts it on sys.path

GENRES = test_probes.GENRES
music = test_probes.music  # its fixture: 3 genres x 3 WAV clips of 30 s
weights = test_encoders.weights  # its fixture: the tiny random encoders, saved locally

ENCODER_LR, HEAD_LR, WARMUP = 1e-4, 1e-3, 4  # 3 training clips at batch 1: 3 steps an epoch
# Dasheng's weights that frozen_layers=1 keeps: its front end and its first block
FROZEN = ("front_end.", "init_bn.", "patch_embed.", "time_pos_embed", "freq_pos_embed", "blocks.0.")



def train_args(music, weights_file, cache, out_dir, *extra):
    return ["--dataset=folder", f"--data_dir={music}", f"--cache_dir={cache}", "--encoder=dasheng",
            f"--encoder_weights={weights_file}", "--finetune_encoder=True", f"--encoder_lr={ENCODER_LR}",
            f"--lr={HEAD_LR}", f"--warmup_steps={WARMUP}", "--frozen_layers=1", "--data_augmentation=True",
            "--batch_size=1", "--epochs=2", f"--out_dir={out_dir}", "--wandb_mode=disabled", "--cache_workers=1",
            "--hardest_clips=0", *extra]


def state(path):
    return models_utils.load_checkpoint(path)["state_dict"]


@needs_packages
@pytest.mark.slow  # three trainings of 2 epochs (one stopped by SIGTERM), a prediction and an evaluation: ~40 s
def test_a_fine_tuned_dasheng_trains_resumes_exactly_and_predicts_from_its_checkpoint_alone(weights, music, tmp_path,
                                                                                        capsys):
    weights_file = shutil.copy(weights["dasheng"], tmp_path / "dasheng.pt")  # deleted before prediction
    cache, straight = tmp_path / "cache", tmp_path / "straight"
    assert main.main(train_args(music, weights_file, cache, straight)) == 0
    assert "Audio cache" in capsys.readouterr().out
    last = models_utils.load_checkpoint(straight / "last.pt")
    assert last["model"] == "finetuned" and last["preprocessing"]["encoder"] == "dasheng"

    # encoder_lr and lr are separate groups; the warm-up took WARMUP of the 6 steps, each epoch's lr its first step's
    groups = {g["name"]: g for g in last["training"]["optimizer"]["param_groups"]}
    assert (groups["encoder"]["lr"], groups["head"]["lr"]) == (ENCODER_LR, HEAD_LR)
    assert groups["encoder"]["warmup_step"] == WARMUP
    assert [row["lr"] for row in last["training"]["history"]] == pytest.approx([ENCODER_LR / WARMUP, ENCODER_LR * 3 / WARMUP])

    # frozen_layers=1: the front end (BatchNorm statistics too) and block 0 kept their weights; block 1 learnt
    original, trained = torch.load(weights_file, weights_only=True)["model"], last["state_dict"]
    for key, value in original.items():
        assert torch.equal(trained[f"encoder.{key}"], value) == key.startswith(FROZEN), key

    # SIGTERM to the process group after a mid-epoch save, then resume: the uninterrupted run's weights
    run = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "w+") as log:
        process = subprocess.Popen([sys.executable, "main.py", *train_args(music, weights_file, cache, run,
                                                                           "--save_interval=2")],
                                   cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True, preexec_fn=default_sigint,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for(run / "last.pt", process)
            os.killpg(process.pid, signal.SIGTERM)
            assert process.wait(timeout=120) == 143
        finally:
            process.kill()
    assert models_utils.load_checkpoint(run / "last.pt")["training"]["epoch"] < 2
    assert main.main(train_args(music, weights_file, cache, run, "--resume=True")) == 0
    resumed, expected = state(run / "last.pt"), state(straight / "last.pt")
    for key, value in expected.items():  # a lost warm-up step or augmentation draw moves weights by ~1e-4
        assert torch.allclose(resumed[key].float(), value.float(), rtol=1e-4, atol=1e-6), key

    # prediction and --evaluate from the checkpoint alone: the encoder's weights file is gone
    os.remove(weights_file)
    clip, table = music / "Jazz" / "0.wav", tmp_path / "genres.csv"
    assert pre_trained_models.main([f"--checkpoint={straight / 'best.pt'}", f"--output={table}", "--num_workers=0",
                                    str(clip)]) == 0
    row = next(csv.DictReader(table.open()))
    assert row["windows"] == "3"
    from fma_genres.data import datasets
    from fma_genres.encoders.audio_cache import AudioCache
    from fma_genres.inference import predict

    model, best = predict.load_predictor(straight / "best.pt")
    data = datasets.load(datasets.DataSettings.from_config({**best["config"], "data_dir": str(music)}))
    track_id = data.tracks.index[data.tracks["path"] == str(clip)][0]
    row_of_cache = AudioCache(next((cache / "audio").iterdir()))[track_id]
    with torch.no_grad():  # the clip's prediction is the model on its audio cache row
        expected = model(torch.from_numpy(row_of_cache[None].astype(np.float32)))[1][0]
    assert torch.allclose(torch.tensor([float(row[g]) for g in GENRES]), expected.float(), atol=1e-4)
    assert pre_trained_models.main([f"--checkpoint={straight / 'best.pt'}", "--evaluate=True", f"--cache_dir={cache}",
                                    f"--out_dir={tmp_path / 'evaluation'}"]) == 0
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    reported = json.loads((straight / "metrics.json").read_text())
    assert abs(evaluated["test_loss"] - reported["test_loss"]) < 1e-4 and evaluated["test_examples"] == 3


def test_the_fine_tuning_keys_need_finetune_encoder_and_an_encoder():
    from fma_genres import configurator
    from fma_genres.runtime.errors import ConfigError
    from main import CONFIG

    config = configurator.make_config({"encoder": "whisper", "finetune_encoder": True, "data_augmentation": True,
                                       "frozen_layers": 2, "grad_checkpointing": True}, CONFIG)
    assert config["model"] == "finetuned" and configurator.runs_folder(config, "runs").name == "finetuned"
    refused = {
        "encoder_lr=0.001, warmup_steps=10 set how a pretrained encoder": {"encoder": "dasheng", "encoder_lr": 1e-3,
                                                                            "warmup_steps": 10},
        "frozen_layers=1 set how": {"frozen_layers": 1},
        "finetune_encoder=True trains a pretrained encoder": {"finetune_encoder": True},
        "the clap encoder .* cannot recompute": {"encoder": "clap", "finetune_encoder": True, "grad_checkpointing": True},
        "model=probe is the encoder.s probe alone": {"encoder": "dasheng", "finetune_encoder": True, "model": "probe"},
    }
    for message, overrides in refused.items():
        with pytest.raises(ConfigError, match=message):
            configurator.make_config(overrides, CONFIG)
    assert "encoder_lr" in configurator.keys_where("may_change_on_resume", CONFIG)
    assert "warmup_steps" not in configurator.keys_where("may_change_on_resume", CONFIG)


# ----------------------------------------------------------------------------- in-process: each encoder's model

def finetuned(name, weights, **keys):
    """(the loaded encoder, its FinetunedEncoder with the published weights, prepared as main.py does)."""
    from fma_genres.encoders import load_encoder
    from fma_genres.training import encoder_tuning
    from models import build_model

    encoder = load_encoder(name, str(weights[name]), "cpu")
    torch.manual_seed(0)  # the probe's initial weights
    model = build_model("finetuned", encoder=name, architecture=encoder.architecture(), layers=encoder.layers,
                        dim=encoder.dim, n_classes=3, augment=keys.get("augment", False))
    model.encoder.load_state_dict(encoder.model.state_dict())
    config = {"model": "finetuned", "encoder": name, "frozen_layers": 0, "grad_checkpointing": False, **keys}
    return encoder, encoder_tuning.prepare(model, config)


def audio(name, batch=2, windows=1, seed=0):
    from fma_genres.encoders import ENCODERS

    samples = round(ENCODERS[name].window_seconds * ENCODERS[name].sample_rate)
    return 0.1 * torch.randn(batch, windows, samples, generator=torch.Generator().manual_seed(seed))


@needs_packages
@pytest.mark.parametrize("name", ["whisper", "clap", "dasheng"])
def test_a_fine_tuned_model_is_the_probe_on_its_encoder_and_trains_all_but_its_frozen_layers(name, weights):
    encoder, model = finetuned(name, weights, frozen_layers=1)
    x = audio(name)
    model.eval()
    with torch.no_grad():  # rebuilt from its architecture, it embeds as the probe's encoder does
        assert torch.allclose(model.hidden_states(x)[:, 0], encoder.embed_layers(x[:, 0]), atol=1e-5)
    model.train()
    model(x)[0].square().sum().backward()
    frozen = encoder.frozen_names(1)
    assert frozen and any(name.startswith(frozen) for name, _ in model.encoder.named_parameters())
    for key, parameter in model.encoder.named_parameters():
        learns = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        if key.startswith(frozen):
            assert not parameter.requires_grad and parameter.grad is None, key
        elif key.startswith(f"{encoder.blocks}.{encoder.depth() - 1}."):
            assert learns, key  # the top layer gets gradients
    from fma_genres.runtime.errors import ConfigError
    from fma_genres.training import encoder_tuning

    with pytest.raises(ConfigError, match=f"at most {encoder.depth()}"):
        encoder_tuning.prepare(model, {"model": "finetuned", "encoder": name, "frozen_layers": encoder.depth() + 1,
                                       "grad_checkpointing": False})


@needs_packages
@pytest.mark.parametrize("name", ["whisper", "dasheng"])
def test_gradient_checkpointing_gives_the_same_gradients(name, weights):
    x = audio(name)
    gradients = []
    for checkpointing in (False, True):
        _, model = finetuned(name, weights, grad_checkpointing=checkpointing)
        torch.manual_seed(0)
        model.train()
        model(x)[0].square().sum().backward()
        gradients.append({k: p.grad for k, p in model.encoder.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for key, gradient in gradients[0].items():
        assert torch.allclose(gradient, gradients[1][key], rtol=1e-4, atol=1e-7), key
    if name == "whisper":
        assert model.encoder.gradient_checkpointing


@needs_packages
@pytest.mark.parametrize("name,kind", [("dasheng", "waveform"), ("whisper", "specaugment"), ("clap", "specaugment")])
def test_augmentation_changes_the_encoders_input_only_in_training(name, kind, weights):
    encoder, model = finetuned(name, weights, augment=True)
    _, plain = finetuned(name, weights)
    assert encoder.augmentation == kind
    x = audio(name)
    inputs = encoder.inputs(x[:, 0])
    key = "audio" if kind == "waveform" else "input_features"
    augmented = encoder.augment(inputs)[key]
    assert augmented.shape == inputs[key].shape and not torch.allclose(augmented, inputs[key])
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], plain(x)[0])  # evaluation and prediction see the clean input
        model.train(), plain.train()
        assert not torch.allclose(model(x)[0], plain(x)[0])


def test_each_encoder_has_a_fine_tuning_config_for_fma_small():
    from fma_genres import configurator
    from fma_genres.encoders import ENCODERS
    from main import CONFIG

    for name in ENCODERS:
        path = ROOT / "configs" / f"finetune_{name}_small.py"
        config = configurator.make_config(configurator.read_config_file(path, CONFIG), CONFIG)
        assert (config["model"], config["encoder"], config["subset"], config["split"]) == ("finetuned", name, "small",
                                                                                         "official")
        assert config["encoder_lr"] < config["lr"] and config["warmup_steps"] > 0 and config["data_augmentation"]
        # LP-FT: its head is the probe config's, so the probe's best.pt is its init_from
        probe = configurator.read_config_file(ROOT / "configs" / f"probe_{name}_small.py", CONFIG)
        assert config["head"] == probe["head"]


@needs_packages
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: amp=auto's bfloat16 autocast runs only there "
                    "(this machine has no GPU)")
@pytest.mark.parametrize("name", ["dasheng", "whisper", "clap"])
def test_a_fine_tuned_encoder_trains_under_bfloat16_autocast_on_cuda(name, weights):
    """amp=auto on CUDA: train.train's autocast reaches the encoder's layers (their states are bfloat16) and
    the step's gradients are finite."""
    _, model = finetuned(name, weights, augment=True)
    model.cuda().train()
    x = audio(name).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hidden = model.hidden_states(x)
        logits, _ = model(x)
    assert hidden.dtype == torch.bfloat16 or name == "clap"  # CLAP's last op, normalize, autocasts to float32
    logits.float().square().sum().backward()
    gradients = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)


@needs_packages
def test_init_from_a_probe_checkpoint_gives_the_fine_tuned_model_its_head_and_standardisation(weights, tmp_path):
    """LP-FT: a probe of the same encoder is an init_from; its head, layer mix and per-feature standardisation
    become the fine-tuned model's probe, and the encoder keeps its pretrained weights."""
    from fma_genres.training import finetune
    from models import ProbeHead

    encoder, model = finetuned("dasheng", weights)
    torch.manual_seed(1)
    probe = ProbeHead(encoder.layers, encoder.dim, 3).eval()
    probe.standardise.use(torch.rand(encoder.layers, encoder.dim), 1 + torch.rand(encoder.layers, encoder.dim))
    models_utils.save_checkpoint(models_utils.make_checkpoint("probe", {}, probe.state_dict(), GENRES, {}),
                                 tmp_path / "probe.pt")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    finetune.load_features(model, tmp_path / "probe.pt", "finetuned", GENRES)
    for key, value in probe.state_dict().items():
        assert torch.equal(model.probe.state_dict()[key], value), key
    assert all(torch.equal(value, before[key]) for key, value in model.encoder.state_dict().items())
    with pytest.raises(models_utils.CheckpointError, match="holds a probe model but this run trains a crnn"):
        finetune.read_source(tmp_path / "probe.pt", "crnn")


@needs_packages
@pytest.mark.slow  # torchrun's two ranks each load the encoder and fine-tune it for an epoch
def test_two_ranks_fine_tune_one_encoder_under_torchrun_and_log_it_to_wandb(weights, music, tmp_path):
    """The CNNs' torchrun path (DDP over gloo, the training clips sharded between the ranks, rank 0 alone
    writing checkpoints and the W&B run) with a fine-tuned encoder."""
    out = tmp_path / "run"
    args = train_args(music, weights["dasheng"], tmp_path / "cache", out, "--epochs=1", "--batch_size=4",
                      "--data_augmentation=False", "--wandb_mode=offline")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "main.py", *args], cwd=ROOT, env={**clean_env(tmp_path), "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = models_utils.load_checkpoint(out / "last.pt")
    assert last["model"] == "finetuned" and last["config"]["world_size"] == 2
    assert last["training"]["examples_seen"] == 3  # the 3 training clips, each once: none twice, none lost
    original = torch.load(weights["dasheng"], weights_only=True)["model"]
    for key, value in original.items():  # the ranks' averaged gradients trained all but the frozen layers
        assert torch.equal(last["state_dict"][f"encoder.{key}"], value) == key.startswith(FROZEN), key
    assert result.stdout.count("fine-tuning dasheng: encoder lr") == 1  # rank 0 alone prints
    assert len(list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))) == 1
