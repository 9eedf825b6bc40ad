"""The spectrogram cache: each clip's mel dB computed once, stored as a float16 row of one memmap.

    cache = build_cache(tracks, "data/cache", "small")  # reuse, resume or build; prints its summary
    cache[track_id]                                     # (n_mels, n_frames) float16, read lazily

Used by main.py and pre_trained_models.py; tests: python -m pytest tests/data/test_cache.py -q

A folder cache_root/<subset>-<hash of subset, preprocessing, track ids>/ holds params.json (subset,
preprocessing, track ids in row order), mels.npy (float16 (tracks, n_mels, n_frames); a sparse file
that fills as rows are written), status.npy (per row: pending/ok/padded/broken/missing), report.csv
(each padded, broken or missing track and why) and locks/.

Reuse: a run needing tracks T reads as it is any folder of its subset and preprocessing whose rows for
T are all done (T's own first, else the smallest: --evaluate reads the training run's folder). Else it
fills T's own folder, copying the rows other such folders have done (status and reason included).

Safety: a row is marked done only after it is written and fsynced, so a kill loses only unsaved
progress. Builders of one folder may run at once (two runs, the ranks of a torchrun job): they claim
rows in fixed chunks, a lock file each, so no row has two writers, and merge only their own rows into
status.npy and report.csv under the folder's lock. shard=(index, count) computes only the chunks k with
k % count == index, then waits for the rest. The lock files are locks.FileLock's.

The folder, status, lock and report code is shared with the embedding cache (fma_genres/encoders/
embedding_cache.py): a Kind names the array a folder stores and its rows' shape, and a Builder subclass
says how rows are computed (new_pool, submit, finish).
"""
import errno
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fma_genres.runtime.atomic import atomic_write
from fma_genres.runtime.devices import available_cpus
from fma_genres.runtime.errors import DISK_FULL, AudioError, DataError, format_bytes
from fma_genres.runtime.locks import POLL_SECONDS, FileLock, notice_due
from utils import PREPROCESSING, clip_spectrogram

CHUNK_ROWS = 8  # rows per claim and worker task (fewer in small folders, to keep every worker busy)
SAVE_EVERY_ROWS, SAVE_EVERY_SECONDS = 50, 2.0  # how often a builder merges its rows into status.npy
PENDING, OK, PADDED, BROKEN, MISSING = 0, 1, 2, 3, 4
STATUS_NAMES = {PENDING: "pending", OK: "ok", PADDED: "padded", BROKEN: "broken", MISSING: "missing"}


@dataclass(frozen=True)
class Kind:
    """What a cache folder stores: its float16 array's file, one row's shape from params.json, its name."""
    array: str
    row_shape: Callable
    name: str


MELS = Kind("mels.npy", lambda params: (params["preprocessing"]["n_mels"], params["preprocessing"]["n_frames"]),
            "spectrogram cache")


# ----------------------------------------------------------------------------- folders

def _checked_preprocessing(preprocessing):
    missing = set(PREPROCESSING) - set(preprocessing)
    if missing:
        raise ValueError(f"preprocessing lacks {sorted(missing)}; expected the keys of {PREPROCESSING}")
    # Casting makes 80 and 80.0 (e.g. after a JSON round trip) hash to the same cache.
    return {key: type(default)(preprocessing[key]) for key, default in PREPROCESSING.items()}


def _read_folder(folder, kind=MELS):
    """(params, status) of a well-formed cache folder, or None."""
    try:
        params = json.loads((folder / "params.json").read_text())
        mels = np.load(folder / kind.array, mmap_mode="r")
        status = np.load(folder / "status.npy")
        shape = (len(params["track_ids"]), *kind.row_shape(params))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if mels.shape != shape or mels.dtype != np.float16 or not mels.flags.c_contiguous or status.shape != shape[:1]:
        return None
    return params, status


