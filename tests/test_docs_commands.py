"""Every command README.md and docs/*.md show is checked against the script it calls, so the docs cannot drift.

A command is any line of a fenced block (python blocks aside), of an indented block, or an inline code span
that calls a project script: `python main.py ...`, `torchrun ... main.py ...`, `python pre_trained_models.py
...`, `python experiments.py ...`, `python app.py ...`, `./quickstart.sh ...`, or any other `python X.py` /
`python -m package.module` of the repository. Its --keys and flags must be the script's own: main.py's from
`python main.py --help`, pre_trained_models.py's and app.py's through their own argparse parsers,
experiments.py's verbs and options (the rest are main.py's), torchrun's through torch's parser, quickstart.sh's
verbs from its --help, other scripts' from their add_argument calls; a config file named must exist. README's
demo commands run end to end (slow). Run: python -m pytest tests/test_docs_commands.py -q
"""
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = "..."  # "the rest of the command", in the docs
READERS_FILES = {"my_experiment.py", "runs/experiments/tune_crnn/best_config.py"}  # the reader's or a run's, not ours
BOOLEANS = {"True", "False", "true", "false", "1", "0"}
OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>", "2>&1"}
NOT_SCRIPTS = {"pytest"}  # python -m pytest: pytest's own options


# ----------------------------------------------------------------------------- extraction

def shell_pieces(text):
    """Every piece of shell the markdown shows: lines of fenced blocks (not python), of indented blocks, and
    inline code spans (which may wrap across lines)."""
    pieces, prose, fence = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence is not None:
            pieces += [line] if fence != "python" else []
        elif line.startswith("    ") and "`" not in line and not line.lstrip().startswith(("-", "|")):
            pieces.append(line.strip())
        else:
            prose.append(line)
    return pieces + re.findall(r"`([^`]+)`", " ".join(prose))


