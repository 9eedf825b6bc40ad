"""The errors the library raises for a problem the user must fix: str() is the one-paragraph message
(naming the file or key and the fix). Only the entry points print them and choose the exit status."""
import errno
import os
from pathlib import Path


class ConfigError(Exception):
    """A run that cannot go ahead as configured: a key's value, a config file, the run folder, the device,
    a resume that conflicts with the checkpoint, a study's database. main.py and experiments.py exit with status 1."""


class PeerFailed(Exception):
    """Under torchrun: another process of the job failed and says why; this one ends with status 1, silently."""


class DataError(Exception):
    """A problem with the user's data; str() is a one-paragraph message naming the file and the fix."""


class AudioError(DataError):
    """An audio file that cannot be decoded, is empty or is too short."""


class UsageError(Exception):
    """A problem the user must fix before anything can run (a command's wrong options or unusable input);
    str() is the whole message, which the command prints with exit status 2."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file that did not fit the free space of its disk (ENOSPC); str() is the one-paragraph message, to
    which the entry point adds how to go on (main.py: the command that resumes the run)."""

    def __init__(self, path, needed, free):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path, self.needed, self.free = Path(path), needed, free

    def __str__(self):
        needed = f"needs {format_bytes(self.needed)}" if self.needed else "did not fit"
        return (f"the disk holding {self.path.parent} is full: writing {self.path.name} {needed} but "
                f"{format_bytes(self.free)} is free there. {self.path.name} and the files written before are "
                f"as they were (each write goes to a temporary file, renamed into place only once complete). "
                f"Free some space there, or move the folder to a bigger disk.")


def format_bytes(n):
    """1.50 GiB or 12.3 MiB: sizes in messages."""
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"
