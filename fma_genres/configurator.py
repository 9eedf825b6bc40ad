"""A run's configuration, nanoGPT style: main.py's constants, then a config file, then --key=value.

    python main.py configs/original_crnn.py --epochs=5    # the file's keys, then the overrides
    python main.py --help                                 # every key with its default and comment

A config file is plain Python that assigns some of main.py's keys (see configs/); ``include("x.py")``
there applies another config file first. Unknown keys,
values of the wrong type and unreadable arguments stop with one message, never a traceback.
A key is declared once: its default and --help text in main.py's constants block, its other rules (choices,
minimum, on resume, in run names, defining the split) in KEYS below; keys_where derives the rule sets.
``prepare_out_dir()`` gives every run a folder of its own (runs/<model>/<date-time>, runs/<model>/latest)
and ``provenance()`` records what produced a run: commit, library versions, hardware, command line.
"""
import ast
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import models_utils
import utils
from fma_genres import tasks
from fma_genres.data import datasets, fma
from fma_genres.encoders import ENCODERS, MERT_MESSAGE
from fma_genres.reporting import wandb_logging
from fma_genres.runtime import devices
from fma_genres.runtime.errors import ConfigError
from fma_genres.training import finetune
from models import FINETUNED, HEADS, MODELS, PROBES
from train import EPOCH_LOSSES

ROOT = Path(__file__).resolve().parents[1]  # the repository
# One line of main.py's constants block: name = value  # comment
CONSTANT_LINE = re.compile(r"^(\w+)\s*=\s*(.+?)\s+#\s?(.*)$")
RULER = "# " + "-" * 77


def convert(key, text, default):
    """``text`` as the type of ``default``; bool takes True/False/true/false/1/0, None defaults take str."""
    if isinstance(default, bool):
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
    elif isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            pass
    else:
        return None if default is None and text.lower() == "none" else text
    name = type(default).__name__
    raise ConfigError(f"--{key}={text}: expected {'an' if name[0] in 'aeiou' else 'a'} {name} like the default {default!r}.")


def parse_overrides(argv, defaults):
    """``--key=value`` arguments as a dict, type-checked against ``defaults``."""
    overrides = {}
    for arg in argv:
        key, equals, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not equals:
            raise ConfigError(f"cannot read argument {arg!r}: write --key=value, e.g. --epochs=5 (a config file, "
                              f"e.g. configs/original_crnn.py, may come first). See --help.")
        if key not in defaults:
            raise ConfigError(f"unknown config key {key!r}. Valid keys: {', '.join(defaults)}. See --help.")
        overrides[key] = convert(key, text, defaults[key])
    return overrides


def read_config_file(path, defaults):
    """The keys a config file assigns, each checked against ``defaults`` like a --key=value."""
    path = Path(path)
    try:
        code = compile(path.read_text(), str(path), "exec")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path} ({error.strerror or error}). Give the path of a .py file "
                          f"such as configs/original_crnn.py.")
    except SyntaxError as error:
        raise ConfigError(f"config file {path} is not valid Python (line {error.lineno}: {error.msg}).")
    namespace = {}

    def include(name):  # in a config file: the keys of another config file, relative to this one
        namespace.update(read_config_file(path.parent / name, defaults))

    exec(code, {"__file__": str(path), "include": include}, namespace)  # noqa: S102 -- the user's file, as nanoGPT
    values = {}
    for key, value in namespace.items():
        if key.startswith("_"):
            continue
        if key not in defaults:
            raise ConfigError(f"config file {path} sets {key!r}, which is not a config key. Valid keys: "
                              f"{', '.join(defaults)}.")
        default = defaults[key]
        same_type = type(value) is type(default) or (default is None and isinstance(value, str)) or (
            isinstance(default, float) and type(value) is int)
        values[key] = value if same_type else convert(key, str(value), default)
        if isinstance(default, float):
            values[key] = float(values[key])
    return values


def split_arguments(argv):
    """(config file or None, the --key=value arguments): a config file may only come first (a first
    argument with "=" in it is a mistyped override, not a file)."""
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        return argv[0], argv[1:]
    return None, list(argv)


def help_text(source, defaults, notes=""):
    """Every key of ``source``'s constants block with its default and comment, grouped as there, then ``notes``."""
    lines, inside = [f"usage: python {Path(source).name} [config.py] [--key=value ...]", ""], False
    for line in Path(source).read_text().splitlines():
        if line.startswith(RULER[:20]):
            if inside:
                break
            inside = True
            continue
        match = CONSTANT_LINE.match(line)
        if inside and match and match.group(1) in defaults:
            key, _, comment = match.groups()
            lines.append(f"  {f'--{key}={defaults[key]}':<36} {comment}")
        elif inside and line.startswith("# "):
            lines.append(line[2:] + ":")
    lines.append("\nA config file (Python assigning some of these keys, e.g. configs/original_crnn.py) "
                 "may come first; --key=value arguments override it.")
    return "\n".join(lines + ([notes] if notes else []))


