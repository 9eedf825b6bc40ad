"""Every CUDA path against the CPU: preload, bf16 autocast, torch.compile, checkpoints across devices,
prediction, NCCL, and a training step that never waits for the host. Skipped without a GPU.

    python -m pytest tests/test_cuda.py -q       # where pytest is installed
    python tests/test_cuda.py                    # the GPU runners (no pytest; benchmarks/gpu.py part t runs this)

Tolerances: bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.4%), and cuDNN convolutions use
TF32 (10 bits, 0.1%) by default, so values computed on the GPU are compared with relative tolerances
a few steps wide, never bitwise; what only moves bytes (gathering, masking, copying state) is exact.
"""
import inspect
import json
import math
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # as pytest.ini's pythonpath, for the script
import models_utils  # noqa: E402
import utils  # noqa: E402
from fma_genres import tasks  # noqa: E402
from fma_genres.data import cache as mel_cache  # noqa: E402
from fma_genres.data.preload import preloaded  # noqa: E402
from fma_genres.inference import predict  # noqa: E402
from fma_genres.runtime import atomic  # noqa: E402
from host_reads import host_reads  # noqa: E402
from models import build_model  # noqa: E402
from train import EpochHooks, TrainSettings, train  # noqa: E402

try:
    import pytest
except ImportError:  # the GPU runners: the __main__ block below runs the tests
    pytest = None
NO_CUDA = "no GPU on this machine: benchmarks/gpu.py runs these on a GPU runner"
if pytest is not None:
    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)

N_FRAMES, N_MELS = 96, 128


def synthetic_cache(folder, clips=20, seed=0):
    """A cache folder of make_loaders' format holding ``clips`` random dB spectrograms."""
    folder.mkdir(parents=True, exist_ok=True)
    preprocessing = {**utils.PREPROCESSING, "n_frames": N_FRAMES}
    ids = list(range(2, clips + 2))
    (folder / "params.json").write_text(json.dumps({"subset": "small", "preprocessing": preprocessing, "track_ids": ids}))
    mels = np.random.default_rng(seed).uniform(-80, 0, (clips, N_MELS, N_FRAMES)).astype(np.float16)
    np.save(folder / "mels.npy", mels)
    np.save(folder / "status.npy", np.full(clips, mel_cache.OK, dtype=np.int8))
    cache = mel_cache.MelCache(folder)
    frame = pd.DataFrame({"label": [t % 8 for t in ids]}, index=pd.Index(ids, name="track_id"))
    return cache, {"train": frame, "val": frame.iloc[:4], "test": frame.iloc[:4]}