def tokens(piece):
    """Shell words of ``piece``, comments dropped, operators as words of their own; None when it is not shell."""
    lexer = shlex.shlex(piece, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: program output or prose, not a command
        return None


def invocations(words):
    """(script, arguments) for each project script ``words`` call; script is a repository path, "torchrun" or
    "quickstart.sh"."""
    found = []
    for i, word in enumerate(words):
        rest = words[i + 1:]
        if word in ("python", "python3") and rest:
            if rest[0] == "-m" and len(rest) > 1 and rest[1] not in NOT_SCRIPTS:
                found.append((rest[1].replace(".", "/") + ".py", rest[2:]))
            elif rest[0].endswith(".py"):
                found.append((rest[0], rest[1:]))
        elif word == "torchrun" and rest:  # bare, it is the launcher's name
            found.append(("torchrun", rest))
        elif word == "./quickstart.sh" or word == "quickstart.sh" and words[i - 1:i] in (["sh"], ["bash"]):
            found.append(("quickstart.sh", rest))
    return [(script, until_operator(args)) for script, args in found]


def until_operator(args):
    ends = [i for i, arg in enumerate(args) if arg in OPERATORS]
    return args[:ends[0]] if ends else args


def commands(text):
    """(the piece of doc, script, arguments) for every command ``text`` shows."""
    return [(piece, script, args) for piece in shell_pieces(text) for script, args in invocations(tokens(piece) or [])]


# ----------------------------------------------------------------------------- the scripts' own keys and flags

@lru_cache(maxsize=None)
def main_keys():
    """{key: its default as --help prints it}, from `python main.py --help`."""
    import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main.main(["--help"]) == 0
    return dict(re.findall(r"(?m)^\s+--(\w+)=(\S*)", out.getvalue()))


def fits(value, default):
    """Whether ``value`` has the type of the key whose default --help prints as ``default``."""
    if PLACEHOLDER in value or "<" in value:
        return True
    if default in ("True", "False"):
        return value in BOOLEANS
    kind = next((kind for kind in (int, float) if parses(kind, default)), None)
    return kind is None or parses(kind, value)


def parses(kind, text):
    try:
        kind(text)
        return True
    except ValueError:
        return False


def main_problems(args):
    problems = []
    if args and not args[0].startswith("-") and "=" not in args[0] and args[0] != PLACEHOLDER:
        config_file, args = args[0], args[1:]
        if config_file not in READERS_FILES and not (ROOT / config_file).is_file():
            problems.append(f"the config file {config_file} does not exist")
    keys = main_keys()
    for arg in args:
        key, equals, value = arg.removeprefix("--").partition("=")
        if arg == PLACEHOLDER or arg in ("--help", "-h"):
            continue
        if not arg.startswith("--") or not equals:
            problems.append(f"{arg!r} is not a --key=value argument of main.py")
        elif key not in keys:
            problems.append(f"--{key} is not a key of main.py (python main.py --help)")
        elif not fits(value, keys[key]):
            problems.append(f"--{key}={value}: main.py's default is {keys[key]}, another type")
    return problems


def experiments_problems(args):
    import experiments
    verbs = set(re.findall(r"python experiments\.py (\w+)", experiments.__doc__))
    if not args or args[0] not in verbs:
        return [f"experiments.py's first argument is one of {sorted(verbs)}"]
    rest = [arg for arg in args[1:] if arg.removeprefix("--").partition("=")[0] not in experiments.OPTIONS]
    return main_problems(rest)


def parser_problems(parse_args):
    """Problems of a script whose parse_args(argv) is its argparse command line (exits on an error)."""
    def check(args):
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            try:
                parse_args(args)
            except SystemExit as stop:
                return [err.getvalue().strip().splitlines()[-1]] if stop.code else []
        return []
    return check


def predict_problems(args):
    import pre_trained_models
    return parser_problems(pre_trained_models.parse_args)(args)


def app_problems(args):
    import app
    return parser_problems(app.parse_args)(args)


def torchrun_problems(args):
    from torch.distributed.run import get_args_parser
    scripts = [i for i, arg in enumerate(args) if arg.endswith(".py")]
    if not scripts:
        return ["torchrun without a script"]
    script, options = args[scripts[0]], [arg for arg in args[:scripts[0]] if arg.startswith("-")]
    _, unknown = get_args_parser().parse_known_args([*options, script])
    return [f"{arg} is not an option of torchrun" for arg in unknown] + script_check(script, args[scripts[0] + 1:])


@lru_cache(maxsize=None)
def quickstart_verbs():
    usage = subprocess.run(["sh", str(ROOT / "quickstart.sh"), "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(?m)^  ([a-z]\w*)", usage.split("verbs:")[1].split("environment:")[0]))


def quickstart_problems(args):
    return [] if args and args[0] in quickstart_verbs() else [f"quickstart.sh's verbs are {sorted(quickstart_verbs())}"]


def script_problems(script, args):
    """Any other script of the repository: it exists, and its flags are in its add_argument calls."""
    path = ROOT / script
    if not path.is_file():
        return [f"{script} is not a file of the repository"]
    source = path.read_text()
    flags = set(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source)) | {"help"}
    flags |= {f"no-{flag}" for flag in re.findall(r"add_argument\(\s*\"--([\w-]+)\"[^)]*BooleanOptionalAction", source)}
    return [f"{arg} is not a flag of {script}" for arg in args
            if arg.startswith("--") and arg[2:].partition("=")[0] not in flags]


CHECKS = {"main.py": main_problems, "experiments.py": experiments_problems, "pre_trained_models.py": predict_problems,
          "app.py": app_problems, "torchrun": torchrun_problems, "quickstart.sh": quickstart_problems}


def problems(text, doc="doc"):
    """One line per command of ``text`` that does not fit its script: the doc, the command, the problem."""
    return [f"{doc}: `{piece.strip()}`: {problem}" for piece, script, args in commands(text)
            for problem in script_check(script, args)]


def script_check(script, args):
    return CHECKS[script](args) if script in CHECKS else script_problems(script, args)


# ----------------------------------------------------------------------------- the tests

def test_every_command_in_readme_and_docs_fits_its_script():
    found = [problem for doc in DOCS for problem in problems(doc.read_text(), doc.relative_to(ROOT))]
    assert found == []
    scripts = {script for doc in DOCS for _, script, _ in commands(doc.read_text())}
    assert set(CHECKS) <= scripts  # the extraction sees every kind of command


GOOD_AND_BAD = [  # (a doc line that fits its script, the same line with one mistake)
    ("```bash\npython main.py --epochs=3 --lr=1e-3\n```", "```bash\npython main.py --epoch=3 --lr=1e-3\n```"),
    ("`python main.py --demo=True --epochs=2`", "`python main.py --demo=yes --epochs=2`"),
    ("    python main.py configs/original_crnn.py --seed=1", "    python main.py configs/original_crnm.py --seed=1"),
    ("`python pre_trained_models.py --checkpoint=a.pt --top_k=3 song.mp3`",
     "`python pre_trained_models.py --checkpoint=a.pt --topk=3 song.mp3`"),
    ("`python app.py --checkpoint=a.pt --port=8080`", "`python app.py --checkpoint=a.pt --prot=8080`"),
    ("`python experiments.py tune --model=crnn --trials=5`", "`python experiments.py tune --model=crnn --trails=5`"),
    ("`python experiments.py repeat --seeds=0,1`", "`python experiments.py repeats --seeds=0,1`"),
    ("`torchrun --standalone --nproc_per_node=2 main.py --device=cpu`",
     "`torchrun --standalone --nprocs=2 main.py --device=cpu`"),
    ("`./quickstart.sh demo`", "`./quickstart.sh demos`"),
    ("`python benchmarks/run.py --only=training`", "`python benchmarks/run.py --onyl=training`"),
    ("`python -m fma_genres.data.demo_data --subgenres`", "`python -m fma_genres.data.demo_datas --subgenres`"),
]


