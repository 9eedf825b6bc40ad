"""Benchmarks: this project against the original's approach, measured side by side in one run.

    python benchmarks/run.py                          # full size; writes benchmarks/results.md
    python benchmarks/run.py --only=cache,loading     # some parts: cache, loading, training, predict, ddp, allocator
    python benchmarks/run.py --size=tiny              # smoke test in seconds: every row, numbers meaningless

Parts:
  cache     tracks/s building the mel cache from generated 30 s 44.1 kHz stereo MP3s:
            cache.build_cache with 1 worker and with all cores against the original's sequential
            librosa.load + melspectrogram + power_to_db + np.save per track.
  loading   time to the first training batch and peak resident memory, each in a fresh process
            (benchmarks/open_data.py), for caches of 200 and 2,000 tracks filled with synthetic dB
            values (building 2,000 real tracks takes hours here; opening speed does not depend on the
            values), against reading every spectrogram into memory as the original did.
  training  samples/s of train.train, batch 50, full 128 x 1291 input, per model: eager against
            torch.compile (what main.py's compile=True does), plus the compile time, the steps it takes
            to pay it back, and the eval-mode logit difference (CUDA, amp included: benchmarks/gpu.py,
            the one GPU check). Measured under the
            project's allocator setting (allocator.py), as main.py trains.
  predict   tracks/s of inference.predict on the 30 s clips: one track per forward pass in
            one process against batches of 32 decoded by one worker per core.
  ddp       samples/s of CNN1D training steps (global batch 50, 128 x 1291) under torchrun
            (benchmarks/ddp_steps.py, main.py's own DDP path): 1 process on all cores, 1 process on
            one core, 2 gloo processes on one core each; on a 2-core CPU this shows DDP's overhead,
            not a speed-up. The same script runs on N GPUs.
  allocator CRNN and CNN2D training steps (batch 50, eager) with glibc's default malloc against
            allocator.keep_large_allocations(), each in a fresh process (benchmarks/train_step.py:
            malloc settings apply from process start): step time, kernel share of the CPU time, page
            faults per step and peak resident memory: the speed/memory trade-off of fma_genres/runtime/allocator.py.

Contenders alternate (A/B/C, then C/B/A, ...) so a busy machine slows all of them alike; each row is
the median over rounds. Generated data lives under data/benchmarks/ (git-ignored) and is reused.
"""
import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fma_genres.runtime import allocator  # noqa: E402

allocator.keep_large_allocations()  # before torch allocates: this process trains as main.py does

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import utils  # noqa: E402
from fma_genres.data import cache as mel_cache, fma  # noqa: E402
from fma_genres.inference import predict  # noqa: E402
from fma_genres.runtime import atomic  # noqa: E402
from models import MODELS, build_model  # noqa: E402
from models_utils import compile_model  # noqa: E402
from train import TrainSettings, train  # noqa: E402

PARTS = ("cache", "loading", "training", "predict", "ddp", "allocator")
SIZES = {
    "full": dict(n_tracks=40, duration=30.0, n_frames=1291, cache_rounds=2, loading_tracks=(200, 2000),
                 loading_rounds=3, batch_size=50, train_steps={"cnn1d": 8, "cnn2d": 3, "crnn": 3},
                 compile_backend="inductor", predict_rounds=2, threads=None, ddp_steps=8, ddp_rounds=2,
                 allocator_rounds=2, allocator_steps=3),
    # Short clips and frames so the whole run takes seconds; the "eager" backend runs torch.compile's
    # graph capture without inductor's C++ code generation (minutes on 2 cores); one torch thread,
    # because 2-thread ops crawl when a test run shares the 2 cores. Plumbing, not speed.
    "tiny": dict(n_tracks=8, duration=4.0, n_frames=150, cache_rounds=1, loading_tracks=(100, 200),
                 loading_rounds=1, batch_size=4, train_steps={"cnn1d": 1, "cnn2d": 1, "crnn": 1},
                 compile_backend="eager", predict_rounds=1, threads=1, ddp_steps=2, ddp_rounds=1,
                 allocator_rounds=1, allocator_steps=1),
}
CORES = os.cpu_count() or 1
BUSY_NOTE = (" **The machine was busy** (load above its core count): PyTorch's multi-threaded ops slow "
             "down many times over when other processes hold the cores, so these numbers understate it; "
             "rerun on a quiet machine.")
