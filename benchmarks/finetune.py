"""Benchmark: the whole fine-tuning path of a tiny random Dasheng on generated audio, through the suite's commands.

    python benchmarks/finetune.py                  # 3 genres x 10 clips of 30 s, 2 epochs
    python benchmarks/finetune.py --clips=3 --epochs=1

Writes WAV clips (a folder dataset, one pitch per genre) and a random Dasheng (embed_dim 32, depth 2) to a
temporary folder, then times each stage as a user runs it: main.py --prepare_only=True (the audio cache),
main.py --finetune_encoder=True (cache reused -> fine-tuned best.pt), pre_trained_models.py on every clip
from the checkpoint alone (the weights file deleted first). Prints seconds per stage and per clip. Needs
requirements-encoders.txt's dasheng; nothing is downloaded.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000  # Dasheng's: the audio cache decodes without resampling


def write_clips(root, genres, clips, seconds):
    """genres x clips WAV files, each genre its own pitch plus noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    for g in range(genres):
        for k in range(clips):
            noise = np.random.default_rng(100 * g + k).standard_normal(t.size)
            (root / f"genre{g}").mkdir(parents=True, exist_ok=True)
            sf.write(root / f"genre{g}" / f"{k}.wav",
                     (0.3 * np.sin(2 * np.pi * 110.0 * (g + 1) * t) + 0.05 * noise).astype(np.float32), RATE)
    return sorted(root.rglob("*.wav"))


def tiny_dasheng(path):
    from dasheng.pretrained.pretrained import Dasheng

    torch.manual_seed(0)
    config = dict(embed_dim=32, depth=2, num_heads=2)
    torch.save({"model": Dasheng(**config).state_dict(), "config": config}, path)
    return path


def timed(*command):
    """Seconds the command took; its output when it fails."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    if result.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genres", type=int, default=3)
    parser.add_argument("--clips", type=int, default=10, help="per genre (at least 3: train, val, test)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        clips = write_clips(folder / "music", args.genres, args.clips, args.seconds)
        weights, out = tiny_dasheng(folder / "tiny_dasheng.pt"), folder / "run"
        keys = ["--dataset=folder", f"--data_dir={folder / 'music'}", f"--cache_dir={folder / 'cache'}",
                "--encoder=dasheng", f"--encoder_weights={weights}", "--finetune_encoder=True", "--cache_workers=1",
                "--wandb_mode=disabled", "--hardest_clips=0", f"--out_dir={out}"]
        stages = {"audio cache": timed("main.py", *keys, "--prepare_only=True"),
                  "fine-tune": timed("main.py", *keys, f"--epochs={args.epochs}", "--batch_size=4",
                                     "--data_augmentation=True")}
        weights.unlink()  # prediction reads the checkpoint alone
        stages["predict"] = timed("pre_trained_models.py", f"--checkpoint={out / 'best.pt'}", "--num_workers=0",
                                  f"--output={folder / 'genres.csv'}", *clips)
    what = f"tiny Dasheng, {len(clips)} clips of {args.seconds:g} s, {args.epochs} epochs"
    for stage, seconds in stages.items():
        print(f"finetune | {stage} | {what} | {seconds:.1f} s ({seconds / len(clips):.2f} s/clip)", flush=True)
    print(f"finetune | whole path | {what} | {sum(stages.values()):.1f} s", flush=True)


if __name__ == "__main__":
    main()
