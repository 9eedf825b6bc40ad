"""One training epoch: ``train(model, loader, optimizer, device)``.

Called by main.py once per epoch; it knows nothing about W&B or the config. Per-batch losses reach
the caller through ``on_log(examples, loss)`` every ``log_interval`` batches, where ``examples`` is
the number of examples seen so far in this epoch (main.py adds the examples of earlier epochs, so
its W&B step is "examples seen in the run", as in the original) and ``loss`` is the mean loss of
the batches since the previous call.

    from train import train
    stats = train(model, loaders["train"], optimizer, "cpu")   # {"loss", "batch_loss", "accuracy", "examples"}

"loss" is the mean per example; "batch_loss" the mean of the per-batch losses, as the original
averaged its epochs (the last, smaller batch then weighs as much as a full one): EPOCH_LOSSES.
"""
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm


EPOCH_LOSSES = {"per_example": "loss", "per_batch": "batch_loss"}  # config epoch_loss -> result key


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; raised before the optimizer step that would spread it."""


def train(model, loader, optimizer, device, on_log=None, log_interval=25, amp=False, desc="train"):
    """Train ``model`` for one pass over ``loader``; returns mean loss, accuracy and example count.

    ``amp`` runs the forward pass under bfloat16 autocast (CUDA only; no loss scaling is needed
    for bf16). Raises NonFiniteLossError naming the batch if the loss is not finite.
    """
    model.train()
    device = torch.device(device)
    total_loss, correct, examples, batch_losses = 0.0, 0, 0, 0.0
    interval_loss, interval_batches = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for batch, (inputs, targets) in enumerate(bar, start=1):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits, _ = model(inputs)
            loss = F.cross_entropy(logits.float(), targets)
        value = loss.item()
        if not math.isfinite(value):
            bar.close()
            raise NonFiniteLossError(f"the training loss became {value} at batch {batch} "
                                     f"(after {examples} examples of this epoch)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        n = targets.size(0)
        examples += n
        total_loss += value * n
        batch_losses += value
        correct += (logits.argmax(dim=1) == targets).sum().item()
        interval_loss += value
        interval_batches += 1
        bar.set_postfix(loss=f"{total_loss / examples:.4f}")
        if on_log is not None and batch % log_interval == 0:
            on_log(examples, interval_loss / interval_batches)
            interval_loss, interval_batches = 0.0, 0
    bar.close()
    if examples == 0:
        raise ValueError("the training loader yielded no batches: the training split is empty")
    return {"loss": total_loss / examples, "batch_loss": batch_losses / batch, "accuracy": correct / examples,
            "examples": examples}
