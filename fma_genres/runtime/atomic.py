"""Atomic writes: every file the project writes appears whole or not at all."""
import io
import os
import shutil
import tempfile
from pathlib import Path

from fma_genres.runtime.errors import DISK_FULL, DiskFullError

UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it) and put back
os.umask(UMASK)


def atomic_write(path, write):
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``:
    a crash or Ctrl-C never leaves a half-written file under the real name. Used for every file the
    project writes (cache status and report, checkpoints, metrics, history, figures, CSVs)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX: mkstemp's 0600 would hide checkpoints and reports from a group
            os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        full = disk_full(path, write, error)
        if full:
            raise full from error
        raise


class _ByteCounter(io.RawIOBase):
    """A file that only counts the bytes written to it."""

    def __init__(self):
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        written = memoryview(data).nbytes
        self.size += written
        return written

    def tell(self):
        return self.size


def disk_full(path, write, error):
    """A DiskFullError when ``error`` (raised by ``write`` into a temp file beside ``path``) is the disk filling
    up, else None. torch.save reports a short write as a RuntimeError, not ENOSPC: then the file's size,
    counted by writing it again into nothing, must exceed the free space."""
    if not isinstance(error, (OSError, RuntimeError)) or isinstance(error, DiskFullError):
        return None
    free, counter = shutil.disk_usage(path.parent).free, _ByteCounter()
    try:
        write(counter)
    except Exception:  # the size stays unknown
        counter.size = 0
    if getattr(error, "errno", None) in DISK_FULL or counter.size > free:
        return DiskFullError(path, counter.size, free)
    return None
