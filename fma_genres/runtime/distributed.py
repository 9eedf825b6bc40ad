"""Several processes, one run: main.py under torchrun trains with DistributedDataParallel.

    torchrun --standalone --nproc_per_node=4 main.py [config.py] [--key=value ...]   # one machine, 4 GPUs
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=4 --rdzv_backend=c10d \
             --rdzv_endpoint=HOST:29500 main.py ...                                 # on each of 2 machines

torchrun starts one process per GPU (NCCL) or per CPU share (gloo) with RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE set; without them (a plain ``python main.py``) there is no process group and every
function here acts for the one process. What the processes share:

- data: every process reads the same global order of batches (utils.train_sampler, reseeded per epoch)
  and trains on its slice of each batch (utils.ShardSampler); batch_size is the global batch. Evaluation
  splits whole batches into one block per process (utils.EvalShard) and gather() puts them back in order,
  so every figure equals a single-process evaluation.
- decisions: sync_step() sums each step's loss, examples and correct answers on the device (a NaN
  anywhere stops every process at the same step); agree() takes the strongest stop/save request of the signals
  over the processes; from_main() hands rank 0's result (the run folder, a checkpoint) or its
  failure to every process.
- output: rank 0 alone prints to stdout, shows progress bars, logs to W&B and writes files.

Tests (real torchrun, gloo): python -m pytest tests/runtime/test_distributed.py -q
"""
import contextlib
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fma_genres.runtime.errors import ConfigError, PeerFailed

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long; the cache build waits on files instead


