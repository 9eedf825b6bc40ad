"""fma_genres/encoders: tiny random Dasheng, Whisper and CLAP models saved locally, loaded and run on generated
audio; the embedding cache (windows, broken clips, resume after kill -9); errors for weights that cannot be
loaded offline; lazy imports; the probe head. Nothing is downloaded: HF_HUB_OFFLINE=1 throughout.

    python -m pytest tests/encoders/test_encoders.py -q
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import kill_mid_build, write_mp3

ROOT = Path(__file__).resolve().parents[2]
MISSING = [name for name in ("transformers", "dasheng") if importlib.util.find_spec(name) is None]
needs_packages = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: the encoders "
                                    f"are optional (pip install -r requirements-encoders.txt, Python >= 3.11)")
os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported, here and in the subprocesses


def save_dasheng(folder):
    from dasheng.pretrained.pretrained import Dasheng

    config = dict(embed_dim=32, depth=2, num_heads=2)
    path = folder / "tiny_dasheng.pt"
    torch.save({"model": Dasheng(**config).state_dict(), "config": config}, path)
    return path


def save_whisper(folder):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    # The extractor pads to 20 s (the real one to 30 s), so a 10 s window's mean must leave padding out.
    config = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1000,
                           max_target_positions=16, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1, suppress_tokens=[], begin_suppress_tokens=[])
    WhisperModel(config).save_pretrained(folder / "tiny_whisper")
    WhisperFeatureExtractor(feature_size=16, chunk_length=20).save_pretrained(folder / "tiny_whisper")
    return folder / "tiny_whisper"


def save_clap(folder):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    config = ClapConfig(
        text_config=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40),
        audio_config=dict(spec_size=64, window_size=4, num_mel_bins=16, patch_size=4, patch_stride=(4, 4),
                          hidden_size=32, depths=[1, 1], num_heads=[2, 2], patch_embeds_hidden_size=16,
                          enable_fusion=False),
        projection_dim=16)
    ClapModel(config).save_pretrained(folder / "tiny_clap")
    ClapFeatureExtractor(feature_size=16, fft_window_size=1024, hop_length=4800, max_length_s=10,
                         truncation="rand_trunc").save_pretrained(folder / "tiny_clap")
    return folder / "tiny_clap"


SAVERS = {"dasheng": save_dasheng, "whisper": save_whisper, "clap": save_clap}
LAYERS = {"dasheng": 2, "whisper": 2, "clap": 1}


class Weights(dict):
    """{encoder: its tiny random weights saved as a local file or folder}, each made when first asked for."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, name):
        torch.manual_seed(0)
        self[name] = SAVERS[name](self.folder)
        return self[name]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    if MISSING:
        pytest.skip(f"{MISSING} not installed")
    return Weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 30 s MP3 clip, a 30 s WAV at 22.05 kHz (fast to decode), a 3 s MP3 (broken: far shorter than
    three windows) and a text file."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("clips")
    t = np.arange(30 * 22050) / 22050
    sf.write(root / "clip.wav", (0.3 * np.sign(np.sin(2 * np.pi * 440 * t * (1 + t / 30)))).astype(np.float32), 22050)
    (root / "text.mp3").write_text("not audio at all\n" * 200)
    return [write_mp3(root / "clip.mp3", 30.0, seed=1), root / "clip.wav", write_mp3(root / "short.mp3", 3.0, seed=9),
            root / "text.mp3"]


def frame_of(paths):
    return pd.DataFrame({"path": [str(p) for p in paths]}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))


# ----------------------------------------------------------------------------- start-up

