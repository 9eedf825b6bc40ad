"""One evaluation pass: ``test(model, loader, device)`` -> loss, accuracy, targets, predictions, probabilities;
``evaluate(...)`` adds the report's scores (per-class F1, ROC AUC, confusion matrix) under metrics.json's names.

main.py runs test() on the validation split every epoch, and evaluate() on the test split at the end;
pre_trained_models.py --evaluate runs the same evaluate(), so both reports hold the same numbers.
Note this file shadows Python's standard-library package ``test``: it is found first when the
project root leads ``sys.path`` (``python main.py``; pytest via pytest.ini).

    from test import evaluate, test
    result = test(model, loaders["val"], "cpu")
    scores, result = evaluate(model, loaders["test"], "cpu", checkpoint)  # scores: metrics.json's keys
"""
import numpy as np
import torch
from tqdm import tqdm

from fma_genres import tasks
from fma_genres.runtime import distributed
from train import mark_batch_dynamic


def test(model, loader, device, amp=False, desc="eval", gather=None, task=tasks.TASKS[tasks.DEFAULT]):
    """Evaluate ``model`` on ``loader`` without gradients; loss is the task's (cross-entropy, multi-label BCE)
    per example, batch_loss the mean of the per-batch means (the original's epoch loss,
    train.EPOCH_LOSSES).

    Returns {"loss", "batch_loss", "accuracy", "examples", "targets" (N,), "predictions" (N,),
    "probabilities" (N, C)} with NumPy arrays in loader order. Under torchrun each process evaluates
    its block of whole batches (utils.EvalShard) and ``gather`` (distributed.gather) puts every
    process's batches back in order: the result is then the whole split's, in every process.
    """
    model.eval()
    device = torch.device(device)
    losses, targets, probabilities = [], [], []  # per batch, on the device until the pass ends: no wait per batch
    with torch.inference_mode():
        for inputs, batch_targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                                          disable=not distributed.is_main()):
            inputs = inputs.to(device, non_blocking=True)
            batch_targets = batch_targets.to(device, non_blocking=True)
            mark_batch_dynamic(inputs)  # the split's last, smaller batch: no second compile
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits, _ = model(inputs)
            logits = logits.float()  # softmax and loss in float32 even under autocast
            probabilities.append(task.probabilities(logits))  # softmax, or a sigmoid per genre
            losses.append(task.loss(logits, batch_targets, reduction="sum"))
            targets.append(batch_targets)
    batches = host_batches(losses, targets, probabilities)  # (summed loss, targets, probabilities) per batch
    if gather is not None:
        batches = gather(batches)
    if not batches:
        raise ValueError("the evaluation loader yielded no batches: the split is empty")
    targets = torch.cat([batch[1] for batch in batches]).numpy()
    probabilities = torch.cat([batch[2] for batch in batches]).numpy()
    predictions = task.decisions(probabilities)  # multi-label: each genre at 0.5, "accuracy" label-wise
    return {"loss": sum(loss for loss, _, _ in batches) / len(targets),
            "batch_loss": float(np.mean([loss / len(batch) for loss, batch, _ in batches])),
            "accuracy": float(np.mean(predictions == targets)), "examples": len(targets), "targets": targets,
            "predictions": predictions, "probabilities": probabilities}


def host_batches(losses, targets, probabilities):
    """[(summed loss, targets, probabilities)] per batch on the host, read in one go after the pass."""
    if not losses:
        return []
    sizes = [len(batch) for batch in targets]
    # each batch its own copy: gather pickles them, and a view would carry the whole pass's storage along
    pieces = lambda tensors: [piece.clone() for piece in torch.cat(tensors).cpu().split(sizes)]
    return list(zip(torch.stack(losses).double().tolist(), pieces(targets), pieces(probabilities)))


def evaluate(model, loader, device, checkpoint, amp=False, gather=None):
    """(scores, result): test()'s result and its scores on the test split as metrics.json names them.

    scores: {"test_loss", then the task's scores (tasks.py: its metrics, per-genre table, ...),
    "test_examples"}; callers add their own context (epoch, checkpoint, split settings) to it. The
    ``checkpoint`` (models_utils.make_checkpoint's) gives the task, the class names and, multi-label, the
    genre ids, tree and thresholds.
    """
    task = tasks.of(checkpoint)
    result = test(model, loader, device, amp=amp, desc="test", gather=gather, task=task)
    scores = task.scores(result["targets"], result["probabilities"], checkpoint["class_names"], checkpoint.get("genres"))
    return {"test_loss": result["loss"], **scores, "test_examples": result["examples"]}, result


test.__test__ = False  # not a pytest test: keeps pytest from collecting it where a test module imports it
