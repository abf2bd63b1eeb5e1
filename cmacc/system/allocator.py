"""Keep freed memory in the process: no page faults for the sampler's and the step's large buffers.

glibc's malloc serves a large block (the sampler's N x M pseudo-posterior, 19.7 MB at the paper's
N = 38,400, M = 128; activations; gathered keys) with a fresh ``mmap`` and returns it with
``munmap`` when it is freed, or trims the heap top back to the kernel. The next allocation of the
same size then faults in every 4 KB page again: at the paper's sizes that was 72,000 minor faults
and 55-85 ms per pseudo-posterior instead of 40 ms, and 0.29 s instead of 0.18 s for a training
step's two selections (benchmarks/results/README.md). PyTorch's CPU tuning guide recommends a
caching allocator (jemalloc, tcmalloc via LD_PRELOAD) for the same reason; glibc can do it in
place with ``mallopt``:

    M_MMAP_THRESHOLD = 1 GiB   blocks below it come from the heap, not from mmap;
    M_TRIM_THRESHOLD = 1 GiB   free heap memory is kept unless more than this lies at the top;
    M_TOP_PAD        = 64 MiB  the heap grows in large steps.

The cost: the process's resident size stays at its peak instead of shrinking after it (the peak
itself does not change). Forked loader workers inherit the setting. Other C libraries (musl,
macOS) are left alone and reported as such.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("cmacc")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
_state: str | None = None  # what keep_freed_memory did in this process


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(enabled: bool = True) -> str:
    """Tune glibc's malloc as in the module doc (once per process); returns what happened:
    "kept" (tuned, here or by an earlier call), "default" (not asked) or "unavailable: why"."""
    global _state
    if not enabled:
        return _state or "default"
    if _state == "kept":
        return _state
    libc = _glibc()
    if libc is None:
        _state = "unavailable: not glibc"
    elif not all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items()):
        _state = "unavailable: mallopt refused"
    else:
        _state = "kept"
    if _state != "kept":
        log.info("run.keep_freed_memory: %s; large buffers may page-fault on every step", _state)
    return _state
