"""Let the C heap keep what the network frees, so the next step reuses it (glibc only).

Every denoiser step allocates and frees activations of several MB. glibc's malloc
hands blocks that large back to the kernel (munmap, or trimming the top of the
heap), so the next step page-faults the same memory in again: on one CPU thread
that was about a tenth of the encode time. `keep_freed_memory` stops it (no mmap'd
blocks, trim only beyond 1 GiB): the heap stays at its peak and steps reuse it.
It changes no result, only where memory comes from, but it is process-wide and
cannot be undone, so the library never calls it on its own: the command line and
the benchmarks do, and a long-running program may.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_BYTES = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for the coder's allocation pattern (once); False where not glibc."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _done = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
            except (OSError, AttributeError):  # musl and others have no mallopt
                _done = False
    return _done