def asks_help(argv):
    """Whether ``argv`` asks for --help (the command prints help_text and exits 0)."""
    return any(arg in ("-h", "--help") for arg in argv)


def script_defaults(source):
    """The keys of ``source``'s constants block and their default values, read from the file (ast) without
    importing it: what the script's CONFIG holds, for a command that runs the script (experiments.py)."""
    text = Path(source).read_text()
    tree, lines = ast.parse(text), text.splitlines()
    rulers = [number for number, line in enumerate(lines, 1) if line.startswith(RULER[:20])][:2]
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and rulers[0] < node.lineno < rulers[1]
            and isinstance(node.targets[0], ast.Name)}


def parse_command_line(argv, defaults, source):
    """(overrides, config file or None) from ``argv`` (--help is the command's own: asks_help)."""
    config_file, rest = split_arguments(argv)
    overrides = read_config_file(config_file, defaults) if config_file else {}
    overrides.update(parse_overrides(rest, defaults))
    return overrides, config_file


# -----------------------------------------------------------------------------
# the run's keys, resolved and checked

# With demo=True these replace the defaults of keys not given on the command line. The demo dataset
# (demo_data.py) has 80 clips of 30 s, 64/8/8 train/val/test. Batch 8 gives 8 optimiser steps an epoch;
# 25 epochs reach at least 0.75 test accuracy on any CPU (tests/data/test_demo_data.py checks it; 0.875 on a
# 2-core AMD EPYC, 2026-12); ~5 s an epoch with freed memory kept (allocator.py).
DEMO = {"data_dir": "data/demo", "epochs": 25, "batch_size": 8, "download": False, "compile": "False"}
# compile=auto compiles these models, in channels_last layout. Measured on a 2-core CPU with freed
# memory kept (allocator.py; benchmarks/results_training.md): CRNN training steps 1.50x faster, CNN2D
# 1.20x, after an 11-29 s compile repaid within 21 steps (an fma_small epoch has 128), and the compiled
# CRNN peaks at 8.8 GB where the eager one reaches 13 GB; CNN1D 0.75x, hence off. The demo's few short
# epochs never repay the compile time.
COMPILED_MODELS = ("crnn", "cnn2d")

@dataclass(frozen=True)
class Key:
    """The rules of one of main.py's keys besides its type (its default's) and help text (its comment there)."""
    choices: tuple = None               # the valid values, from the registry that defines them
    minimum: float = None               # the smallest valid value
    may_change_on_resume: bool = False  # else the checkpoint's value is kept, and a different one refused
    names_run: bool = True              # a value other than the default is part of the W&B run's name
    defines_split: bool = False         # decides which clips are test clips (--evaluate rebuilds the split)