def _read_report(folder):
    """{track_id: (path, reason)} from report.csv ({} when there is none yet)."""
    try:
        report = pd.read_csv(folder / "report.csv", dtype={"path": str, "reason": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return {}
    return {int(t): (p, r) for t, p, r in zip(report["track_id"], report["path"], report["reason"])}


def _todo(status, paths):
    """Mask of the rows to (re)compute: pending ones, and missing ones whose audio file has appeared."""
    todo = status == PENDING
    for row in np.flatnonzero(status == MISSING):
        todo[row] = Path(paths[row]).is_file()
    return todo


def _same_kind(cache_root, subset, p, kind=MELS):
    """[(folder, {track_id: row}, status)] of the readable folders with this subset and preprocessing."""
    found = []
    for folder in sorted(Path(cache_root).glob(f"{subset}-*")):
        state = _read_folder(folder, kind)
        if state and state[0]["subset"] == subset and state[0]["preprocessing"] == p:
            found.append((folder, {t: r for r, t in enumerate(state[0]["track_ids"])}, state[1]))
    return found


def _covering(same_kind, own, ids, paths):
    """A folder whose rows for these tracks are all done (own first, else the smallest), or None."""
    for folder, row_of, status in sorted(same_kind, key=lambda f: (f[0] != own, len(f[1]))):
        rows = [row_of.get(t) for t in ids]
        if None not in rows and not _todo(status[rows], paths).any():
            return folder
    return None


def _copy_sources(same_kind, own, ids, rows, kind=MELS):
    """{track_id: (array file, row, status, reason)} for these rows where another folder has them done."""
    sources = {}
    for folder, row_of, status in same_kind:
        found = [ids[r] for r in rows if folder != own and ids[r] in row_of and ids[r] not in sources
                 and status[row_of[ids[r]]] in (OK, PADDED, BROKEN)]
        reasons = _read_report(folder) if found else {}
        for t in found:
            sources[t] = (folder / kind.array, row_of[t], int(status[row_of[t]]), reasons.get(t, ("", ""))[1] or None)
    return sources


# ----------------------------------------------------------------------------- worker processes

def _init_worker():
    # Ctrl-C is the parent's to handle; torch threads would fight the other workers for the cores;
    # libmpg123 writes resync notes straight to stderr (the report has every problem instead).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    parent = os.getppid()

    def exit_when_orphaned():  # a killed parent leaves no worker behind
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=exit_when_orphaned, daemon=True).start()


def _spectrogram(path, p):
    """(status, reason, mel or None) of one clip: any failure is this track's, never the build's."""
    if not Path(path).is_file():
        return MISSING, "audio file not found", None
    try:
        mel, padded = clip_spectrogram(path, p)
    except Exception as e:
        reason = str(e) if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
        return BROKEN, reason.replace(f"{path}: ", ""), None
    if not padded:
        return OK, None, mel
    return PADDED, (f"{p['n_frames'] - padded} of {p['n_frames']} frames decoded; padded {padded} frames "
                    f"with the clip's minimum ({mel.min():.1f} dB)"), mel


def _fill_rows(mels_path, tasks, preprocessing, compute=_spectrogram):
    """Worker task: write each (row, audio path, source) -- copied from source = (another folder's
    mels.npy, its row, status, reason), or computed from the audio by ``compute`` (a Builder's) -- fsync,
    return [(row, status, reason)]. pwrite, not the memmap: a full disk is then an OSError (ENOSPC), not a SIGBUS."""
    layout = np.load(mels_path, mmap_mode="r")
    fd = os.open(mels_path, os.O_WRONLY)
    results = []
    try:
        for row, path, source in tasks:
            if source:
                code, reason = source[2:]
                mel = None if code == BROKEN else np.load(source[0], mmap_mode="r")[source[1]]
            else:
                code, reason, mel = compute(path, preprocessing)
            if mel is not None:
                write_row(fd, layout, row, mel)
            results.append((row, code, reason))
        os.fsync(fd)
    finally:
        os.close(fd)
    return results


def write_row(fd, layout, row, values):
    """pwrite values as row `row` of the .npy file open as fd, whose memmap is layout (the caller fsyncs)."""
    data = memoryview(np.ascontiguousarray(values, dtype=layout.dtype).tobytes())
    position = layout.offset + row * len(data)
    while data:  # a nearly full disk may take part of a write, then fail on the rest
        written = os.pwrite(fd, data, position)
        data, position = data[written:], position + written


# ----------------------------------------------------------------------------- building

class Builder:
    """Fills the rows of one folder still to do, alongside any other builders of that folder. A subclass for
    another kind of rows overrides kind and compute, or new_pool, submit and finish."""
    kind = MELS
    compute = staticmethod(_spectrogram)  # (status, reason, row or None) of one clip's audio, in a worker

    def __init__(self, folder, params, paths, sources, shard):
        self.folder, self.params, self.ids, self.paths = folder, params, params["track_ids"], paths
        self.sources, self.shard = sources, shard or (0, 1)
        self.chunk = max(1, min(CHUNK_ROWS, len(self.ids) // 64))
        self.lock = FileLock(folder / "locks" / "folder.lock")
        self.unsaved, self.in_flight, self.finished = {}, {}, []  # row: result; future: (claim, rows); claims
        self.computed = self.copied = 0

    def open(self):
        """Create the folder (all rows pending) unless it exists with these parameters."""
        (self.folder / "locks").mkdir(parents=True, exist_ok=True)
        with self.lock:  # never two creators: the second would replace an array already being filled
            state = _read_folder(self.folder, self.kind)
            if state and state[0] == self.params:
                return
            tmp = self.folder / f"{self.kind.array}.{os.getpid()}.tmp"
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                      shape=(len(self.ids), *self.kind.row_shape(self.params))).flush()
            os.replace(tmp, self.folder / self.kind.array)
            atomic_write(self.folder / "params.json", lambda f: f.write(json.dumps(self.params, indent=1).encode()))
            status = np.zeros(len(self.ids), dtype=np.int8)
            atomic_write(self.folder / "status.npy", lambda f: np.save(f, status))

    def todo(self, rows=slice(None)):
        """Mask of these rows still to do, from status.npy and this builder's unsaved results."""
        status = np.load(self.folder / "status.npy")
        for row, (code, _) in self.unsaved.items():
            status[row] = code
        return _todo(status[rows], self.paths[rows])

    def my_chunks(self, todo):
        chunks = np.unique(np.flatnonzero(todo) // self.chunk)
        return chunks[chunks % self.shard[1] == self.shard[0]]

    def run(self, workers, progress):
        todo = self.todo()
        workers = max(1, min(workers or available_cpus(), len(self.my_chunks(todo))))
        bar = tqdm(total=len(self.ids), initial=len(self.ids) - int(todo.sum()), unit="track",
                   disable=not progress, desc=f"{self.kind.name} {self.folder.name} ({workers} workers)")
        pool, waited, saved_at, interrupted = None, 0.0, time.monotonic(), False
        try:
            while todo.any():
                busy = {rows[0] // self.chunk for _, rows in self.in_flight.values()}
                for chunk in self.my_chunks(todo):
                    if len(self.in_flight) >= 2 * workers:  # claim as we go: other builders take the rest
                        break
                    if chunk not in busy:
                        pool = pool or self.new_pool(workers)
                        self.start(pool, int(chunk))
                if self.in_flight:
                    for future in wait(self.in_flight, return_when=FIRST_COMPLETED).done:
                        self.collect(future)
                else:  # the rows left are other builders' (claimed by them, or other shards')
                    if notice_due(waited):
                        print(f"{self.kind.name.capitalize()} {self.folder}: waiting for {int(todo.sum())} rows "
                              f"that other processes (another run, or the other shards) compute", flush=True)
                    waited += POLL_SECONDS
                    time.sleep(POLL_SECONDS)
                # An idle builder saves at once, so the builders it waits for see its rows.
                if not self.in_flight or len(self.unsaved) >= SAVE_EVERY_ROWS or \
                        time.monotonic() - saved_at >= SAVE_EVERY_SECONDS:
                    self.save()
                    saved_at = time.monotonic()
                todo = self.todo()
                bar.update(len(self.ids) - int(todo.sum()) - bar.n)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            try:
                if pool:  # on Ctrl-C, running tasks finish in the background; their rows stay pending
                    pool.shutdown(wait=not interrupted, cancel_futures=True)
                self.save()
            finally:  # even when the save fails (a full disk): unsaved rows stay pending, for anyone
                for claim in self.finished + [claim for claim, _ in self.in_flight.values()]:
                    claim.release()
                bar.close()

    def start(self, pool, chunk):
        """Claim a chunk and hand its rows still to do to a worker."""
        claim = FileLock(self.folder / "locks" / f"chunk-{chunk}.lock")
        if not claim.try_acquire():
            return
        first = chunk * self.chunk
        todo = self.todo(slice(first, first + self.chunk))  # after claiming: its last owner may just have finished it
        rows = [first + i for i in np.flatnonzero(todo)]
        if not rows:
            return claim.release()
        tasks = [(r, self.paths[r], self.sources.get(self.ids[r])) for r in rows]
        self.in_flight[self.submit(pool, tasks)] = claim, rows

    def new_pool(self, workers):
        return ProcessPoolExecutor(workers, initializer=_init_worker)

    def submit(self, pool, tasks):
        """A future of the [(row, status, reason)] of these (row, path, source) tasks."""
        return pool.submit(_fill_rows, self.folder / self.kind.array, tasks, self.params["preprocessing"],
                           self.compute)

    def finish(self, results):
        """A task's [(row, status, reason)] once its rows are written and fsynced (mels: by the worker)."""
        return results

    def collect(self, future):
        claim, rows = self.in_flight.pop(future)
        self.finished.append(claim)  # released once its rows are saved (or abandoned)
        try:
            results = self.finish(future.result())
        except BrokenProcessPool as e:
            row_bytes = np.prod(self.kind.row_shape(self.params)) * 2
            if shutil.disk_usage(self.folder).free < row_bytes:  # a write killed it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from e
            raise DataError(f"A cache worker died while decoding one of {[self.paths[r] for r in rows]}. "
                            f"Progress is saved: rerun to resume; if it dies again, move those files "
                            f"away.") from e
        for row, code, reason in results:
            self.unsaved[row] = (code, reason)
            copied = self.ids[row] in self.sources
            self.copied, self.computed = self.copied + copied, self.computed + (not copied)

    def save(self):
        """Merge this builder's rows into the current status.npy and report.csv under the folder's
        lock (so builders never erase each other's progress), then release their chunks."""
        if self.unsaved:
            with self.lock:
                status, report = np.load(self.folder / "status.npy"), _read_report(self.folder)
                for row, (code, reason) in self.unsaved.items():
                    status[row] = code
                    report[self.ids[row]] = (self.paths[row], reason or "")
                rows = np.flatnonzero(~np.isin(status, (PENDING, OK)))
                entries = [report.get(self.ids[r], (self.paths[r], "")) for r in rows]
                frame = pd.DataFrame({"track_id": [self.ids[r] for r in rows], "path": [e[0] for e in entries],
                                      "status": [STATUS_NAMES[status[r]] for r in rows],
                                      "reason": [e[1] for e in entries]})
                # The report goes first: if we die between the two writes, its extra rows belong to
                # rows still pending in the old status, which are recomputed and their reasons replaced.
                atomic_write(self.folder / "report.csv", lambda f: frame.to_csv(f, index=False))
                atomic_write(self.folder / "status.npy", lambda f: np.save(f, status))
            self.unsaved.clear()
        for claim in self.finished:
            claim.release()
        self.finished.clear()


def build_cache(tracks, cache_root, subset, preprocessing=PREPROCESSING, workers=None, progress=True,
                shard=None):
    """Reuse, resume or build the mel cache of these tracks (index track_id, column path); print its
    summary; return the MelCache.

    workers: decoding processes (default: the cores this process may use). shard=(index, count):
    compute only the chunks k with k % count == index, then wait for the other shards (run every
    index, e.g. one per torchrun rank). DataError, with the fix, for missing audio, too little disk
    space, a disk that fills up, or no usable track.
    """
    return fill_folder(tracks, cache_root, subset, _checked_preprocessing(preprocessing), Builder, MelCache,
                       Build(workers, progress, shard))


@dataclass(frozen=True)
class Build:
    """How fill_folder computes missing rows: ``workers`` processes (None: every core this process may use),
    a progress bar or not, and this rank's ``shard`` (index, count) or None."""
    workers: int = None
    progress: bool = True
    shard: tuple = None


def fill_folder(tracks, cache_root, subset, p, make_builder, reader, build):
    """Reuse, resume or fill the folder of these tracks and preprocessing p (computing rows as ``build``
    says); print its summary; return reader(folder) with .computed (rows computed by this call) and
    .requested (the track ids). DataError when no track gives a usable row.
    make_builder(folder, params, paths, sources, shard) -> a Builder (or subclass) of reader.kind's rows."""
    ids = sorted(int(t) for t in tracks.index)
    if not ids:
        raise DataError(f"No tracks to cache for subset '{subset}'.")
    paths = tracks.loc[ids, "path"].astype(str).tolist()
    params = {"subset": subset, "preprocessing": p, "track_ids": ids}
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(cache_root) / f"{subset}-{digest}"
    kind = reader.kind
    same_kind = _same_kind(cache_root, subset, p, kind)
    reused = _covering(same_kind, folder, ids, paths)
    builder = None
    if not reused:
        builder = _prepare(folder, params, paths, same_kind, build.shard, make_builder, kind)
        try:
            builder.open()
            builder.run(build.workers, build.progress)
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            raise DataError(f"The disk holding the {kind.name} {folder} is full ({e.strerror}). The "
                            f"progress saved so far is kept: free some space (or put the cache on a bigger "
                            f"disk with --cache_dir) and rerun the same command to resume the build.") from e
    cache = reader(reused or folder)
    cache.requested = ids
    cache.computed, copied = (builder.computed, builder.copied) if builder else (0, 0)
    copies = f"{copied} copied from other folders, " if copied else ""
    print(f"{cache.summary()} [{cache.computed} computed now, {copies}{len(ids) - cache.computed - copied} "
          f"reused]", flush=True)
    if not any(t in cache for t in ids):
        raise DataError(f"No usable row in the {kind.name} {cache.path}: every track is broken or missing; "
                        f"see {cache.path / 'report.csv'}.")
    return cache


def _prepare(folder, params, paths, same_kind, shard, make_builder, kind):
    """The builder of folder's rows still to do, once the audio and the disk space for them are checked."""
    ids = params["track_ids"]
    own = [status for f, _, status in same_kind if f == folder]
    todo = np.flatnonzero(_todo(own[0], paths) if own else np.ones(len(ids), bool))
    sources = _copy_sources(same_kind, folder, ids, todo, kind)
    to_decode = [r for r in todo if ids[r] not in sources]
    if to_decode and not any(Path(paths[r]).is_file() for r in to_decode):
        raise DataError(f"None of the {len(to_decode)} audio files to cache exists (e.g. {paths[to_decode[0]]}). "
                        f"Download the audio with `bash download_data.sh {params['subset']}`, check "
                        f"--data_dir, or use the demo dataset (--demo=True).")
    folder.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(todo), *kind.row_shape(params))
    needed, free = int(np.prod(shape)) * 2, shutil.disk_usage(folder.parent).free
    if needed > free:  # the array is sparse: each row takes its space when it is written
        raise DataError(f"Not enough disk space for the {kind.name} in {folder.parent}: the {len(todo)} "
                        f"tracks still to cache need {format_bytes(needed)} ({' x '.join(map(str, shape))} "
                        f"float16 values) but {format_bytes(free)} is free. Free some space there, "
                        f"or put the cache on a bigger disk with --cache_dir=/path/with/space.")
    return make_builder(folder, params, paths, sources, shard)


class MelCache:
    """Read side of a cache folder. The memmap opens on first access, so it pickles cheaply to workers."""
    kind, title = MELS, "Mel cache"

    def __init__(self, path):
        self.path = Path(path)
        params = json.loads((self.path / "params.json").read_text())
        self.subset, self.preprocessing = params["subset"], params["preprocessing"]
        self.status = np.load(self.path / "status.npy")
        self._rows = {tid: row for row, tid in enumerate(params["track_ids"])}
        self.track_ids = [t for t, row in self._rows.items() if self.status[row] in (OK, PADDED)]
        self.computed = 0  # rows computed by the build_cache call that returned this object
        self._mels = None

    def __getstate__(self):
        return {**self.__dict__, "_mels": None}

    def __contains__(self, track_id):
        row = self._rows.get(track_id)
        return row is not None and self.status[row] in (OK, PADDED)

    def __getitem__(self, track_id):
        if track_id not in self:
            raise KeyError(f"track {track_id} has no usable row in {self.path} (see report.csv)")
        if self._mels is None:
            self._mels = np.load(self.path / self.kind.array, mmap_mode="r")
        return np.array(self._mels[self._rows[track_id]])

    def summary(self):
        counts = {name: int(np.sum(self.status == code)) for code, name in STATUS_NAMES.items()}
        extra = "".join(f", {counts[k]} {k}" for k in ("missing", "pending") if counts[k])
        return (f"{self.title} {self.path}: {counts['ok']} ok, {counts['padded']} padded, "
                f"{counts['broken']} broken{extra} (report: {self.path / 'report.csv'})")