@pytest.mark.parametrize("good, bad", GOOD_AND_BAD)
def test_a_doc_line_with_a_wrong_key_flag_verb_or_file_is_rejected(good, bad):
    assert problems(good) == []
    (problem,) = problems(bad)
    assert problem.startswith("doc: `")


def test_commands_are_found_in_blocks_spans_and_wrapped_spans_but_not_in_python_blocks_or_prose():
    text = ("Run `python main.py\n--epochs=2` or:\n\n    python app.py --port=1\n\n```bash\nWANDB_MODE=disabled "
            "python main.py --seed=1 > log.txt  # a comment\n```\n```python\nprint('python main.py --x=1')\n```\n"
            "main.py trains; so does python main.py --nothing, which is prose.\n")
    assert [(script, args) for _, script, args in commands(text)] == [
        ("app.py", ["--port=1"]), ("main.py", ["--seed=1"]), ("main.py", ["--epochs=2"])]


def readme_demo_commands():
    """The bash block of README's "The demo" section: what ./quickstart.sh demo runs."""
    section = (ROOT / "README.md").read_text().split("\n## The demo\n")[1].split("\n## ")[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    return block.strip().splitlines()


def test_the_quick_start_demo_runs_readmes_demo_commands():
    lines = readme_demo_commands()
    assert [line.split()[1] for line in lines] == ["main.py", "pre_trained_models.py"]
    script = (ROOT / "quickstart.sh").read_text()
    assert all(f"    {line}\n" in script for line in lines)


@pytest.mark.slow
def test_readmes_demo_commands_run_end_to_end(tmp_path):
    """README's demo in a fresh working folder: `python main.py --demo=True` (80 generated clips, CRNN) with
    1 epoch, then the prediction command names a genre for each of the 80 clips (about a minute on 2 cores,
    half of it writing the clips). With FMA_ACCURACY_CHECKS=1 the run is README's verbatim (25 epochs,
    2.5 minutes in all) and must classify at least 6 of its 8 test clips, README's figure for any CPU (0.875 on
    a 2-core AMD EPYC; the exact figure depends on the CPU's float path)."""
    full = os.environ.get("FMA_ACCURACY_CHECKS") == "1"
    for script in ("main.py", "pre_trained_models.py"):  # run from tmp_path: data/ and runs/ are written there
        (tmp_path / script).symlink_to(ROOT / script)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    outputs = []
    for line in readme_demo_commands():
        tiny = [] if full or "main.py" not in line else ["--epochs=1"]
        result = subprocess.run([sys.executable, *shlex.split(line)[1:], *tiny], cwd=tmp_path, env=env, text=True,
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=1800)
        assert result.returncode == 0, line + "\n" + result.stdout[-2000:] + result.stderr[-2000:]
        outputs.append(result.stdout)
    metrics = json.loads((tmp_path / "runs" / "demo_crnn" / "latest" / "metrics.json").read_text())
    assert metrics["epochs"] == (25 if full else 1) and metrics["test_examples"] == 8
    if full:
        assert metrics["test_accuracy"] >= 0.75, metrics["test_accuracy"]
    predicted = [line.split() for line in outputs[1].splitlines() if "fma_small" in line]
    assert len(predicted) == 80 and all(words[1] in metrics["class_names"] for words in predicted)


def anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_reaches_a_file_and_a_heading():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path, _, fragment = target.partition("#")
            if target.startswith(("http://", "https://")):
                continue
            page = (doc.parent / path).resolve() if path else doc
            headings = re.findall(r"(?m)^#+ (.+)$", page.read_text()) if page.suffix == ".md" and page.is_file() else []
            if not page.exists() or fragment and fragment not in {anchor(h) for h in headings}:
                broken.append(f"{doc.relative_to(ROOT)}: ({target})")
    assert broken == []
