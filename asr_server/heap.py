"""The process's memory as the allocator sees it: keep big blocks returnable, give freed memory back.

Two measured faults (docs/benchmarks.md, docs/reliability.md): glibc keeps
blocks below its mmap threshold in its heaps when they are freed, and raises
that threshold each time a big block is freed, so RSS creeps up to the worst
batch seen; and after a burst of connections (socket reads, frames, parsed
requests: many blocks of a few hundred KiB, spread over the heaps of several
threads) the freed memory stays resident. ``bound_allocator_retention`` runs
once at start; ``give_back`` runs after each burst, off the event loop.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # from malloc.h


def _glibc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, say): its allocator behaves differently
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def bound_allocator_retention() -> None:
    """A fixed 4 MiB mmap threshold: big blocks are mapped on their own, so freeing them returns them.

    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins.
    """
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def give_back() -> None:
    """Return free heap pages to the system.

    ``malloc_trim`` walks every heap, a few milliseconds, with the GIL released: call it off
    the event loop. No ``gc.collect()`` here: with the model loaded it holds the GIL for about
    200 ms, which would stall the event loop and the worker after every burst.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