def test_the_encoder_modules_import_no_optional_package_and_add_little_to_start_up():
    script = """
import sys, time
import torch, main  # main.py's own imports first: what the encoder modules add is measured
start = time.perf_counter()
import fma_genres.encoders, fma_genres.encoders.embedding_cache, fma_genres.encoders.probe
print(time.perf_counter() - start, [m for m in ("transformers", "dasheng", "einops") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    seconds, loaded = out.split(" ", 1)
    assert loaded.strip() == "[]", "transformers and dasheng are imported only when an encoder is loaded"
    assert float(seconds) < 0.5


# ----------------------------------------------------------------------------- loading and embedding

@needs_packages
@pytest.mark.parametrize("name", sorted(SAVERS))
def test_each_encoder_loads_its_local_weights_and_embeds_every_layer(name, weights):
    from fma_genres.encoders import load_encoder

    encoder = load_encoder(name, str(weights[name]), "cpu")
    assert (encoder.layers, encoder.window_seconds) == (LAYERS[name], 10.0)
    t = np.arange(encoder.window_samples) / encoder.sample_rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sign(np.sin(2 * np.pi * 1760 * t))]).astype(np.float32)
    embeddings = encoder.embed_layers(audio)
    assert embeddings.shape == (2, LAYERS[name], encoder.dim) and embeddings.dtype == torch.float32
    assert torch.isfinite(embeddings).all()
    assert not torch.allclose(embeddings[0], embeddings[1], atol=1e-4), "two different sounds, two embeddings"


@needs_packages
def test_whisper_averages_only_the_positions_of_the_window_not_its_padding(weights):
    from fma_genres.encoders import load_encoder

    encoder = load_encoder("whisper", str(weights["whisper"]), "cpu")
    audio = torch.randn(1, encoder.window_samples) * 0.1
    inputs = encoder.features(list(audio.numpy()), sampling_rate=16000, return_tensors="pt")
    hidden = encoder.model(inputs["input_features"], output_hidden_states=True).hidden_states[-1][0]
    real = inputs["input_features"].shape[-1] // 4  # 10 s of the extractor's 20 s, halved by the convolutions
    embedding = encoder.embed_layers(audio)[0, -1]
    assert torch.allclose(embedding, hidden[:real].mean(0), atol=1e-5)
    assert not torch.allclose(embedding, hidden.mean(0), atol=1e-3)


# ----------------------------------------------------------------------------- weights that cannot be loaded

@needs_packages
@pytest.mark.parametrize("name, weights_name, expected", [
    ("whisper", "nobody/no-such-whisper", ["'nobody/no-such-whisper'", "HF_HUB_OFFLINE", "huggingface.co/openai", "MIT"]),
    ("clap", "nobody/no-such-clap", ["'nobody/no-such-clap'", "laion/larger_clap_music", "Apache-2.0"]),
    ("dasheng", "dasheng_base", ["'dasheng_base'", "torch.hub's cache", "zenodo.org", "Apache-2.0", ".pt file"]),
    ("dasheng", "dasheng_huge", ["'dasheng_huge'", "not one of the published names", "zenodo.org"]),
    ("whisper", "/nowhere/whisper-base", ["local folder /nowhere/whisper-base", "no such folder"]),
    ("clap", "tiny.pt", ["local file tiny.pt", "dasheng encoder's format"]),
])
def test_weights_that_cannot_be_loaded_offline_give_one_paragraph_with_the_fix(name, weights_name, expected,
                                                                             tmp_path, monkeypatch):
    from fma_genres.encoders import load_encoder
    from fma_genres.runtime.errors import ConfigError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch.hub cache
    monkeypatch.chdir(tmp_path)
    if weights_name.endswith(".pt"):
        Path(weights_name).write_bytes(b"")
    with pytest.raises(ConfigError) as error:
        load_encoder(name, weights_name, "cpu")
    message = str(error.value)
    assert "\n" not in message and "--encoder_weights=" in message and "docs/encoders.md" in message
    for text in expected:
        assert text in message


def test_mert_and_unknown_encoders_are_refused_with_the_way_forward():
    from fma_genres.encoders import load_encoder
    from fma_genres.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="trust_remote_code.*docs/encoders.md has a recipe"):
        load_encoder("mert")
    with pytest.raises(ConfigError, match=r"choose one of \['clap', 'dasheng', 'whisper'\]"):
        load_encoder("beats")


# ----------------------------------------------------------------------------- the embedding cache

# A build that saves its progress after every row and embeds slowly (0.2 s a row), so a kill lands midway.
KILLED_BUILD = """
import json, sys, time
import pandas as pd
from fma_genres.data import cache
from fma_genres.encoders import load_encoder
from fma_genres.encoders.embedding_cache import build_embedding_cache
name, weights, paths, root = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
tracks = pd.DataFrame({"path": paths}, index=pd.Index(range(1, len(paths) + 1), name="track_id"))
cache.SAVE_EVERY_SECONDS = 0.0
encoder = load_encoder(name, weights, "cpu")
embed = encoder.embed_layers
encoder.embed_layers = lambda audio: (time.sleep(0.2), embed(audio))[1]
build_embedding_cache(tracks, root, "small", encoder, workers=1, progress=False)
"""


def assert_float16_close(stored, reference):
    """stored (float16) is reference rounded, within a float16 step plus float32 noise of batching."""
    step = np.spacing(np.abs(reference).astype(np.float16)).astype(np.float64)
    assert stored.dtype == np.float16 and stored.shape == reference.shape
    assert np.all(np.abs(stored.astype(np.float64) - reference) <= step + 1e-4 * (1 + np.abs(reference)))


@needs_packages
@pytest.mark.parametrize("name", ["dasheng", pytest.param("whisper", marks=pytest.mark.slow),
                                  pytest.param("clap", marks=pytest.mark.slow)])
def test_cache_reports_broken_clips_and_resumes_after_kill_9(name, weights, clips, tmp_path):
    from fma_genres.encoders import load_encoder
    from fma_genres.encoders.embedding_cache import build_embedding_cache, clip_windows, preprocessing_of

    encoder = load_encoder(name, str(weights[name]), "cpu")
    p = preprocessing_of(encoder)
    paths = [str(clips[i % 2]) for i in range(12)] + [str(clips[2]), str(clips[3])]  # rows 13, 14 broken
    reference = {}
    for path in set(paths[:12]):
        status, _, windows = clip_windows(path, p)
        assert status == 1 and windows.shape == (3, encoder.window_samples)
        reference[path] = encoder.embed_layers(windows).numpy().astype(np.float64)
    build = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, name, str(weights[name]), json.dumps(paths),
                              str(tmp_path)], cwd=ROOT, stderr=subprocess.DEVNULL)
    folder, status = kill_mid_build(build, (tmp_path, "embeddings/small-*"), 3)
    done = int(np.count_nonzero(status))
    assert 0 < done < len(paths), "the kill must land halfway through the build"
    stored = np.load(folder / "embeddings.npy", mmap_mode="r")
    for row in np.flatnonzero(status == 1):  # every row marked done was fully written before the kill
        assert_float16_close(stored[row], reference[paths[row]])

    cache = build_embedding_cache(frame_of(paths), tmp_path, "small", encoder, workers=1, progress=False)
    assert cache.path == folder and cache.computed == len(paths) - done and cache.track_ids == list(range(1, 13))
    for track_id, path in enumerate(paths[:12], start=1):
        assert_float16_close(cache[track_id], reference[path])
    report = pd.read_csv(folder / "report.csv")
    assert report["track_id"].tolist() == [13, 14] and set(report["status"]) == {"broken"}
    assert "far shorter than the 3 windows of 10 s" in report["reason"][0]
    assert "could not decode it as audio" in report["reason"][1]
    assert "Embedding cache" in cache.summary() and "12 ok" in cache.summary() and "2 broken" in cache.summary()


@needs_packages
def test_the_cache_key_follows_the_encoder_and_its_weights(weights, clips, tmp_path):
    from fma_genres.encoders import load_encoder
    from fma_genres.encoders.embedding_cache import build_embedding_cache

    tracks = frame_of(clips[1:2])
    first = build_embedding_cache(tracks, tmp_path, "small", load_encoder("dasheng", str(weights["dasheng"]), "cpu"),
                                  workers=1, progress=False)
    again = build_embedding_cache(tracks, tmp_path, "small", load_encoder("dasheng", str(weights["dasheng"]), "cpu"),
                                  workers=1, progress=False)
    assert again.path == first.path and again.computed == 0
    retrained = tmp_path / "retrained.pt"
    dump = torch.load(weights["dasheng"], weights_only=True)
    dump["model"] = {k: v + 0.01 for k, v in dump["model"].items()}
    torch.save(dump, retrained)
    other = build_embedding_cache(tracks, tmp_path, "small", load_encoder("dasheng", str(retrained), "cpu"),
                                  workers=1, progress=False)
    assert other.path != first.path and other.computed == 1
    assert not np.allclose(other[1].astype(np.float32), first[1].astype(np.float32), atol=1e-2)


# ----------------------------------------------------------------------------- the probe head

@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_the_probe_learns_to_weight_the_layer_that_holds_the_genre(head):
    from fma_genres.encoders.probe import ProbeHead

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (256,), generator=generator)
    x = 3.0 * torch.randn(256, 3, 8, generator=generator)  # layers 0 and 2: loud noise
    x[:, 1] = 0.3 * torch.randn(256, 8, generator=generator)
    x[torch.arange(256), 1, labels] += 2.0  # layer 1: the class, far above its noise
    rows = x[:, None]  # one window per clip: (B, windows, layers, dim), as the embedding cache's rows
    probe = ProbeHead(layers=3, dim=8, n_classes=4, head=head)
    logits, probabilities = probe(rows)
    assert logits.shape == (256, 4) and torch.allclose(probabilities, logits.softmax(1))
    probe.eval()  # the MLP's dropout draws anew at each call
    assert torch.allclose(probe(rows)[0], probe.head(probe.embed(rows))), "the contract: logits == head(embed(x))"
    probe.train()
    assert torch.allclose(probe.layer_weights(), torch.full((3,), 1 / 3))
    optimiser = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(probe(rows)[0], labels).backward()
        optimiser.step()
    probe.eval()
    assert probe.layer_weights()[1] > 0.6
    assert (probe(rows)[0].argmax(1) == labels).float().mean() > 0.9


def test_probe_benchmark_prints_seconds_per_epoch():
    out = subprocess.run([sys.executable, "benchmarks/probe.py", "--tracks=64", "--layers=3", "--dim=16",
                          "--epochs=2"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for head in ("linear", "mlp"):
        assert f"probe {head} | 64 tracks x 3 windows x 3 layers x 16 | " in out and "s/epoch" in out
