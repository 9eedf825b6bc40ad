"""locks.py: a stale lock file is taken over, a live one is not; a waiting process says once whom it
waits for. (tests/data/test_cache.py runs real concurrent cache builders on these locks.)"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from fma_genres.runtime import locks


def write_lock(path, pid, host=None, age=0.0):
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": time.time() - age,
                                "token": "theirs"}))


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path):
    path = tmp_path / "folder.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(path, sleeper.pid)  # alive on this host
        assert not locks.FileLock(path).try_acquire()
        write_lock(path, sleeper.pid, host="elsewhere")  # another host's, recent: cannot tell, so held
        assert not locks.FileLock(path).try_acquire()
        write_lock(path, sleeper.pid, host="elsewhere", age=locks.STALE_LOCK_SECONDS + 1)
        assert locks.FileLock(path).try_acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    write_lock(path, sleeper.pid)  # its owner has died
    lock = locks.FileLock(path)
    assert lock.try_acquire() and json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists() and not list(tmp_path.iterdir())
    path.write_text("")  # its owner is between creating and writing it, or died there
    assert not locks.FileLock(path).try_acquire()
    os.utime(path, (time.time() - locks.STALE_LOCK_SECONDS - 1,) * 2)
    assert locks.FileLock(path).try_acquire()


HOLDER = """
import sys, time
from pathlib import Path
from fma_genres.runtime import locks
lock = locks.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(2.5)
Path(sys.argv[2]).touch()
lock.release()
"""


def test_a_live_holder_makes_others_wait_and_say_so_once(tmp_path, capsys):
    path, released = tmp_path / "folder.lock", tmp_path / "released"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(released)],
                              cwd=Path(locks.__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lock = locks.FileLock(path)
    lock.acquire()
    assert released.exists(), "the lock was taken only after its holder let go"
    lock.release()
    holder.wait()
    out = capsys.readouterr().out
    assert out.count("waiting for the lock") == 1
    assert f"waiting for the lock {path}, held by pid {holder.pid} on {socket.gethostname()} since" in out