TARGETS = {"cache_1": 1.0, "cache_all": 1.8, "first_batch_s": 2.0, "own_growth_mib": 50, "logit_diff": 1e-4,
           "crnn_compile": 1.5, "crnn_allocator": 2.5}


# ----------------------------------------------------------------------------- measuring

def interleaved(contenders, rounds, work):
    """Median seconds per contender; each call gets a fresh empty folder, the order flips every round."""
    times = {name: [] for name in contenders}
    for r in range(rounds):
        for name in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
            folder = Path(tempfile.mkdtemp(dir=work))
            start = time.perf_counter()
            contenders[name](folder)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(folder)
    return {name: statistics.median(t) for name, t in times.items()}


def report(rows, row):
    """Keep a result row and print it at once: a full run takes a while."""
    rows.append(row)
    print(f"| {' | '.join(row)} |", flush=True)


def verdict(value, target, unit="", fmt=".2f"):
    """"<value> <target>: met" or "... NOT met", judged on the value as printed, so that every verdict
    can be checked against the figures beside it. target: (">=" or "<", number)."""
    shown = f"{value:{fmt}}"
    operator, bound = target
    ok = float(shown) >= bound if operator == ">=" else float(shown) < bound
    return f"{shown}{unit} {operator} {bound:g}{unit}: {'met' if ok else 'NOT met'}"


def machine():
    """CPU model, cores, memory, torch and CUDA device: the context every number here needs."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu}, {CORES} cores, {memory:.0f} GiB RAM; GPU: {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


# ----------------------------------------------------------------------------- a. cache building

def original_cache(paths, out_dir):
    """The original's conversion: librosa defaults (22,050 Hz mono, 128 mels), power_to_db, one .npy per track."""
    import librosa
    for path in paths:
        audio, rate = librosa.load(path)
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=audio, sr=rate), ref=1.0)
        np.save(Path(out_dir) / f"{Path(path).stem}.npy", mel)


def build(tracks, cache_root, preprocessing, workers):
    with contextlib.redirect_stdout(io.StringIO()):  # its summary line would break up the table
        return mel_cache.build_cache(tracks, cache_root, "small", preprocessing, workers=workers, progress=False)


