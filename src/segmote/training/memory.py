"""Give the heap memory a training step has freed back to the system (glibc only).

One CPU training step allocates and frees several GB of tensors of 1-32 MB (decoder
activations of each prompt group, recomputed in the backward pass by `recompute_rounds`).
glibc serves such blocks from its heap, and a freed block in the middle of the heap stays
resident: on the default recipe the process's peak resident memory was ~1 GB above the peak of
live tensors (torch profiler: 1.3 GB live, 2.1-2.8 GB resident growth). `malloc_trim(0)`
returns every free heap page to the system (madvise); `TrainStep` calls it once after the
forward pass and before each prompt group's recomputation in the backward pass, where the peak
is, which caps that waste at what one group leaves behind. It costs a page fault for each page
the next group reuses (step time: docs/benchmarks.md), changes no number, and is a no-op where
the C library has no malloc_trim (musl, macOS, Windows).

Allocator settings (M_MMAP_THRESHOLD, M_ARENA_MAX) are process-wide and must be set before the
first allocation, which a library cannot promise; trimming needs neither.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
