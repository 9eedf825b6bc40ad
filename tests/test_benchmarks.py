"""The benchmark commands run end to end at their tiny size and report every row, each verdict agreeing
with the figures it judges (no timing assertions); the GPU check runs without the packages its GPU
runners lack.

    python -m pytest tests/test_benchmarks.py -q
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_ROWS = [
    "a cache | original: librosa + np.save per track",
    "a cache | build_cache, workers=1",
    "a cache | build_cache, workers=",  # all cores
    "a cache | same spectrograms",
    *[f"b loading | {n} tracks, {what}" for n in (100, 200) for what in
      ("original: every spectrogram in memory", "memmap cache + make_loaders (faithful)",
       "memmap cache + make_loaders (faithful=False")],
    "b loading | memory growth 100 -> 200 tracks, original",
    "b loading | memory growth 100 -> 200 tracks, memmap cache + make_loaders (faithful)",
    *[f"c training | {model} {variant} |" for model in ("cnn1d", "cnn2d", "crnn") for variant in ("eager", "compile")],
    *[f"c training | {model} {variant} |" for model in ("cnn2d", "crnn")
      for variant in ("channels_last", "compile + channels_last")],
    "d predict | crnn, one track per forward pass",
    "d predict | crnn, batches of 32",
    "e ddp | cnn1d, 1 process, ",
    "e ddp | cnn1d, 1 process, 1 thread",
    "e ddp | cnn1d, 2 gloo processes",
    *[f"f allocator | {model} batch 4 eager, {setting} |" for model in ("crnn", "cnn2d")
      for setting in ("glibc's default malloc", "allocator.keep_large_allocations()")],
]
# "<figure><unit> <operator> <bound><unit>: met" or "...: NOT met", as run.verdict writes it
VERDICT = re.compile(r"(-?[\d.]+(?:e[-+]\d+)?)( ?[A-Za-z]*) (>=|<) ([\d.]+(?:e[-+]\d+)?)\2: (met|NOT met)")


def check_verdicts(text):
    """Every verdict in ``text`` says met exactly when its figure meets its bound; returns how many."""
    verdicts = VERDICT.findall(text)
    assert len(verdicts) == text.count(": met") + text.count(": NOT met"), "a verdict without its figures"
    for figure, unit, operator, bound, said in verdicts:
        met = float(figure) >= float(bound) if operator == ">=" else float(figure) < float(bound)
        assert said == ("met" if met else "NOT met"), f"{figure}{unit} {operator} {bound}{unit}: {said}"
    return len(verdicts)


def test_tiny_benchmark_prints_and_writes_every_row(tmp_path):
    out = tmp_path / "results.md"
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--size=tiny", f"--work_dir={tmp_path / 'work'}",
                             f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    final_table = result.stdout.rsplit("| part | measurement |", 1)[1]
    written = out.read_text()
    for row in EXPECTED_ROWS:
        assert row in final_table, f"row {row!r} missing from the printed table:\n{result.stdout[-4000:]}"
        assert row in written, f"row {row!r} missing from {out}"
    assert "Machine: CPU " in written and "torch " in written
    # every measured row carries a number; every target says whether it was met
    for line in final_table.splitlines():
        if line.startswith("| ") and "skipped" not in line:
            assert re.search(r"\d", line.split("|")[3]), line
    assert check_verdicts(written) >= 12
    assert not list((tmp_path / "work").glob("tmp*")), "a contender's scratch folder was left behind"


DATA_PATH_ROWS = [
    *[f"g loader | {n} clips, {augment}, {feed}" for n in (20, 40) for augment in ("no augmentation", "augmented")
      for feed in ("DataLoader, 0 workers", "DataLoader, 1 workers", "DataLoader, 2 workers", "preload (cpu)")],
    "i startup | import torch alone", "i startup | import main, minus import torch",
    "i startup | import pre_trained_models, minus import torch"]


def test_tiny_data_path_benchmark_writes_the_loader_and_startup_rows(tmp_path):
    out = tmp_path / "results_data_path.md"
    result = subprocess.run([sys.executable, "benchmarks/data_path.py", "--size=tiny", f"--work_dir={tmp_path}",
                             f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = out.read_text()
    for row in DATA_PATH_ROWS:
        assert row in written, f"row {row!r} missing from {out}:\n{written}"
    assert check_verdicts(written) == 4 + 2  # preload's speed-up per loader setting; two import costs


def test_unknown_part_is_a_clear_usage_error():
    result = subprocess.run([sys.executable, "benchmarks/run.py", "--only=cache,speed"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--only takes parts from cache,loading,training,predict,ddp,allocator; got speed" in result.stderr


@pytest.mark.parametrize("text", ["1.32x >= 1.5x: met", "0.07 s < 2 s: NOT met", "8.3e-07 < 0.0001: NOT met",
                                  "own memory flat: met"])
def test_a_verdict_that_contradicts_its_figures_fails_the_check(text):
    with pytest.raises(AssertionError):
        check_verdicts(text)


GPU_ROWS = [
    *[f"t tests | {name} | skipped" for name in ("test_preload_on_the_gpu_gives_the_cpu_batches_and_masks",
                                                 "test_nccl_runs_main_pys_ddp_step_on_every_gpu")],
    "a data | synthetic cache: 26 + 8 clips of 128 x 150 float16 dB",
    *[f"b epochs | {model}, this project's defaults | " for model in ("cnn1d", "cnn2d", "crnn")],
    "c crnn | crnn, amp off | ", "c crnn | crnn, preload off | ",
    "c crnn | cnn1d, last smaller batch (3 of 4), static shapes | ",
    "c crnn | cnn1d, last smaller batch (3 of 4), batch dimension dynamic | ",
    "d torchrun | cnn1d, plain process, batch 4 | ", "d torchrun | cnn1d, torchrun, 1 gloo process(es), global batch 4 | ",
    "e predict | crnn, model alone, batches of 8 windows | ",
]
RUNNERS_LACK = ("soundfile", "soxr", "librosa", "wandb", "optuna")


def blocking(tmp_path, modules):
    """An environment whose Python processes (and their children: torchrun's) cannot import ``modules``."""
    folder = tmp_path / "blocked"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {set(modules)!r}:\n"
        "            raise ImportError(f'{name} is blocked: the GPU runners lack it')\n"
        "sys.meta_path.insert(0, Blocked())\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


def gpu_check(tmp_path, blocked, *options):
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--size=tiny", f"--work_dir={tmp_path / 'work'}",
                             f"--out={tmp_path}", *options], cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env=blocking(tmp_path, blocked))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.rsplit("| part | measurement |", 1)[1], (tmp_path / "results_gpu.md").read_text()


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_without_the_packages_gpu_runners_lack(tmp_path):
    printed, written = gpu_check(tmp_path, RUNNERS_LACK)
    for row in GPU_ROWS + ["e predict | crnn, 2 tracks of 3.5 s generated audio | "]:
        assert row in printed and row in written, f"row {row!r} missing:\n{written}"
    assert "Command: `python benchmarks/gpu.py --size=tiny" in written and "Machine: " in written
    for line in [line for line in printed.splitlines()[2:] if line.startswith("| ")]:  # measured or skipped
        result = line.split("|")[3]
        assert re.search(r"\d", result) or "skipped" in result or "cut at" in result, line
    assert "cut at" not in written, written


def test_the_gpu_checks_prediction_part_says_why_it_skips_audio_without_torchaudio(tmp_path):
    printed, _ = gpu_check(tmp_path, (*RUNNERS_LACK, "torchaudio"), "--only=e")
    assert "e predict | crnn, model alone, batches of 8 windows | " in printed
    assert "| e predict | crnn, tracks from generated audio | skipped |  | torchaudio is missing here" in printed


@pytest.mark.slow  # three commands on 9 clips of 30 s: ~35 s on a busy 2-core machine
@pytest.mark.skipif(importlib.util.find_spec("dasheng") is None, reason="dasheng not installed (requirements-encoders.txt)")
def test_the_fine_tuning_benchmark_times_a_tiny_dasheng_from_cache_to_prediction():
    result = subprocess.run([sys.executable, "benchmarks/finetune.py", "--clips=3", "--epochs=1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("audio cache", "fine-tune", "predict", "whole path"):
        assert re.search(rf"^finetune \| {stage} \| tiny Dasheng, 9 clips of 30 s, 1 epochs \| [\d.]+ s", result.stdout,
                         re.MULTILINE), result.stdout