def generated_tracks(size, work, rate=44100):
    """n_tracks stereo 44.1 kHz MP3 clips (noisy chords, one per seed; written once, then reused)
    as a track table with build_cache's columns: index track_id, path."""
    folder = work / f"audio-{size['n_tracks']}x{size['duration']:g}s"
    paths = {}
    for track_id in range(2, size["n_tracks"] + 2):
        path = paths[track_id] = fma.audio_path(folder, "small", track_id)
        if path.exists():
            continue
        rng = np.random.default_rng(track_id)
        t = np.arange(int(size["duration"] * rate)) / rate
        pitch = rng.uniform(80, 400)
        chord = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) for k in (1, 1.25, 1.5, 2.01))
        audio = 0.15 * np.stack([chord, np.roll(chord, 441)], axis=1) + 0.05 * rng.standard_normal((t.size, 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.mp3")
        sf.write(tmp, audio.astype(np.float32), rate, format="MP3")
        os.replace(tmp, path)
    return pd.DataFrame({"path": [str(p) for p in paths.values()]}, index=pd.Index(list(paths), name="track_id"))


def bench_cache(size, tracks, work, rows):
    paths = tracks["path"].tolist()
    for path in paths:
        Path(path).read_bytes()  # every contender then reads the files from the page cache
    preprocessing = {**utils.PREPROCESSING, "n_frames": size["n_frames"]}
    with tempfile.TemporaryDirectory(dir=work) as warm:  # first calls import and set up lazily
        original_cache(paths[:1], warm)
        build(tracks.iloc[:1], warm, preprocessing, 1)
    contenders = {"original": lambda out: original_cache(paths, out),
                  "1 worker": lambda out: build(tracks, out, preprocessing, 1),
                  "all cores": lambda out: build(tracks, out, preprocessing, CORES)}
    seconds = interleaved(contenders, size["cache_rounds"], work)
    n = len(paths)
    base = n / seconds["original"]
    report(rows, ("a cache", f"original: librosa + np.save per track, 1 process ({n} tracks)",
                 f"{base:.2f} tracks/s", "1.00x", ""))
    for name, label, target in (("1 worker", "build_cache, workers=1", "cache_1"),
                                ("all cores", f"build_cache, workers={CORES} (all cores)", "cache_all")):
        ratio = seconds["original"] / seconds[name]
        report(rows, ("a cache", label, f"{n / seconds[name]:.2f} tracks/s", f"{ratio:.2f}x",
                     verdict(ratio, (">=", TARGETS[target]), "x")))
    report(rows, ("a cache", "same spectrograms", f"max abs dB difference {cache_difference(tracks, work, preprocessing):.4f}",
                 "", "float16 cache vs librosa float32"))


def cache_difference(tracks, work, preprocessing):
    """Largest dB difference between the cache and the original's arrays over the first 4 tracks."""
    few = tracks.iloc[:4]
    with tempfile.TemporaryDirectory(dir=work) as out:
        original_cache(few["path"], out)
        cache = build(few, out, preprocessing, 1)
        width = preprocessing["n_frames"]
        return max(float(np.abs(cache[t].astype(np.float32) - np.load(Path(out) / f"{t:06d}.npy")[:, :width]).max())
                   for t in few.index)


# ----------------------------------------------------------------------------- b. opening the data

def synthetic_cache(folder, n_tracks, n_frames, seed=0):
    """A complete cache folder of n_tracks rows in MelCache's format, plus the same spectrograms as
    one float32 .npy per track (the original's files) under folder/original/. Reused when present."""
    done = folder / "complete.json"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "original").mkdir(parents=True)
    preprocessing = {**utils.PREPROCESSING, "n_frames": n_frames}
    ids = list(range(2, n_tracks + 2))
    (folder / "params.json").write_text(json.dumps({"subset": "small", "preprocessing": preprocessing,
                                                    "track_ids": ids}))
    shape = (n_tracks, preprocessing["n_mels"], n_frames)
    mels = np.lib.format.open_memmap(folder / "mels.npy", mode="w+", dtype=np.float16, shape=shape)
    rng = np.random.default_rng(seed)
    for row, track_id in enumerate(ids):
        mel = rng.uniform(-80.0, 0.0, shape[1:]).astype(np.float32)
        mels[row] = mel
        np.save(folder / "original" / f"{track_id:06d}.npy", mel)
    mels.flush()
    np.save(folder / "status.npy", np.full(n_tracks, mel_cache.OK, dtype=np.int8))
    done.write_text("{}")
    return folder


def probe(script, *args, env=None):
    """Run a probe script of this folder in a fresh process; its JSON result."""
    result = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), *map(str, args)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_loading(size, work, rows):
    variants = {"original: every spectrogram in memory": ("in_memory", "original"),
                "memmap cache + make_loaders (faithful)": ("cache", None),
                "memmap cache + make_loaders (faithful=False: + normalisation stats)": ("cache", "--faithful=False")}
    memory = {}  # variant -> [(peak, own memory) per dataset size]
    for n in size["loading_tracks"]:
        folder = synthetic_cache(work / f"synthetic-cache-{n}x{size['n_frames']}", n, size["n_frames"])
        results = {name: [] for name in variants}
        for _ in range(size["loading_rounds"]):
            for name, (kind, option) in variants.items():
                args = (kind, folder / option) if kind == "in_memory" else (kind, folder, *filter(None, [option]))
                results[name].append(probe("open_data.py", *args))
        for name, runs in results.items():
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            memory.setdefault(name, []).append((median["peak_rss_mib"], median["anon_mib"]))
            check = "" if "original" in name else verdict(median["seconds"], ("<", TARGETS["first_batch_s"]), " s")
            report(rows, ("b loading", f"{n} tracks, {name}",
                         f"{median['seconds']:.2f} s to first batch, peak {median['peak_rss_mib']:.0f} MiB",
                         f"own {median['anon_mib']:.0f} MiB + mapped files {median['file_mib']:.0f} MiB", check))
    small, large = size["loading_tracks"]
    for name, ((peak_small, own_small), (peak_large, own_large)) in memory.items():
        growth = own_large - own_small  # flat: the first batch and the index, not the dataset
        report(rows, ("b loading", f"memory growth {small} -> {large} tracks, {name}",
                     f"own {growth:+.0f} MiB, peak {peak_large - peak_small:+.0f} MiB", "",
                     "" if "original" in name else
                     "own memory growth " + verdict(growth, ("<", TARGETS["own_growth_mib"]), " MiB", ".0f")))


