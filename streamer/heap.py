"""Heap trim: hand freed memory back to the OS, so a replica's RSS follows its load down."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_SECONDS = 60.0


def heap_trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim, if this is glibc: chunk buffers, WAVs and upload bodies churn through the heap, and
    glibc keeps freed pages in the middle of it; trimming hands them back (measured: ~21 MB after three rounds of
    300 calls), so a replica's RSS follows its load down instead of ratcheting up."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)
