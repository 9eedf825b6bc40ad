"""host_reads(device): how often a block of code makes the host wait for tensors (tests/training/test_train.py,
tests/test_cuda.py). Its own module, without pytest: the GPU runners run tests/test_cuda.py as a script."""
import contextlib
import warnings

import torch
from torch.overrides import TorchFunctionMode

# What makes the host wait for a GPU's results; on the CPU, the calls that would on a GPU.
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy}


class _CountHostReads(TorchFunctionMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.counter["reads"] += func in HOST_READS
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads(device):
    """{"reads": the host's waits for tensors in the block}, filled in when it ends: on CUDA the
    synchronisations torch.cuda.set_sync_debug_mode reports; on the CPU, which never waits, the tensor
    reads (HOST_READS) that would wait on a GPU."""
    counter = {"reads": 0}
    if torch.device(device).type != "cuda":
        with _CountHostReads(counter):
            yield counter
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counter["reads"] = sum("synchroniz" in str(warning.message) for warning in caught)
