"""Move tests/test_*.py into folders that mirror the code (tests/data/ for fma_genres/data/, ...), with git mv.

Re-runnable: a file already in its folder is left alone, and a test file the table does not name stays at
tests/ and is listed, so a new one gets a row here. Run from anywhere: python tools/mirror_tests.py [--dry-run]

What else it does, so the suite and the docs still hold after the move:
- the fixture folder tests/data/ (checkpoint files, not tests) becomes tests/fixtures/, since tests/data/ is
  now the data layer's tests;
- paths built from a moved file's own location (Path(__file__).resolve().parents[1] for the repository, ...)
  are rewritten one level deeper;
- every mention of tests/test_x.py in the repository's tracked text files (README, docs, code comments, .ci)
  names its new place;
- pytest.ini puts tests/ on sys.path, so `from conftest import ...` and `from host_reads import ...` work
  from any folder (tests/conftest.py itself stays at tests/ and applies to every folder below it).
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# Test file -> its folder under tests/ ("" = tests/ itself: the entry points and the repository's root
# modules). A test goes where the code it tests lives; one that drives an entry point end to end stays on top.
FOLDERS = {
    # fma_genres/data/: FMA metadata, the mel cache, datasets, preloading, the demo data, the loaders
    "test_cache.py": "data",
    "test_datasets.py": "data",
    "test_demo_data.py": "data",
    "test_preload.py": "data",
    "test_utils_loaders.py": "data",
    "test_utils_metadata.py": "data",
    # fma_genres/training/ and the training step (train.py, test.py): fine-tuning, losses, imbalance
    "test_train.py": "training",
    "test_finetune.py": "training",
    "test_multilabel.py": "training",
    "test_unbalanced.py": "training",
    # fma_genres/inference/: windows, prediction, embeddings and export
    "test_audio_windows.py": "inference",
    "test_predict.py": "inference",
    "test_embeddings_export.py": "inference",
    # fma_genres/reporting/: W&B and the figures
    "test_wandb.py": "reporting",
    # fma_genres/runtime/: devices, processes, locks, signals, torchrun
    "test_allocator.py": "runtime",
    "test_child_processes.py": "runtime",
    "test_distributed.py": "runtime",
    "test_locks.py": "runtime",
    "test_preemption.py": "runtime",
    "test_signals.py": "runtime",
    # fma_genres/experiments/: tune and repeat
    "test_experiments.py": "experiments",
    "test_studies.py": "experiments",
    "test_seed_summary.py": "experiments",
    # fma_genres/encoders/: pre-trained audio encoders and their embedding cache
    "test_encoders.py": "encoders",
    # tests/ itself: entry points, scripts, root modules, the package's top modules and its own rules, the docs
    "test_config_keys.py": "",
    "test_docs_commands.py": "",
    "test_tasks.py": "",
    "test_types.py": "",
    "test_main_config.py": "",
    "test_main_run.py": "",
    "test_app.py": "",
    "test_benchmarks.py": "",
    "test_quickstart.py": "",
    "test_download.py": "",
    "test_layers.py": "",
    "test_models.py": "",
    "test_models_utils.py": "",
    # every CUDA path, across the layers; benchmarks/gpu.py runs it as a script, importing tests/host_reads.py
    "test_cuda.py": "",
}
OLD_FIXTURES, NEW_FIXTURES = "data", "fixtures"  # tests/data/ (checkpoint files) -> tests/fixtures/

# Path(__file__)[.resolve()] followed by .parents[N] or a run of .parent: a path relative to the test file.
FILE_RELATIVE = re.compile(r"Path\(__file__\)(\.resolve\(\))?(\.parents\[(\d+)\]|(?:\.parent)+)")


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def deeper(source, depth):
    """Rewrite ``source``'s paths built from its own location for a file ``depth`` folders further down."""
    def rewrite(match):
        levels = int(match[3]) + 1 if match[3] is not None else match[2].count(".parent")
        return f"Path(__file__){match[1] or ''}.parents[{levels + depth - 1}]"
    return FILE_RELATIVE.sub(rewrite, source)


def renamed_fixtures(source):
    """The fixture folder's new name wherever a test builds a path into it."""
    return re.sub(rf'(Path\(__file__\)(\.resolve\(\))?\.parent / )"{OLD_FIXTURES}"', rf'\1"{NEW_FIXTURES}"', source)


def plan():
    """(old, new) paths relative to the repository for each test file not yet in its folder; the unmapped."""
    moves, unmapped = [], []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name not in FOLDERS:
            unmapped.append(path.name)
        elif FOLDERS[path.name]:
            moves.append((f"tests/{path.name}", f"tests/{FOLDERS[path.name]}/{path.name}"))
    return moves, unmapped


def move_fixtures(dry_run):
    """tests/data/ holds checkpoint fixtures today; it becomes tests/fixtures/ before tests/data/ holds tests."""
    old, new = TESTS / OLD_FIXTURES, TESTS / NEW_FIXTURES
    if new.exists() or not old.exists() or any(old.glob("test_*.py")):
        return []
    print(f"tests/{OLD_FIXTURES}/ -> tests/{NEW_FIXTURES}/ (fixtures)")
    if not dry_run:
        git("mv", f"tests/{OLD_FIXTURES}", f"tests/{NEW_FIXTURES}")
    return [(f"tests/{OLD_FIXTURES}/", f"tests/{NEW_FIXTURES}/")]


def spellings(old, new):
    """The ways the repository names a path: tests/test_x.py, and "tests" / "test_x.py" in Python."""
    joined = [" / ".join(f'"{part}"' for part in path.strip("/").split("/")) for path in (old, new)]
    return [(old, new), tuple(joined)] if old.endswith(".py") else [(old, new)]


def rewrite_mentions(renames):
    """Every tracked text file that names an old path names the new one."""
    renames = [pair for old, new in renames for pair in spellings(old, new)]
    for name in git("ls-files").splitlines():
        path = ROOT / name
        if path == Path(__file__).resolve():  # its own table and docstring name the old places on purpose
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        new_text = text
        for old, new in renames:
            new_text = re.sub(rf"(?<![\w/]){re.escape(old)}", new, new_text)
        if new_text != text:
            path.write_text(new_text)
            print(f"  mentions updated: {name}")


def add_tests_to_pythonpath():
    """pytest.ini's pythonpath gains tests/, so conftest's helpers import from any folder."""
    ini = ROOT / "pytest.ini"
    text = ini.read_text()
    line = re.search(r"^pythonpath *=(.*)$", text, re.M)
    if line and "tests" not in line[1].split():
        ini.write_text(text[:line.end()] + " tests" + text[line.end():])
        print("pytest.ini: pythonpath += tests")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the moves, change nothing")
    dry_run = parser.parse_args().dry_run
    renames = move_fixtures(dry_run)
    if renames and not dry_run:  # the files that stay on top but read the fixtures
        for path in TESTS.glob("*.py"):
            path.write_text(renamed_fixtures(path.read_text()))
    moves, unmapped = plan()
    for old, new in moves:
        print(f"{old} -> {new}")
        if dry_run:
            continue
        (ROOT / new).parent.mkdir(exist_ok=True)
        git("mv", old, new)
        (ROOT / new).write_text(deeper((ROOT / new).read_text(), depth=1))
    if not dry_run:
        rewrite_mentions(renames + moves)
        add_tests_to_pythonpath()
    for name in unmapped:
        print(f"not in FOLDERS, left at tests/{name}: add a row to {Path(__file__).name}", file=sys.stderr)
    if not moves and not renames:
        print("nothing to move: every test file in the table is in its folder")


if __name__ == "__main__":
    main()