# Where and how a run executes, is saved and is logged, not what it learns.
RUN_CONTROL = {"may_change_on_resume": True, "names_run": False}
# The one declaration of every key whose rules differ from Key()'s (a key of main.py not listed has Key()'s:
# fixed on resume, in the run's name when changed, any value of its type). Every rule derives from it:
# make_config's checks, keys_where (resume, run names, the split), --help's notes.
KEYS = {
    # data
    "dataset": Key(choices=tuple(datasets.DATASETS), defines_split=True), "data_dir": Key(**RUN_CONTROL),
    "subset": Key(choices=fma.SUBSETS, defines_split=True), "target": Key(choices=tuple(tasks.TASKS)),
    "download": Key(**RUN_CONTROL), "allow_partial": Key(**RUN_CONTROL), "cache_dir": Key(**RUN_CONTROL),
    "split": Key(choices=fma.SPLIT_MODES, defines_split=True), "train_size": Key(defines_split=True),
    "val_size": Key(defines_split=True), "test_size": Key(defines_split=True), "split_seed": Key(defines_split=True),
    "n_frames": Key(minimum=1), "cache_workers": Key(**RUN_CONTROL), "num_workers": Key(**RUN_CONTROL),
    "preload": Key(**RUN_CONTROL),
    # model (its name starts every run name)
    "model": Key(choices=(*MODELS, *PROBES, *FINETUNED), names_run=False), "init": Key(choices=tuple(models_utils.INITIALISERS)),
    "freeze": Key(choices=finetune.FREEZE), "encoder": Key(choices=("mel", *ENCODERS)), "head": Key(choices=tuple(HEADS)),
    "encoder_lr": Key(may_change_on_resume=True), "frozen_layers": Key(minimum=0),
    "grad_checkpointing": Key(**RUN_CONTROL),  # the same gradients, computed with less memory
    # optimisation: epochs, lr and weight_decay change what is learnt, and may change on resume
    "epochs": Key(minimum=1, may_change_on_resume=True), "batch_size": Key(minimum=1),
    "lr": Key(may_change_on_resume=True), "weight_decay": Key(minimum=0, may_change_on_resume=True),
    "warmup_steps": Key(minimum=0),
    "epoch_loss": Key(choices=tuple(EPOCH_LOSSES)), "augment_masks": Key(choices=utils.AUGMENT_MASKS),
    "mask_draw": Key(choices=utils.MASK_DRAWS), "report_epoch": Key(choices=("best", "last")),
    # select_metric: the target's task checks it against metrics.py's registry, which may grow after import
    "seed": Key(names_run=False, defines_split=True),  # ends every run name; split_seed=-1 follows it
    "log_interval": Key(minimum=1, **RUN_CONTROL),
    # system
    "device": Key(**RUN_CONTROL), "amp": Key(**RUN_CONTROL), "compile": Key(**RUN_CONTROL),
    # run
    "out_dir": Key(**RUN_CONTROL), "overwrite": Key(**RUN_CONTROL), "resume": Key(**RUN_CONTROL),
    "save_interval": Key(minimum=0, **RUN_CONTROL), "demo": Key(names_run=False), "prepare_only": Key(names_run=False),
    "wandb_project": Key(**RUN_CONTROL), "wandb_mode": Key(choices=(None, "online", "offline", "disabled"), **RUN_CONTROL),
    "wandb_group": Key(**RUN_CONTROL), "watch": Key(**RUN_CONTROL), "hardest_clips": Key(minimum=0, **RUN_CONTROL),
    "upload_audio": Key(**RUN_CONTROL), "upload_checkpoints": Key(**RUN_CONTROL),
}


def keys_where(rule, keys):
    """Those of ``keys`` (e.g. main.py's CONFIG) whose ``rule``, a field of Key, holds, in their order."""
    return [key for key in keys if getattr(KEYS.get(key, Key()), rule)]


def check_values(config):
    """Each declared key's value against its choices and minimum."""
    for key, rule in KEYS.items():
        value = config[key]
        if rule.choices is not None and value not in rule.choices:
            raise ConfigError(f"{key}={value!r} is not valid: choose one of {', '.join(map(str, rule.choices))}.")
        if rule.minimum is not None and value < rule.minimum:
            raise ConfigError(f"{key} must be at least {rule.minimum}, got {value}.")


def make_config(overrides, defaults):
    """``defaults`` (main.py's CONFIG), then the demo settings (with demo=True), then the overrides (config
    file and command line); names, ranges and the auto keys resolved and checked."""
    config = dict(defaults)
    task = tasks.TASKS.get(overrides.get("target", defaults["target"]))
    if overrides.get("demo", defaults["demo"]):
        config.update(DEMO, **(task.demo if task else {}))  # the demo with sub-genres has its own folder
    config.update(overrides)
    resolve_model(config, overrides)
    # W&B's watch hooks would make torch.compile recompile at every step, hence no auto compile with watch
    config["compile"] = resolve_auto(config, "compile", config["model"] in COMPILED_MODELS and not config["watch"])
    config["standardise"] = resolve_auto(config, "standardise", not config["faithful"])
    config["upload_audio"] = resolve_auto(config, "upload_audio", wandb_logging.audio_shareable(config))
    config["preload"] = resolve_auto(config, "preload", "auto")  # decided by build_data, by the memory free
    config["amp"] = resolve_auto(config, "amp", "auto")  # decided by main.py's run, by the device
    if config["select_metric"] == "auto" and task:
        config["select_metric"] = task.select_metrics[0]
    check_values(config)
    problem = task.select_problem(config) or task.config_problem(config)
    if problem:
        raise ConfigError(problem)
    if config["balanced_sampler"] and not config["shuffle"]:
        raise ConfigError("balanced_sampler=True draws a new class-balanced sample every epoch; it cannot keep shuffle=False's "
                          "fixed order. Drop one of them.")
    for key in ("num_workers", "cache_workers"):
        if config[key] < -1 or config[key] == 0 and key == "cache_workers":
            raise ConfigError(f"{key}={config[key]} is not valid: -1 (auto) or a number of processes"
                              f"{' (at least 1)' if key == 'cache_workers' else ''}.")
    if not (config["lr"] > 0 and config["encoder_lr"] > 0 and 0 < config["train_size"] < 1):
        raise ConfigError("lr and encoder_lr must be > 0 and train_size between 0 and 1.")
    if not (config["val_size"] > 0 and config["test_size"] > 0 and config["val_size"] + config["test_size"] < 1):
        raise ConfigError(f"val_size and test_size must be > 0 and leave tracks for training (sum < 1), got "
                          f"{config['val_size']} and {config['test_size']}.")
    if config["freeze"] != "none" and not config["init_from"]:
        raise ConfigError(f"freeze={config['freeze']} needs init_from=<a trained checkpoint>: frozen random layers learn nothing.")
    return config