# ----------------------------------------------------------------------------- c. training

def variants_for(name, backend):
    """{label: (compile backend or None, channels_last, amp)}: eager, compiled, then the layout options
    where they apply (channels_last needs 4-D activations: CNN2D and CRNN); amp is benchmarks/gpu.py's."""
    variants = {"eager": (None, False, False), "compile": (backend, False, False)}
    if name != "cnn1d":
        variants.update({"channels_last": (None, True, False), "compile + channels_last": (backend, True, False)})
    return variants


class Contender:
    """One model + Adam built from seed 0 (so all start equal), stepped through train.train."""

    def __init__(self, name, n_frames, device, backend, channels_last, amp):
        torch.manual_seed(0)
        self.raw = build_model(name, n_frames=n_frames).to(device)
        if channels_last:
            self.raw = self.raw.to(memory_format=torch.channels_last)
        self.model = compile_model(self.raw, backend) if backend else self.raw
        self.optimizer = torch.optim.Adam(self.raw.parameters(), lr=1e-3, fused=True)  # main.py's
        self.amp = amp

    def step(self, batch):
        """Seconds for one training step (train() reads its figures at the end, so this includes the device)."""
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # train()'s progress bar
            train(self.model, [batch], self.optimizer, batch[0].device, TrainSettings(amp=self.amp))
        return time.perf_counter() - start

    def eval_logits(self, inputs, weights):
        """(float32 logits in eval mode with these weights, seconds of the first call, of the second)."""
        self.raw.load_state_dict(weights)
        self.raw.eval()
        times = []
        with torch.inference_mode():
            for _ in range(2):  # the first eval call of a compiled model compiles its eval graph
                start = time.perf_counter()
                logits = self.model(inputs)[0].float()
                times.append(time.perf_counter() - start)
        self.raw.train()
        return logits, times[0], times[1]


