"""Keep large freed memory in the process: glibc's malloc tuned for CPU training.

    from fma_genres.runtime import allocator
    allocator.keep_large_allocations()   # first thing in a script, before torch allocates anything

Why: glibc's malloc serves every block above its mmap threshold (128 KiB, growing by itself to at most
32 MiB) with a fresh mmap and gives it back with munmap when it is freed. A CPU training step allocates
and frees far more than it holds (the CRNN at batch 50: 18.8 GB a step, 31 blocks of 50 x 16 x 128 x
1291 floats = 504 MiB among them, at most 3.5 GiB alive), so every step faulted all of it in again,
page by zeroed page: half of the CPU time went to the kernel. With the mmap threshold above the
largest block and trimming off, free() keeps the blocks in the heap and the next step reuses them:
2.7x faster. The price: freed memory stays in the process and the peak resident memory grows (CRNN,
batch 50, eager: 5.0 -> 12.4 GiB); benchmarks/results_allocator.md has the sweep behind the choice.

main.py (and so the DataLoader workers it forks), pre_trained_models.py and app.py call it at start-up,
when run (importing them changes nothing). It is a no-op where the C library is not glibc (macOS,
Windows, musl) and whenever the user has taken charge of the allocator: a MALLOC_*_ threshold or pad
variable, a glibc.malloc tunable in GLIBC_TUNABLES, or any LD_PRELOAD (jemalloc, tcmalloc, ...).
To opt out, set the glibc default yourself: MALLOC_MMAP_THRESHOLD_=131072 python main.py
"""
import ctypes
import os

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Chosen from a sweep on 2 cores, CRNN training step at batch 50 (benchmarks/results_allocator.md):
# a threshold below the largest activation (504 MiB) leaves most of the churn in place; 1 GiB keeps
# every tensor of the three models at batch 50 in the heap. Trimming is off (-1, mallopt(3)): with
# the largest threshold mallopt's int takes (2 GiB - 1), the free top of the heap at the end of a
# step still exceeded it now and then and was faulted in again by the next step.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = -1

# The user's own allocator settings, which always win over this module's.
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                  "LD_PRELOAD")

status = "not called"  # what keep_large_allocations did, for reports and tests


def glibc_version():
    """The running C library's glibc version ("2.36"), or None when it is not glibc."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; missing or an error elsewhere
    except (AttributeError, ValueError, OSError):
        return None
    return text.split()[1] if text and text.startswith("glibc ") else None


def user_settings(environ=os.environ):
    """The allocator settings the user made in ``environ``; keep_large_allocations leaves them alone."""
    found = [name for name in USER_VARIABLES if environ.get(name)]
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        found.append("GLIBC_TUNABLES")
    return found


def keep_large_allocations(mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD):
    """Raise glibc's mmap and trim thresholds (mallopt), so that large freed blocks stay for reuse.

    Returns (and stores in ``allocator.status``) a line saying what was done or why nothing was.
    Calling it again changes nothing: the first call decided.
    """
    global status
    if status != "not called":
        return status
    version, users = glibc_version(), user_settings()
    if version is None:
        status = "left alone: the C library is not glibc"
    elif users:
        status = f"left alone: the user set {', '.join(users)}"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        # a glibc that caps the threshold at HEAP_MAX_SIZE / 2 (32 MiB) refuses it: the defaults then stay
        if mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1 or mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1:
            status = f"left alone: glibc {version} refused an mmap threshold of {mmap_threshold >> 20} MiB"
        else:
            trim = "off" if trim_threshold == -1 else f"{trim_threshold >> 20} MiB"
            status = f"glibc {version}: mmap threshold {mmap_threshold >> 20} MiB, trim threshold {trim}"
    return status
