"""One training epoch: ``train(model, loader, optimizer, device)``.

Called by main.py once per epoch; it knows nothing about W&B or the config. Per-batch losses reach
the caller through ``on_log(examples, loss)`` every ``log_interval`` batches of an epoch and once at
its end for the batches since the last call (so an epoch shorter than log_interval still logs once),
where ``examples`` is the number of examples seen so far in this epoch (main.py adds the examples of
earlier epochs, so its W&B step is "examples seen in the run", as in the original) and ``loss`` is the
mean loss of the batches since the previous call.

    from train import train
    stats = train(model, loaders["train"], optimizer, "cpu")   # {"loss", "batch_loss", "accuracy", "examples"}
    stats = train(model, loader, optimizer, device, TrainSettings(amp=True), EpochHooks(on_log=print))

The loss and the correct decisions are the task's (fma_genres/tasks.py): class indices with cross-entropy,
or 0/1 genre rows with BCE-with-logits (main.py's target).

An epoch interrupted mid-way (a mid-epoch checkpoint) continues exactly: ``epoch_position`` records its
running sums and RNG state after a step, ``continue_epoch`` restores them and shortens the loader's
next pass (utils.ResumableSampler).

"loss" is the mean per example; "batch_loss" the mean of the per-batch losses, as the original
averaged its epochs (the last, smaller batch then weighs as much as a full one): EPOCH_LOSSES.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from fma_genres import tasks
from fma_genres.runtime import distributed

EPOCH_LOSSES = {"per_example": "loss", "per_batch": "batch_loss"}  # config epoch_loss -> result key


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; its optimiser step (and every later one) was skipped on the
    device, so the weights are those from before it."""


def new_progress():
    """The running sums of an epoch: what a mid-epoch checkpoint stores to continue it exactly."""
    return {"batches": 0, "examples": 0, "loss_sum": 0.0, "batch_loss_sum": 0.0, "correct": 0,
            "interval_loss": 0.0, "interval_batches": 0}


