"""Batches of slices through the encoder, with reading and preprocessing in a background thread.

`default_batch_size(device)`: how many slices one encoder call takes when the caller does not
say. A GPU is fed 32 (issue 22: the LiteMedSAM encoder ran 278 slices/s fp32 in batches of 32
on an H200 against ~20 slices/s one at a time). A CPU gets 1: its kernels are saturated by one
256 x 256 slice. On the 2-core test machine (bench_gpu.py, one process, runs interleaved, n = 2,
load 10 to 13) a volume took 0.72 of slice by slice's time per slice at batch 1 (reading and
writing overlap the model work), 0.79 at batch 2 and 0.78 at batch 4, while batches of 4 raised
the peak memory of a 512 x 512 x 300 CT from 1.17 GB to 1.85 GB (< 2 GB asked).

`prefetched(items, prepare)` runs `prepare` on the items one after another in a background
thread, a few ahead of the consumer: torch and numpy release the GIL in their kernels, so
reading and preprocessing the next batch overlap the model work on the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

from segmote.errors import ParameterError

T = TypeVar("T")
R = TypeVar("R")

GPU_BATCH, CPU_BATCH = 32, 1


def default_batch_size(device: torch.device | str) -> int:
    """Slices per encoder call on `device` when none is given (module doc)."""
    return GPU_BATCH if torch.device(device).type == "cuda" else CPU_BATCH


def check_batch_size(batch_size: int | None, device: torch.device | str) -> int:
    """`batch_size`, or the device's default for None; ParameterError unless a positive
    integer."""
    if batch_size is None:
        return default_batch_size(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError("batch_size", f"{{batch_size}} {batch_size!r}: expected a positive "
                             "integer")
    return batch_size


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_DONE = object()


def prefetched(items: Iterable[T], prepare: Callable[[T], R], ahead: int = 2) -> Iterator[R]:
    """prepare(item) for each item, in order, computed in a background thread at most `ahead`
    results before the consumer asks for them. An exception in `prepare` is raised in the
    consumer at the item that failed; a consumer that stops early stops the thread."""
    results: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put((True, prepare(item)))
        except BaseException as exc:  # handed to the consumer, raised there
            results.put((False, exc))
            return
        results.put((True, _DONE))

    thread = threading.Thread(target=work, name="segmote-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(0.01)
