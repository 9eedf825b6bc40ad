"""How a training run reacts to the signals that shells, schedulers and containers send.

    SIGINT  (Ctrl-C)                 KeyboardInterrupt at once: last.pt keeps the last saved step, exit 130
    SIGTERM (SLURM time limit or     finish the current optimiser step, save last.pt there (mid-epoch), exit
             preemption, docker stop, 143; outside the training steps (validation, cache build) it stops at
             Kubernetes, torchrun)   once, like Ctrl-C, from the last saved step
    SIGUSR1 (SLURM --signal=USR1@90) save last.pt after the current step and keep training

Under torchrun (main.py passes defer_sigint) every process of the job gets the signal (torchrun passes
it on): the processes agree after each step (distributed.agree) and all stop at the same step, where
rank 0 saves; Ctrl-C then stops like SIGTERM, with exit 130, and a signal during validation waits for
the epoch's end. A parent that ignores SIGINT (nohup, `cmd &` in a script) is obeyed: SIGINT stays
ignored. Signals are held while a checkpoint is written (``held``), so a file is never left half-written.
"""
import contextlib
import signal
import threading


class Preempted(KeyboardInterrupt):
    """SIGTERM outside the training steps; a KeyboardInterrupt so every clean-up path handles it."""

    exit_code = 128 + signal.SIGTERM


def stopped(signum):
    """The exception that ends a run stopped by ``signum``: Preempted (exit 143) or KeyboardInterrupt (130)."""
    return Preempted() if signum == signal.SIGTERM else KeyboardInterrupt()


class RunSignals:
    """Flags the training loop polls after every step: ``stop`` (0, or the number of the signal that
    asks to stop: SIGTERM, and SIGINT with defer_sigint) and ``save`` (SIGUSR1)."""

    def __init__(self, defer_sigint=False):
        self.stop, self.save, self.in_steps, self.defer_sigint = 0, False, False, defer_sigint

    def _on_stop(self, signum, frame):
        self.stop = max(self.stop, signum)
        if not self.in_steps:  # nothing to finish: stop now, from the last saved step
            raise stopped(signum)

    def _on_usr1(self, signum, frame):
        self.save = True

    @contextlib.contextmanager
    def installed(self):
        """These handlers for the block's duration (main thread only), the previous ones restored after."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        handlers = {signal.SIGTERM: self._on_stop}
        if self.defer_sigint and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            handlers[signal.SIGINT] = self._on_stop
        if hasattr(signal, "SIGUSR1"):  # not on Windows
            handlers[signal.SIGUSR1] = self._on_usr1
        previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (main thread only).

    torch.save turns an exception raised mid-write into a RuntimeError from its zip writer, so a
    signal while a checkpoint is written would end the run with a traceback instead of cleanly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {number: signal.signal(number, lambda *args: received.append(args)) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for signum, _ in received:
            signal.raise_signal(signum)  # now to the restored handler: KeyboardInterrupt, Preempted, ignored...


def ignore_stop_signals(worker_id=None):
    """DataLoader worker_init_fn: SLURM and docker signal every process of a job, and a worker killed by
    SIGTERM turns the parent's clean stop into "DataLoader worker exited unexpectedly". The parent
    stops its workers itself once it has saved."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