def epoch_position(epoch, progress, seconds):
    """Where training stands inside ``epoch``: its running sums and the RNG state that dropout continues from."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"epoch": epoch, "progress": dict(progress), "rng": rng, "seconds": seconds}


def continue_epoch(position, loader, batch_size):
    """Set the loader (reseeded for the position's epoch) and the RNG to continue a mid-epoch checkpoint."""
    loader.sampler.start = position["progress"]["batches"] * batch_size
    torch.set_rng_state(position["rng"]["torch"])
    if "cuda" in position["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(position["rng"]["cuda"])
    return dict(position["progress"]), position["seconds"]


def flush_interval(progress, on_log):
    """Report the mean loss of the batches since the last report and start a new interval."""
    if on_log is not None:
        on_log(progress["examples"], progress["interval_loss"] / progress["interval_batches"])
    progress["interval_loss"], progress["interval_batches"] = 0.0, 0


def mark_batch_dynamic(inputs):
    """One compiled graph for every batch size: torch.compile would otherwise compile again for the epoch's
    last, smaller batch (the CRNN on a CPU: 352 s against a 60 s step under load, benchmarks/gpu.py part c;
    marked dynamic from the start, that batch is an ordinary step and steps are no slower). A hint only:
    eager models ignore it, and a batch of one stays specialised."""
    torch._dynamo.maybe_mark_dynamic(inputs, 0)


def step_figures(loss, logits, targets, class_weights, sync, task):
    """(float64 [loss, examples, correct] of the batch on the device, the loss to back-propagate); under
    torchrun (``sync``) the global batch's figures, every process's loss scaled to the global mean's."""
    n, correct = targets.size(0), task.correct(logits, targets).double()
    if sync is None:
        return torch.stack([loss.detach().double(), correct.new_full((), n), correct]), loss
    figures, scale = sync(loss, task.mean_weight(targets, class_weights), n, correct)
    return figures, loss * scale.to(loss.dtype)


def skippable_step(optimizer, healthy):
    """optimizer.step() unless ``healthy`` (a bool tensor on the device) is False. A fused optimiser (main.py's
    Adam) skips on the device: its found_inf, as torch.amp.GradScaler uses it, leaves the weights, the
    moments and the step count as they were, and the host never waits. Any other optimiser (an unfused
    checkpoint's, a test's) is checked on the host: one sync per step."""
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = (~healthy).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif healthy:
        optimizer.step()


def settle(progress, pending, bar):
    """The steps since the last read (``pending``: step_figures' tensors) added to ``progress`` in one host
    sync; NonFiniteLossError naming the first batch whose loss was not finite (its step and every later one
    were skipped on the device: skippable_step)."""
    p = progress
    for value, n, correct in torch.stack(pending).tolist() if pending else ():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the training loss became {value} at batch {p['batches'] + 1} "
                                     f"(after {p['examples']} examples of this epoch)")
        p["batches"] += 1
        p["examples"] += int(n)
        p["loss_sum"] += value * n
        p["batch_loss_sum"] += value
        p["correct"] += correct
        p["interval_loss"] += value
        p["interval_batches"] += 1
    pending.clear()
    if p["examples"]:
        bar.set_postfix(loss=f"{p['loss_sum'] / p['examples']:.4f}")
    return p


@dataclass(frozen=True)
class TrainSettings:
    """How every epoch of a run trains (main.py builds it once)."""
    task: object = tasks.TASKS[tasks.DEFAULT]  # tasks.py: the loss and the correct decisions
    amp: bool = False          # bfloat16 autocast of the forward pass (CUDA only; bf16 needs no loss scaling)
    log_interval: int = 25     # batches between on_log calls
    class_weights: torch.Tensor = None  # one per class: weigh the cross-entropy
    pos_weight: torch.Tensor = None     # one per genre (multi-label): weigh BCE's positives (batch_loss)
    sync: Callable = None      # distributed.sync_step under torchrun: every process sees the global batch
    dynamic_batch: bool = True  # a compiled model takes every batch size with one graph (mark_batch_dynamic)


@dataclass(frozen=True)
class EpochHooks:
    """How the caller follows an epoch: its progress bar's label and two callbacks (the module docstring)."""
    desc: str = "train"
    on_log: Callable = None    # on_log(examples, loss) every log_interval batches and at the epoch's end
    on_step: Callable = None   # on_step(batches, settled) after every optimiser step: mid-epoch saves


def train(model, loader, optimizer, device, settings=TrainSettings(), hooks=EpochHooks(), progress=None):
    """Train ``model`` for one pass over ``loader``; returns mean loss, accuracy and example count.

    ``progress`` continues an epoch that a mid-epoch checkpoint interrupted (the loader then yields only
    its remaining batches); ``hooks.on_step(batches, settled)`` gets the epoch's batch count and a function
    returning the settled progress (main.py saves mid-epoch checkpoints there). Multi-label targets (0/1
    rows) train with BCE-with-logits (batch_loss). ``settings.sync`` turns this process's part of a batch
    into the global batch's figures before the backward pass, so the loss, the NaN check and the gradient
    are the global batch's in every process.

    The step never waits for the host: each batch's figures stay on the device until a read (every
    ``log_interval`` batches, a settled() call, the epoch's end). A non-finite loss skips its step and
    every later one on the device (skippable_step), so it never reaches the weights, and the next read
    raises NonFiniteLossError naming the batch. Without ``dynamic_batch`` the epoch's last, smaller batch
    compiles again.
    """
    model.train()
    device = torch.device(device)
    p = progress if progress is not None else new_progress()
    bar = tqdm(loader, desc=hooks.desc, leave=False, dynamic_ncols=True, initial=p["batches"],
               total=p["batches"] + len(loader), disable=not distributed.is_main())
    healthy, pending = torch.ones((), dtype=torch.bool, device=device), []
    try:
        for inputs, targets in bar:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if settings.dynamic_batch:
                mark_batch_dynamic(inputs)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.amp and device.type == "cuda"):
                logits, _ = model(inputs)
                loss = settings.task.loss(logits.float(), targets, settings.class_weights, settings.pos_weight)
            figures, loss = step_figures(loss, logits, targets, settings.class_weights, settings.sync, settings.task)
            healthy = healthy & torch.isfinite(figures[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            skippable_step(optimizer, healthy)
            pending.append(figures)
            batches = p["batches"] + len(pending)
            if batches % settings.log_interval == 0:
                flush_interval(settle(p, pending, bar), hooks.on_log)
            if hooks.on_step is not None:
                hooks.on_step(batches, lambda: settle(p, pending, bar))
        settle(p, pending, bar)
    finally:
        bar.close()
    if p["examples"] == 0:
        raise ValueError("the training loader yielded no batches: the training split is empty")
    if p["interval_batches"]:  # the epoch's last, partial interval
        flush_interval(p, hooks.on_log)
    return {"loss": p["loss_sum"] / p["examples"], "batch_loss": p["batch_loss_sum"] / p["batches"],
            "accuracy": p["correct"] / p["examples"], "examples": p["examples"]}
