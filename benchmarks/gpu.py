"""The one GPU check: every CUDA path of the suite, tested and timed in one command of ~5 minutes.

A GPU session runs this first, as it stands, and commits the benchmarks/results_gpu.md it writes:

    timeout 420 python benchmarks/gpu.py --out=benchmarks

    python benchmarks/gpu.py --only=b,c       # some parts: t, a, b, c, d, e (below)
    python benchmarks/gpu.py --size=tiny      # smoke run in seconds, on a CPU too: every row, numbers meaningless

Parts, each with a time cap (a cut part says so in its row; rows reach results_gpu.md as they come):
  t tests    tests/test_cuda.py (every CUDA path against the CPU), run as a script: the runners have no pytest.
  a data     a synthetic fma_small-sized training set written straight into the cache's format
             (6,400 training + 800 validation clips of 128 x 1291 dB, float16; no audio), reused when present.
  b epochs   per model, one timed epoch after warm-up through main.py's own code (configurator.make_config's defaults:
             compile, amp, preload and workers auto; build_training's fused Adam; train.train), and one
             validation pass: samples/s, seconds per epoch, the share of the epoch the GPU waited for the
             next batch (CUDA events around each fetch), peak GPU memory, compile time, and 30 epochs
             projected beside the original's (CNN1D 900 s, CNN2D 5,180 s, CRNN 6,220 s).
  c crnn     the CRNN as in b with amp off, and with preload off (what each buys); and its epoch's last,
             smaller batch with static shapes (a recompile) against the batch dimension marked dynamic.
  d torchrun benchmarks/ddp_steps.py (main.py's DDP path) under torchrun with NCCL, one process per GPU,
             against the same steps in a plain process (on one GPU: that it runs, and its overhead).
  e predict  prediction on the device (inference.run_batch, the windows' batching of pre_trained_models.py):
             windows/s of the model alone, and tracks/s from generated 30 s audio through the mel path
             (decoding excluded; skipped where torchaudio is missing).

Its imports need only torch, numpy, pandas and tqdm: the GPU runners have no soundfile, soxr, librosa,
wandb or optuna (tests/test_benchmarks.py runs the tiny size with those blocked).
"""
import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fma_genres.runtime import allocator  # noqa: E402

allocator.keep_large_allocations()  # before torch allocates: this process trains as main.py does

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import main  # noqa: E402
import utils  # noqa: E402
from fma_genres import configurator, tasks  # noqa: E402
from fma_genres.data import cache as mel_cache  # noqa: E402
from fma_genres.data.preload import preloaded  # noqa: E402
from fma_genres.inference import audio_windows, predict  # noqa: E402
from fma_genres.runtime import atomic  # noqa: E402
from models import MODELS  # noqa: E402
from test import test  # noqa: E402
from train import TrainSettings, train  # noqa: E402

PARTS = ("t", "a", "b", "c", "d", "e")
SIZES = {
    "full": dict(train_clips=6400, val_clips=800, n_frames=1291, batch_size=50, warmup_batches=3, compile="auto",
                 backend="inductor", last_batch_model="crnn", ddp_model="crnn", ddp_steps=20, threads=None,
                 windows=256, tracks=16, caps={"t": 75, "a": 60, "b": 40, "c": 25, "d": 35, "e": 15}),
    # 26 clips in batches of 4: the epoch ends on a smaller batch, as most do. Compiled only where compiling
    # is the point (the last-batch rows), with the "eager" backend: torch.compile's graph capture without
    # inductor's code generation (minutes on a CPU); one thread, as 2-thread ops crawl on a shared machine.
    "tiny": dict(train_clips=26, val_clips=8, n_frames=150, batch_size=4, warmup_batches=1, compile="False",
                 backend="eager", last_batch_model="cnn1d", ddp_model="cnn1d", ddp_steps=2, threads=1,
                 windows=8, tracks=2, caps={"t": 120, "a": 60, "b": 60, "c": 60, "d": 120, "e": 60}),
}
ORIGINAL_SECONDS = {"cnn1d": 900, "cnn2d": 5180, "crnn": 6220}  # 30 epochs on fma_small (docs/faithfulness.md)


# ----------------------------------------------------------------------------- the machine and the report

def cuda():
    return torch.cuda.is_available()


def machine():
    """GPU name, driver, torch, CUDA and cuDNN versions, CPU cores: the context of every row."""
    if not cuda():
        return f"no GPU (CPU, {os.cpu_count()} cores); Python {platform.python_version()}, torch {torch.__version__}"
    driver = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip() or driver
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return (f"{names}; driver {driver}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}; {os.cpu_count()} CPU cores; Python {platform.python_version()}")