@contextlib.contextmanager
def cold_compile_cache(work):
    """An empty inductor cache for this block: compile times are what a first run pays (later runs of
    the same model and shapes reuse the default cache and compile faster)."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(dir=work, prefix="inductor-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield
        finally:
            if before is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def bench_training(size, rows, device):
    torch.manual_seed(0)
    batch = (torch.randn(size["batch_size"], 128, size["n_frames"], device=device) * 20 - 40,
             torch.randint(0, 8, (size["batch_size"],), device=device))
    for name in MODELS:
        variants = variants_for(name, size["compile_backend"])
        contenders = {v: Contender(name, size["n_frames"], device, *options) for v, options in variants.items()}
        first = {v: c.step(batch) for v, c in contenders.items()}
        times = {v: [] for v in contenders}
        for r in range(size["train_steps"][name]):  # interleaved, order flipped every round
            for v in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                times[v].append(contenders[v].step(batch))
        seconds = {v: statistics.median(t) for v, t in times.items()}
        weights = contenders["eager"].raw.state_dict()
        reference = contenders["eager"].eval_logits(batch[0], weights)[0]
        for v, contender in contenders.items():
            logits, eval_first, eval_next = contender.eval_logits(batch[0], weights)
            difference = (logits - reference).abs().max().item()
            compile_seconds = (first[v] - seconds[v]) + (eval_first - eval_next)
            report(rows, ("c training", f"{name} {v}", f"{size['batch_size'] / seconds[v]:.1f} samples/s "
                         f"({seconds[v]:.2f} s/step)", f"{seconds['eager'] / seconds[v]:.2f}x",
                         training_note(name, v, seconds, compile_seconds, difference)))


def training_note(name, v, seconds, compile_seconds, difference):
    """Compile time and the steps it takes to pay back; eval-mode logit difference; the CRNN target."""
    notes = []
    if "compile" in v:
        gain = seconds["eager"] - seconds[v]
        payback = f"pays back after {compile_seconds / gain:.0f} steps" if gain > 0 else "never pays back"
        notes.append(f"compile {compile_seconds:.0f} s (train + eval graphs, cold cache), {payback}")
    if v != "eager":
        notes.append(f"eval max abs logit diff {difference:.1e} "
                     f"({verdict(difference, ('<', TARGETS['logit_diff']), fmt='.1e')})")
    if name == "crnn" and v == "compile + channels_last":  # what compile=auto runs for the CRNN
        notes.append(verdict(seconds["eager"] / seconds[v], (">=", TARGETS["crnn_compile"]), "x"))
    return "; ".join(notes)


# ----------------------------------------------------------------------------- d. prediction

def bench_predict(size, tracks, work, rows):
    preprocessing = {**utils.PREPROCESSING, "n_frames": size["n_frames"]}
    model = build_model("crnn", n_frames=size["n_frames"]).eval()
    checkpoint = {"preprocessing": preprocessing}  # all predict() reads; the weights do not change its speed
    files = [Path(p) for p in tracks["path"]]

    def run(batch_size, workers):
        results = list(predict.predict(model, checkpoint, files,
                                         predict.Reading(batch_size=batch_size, num_workers=workers)))
        failed = [(path, error) for path, _, _, error in results if error]
        if failed or len(results) != len(files):
            raise RuntimeError(f"prediction failed: {failed[:3]}")

    contenders = {"one": lambda _: run(1, 0), "batched": lambda _: run(32, CORES)}
    seconds = interleaved(contenders, size["predict_rounds"], work)
    n = len(files)
    report(rows, ("d predict", f"crnn, one track per forward pass, 1 process ({n} tracks)",
                 f"{n / seconds['one']:.2f} tracks/s", "1.00x", ""))
    report(rows, ("d predict", f"crnn, batches of 32, {CORES} decoding workers", f"{n / seconds['batched']:.2f} tracks/s",
                 f"{seconds['one'] / seconds['batched']:.2f}x", ""))


# ----------------------------------------------------------------------------- e. DDP

def ddp_steps(size, processes, threads):
    """benchmarks/ddp_steps.py under torchrun: seconds per training step (rank 0's figure)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(ROOT / "benchmarks" / "ddp_steps.py"), "cnn1d", str(size["batch_size"]), str(size["n_frames"]),
               str(size["ddp_steps"]), str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"torchrun failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_step"]


