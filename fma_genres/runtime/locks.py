"""Lock files that work on any file system (O_EXCL, where flock may not: NFS, some network mounts).

    with FileLock("folder/locks/folder.lock"):   # waits while a live process holds it
        ...                                      # read-modify-write shared files
    claim = FileLock(path); claim.try_acquire()  # True, or False at once when held

A lock file holds its owner as JSON (pid, host, time, token). A lock whose owner has died on this host,
or older than STALE_LOCK_SECONDS (a process on another host cannot be checked), is taken over. A
process that waits says once, after NOTICE_SECONDS, which lock and owner it waits for.
cache.py uses them; tests: python -m pytest tests/runtime/test_locks.py -q
"""
import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

STALE_LOCK_SECONDS = 600.0  # far longer than any lock is held (the cache's longest: one chunk's work)
POLL_SECONDS, NOTICE_SECONDS = 0.2, 1.0  # a waiting process looks again, and says once what it waits for


def alive(pid):
    """Whether process ``pid`` of this host still runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # Linux: the state after the command's name in /proc/<pid>/stat, Z (zombie) or X (dead) when ended
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS): os.kill's answer
        return True


def notice_due(waited):
    """True exactly once: when a wait in steps of POLL_SECONDS first reaches NOTICE_SECONDS."""
    return waited < NOTICE_SECONDS <= waited + POLL_SECONDS


class FileLock:
    """A lock file, created with O_EXCL, that holds its owner as JSON (pid, host, time, token)."""

    def __init__(self, path):
        self.path, self.content = Path(path), None

    def try_acquire(self):
        """True when taken (a stale lock is taken over first), False while a live owner holds it."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._remove_if_stale():
                    return False
                continue
            content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                                  "token": uuid.uuid4().hex}).encode()
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
            except BaseException:  # e.g. a full disk: an empty lock file would hold everyone up
                self.path.unlink()
                raise
            self.content = content
            return True
        return False

    def acquire(self):
        waited = 0.0
        while not self.try_acquire():
            if notice_due(waited):
                print(f"waiting for the lock {self.path}, held by {self._owner()} (if that process is "
                      f"gone for good, delete the file)", flush=True)
            waited += POLL_SECONDS
            time.sleep(POLL_SECONDS)

    def release(self):
        with contextlib.suppress(FileNotFoundError):  # only our own: a stale lock taken over is not
            if self.content and self.path.read_bytes() == self.content:
                self.path.unlink()
        self.content = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _owner(self):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            o = json.loads(self.path.read_bytes())
            return f"pid {o['pid']} on {o['host']} since {time.strftime('%H:%M:%S', time.localtime(o['time']))}"
        return "an unknown owner"

    def _remove_if_stale(self):
        """Remove the lock if its owner is gone; True when the caller should try again."""
        try:
            raw, mtime = self.path.read_bytes(), self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        try:
            owner = json.loads(raw)
            since, gone = owner["time"], owner["host"] == socket.gethostname() and not alive(owner["pid"])
        except (ValueError, KeyError, TypeError):  # being written this instant, or garbage
            since, gone = mtime, False
        if not gone and time.time() - since < STALE_LOCK_SECONDS:
            return False
        # Move it aside, then check it is the lock judged stale: of several processes taking over one
        # stale lock only the first moves it, and one that moved a fresh lock instead puts it back.
        moved = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return True
        if moved.read_bytes() != raw:
            os.rename(moved, self.path)
            return False
        moved.unlink()
        return True
