"""Give freed memory back to the system: glibc's malloc keeps it otherwise.

glibc serves allocations above its mmap threshold with their own mappings, returned on free; but the
threshold rises (up to 32 MiB) each time such a block is freed, after which weight- and activation-sized
arrays come from the heap and stay in the process once freed. A compression run allocates and frees
model-sized buffers phase after phase (sessions, activations, records), so its resident memory grew by
every phase's peak. Fixing the threshold at 4 MiB keeps large buffers in mappings: measured on a 100 MB
CNN, the peak resident set of a `compress` fell from 1181 to 950 MiB (tools/bench/RESULTS.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 4 << 20


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process (repeating it changes nothing; a no-op without glibc). True
    when it was set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        return bool(mallopt and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except OSError:
        return False