def bench_ddp(size, rows):
    """One process on every core, one on one core, and 2 gloo processes on one core each: DDP's cost is
    how far the last falls short of twice the second."""
    setups = {"all": (1, CORES), "one": (1, 1), "ddp": (2, max(1, CORES // 2))}
    seconds = {name: [] for name in setups}
    for r in range(size["ddp_rounds"]):
        for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
            seconds[name].append(ddp_steps(size, *setups[name]))
    s = {name: statistics.median(values) for name, values in seconds.items()}
    rate = {name: size["batch_size"] / value for name, value in s.items()}
    report(rows, ("e ddp", f"cnn1d, 1 process, {CORES} threads", f"{rate['all']:.1f} samples/s ({s['all']:.2f} s/step)",
                 "1.00x", "batch 50 through main.py's DDP code under torchrun"))
    report(rows, ("e ddp", "cnn1d, 1 process, 1 thread", f"{rate['one']:.1f} samples/s ({s['one']:.2f} s/step)",
                 f"{s['all'] / s['one']:.2f}x", ""))
    report(rows, ("e ddp", f"cnn1d, 2 gloo processes, {setups['ddp'][1]} thread(s) and {size['batch_size'] // 2} "
                 f"examples each", f"{rate['ddp']:.1f} samples/s ({s['ddp']:.2f} s/step)", f"{s['all'] / s['ddp']:.2f}x",
                 f"{rate['ddp'] / (2 * rate['one']):.0%} of 2 independent 1-thread processes (the rest: DDP's "
                 f"gradient all-reduce and sync, and the machine's other load); on N GPUs: torchrun --standalone --nproc_per_node=N "
                 f"benchmarks/ddp_steps.py crnn 50 1291 20"))


# ----------------------------------------------------------------------------- f. allocator

def bench_allocator(size, rows):
    settings = {"default": "glibc's default malloc", "project": "allocator.keep_large_allocations()"}
    options = [f"--batch_size={size['batch_size']}", f"--n_frames={size['n_frames']}",
               f"--steps={size['allocator_steps']}", *([f"--threads={size['threads']}"] if size["threads"] else [])]
    # neither contender may inherit this shell's own allocator settings
    env = {k: v for k, v in os.environ.items() if k not in allocator.user_settings()}
    for name in ("crnn", "cnn2d"):
        results = {setting: [] for setting in settings}
        for r in range(size["allocator_rounds"]):  # fresh processes, the order flipped every round
            for setting in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                results[setting].append(probe("train_step.py", name, setting, *options, env=env))
        median = {setting: {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "allocator"}
                  for setting, runs in results.items()}
        for setting, label in settings.items():
            m, ratio = median[setting], median["default"]["step_s"] / median[setting]["step_s"]
            notes = results[setting][0]["allocator"]
            if name == "crnn" and setting == "project":
                notes += "; " + verdict(ratio, (">=", TARGETS["crnn_allocator"]), "x")
            report(rows, ("f allocator", f"{name} batch {size['batch_size']} eager, {label}",
                         f"{m['step_s']:.2f} s/step, {m['system_share']:.0%} of CPU time in the kernel, "
                         f"{m['faults_per_step'] / 1000:.0f}k page faults/step, peak {m['peak_rss_mib'] / 1024:.1f} GiB",
                         f"{ratio:.2f}x", notes))


# ----------------------------------------------------------------------------- report

def table(rows):
    lines = ["| part | measurement | result | vs baseline | target / notes |", "|---|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def write_results(path, args, rows, loads, seconds):
    only = f" --only={','.join(args.only)}" if set(args.only) != set(PARTS) else ""
    busy = max(loads.values()) > CORES
    text = (f"# Benchmark results\n\nCommand: `python benchmarks/run.py --size={args.size}{only}` "
            f"({time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.0f} min)\n\nMachine: {machine()}.\n\n"
            f"Allocator of this process (the training rows): {allocator.status}.\n\n"
            f"Load average (1 min) at the start of each part: "
            f"{', '.join(f'{part} {load:.2f}' for part, load in loads.items())}."
            f"{BUSY_NOTE if busy else ''}\n\n{table(rows)}\n\n"
            f"Each row is the median over rounds in which the contenders alternate; ratios compare "
            f"contenders measured in the same run. benchmarks/run.py's docstring says what each part measures.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(path, lambda f: f.write(text.encode()))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--work_dir", default=None, help="generated data (default data/benchmarks/<size>)")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results.md for full size, "
                                                    "<work_dir>/results.md otherwise)")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown or not args.only:
        parser.error(f"--only takes parts from {','.join(PARTS)}; got {','.join(sorted(unknown)) or 'none'}")
    args.work_dir = Path(args.work_dir or ROOT / "data" / "benchmarks" / args.size)
    args.out = Path(args.out or (ROOT / "benchmarks" / "results.md" if args.size == "full"
                                 else args.work_dir / "results.md"))
    return args


def main(argv=None):
    args = parse_args(argv)
    size, rows, loads = SIZES[args.size], [], {}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if size["threads"]:
        torch.set_num_threads(size["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    print(machine(), flush=True)
    tracks = generated_tracks(size, args.work_dir) if {"cache", "predict"} & set(args.only) else None
    # Training last: the longest part, and the one most sensitive to a busy machine.
    for part in [p for p in ("loading", "cache", "predict", "allocator", "training", "ddp") if p in args.only]:
        loads[part] = os.getloadavg()[0]
        print(f"--- {part} (load average {loads[part]:.2f})", flush=True)
        if part == "cache":
            bench_cache(size, tracks, args.work_dir, rows)
        elif part == "loading":
            bench_loading(size, args.work_dir, rows)
        elif part == "training":
            with cold_compile_cache(args.work_dir):
                bench_training(size, rows, device)
        elif part == "ddp":
            bench_ddp(size, rows)
        elif part == "allocator":
            bench_allocator(size, rows)
        else:
            bench_predict(size, tracks, args.work_dir, rows)
    loads["end"] = os.getloadavg()[0]
    rows.sort(key=lambda row: row[0])  # parts a, b, c, d, e, f
    write_results(args.out, args, rows, loads, time.perf_counter() - start)
    print(f"\n{table(rows)}\n\nwritten to {args.out}", flush=True)


if __name__ == "__main__":
    main()
