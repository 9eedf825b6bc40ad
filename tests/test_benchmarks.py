"""The benchmark command runs end to end at its tiny size and reports every row, each verdict agreeing
with the figures it judges (no timing assertions).

    python -m pytest tests/test_benchmarks.py -q
"""
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
    "c training | amp (bf16 autocast)",
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
    "h gpu | crnn bf16 + compile", "i startup | import torch alone", "i startup | import main, minus import torch",
    "i startup | import pre_trained_models, minus import torch"]


def test_tiny_data_path_benchmark_writes_the_loader_gpu_and_startup_rows(tmp_path):
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