def launched():
    """True in a process that torchrun started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def active():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """Rank 0: the process that prints, logs and writes."""
    return rank() == 0


def local_rank():
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def local_world_size():
    """Processes on this machine (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if launched() else 1


def local_device(name):
    """The device of this process for the config's ``device``: under torchrun, auto/cuda mean the GPU of
    its local rank (cuda:LOCAL_RANK), or the CPU where there is no GPU."""
    if not launched():
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("cuda", "cpu"):
        return f"cuda:{local_rank()}" if name == "cuda" else name
    raise ConfigError(f"device={name!r} cannot be used under torchrun: each process takes the GPU of its local rank "
                      f"(device=auto or cuda; CUDA_VISIBLE_DEVICES chooses the GPUs) or the CPU (device=cpu).")


@contextlib.contextmanager
def joined(config):
    """Under torchrun: this process in the job's process group (NCCL on CUDA, gloo on the CPU) for the
    block, the config's keys checked against the job. A plain run: nothing happens."""
    if not launched():
        yield
        return
    device = local_device(config["device"])
    if config["sync_batchnorm"] and not device.startswith("cuda"):
        raise ConfigError("sync_batchnorm=True needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): drop it, or run "
                          "on GPUs.")
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
    try:
        if config["batch_size"] % world_size():
            raise ConfigError(f"batch_size={config['batch_size']} is the global batch, split evenly across the "
                              f"{world_size()} processes: choose a multiple of {world_size()}.")
        if not is_main():  # one copy of every line; errors still reach stderr, named by rank
            sys.stdout = open(os.devnull, "w")
        yield
    finally:
        dist.destroy_process_group()


def exit_process(main):
    """``sys.exit(main())``, except that under torchrun the process ends with os._exit once its output is
    flushed: after destroy_process_group, gloo's worker threads can still hold work objects whose
    destruction during interpreter shutdown aborts the process (SIGABRT, "terminate called without an
    active exception"; pytorch/pytorch#179291), turning a clean exit 143 or 0 into a crash report."""
    if not launched():
        sys.exit(main())
    try:
        code = main()
    except SystemExit as stop:  # sys.exit("error: ..."): the message to stderr and status 1, as sys.exit does
        code = stop.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def describe(config):
    """The line saying how the job shares its work (printed at start)."""
    if not active():
        return None
    world, backend = world_size(), dist.get_backend()
    return (f"torchrun: {world} process{'es' if world > 1 else ''} ({backend}{'' if backend == 'nccl' else ' on CPU'}), "
            f"global batch {config['batch_size']} = {world} x {config['batch_size'] // world} per process; lr not "
            f"scaled; BatchNorm statistics {'synchronised (SyncBatchNorm)' if config['sync_batchnorm'] else 'per process'}")


def resume_note(saved_config):
    """A note when a run resumes on another number of processes than it was trained on, else None."""
    before = saved_config.get("world_size", 1)
    if before == world_size():
        return None
    return (f"note: this run was trained on {before} process(es) and continues on {world_size()}: from the same "
            f"epoch and state, with the same global batch, but not bit-identically to an uninterrupted run "
            f"(gradients are summed in another order, and BatchNorm sees other per-process batches).")


def named(message):
    """``message`` prefixed with this process's rank under torchrun, so a failure says where it happened."""
    return f"rank {rank()} of {world_size()}: {message}" if active() else message


def peer_lost(error):
    """True for what a collective raises when another process of the job has died or left: NCCL's
    DistError, gloo's RuntimeError ("Connection reset by peer")."""
    return active() and (isinstance(error, dist.DistError) or "gloo" in str(error))


def lost_peer_message(error):
    return named(f"lost the other processes of the job ({str(error).splitlines()[0][:200]}): one of them "
                 f"failed or was stopped; its own message, or torchrun's report, says which and why.")


def launcher():
    """The start of the command that launched this process, to repeat it: ["python"] for a plain run;
    under torchrun the torchrun launch as typed (the parent's command line, on Linux), e.g.
    ["torchrun", "--standalone", "--nproc_per_node=2"]."""
    if not launched():
        return ["python"]
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
        start = next(i for i, arg in enumerate(parent)
                     if Path(arg).name == "torchrun" or arg in ("torch.distributed.run", "torch.distributed.launch"))
        end = parent.index(sys.argv[0], start)
        return ["torchrun", *parent[start + 1:end]]
    except (OSError, StopIteration, ValueError):  # not Linux, or launched another way: what the job looks like
        nodes, per_node = int(os.environ["WORLD_SIZE"]) // local_world_size(), local_world_size()
        return ["torchrun", *(["--standalone"] if nodes == 1 else [f"--nnodes={nodes}"]), f"--nproc_per_node={per_node}"]


# -----------------------------------------------------------------------------
# the model and the collectives of a step

def wrap(model, raw_model, device, sync_batchnorm=False):
    """``model`` (``raw_model``, perhaps compiled) in DistributedDataParallel; a plain run: ``model``.
    sync_batchnorm turns raw_model's BatchNorm layers into SyncBatchNorm, in place (the same parameters).
    Buffers are not broadcast at every step: broadcast_buffers() gives every process rank 0's (those
    its checkpoint holds) before each evaluation."""
    if not active():
        return model
    if sync_batchnorm:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def unwrap(model):
    """The model inside DistributedDataParallel (evaluation runs it on uneven blocks, without DDP's sync)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_buffers(model):
    """Rank 0's buffers (BatchNorm running statistics) in every process."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sync_step(loss, weight, examples, correct):
    """(float64 [mean loss, examples, correct] of the global batch, scale), both on the device, from this
    process's part: its mean ``loss`` (a tensor) over a total ``weight`` (its examples, or their class
    weights), ``examples`` and ``correct`` predictions (a tensor). DDP averages gradients over the processes,
    so each process's loss times ``scale`` (its weight's share of the global weight x processes) gives
    exactly the gradient of the global batch's mean loss, whatever the split. One all-reduce, and no wait
    for the host (train.py reads the figures at its log intervals); every process gets the same figures."""
    on_device = lambda value: value.double() if torch.is_tensor(value) else correct.new_full((), value, dtype=torch.float64)
    weight = on_device(weight)
    totals = torch.stack([loss.detach().double() * weight, weight, on_device(examples), correct.double()])
    dist.all_reduce(totals)
    figures = torch.stack([totals[0] / totals[1], totals[2], totals[3]])
    return figures, weight * world_size() / totals[1]


def agree(*values):
    """Each integer's (or flag's) maximum over every process, in one tiny all-reduce: a stop or save
    that one process was asked for is taken by all at the same step."""
    if not active():
        return values
    values = torch.tensor([int(value) for value in values], device=_device())
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(values.tolist())


def gather(items):
    """Every process's list ``items``, concatenated in rank order, in every process."""
    if not active():
        return items
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def from_main(function, *args):
    """``function(*args)`` computed by rank 0 alone and handed to every process (the run's folder, a
    checkpoint: only rank 0 writes, and other machines may not see its disk). When it fails, rank 0
    raises its error and the others raise PeerFailed (status 1), leaving the message to rank 0."""
    if not active():
        return function(*args)
    outcome = [None, False]  # result, failed
    if is_main():
        try:
            outcome[0] = function(*args)
        except BaseException:
            outcome[1] = True
            dist.broadcast_object_list(outcome)
            raise
    dist.broadcast_object_list(outcome)
    if outcome[1]:
        raise PeerFailed(named("rank 0 failed; its message says why"))
    return outcome[0]


def first_on_each_machine(function, *args):
    """``function(*args)`` on each machine's first process, then on the others (which find its work
    done: the demo data written once per machine). A failure stops every process."""
    if not active():
        return function(*args)
    first = local_rank() == 0
    try:
        result = function(*args) if first else None
    except BaseException:
        gather([False])
        raise
    if not all(gather([True])):
        raise PeerFailed(named("a first process failed; its message says why"))
    return result if first else function(*args)