# Keys that only fine-tuning an encoder reads (main.py's finetune_encoder=True with an encoder).
FINETUNE_KEYS = ("encoder_lr", "warmup_steps", "frozen_layers", "grad_checkpointing")


def resolve_model(config, overrides):
    """An encoder other than mel trains model=probe on its cached embeddings, or with finetune_encoder=True
    model=finetuned, the encoder itself with its probe on audio (docs/encoders.md); a CNN asked for with an
    encoder, a probe or fine-tuning without one, and what a probe cannot do, are refused."""
    encoder, model = config["encoder"], overrides.get("model")
    if encoder == "mert":
        raise ConfigError(MERT_MESSAGE)
    check_finetune_keys(config, overrides)
    if encoder == "mel":
        if config["model"] in (*PROBES, *FINETUNED):
            raise ConfigError(f"model={config['model']} is trained on a pretrained encoder: give "
                              f"--encoder={'|'.join(ENCODERS)} (docs/encoders.md), or a CNN ({', '.join(MODELS)}).")
        return
    family = FINETUNED if config["finetune_encoder"] else PROBES
    if model is not None and model not in family:
        what = ("a CNN on mel-spectrograms" if model in MODELS else "no model of this suite" if model not in
                (*PROBES, *FINETUNED) else f"the encoder's {'probe alone' if model in PROBES else 'fine-tuning'}")
        raise ConfigError(f"model={model} is {what}, but encoder={encoder}"
                          f"{' with finetune_encoder=True' * config['finetune_encoder']} trains a {next(iter(family))} "
                          f"model (choose its head with --head={'|'.join(HEADS)}): drop --model, or use --encoder=mel "
                          f"for a CNN.")
    if config["data_augmentation"] and not config["finetune_encoder"]:
        raise ConfigError(f"data_augmentation=True masks mel-spectrograms (SpecAugment); encoder={encoder} trains on "
                          f"cached embeddings, which it cannot mask: drop --data_augmentation, or fine-tune the "
                          f"encoder (--finetune_encoder=True), whose input it augments.")
    if config["grad_checkpointing"] and not ENCODERS[encoder].checkpointing:
        raise ConfigError(f"grad_checkpointing=True: the {encoder} encoder (transformers' implementation) cannot "
                          f"recompute its activations; drop --grad_checkpointing and lower --batch_size or raise "
                          f"--frozen_layers to save memory.")
    config["model"] = next(iter(family))


def check_finetune_keys(config, overrides):
    """Refuse finetune_encoder without an encoder, and fine-tuning's keys without finetune_encoder."""
    given = [f"{key}={overrides[key]}" for key in FINETUNE_KEYS if key in overrides]
    if config["finetune_encoder"] and config["encoder"] == "mel":
        raise ConfigError("finetune_encoder=True trains a pretrained encoder with its probe: give "
                          f"--encoder={'|'.join(ENCODERS)} (docs/encoders.md: Fine-tuning), or drop it for a CNN.")
    if given and not config["finetune_encoder"]:
        raise ConfigError(f"{', '.join(given)} set how a pretrained encoder is fine-tuned, but this run fine-tunes "
                          f"none: add --finetune_encoder=True with an --encoder={'|'.join(ENCODERS)}, or drop "
                          f"{'them' if len(given) > 1 else 'it'}.")


def demo_help():
    """The demo settings, for main.py's --help."""
    def options(settings):
        return " ".join(f"--{key}={value}" for key, value in settings.items())
    return (f"\nWith --demo=True, keys not given on the command line take the demo settings: {options(DEMO)}."
            + "".join(f" With --target={task.name} also {options(task.demo)}." for task in tasks.TASKS.values()
                      if task.demo))