class Report:
    """Rows printed and written to results_gpu.md as soon as they exist, so a cut run still reports."""

    def __init__(self, path, command):
        self.path, self.command, self.rows, self.start = path, command, [], time.perf_counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, *row):
        self.rows.append(tuple(map(str, row)))
        print(f"| {' | '.join(self.rows[-1])} |", flush=True)
        self.write()

    def table(self):
        lines = ["| part | measurement | result | vs baseline | notes |", "|---|---|---|---|---|"]
        return "\n".join(lines + [f"| {' | '.join(row)} |" for row in self.rows])

    def write(self):
        text = (f"# GPU check results\n\nCommand: `{self.command}` ({time.strftime('%Y-%m-%d %H:%M')}, "
                f"{time.perf_counter() - self.start:.0f} s so far)\n\nMachine: {machine()}.\n\n{self.table()}\n\n"
                f"benchmarks/gpu.py's docstring says what each part measures.\n")
        atomic.atomic_write(self.path, lambda f: f.write(text.encode()))


class Capped:
    """A loader's batches until ``deadline`` (time.monotonic) passes; ``cut`` says whether it did."""

    def __init__(self, loader, deadline, count=None):
        self.loader, self.deadline, self.count, self.cut = loader, deadline, count or len(loader), False

    def __len__(self):
        return self.count

    def __iter__(self):
        for index, batch in zip(range(self.count), self.loader):
            if index and time.monotonic() > self.deadline:
                self.cut = True
                return
            yield batch


class Waits:
    """A loader whose fetches are timed: on CUDA the GPU's idle time between an event before and one after
    each fetch (zero while queued work hides the fetch), on a CPU the fetch's wall time."""

    def __init__(self, loader):
        self.loader, self.pairs, self.seconds = loader, [], 0.0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            before, start = self.event(), time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.pairs.append((before, self.event()))
            self.seconds += time.perf_counter() - start
            yield batch

    @staticmethod
    def event():
        if not cuda():
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def waited(self):
        """Seconds the device waited for batches (after a synchronize)."""
        if not cuda():
            return self.seconds
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.pairs) / 1000


def synchronize():
    if cuda():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- t. the CUDA tests