def batches(n=6, batch_size=8, device="cuda", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [((torch.rand(batch_size, N_MELS, N_FRAMES, generator=generator) * -80).to(device),
             torch.randint(0, 8, (batch_size,), generator=generator).to(device)) for _ in range(n)]


def model_and_adam(name="crnn", device="cuda", seed=0):
    torch.manual_seed(seed)
    model = models_utils.init_weights(build_model(name, n_mels=N_MELS, n_frames=N_FRAMES, n_classes=8)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # main.py's optimiser


def step_losses(model, optimizer, data, amp):
    losses = []
    train(model, data, optimizer, "cuda", TrainSettings(amp=amp, log_interval=1),
          EpochHooks(on_log=lambda _, loss: losses.append(loss)))
    return losses


def test_preload_on_the_gpu_gives_the_cpu_batches_and_masks(tmp_path):
    cache, splits = synthetic_cache(tmp_path / "cache")
    epochs = {}
    for device in ("cpu", "cuda"):
        loaders, _ = utils.make_loaders(cache, splits, 6,  # 40 items: 6 x 6 + 4
                                        settings=utils.LoaderSettings(augment=True, seed=3, device=device))
        loader = preloaded(loaders["train"], True, torch.device(device))
        assert loader is not loaders["train"] and loader.rows.device.type == device
        epochs[device] = [(inputs.cpu(), targets.cpu()) for inputs, targets in loader]
    assert len(epochs["cpu"]) == len(epochs["cuda"]) == 7
    for (cpu_inputs, cpu_targets), (gpu_inputs, gpu_targets) in zip(epochs["cpu"], epochs["cuda"]):
        assert torch.equal(cpu_targets, gpu_targets)
        assert torch.equal(cpu_inputs, gpu_inputs)  # gathered and masked (0 dB) alike: no arithmetic to differ
    assert any((inputs == 0).any() for inputs, _ in epochs["cuda"])  # the masks are there


def test_bf16_training_stays_within_two_percent_of_fp32():
    data, losses = batches(), {}
    for amp in (False, True):
        model, optimizer = model_and_adam()
        torch.cuda.manual_seed(0)  # the same dropout masks
        losses[amp] = step_losses(model, optimizer, data, amp)
    assert len(losses[True]) == 6 and all(math.isfinite(loss) for loss in losses[True])
    for fp32, bf16 in zip(losses[False], losses[True]):  # a few bf16 steps (0.4% each) from the same start
        assert abs(bf16 - fp32) <= 0.02 * abs(fp32), (losses[False], losses[True])


def test_compile_on_cuda_agrees_with_eager():
    model, _ = model_and_adam("cnn1d")
    compiled = models_utils.compile_model(model)
    inputs = batches(1)[0][0]
    with torch.inference_mode():
        eager, fast = model.eval()(inputs)[0], compiled.eval()(inputs)[0]
    scale = eager.abs().max().item()
    assert (fast - eager).abs().max().item() <= 1e-3 * scale + 1e-5  # a few TF32 steps


def test_a_cuda_checkpoint_resumes_on_the_cpu_and_back(tmp_path):
    model, optimizer = model_and_adam("cnn1d")
    train(model, batches(3), optimizer, "cuda")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    path = tmp_path / "cuda.pt"
    atomic.atomic_write(path, lambda f: torch.save(state, f))
    for device in ("cpu", "cuda"):  # onto the CPU, then from the CPU's own save back onto the GPU
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        moved, moved_optimizer = model_and_adam("cnn1d", device, seed=1)  # other weights, overwritten
        moved.load_state_dict(loaded["model"])
        moved_optimizer.load_state_dict(loaded["optimizer"])
        for key, value in model.state_dict().items():
            assert torch.equal(moved.state_dict()[key].cpu(), value.cpu()), key
        for param, reference in zip(moved.parameters(), model.parameters()):
            for key in ("step", "exp_avg", "exp_avg_sq"):
                mine, theirs = moved_optimizer.state[param][key], optimizer.state[reference][key]
                assert mine.device == param.device and torch.equal(mine.cpu(), theirs.cpu()), key
        path = tmp_path / f"{device}.pt"
        atomic.atomic_write(path, lambda f: torch.save({"model": moved.state_dict(),
                                                       "optimizer": moved_optimizer.state_dict()}, f))
    train(moved, batches(1, device="cuda", seed=5), moved_optimizer, "cuda")  # and it trains on
    assert all(torch.isfinite(p).all() for p in moved.parameters())


def test_prediction_on_cuda_matches_the_cpu():
    model, _ = model_and_adam("crnn", "cpu")
    windows = (torch.rand(12, N_MELS, N_FRAMES, generator=torch.Generator().manual_seed(2)) * -80).half()
    results = {}
    for device in ("cpu", "cuda"):
        tracks = [{"sum": 0.0, "queued": 6}, {"sum": 0.0, "queued": 6}]
        queue = [(i // 6, window) for i, window in enumerate(windows)]
        predict.run_batch(model.to(device).eval(), tasks.TASKS[tasks.DEFAULT].window_probabilities, queue, tracks, device)
        results[device] = np.stack([track["sum"] for track in tracks])
    np.testing.assert_allclose(results["cuda"], results["cpu"], atol=2e-3)  # summed probabilities, TF32 convs


def test_a_training_epoch_waits_for_the_gpu_once_per_log_interval():
    model, optimizer = model_and_adam("crnn")
    data = batches(12)
    train(model, data[:2], optimizer, "cuda")  # cuDNN's and the allocator's first-time work
    with host_reads("cuda") as reads:
        train(model, data, optimizer, "cuda", settings=TrainSettings(amp=True, log_interval=4))
    assert reads["reads"] <= 12 // 4, reads


def test_nccl_runs_main_pys_ddp_step_on_every_gpu():
    gpus = torch.cuda.device_count()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                             "benchmarks/ddp_steps.py", "crnn", str(8 * gpus), str(N_FRAMES), "2"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["processes"] == gpus and figures["seconds_per_step"] > 0


def run_as_script():
    """Each test: "name: passed", "name: skipped (why)" or "name: FAILED (the error)"; exit 1 if one failed."""
    failed = 0
    for name, function in [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]:
        if not torch.cuda.is_available():
            print(f"{name}: skipped ({NO_CUDA})", flush=True)
            continue
        try:
            with tempfile.TemporaryDirectory() as folder:
                function(**({"tmp_path": Path(folder)} if "tmp_path" in inspect.signature(function).parameters else {}))
            print(f"{name}: passed", flush=True)
        except Exception as error:  # noqa: BLE001 -- every failure is reported, the other tests still run
            failed += 1
            traceback.print_exc()
            print(f"{name}: FAILED ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_as_script())
