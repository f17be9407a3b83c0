"""Give freed heap memory back to the operating system between the stages of a long CPU job.

PyTorch's CPU allocator uses ``malloc``. glibc keeps freed blocks of a few MB to tens of MB (the activations of one
batched forward, a backward pass's saved tensors) in its heap rather than unmapping them, so a process's resident
size stays at its largest stage's and the next stage's transients land on top of it. ``malloc_trim(0)`` returns
those free pages; elsewhere (no glibc) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """``malloc_trim(0)`` where glibc provides it; True when it ran."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