def resume_help(defaults):
    """What --resume=True lets the command line change (KEYS), for main.py's --help."""
    return (f"\nWith --resume=True the checkpoint's config is used; only these keys may take other values: "
            f"{', '.join(keys_where('may_change_on_resume', defaults))}.")


def naming_defaults(config, defaults):
    """What a run's W&B name compares it with: the values the keys that name runs (KEYS) would take by
    default in a run of its model (and demo or not)."""
    model = {"model": config["model"]} if config["model"] in MODELS else {}  # a probe's: the default CNN's
    resolved = make_config({"demo": config["demo"], **model}, defaults)
    return {key: resolved[key] for key in keys_where("names_run", defaults)}


def resolve_auto(config, key, auto_value):
    """A key taking auto/True/False as a bool: "auto" means ``auto_value``."""
    text = str(config[key]).lower()
    if text == "auto":
        return auto_value
    if text in ("true", "1", "false", "0"):
        return text in ("true", "1")
    raise ConfigError(f"{key}={config[key]!r} is not valid: choose auto, True or False.")


# -----------------------------------------------------------------------------
# the run's folder

def runs_folder(config, runs_root, launched=False):
    """<runs_root>/<model>: the parent of a model's run folders. Demo runs get folders of their own by kind
    (demo_<model>, demo_genres_all_<model>, demo_torchrun_<model>), so the quick start's
    runs/demo_crnn/latest is always the plain demo's run, whatever demo ran last."""
    if not config["demo"]:
        return Path(runs_root) / config["model"]
    kinds = ["demo", *tasks.of(config).run_kind] + ["torchrun"] * launched
    return Path(runs_root) / "_".join([*kinds, config["model"]])


def prepare_out_dir(config, runs_root, launched=False):
    """The run's folder, created and checked before any work: a new runs/<model>/<date-time> (and
    the latest link) by default; on resume without out_dir the latest run; an explicit out_dir that
    already holds a run only with resume or overwrite. ``launched``: under torchrun. Returns it as a string."""
    if config["resume"] and not config["out_dir"]:
        latest = runs_folder(config, runs_root, launched) / "latest"
        if not latest.exists():
            raise ConfigError(f"--resume=True without --out_dir continues the latest run of {config['model']} "
                              f"({latest}), but there is none. Give the run's folder with --out_dir=PATH.")
        return str(latest.resolve())
    if not config["out_dir"]:
        return new_run_folder(runs_folder(config, runs_root, launched))
    out_dir = Path(config["out_dir"])
    holds_run = any((out_dir / name).exists() for name in ("last.pt", "best.pt"))
    if holds_run and not (config["resume"] or config["overwrite"]):
        raise ConfigError(f"{out_dir} already holds a run (last.pt/best.pt). Continue it with --resume=True, replace "
                          f"it with --overwrite=True, or start a new run in another --out_dir (or none: each run then "
                          f"gets its own folder under {runs_root}/).")
    check_writable(out_dir)
    return str(out_dir)


def new_run_folder(parent):
    """A fresh parent/<date-time> folder, and parent/latest pointing at it (where links are possible)."""
    check_writable(parent)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 100):
        folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    link = parent / f".latest.{os.getpid()}"
    try:
        link.unlink(missing_ok=True)
        link.symlink_to(folder.name, target_is_directory=True)
        os.replace(link, parent / "latest")  # atomic: latest always names a complete run folder
    except OSError as error:
        print(f"note: could not point {parent / 'latest'} at the new run ({error.strerror or error}); "
              f"use the run's own folder {folder}.")
    return str(folder)


def check_writable(out_dir):
    """Create ``out_dir`` and prove a file can be written there, before any work is done."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as error:
        raise ConfigError(f"out_dir {out_dir} is not writable ({error.strerror or error}). Choose another with --out_dir=PATH.")


# -----------------------------------------------------------------------------
# provenance

def git_commit():
    """HEAD of the project's git checkout (+"-dirty" with uncommitted changes), or None outside one."""
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware():
    """CPU model and usable cores, and the name of every visible GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "cpu_cores": devices.available_cpus(), "gpus": gpus, "platform": platform.platform()}


def provenance(argv, config_file=None, script="main.py", launcher=("python",)):
    """What produced a run: the exact command (``launcher``: python, or torchrun and its options), config
    file, git commit, library versions, hardware."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchaudio", "librosa", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"command": shlex.join([*launcher, script, *argv]), "config_file": config_file,
            "git_commit": git_commit(), "versions": versions, "hardware": hardware(), "argv": list(argv),
            "executable": sys.executable}