def part_tests(size, work, report, deadline):
    """tests/test_cuda.py as a script; one row per test (its own lines: passed / skipped (why) / FAILED)."""
    try:
        result = subprocess.run([sys.executable, str(ROOT / "tests" / "test_cuda.py")], cwd=ROOT, text=True,
                                capture_output=True, timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as expired:
        result = subprocess.CompletedProcess(expired.cmd, -1, (expired.stdout or b"").decode(errors="replace"), "")
        report.add("t tests", "tests/test_cuda.py", "cut at the time cap", "", f"{size['caps']['t']} s")
    for line in result.stdout.splitlines():
        if line.startswith("test_"):
            name, _, outcome = line.partition(": ")
            report.add("t tests", name, outcome.split(" (")[0], "", outcome.partition(" (")[2].rstrip(")"))
    if result.returncode not in (0, -1):
        print(result.stderr[-3000:], file=sys.stderr)


# ----------------------------------------------------------------------------- a. the synthetic data

def cache_folder(size, work):
    return work / f"synthetic-cache-{size['train_clips']}+{size['val_clips']}x{size['n_frames']}"


def part_data(size, work, report, deadline):
    """The cache folder of make_loaders' format: params.json, mels.npy (float16 dB), status.npy."""
    folder, start = cache_folder(size, work), time.perf_counter()
    n = size["train_clips"] + size["val_clips"]
    if not (folder / "complete.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        preprocessing = {**utils.PREPROCESSING, "n_frames": size["n_frames"]}
        (folder / "params.json").write_text(json.dumps({"subset": "small", "preprocessing": preprocessing,
                                                        "track_ids": list(range(2, n + 2))}))
        mels = np.lib.format.open_memmap(folder / "mels.npy", mode="w+", dtype=np.float16,
                                         shape=(n, preprocessing["n_mels"], size["n_frames"]))
        generator = torch.Generator().manual_seed(0)
        for begin in range(0, n, 256):  # dB in [-80, 0], as power_to_db's top_db leaves them
            rows = mels[begin:begin + 256]
            rows[:] = (torch.rand(rows.shape, generator=generator) * -80).numpy()
        mels.flush()
        np.save(folder / "status.npy", np.full(n, mel_cache.OK, dtype=np.int8))
        (folder / "complete.json").write_text("{}")
        report.add("a data", f"synthetic cache: {size['train_clips']} + {size['val_clips']} clips of 128 x "
                   f"{size['n_frames']} float16 dB", f"{time.perf_counter() - start:.1f} s",
                   "", f"{(folder / 'mels.npy').stat().st_size / 1e9:.2f} GB in {folder}")
    return folder


def data(size, work, report, deadline, device, preload="auto"):
    """main.py's training and validation loaders (make_loaders, then preload) over the synthetic cache."""
    cache = mel_cache.MelCache(part_data(size, work, report, deadline))
    ids = cache.track_ids
    frame = pd.DataFrame({"label": [t % 8 for t in ids]}, index=pd.Index(ids, name="track_id"))
    train_part, val_part = frame.iloc[:size["train_clips"]], frame.iloc[size["train_clips"]:]
    loaders, _ = utils.make_loaders(cache, {"train": train_part, "val": val_part, "test": val_part},
                                    size["batch_size"], settings=utils.LoaderSettings(
                                        num_workers=main.loader_workers(-1, device), device=device.type))
    with contextlib.redirect_stdout(io.StringIO()) as said:  # its line goes into the row's notes
        loaders["train"] = preloaded(loaders["train"], preload, device)
    return loaders, said.getvalue().strip().removeprefix("preload: ")


# ----------------------------------------------------------------------------- b, c. epochs

def recipe(name, size, **overrides):
    """main.py's config for ``name`` with its defaults (the auto keys as main.py resolves them here)."""
    config = configurator.make_config({"model": name, "batch_size": size["batch_size"], "n_frames": size["n_frames"],
                                       "compile": size["compile"], **overrides}, main.CONFIG)
    config["amp"] = configurator.resolve_auto(config, "amp", cuda())
    return config


def run_data_stub(class_names):
    """What main.build_training reads of a run's data (datasets.RunData): the mel bands, genres, raw dB, and
    no pretrained encoder."""
    return SimpleNamespace(preprocessing={"n_mels": 128}, class_names=class_names,
                           normalisation={"mean": None, "std": None}, encoder=None)


def timed_epoch(config, size, loaders, device, deadline):
    """{samples_s, epoch_s, waits, val_s, compile_s, peak_gb, cut} of one epoch after warm-up, and a validation pass."""
    meta = run_data_stub([str(i) for i in range(8)])
    training = main.build_training(config, meta, device)
    raw_model, optimizer = training.raw_model, training.optimizer
    model = main.compiled(config, raw_model, size["backend"])
    if cuda():
        torch.cuda.reset_peak_memory_stats()
    quiet = contextlib.redirect_stderr(io.StringIO())  # the progress bars
    with quiet:
        start = time.perf_counter()
        train(model, Capped(loaders["train"], deadline, size["warmup_batches"]), optimizer, device,
              TrainSettings(amp=config["amp"]))
        test(model, Capped(loaders["val"], deadline, 1), device, amp=config["amp"])
        synchronize()
        warmup = time.perf_counter() - start
        feed = Waits(Capped(loaders["train"], deadline))
        start = time.perf_counter()
        result = train(model, feed, optimizer, device,
                       TrainSettings(amp=config["amp"], log_interval=config["log_interval"]))
        synchronize()
        epoch = time.perf_counter() - start
        start = time.perf_counter()
        test(model, loaders["val"], device, amp=config["amp"])
        val = time.perf_counter() - start
    step = epoch / max(1, result["examples"] / size["batch_size"])
    return {"samples_s": result["examples"] / epoch, "examples": result["examples"], "cut": feed.loader.cut,
            "epoch_s": epoch * len(loaders["train"].sampler) / result["examples"], "waits": feed.waited() / epoch,
            "val_s": val, "compile_s": max(0.0, warmup - (size["warmup_batches"] + 1) * step),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda() else 0.0}


def epoch_row(report, part, label, config, figures, baseline=None, note=""):
    f = figures
    project = 30 * (f["epoch_s"] + f["val_s"]) + f["compile_s"]
    versus = (f"{baseline / f['samples_s']:.2f}x the time" if baseline
              else f"30 epochs {project:.0f} s vs the original's {ORIGINAL_SECONDS[config['model']]} s "
                   f"({ORIGINAL_SECONDS[config['model']] / project:.0f}x)")
    settings = (f"compile {config['compile']}, amp {config['amp']}, preload {config['preload']}"
                f"{', cut at the cap after ' + str(f['examples']) + ' samples' if f['cut'] else ''}")
    report.add(part, label, f"{f['samples_s']:.0f} samples/s, {f['epoch_s']:.1f} s/epoch + {f['val_s']:.1f} s "
               f"validation", versus, f"waits for data {f['waits']:.0%}; peak {f['peak_gb']:.1f} GB on the GPU; compile "
               f"{f['compile_s']:.0f} s; {settings}{'; ' + note if note else ''}")


def part_epochs(size, work, report, deadline, device, cap):
    loaders, where = data(size, work, report, deadline, device)
    results = {}
    for name in MODELS:
        config = recipe(name, size)
        results[name] = timed_epoch(config, size, loaders, device, min(deadline, time.monotonic() + cap))
        epoch_row(report, "b epochs", f"{name}, this project's defaults", config, results[name],
                  note=f"preload: {where}")
    return results


def part_crnn(size, work, report, deadline, device, cap, defaults=None):
    loaders, _ = data(size, work, report, deadline, device)
    if defaults is None:
        defaults = timed_epoch(recipe("crnn", size), size, loaders, device, min(deadline, time.monotonic() + cap))
    options = {"amp off": ({"amp": "False"}, loaders), "preload off": ({"preload": "False"}, None)}
    for label, (overrides, feed) in options.items():
        feed = feed or data(size, work, report, deadline, device, preload=False)[0]
        config = recipe("crnn", size, **overrides)
        figures = timed_epoch(config, size, feed, device, min(deadline, time.monotonic() + cap))
        epoch_row(report, "c crnn", f"crnn, {label}", config, figures, baseline=defaults["samples_s"])
    last_batch_rows(size, report, device, min(deadline, time.monotonic() + cap))


def last_batch_rows(size, report, device, deadline):
    """The CRNN (tiny: CNN1D) compiled as main.py does it, meeting a batch smaller than the first: seconds of
    that step (a recompile with static shapes) and of the first, against the batch dimension marked dynamic."""
    torch.manual_seed(0)
    shape = (size["batch_size"], 128, size["n_frames"])
    batches = [(torch.rand(shape, device=device) * -80, torch.randint(0, 8, shape[:1], device=device))] * 2
    smaller = max(1, shape[0] * 7 // 8)
    batches.append((batches[0][0][:smaller], batches[0][1][:smaller]))
    for label, dynamic in (("static shapes", False), ("batch dimension dynamic", True)):
        if time.monotonic() > deadline:
            report.add("c crnn", f"{size['last_batch_model']}, last smaller batch, {label}", "cut at the time cap", "", "")
            continue
        torch._dynamo.reset()
        config = recipe(size["last_batch_model"], size, compile="True")
        training = main.build_training(config, run_data_stub(list("01234567")), device)
        raw_model, optimizer = training.raw_model, training.optimizer
        model, seconds = main.compiled(config, raw_model, size["backend"]), []
        for inputs, targets in batches:
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                train(model, [(inputs, targets)], optimizer, device,
                      TrainSettings(amp=config["amp"], dynamic_batch=dynamic))
            synchronize()
            seconds.append(time.perf_counter() - start)
        report.add("c crnn", f"{config['model']}, last smaller batch ({smaller} of {shape[0]}), {label}",
                   f"{seconds[2]:.2f} s for the smaller batch", f"first batch {seconds[0]:.2f} s, then "
                   f"{seconds[1]:.3f} s/step", f"compiled ({size['backend']})" if config["compile"] else "not compiled")


# ----------------------------------------------------------------------------- d. torchrun

def ddp_seconds(size, launcher, deadline):
    """Seconds per training step of benchmarks/ddp_steps.py under ``launcher``."""
    command = [*launcher, str(ROOT / "benchmarks" / "ddp_steps.py"), size["ddp_model"],
               str(size["batch_size"] * max(1, gpus())), str(size["n_frames"]), str(size["ddp_steps"]),
               *([str(size["threads"])] if size["threads"] else [])]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            timeout=max(1.0, deadline - time.monotonic()))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_step"]


def gpus():
    return torch.cuda.device_count() if cuda() else 0


def part_torchrun(size, report, deadline):
    processes = max(1, gpus())
    backend = "nccl" if cuda() else "gloo"
    try:
        plain = ddp_seconds(size, [sys.executable], deadline)
        ddp = ddp_seconds(size, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc_per_node={processes}"], deadline)
    except subprocess.TimeoutExpired:
        report.add("d torchrun", f"{size['ddp_model']}, {processes} {backend} process(es)", "cut at the time cap", "", "")
        return
    batch = size["batch_size"] * processes
    report.add("d torchrun", f"{size['ddp_model']}, plain process, batch {batch}", f"{batch / plain:.0f} samples/s "
               f"({plain:.3f} s/step)", "1.00x", "eager, fp32: the step alone (ddp_steps.py)")
    report.add("d torchrun", f"{size['ddp_model']}, torchrun, {processes} {backend} process(es), global batch {batch}",
               f"{batch / ddp:.0f} samples/s ({ddp:.3f} s/step)", f"{ddp / plain:.2f}x the time",
               "one process per GPU, main.py's DDP path" if cuda() else "no GPU: gloo on the CPU")


# ----------------------------------------------------------------------------- e. prediction

def part_predict(size, report, deadline, device):
    """Windows/s of the model on the device; tracks/s from generated audio through the mel path."""
    preprocessing = {**utils.PREPROCESSING, "n_frames": size["n_frames"]}
    model = main.build_training(recipe("crnn", size), run_data_stub(list("01234567")), device).raw_model.eval()
    windows = (torch.rand(size["windows"], 128, size["n_frames"]) * -80).half()
    queue = [(0, window) for window in windows]
    tracks = [{"sum": 0.0, "queued": len(queue)}]
    predict.run_batch(model, tasks.TASKS[tasks.DEFAULT].window_probabilities, queue, tracks, device)  # warm-up
    start, done = time.perf_counter(), 0
    for _ in range(10):  # each batch's .cpu() waits for the device: the time is the device's
        predict.run_batch(model, tasks.TASKS[tasks.DEFAULT].window_probabilities, queue, tracks, device)
        done += len(queue)
        if time.monotonic() > deadline:
            break
    rate = done / (time.perf_counter() - start)
    report.add("e predict", f"crnn, model alone, batches of {len(queue)} windows", f"{rate:.0f} windows/s",
               "", f"float32, on {device.type}; inference.run_batch")
    try:
        import torchaudio  # noqa: F401  (utils.mel_spectrogram_db's transforms)
    except ImportError:
        report.add("e predict", "crnn, tracks from generated audio", "skipped", "",
                   "torchaudio is missing here: utils.mel_spectrogram_db needs it")
        return
    seconds = (preprocessing["n_frames"] + 1) * preprocessing["hop_length"] / preprocessing["sample_rate"]
    audio = np.random.default_rng(0).standard_normal((size["tracks"], int(seconds * 22050))).astype(np.float32) * 0.1
    start = time.perf_counter()
    with torch.no_grad():
        for track in audio:  # one window per clip, as an FMA clip gives
            predict.run_batch(model, tasks.TASKS[tasks.DEFAULT].window_probabilities,
                                [(0, torch.from_numpy(audio_windows.window_db(track, preprocessing)))],
                                tracks, device)
    report.add("e predict", f"crnn, {size['tracks']} tracks of {seconds:.1f} s generated audio",
               f"{size['tracks'] / (time.perf_counter() - start):.1f} tracks/s", "",
               "mel on the CPU (torchaudio) + model on the device, one track per batch; decoding excluded")


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--out", default=None, help="folder of results_gpu.md (default: benchmarks/ for the "
                                                    "full size, the work folder for tiny)")
    parser.add_argument("--work_dir", default=None, help="generated data (default data/benchmarks/gpu-<size>)")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown or not args.only:
        parser.error(f"--only takes parts from {','.join(PARTS)}; got {','.join(sorted(unknown)) or 'none'}")
    args.work_dir = Path(args.work_dir or ROOT / "data" / "benchmarks" / f"gpu-{args.size}")
    args.out = Path(args.out or (ROOT / "benchmarks" if args.size == "full" else args.work_dir))
    return args


def run(argv=None):
    args = parse_args(argv)
    size, device = SIZES[args.size], torch.device("cuda" if cuda() else "cpu")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if size["threads"]:
        torch.set_num_threads(size["threads"])
    command = "python benchmarks/gpu.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    report = Report(args.out / "results_gpu.md", command)
    print(machine(), flush=True)
    defaults = None
    for part in [p for p in PARTS if p in args.only]:
        cap = size["caps"][part]
        deadline = time.monotonic() + cap * (len(MODELS) if part == "b" else 3 if part == "c" else 1)
        print(f"--- part {part} (cap {deadline - time.monotonic():.0f} s)", flush=True)
        if part == "t":
            part_tests(size, args.work_dir, report, deadline)
        elif part == "a":
            part_data(size, args.work_dir, report, deadline)
        elif part == "b":
            defaults = part_epochs(size, args.work_dir, report, deadline, device, cap)["crnn"]
        elif part == "c":
            part_crnn(size, args.work_dir, report, deadline, device, cap, defaults)
        elif part == "d":
            part_torchrun(size, report, deadline)
        else:
            part_predict(size, report, deadline, device)
    report.write()
    print(f"\n{report.table()}\n\nwritten to {report.path}", flush=True)


if __name__ == "__main__":
    run()
