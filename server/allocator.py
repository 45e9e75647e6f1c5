"""The C allocator's setting for a server whose requests are megabytes each.

glibc raises its mmap threshold to the size of each large block freed, so after a burst of 4-20 MiB requests they
are all served from the heap and arenas, which keep the pages. Under a fixed 1 MiB threshold every block of a
megabyte or more is mapped on its own and unmapped when freed: measured with five bursts of 64 concurrent 4 MiB
requests to a slow model (three runs each), RSS grew by a median 0.59 GB (0.53-0.73) instead of 0.87 GB
(0.73-0.95) with the default. The cost is a page fault per touched page of each large block;
``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc's own variable) overrides it.

Fixing the mmap threshold also stops glibc adapting its trim threshold, which stays at 128 KiB: every time the
blocks at the top of the heap are freed (a request's 602 KB tensor, its preprocessed copy), the heap is shrunk and
the next request faults the same pages in again (page faults were about a fifth of the server's samples in a profile
of fp32 requests). The trim threshold is therefore fixed too, at 64 MiB (at most that much free heap kept per process;
``MALLOC_TRIM_THRESHOLD_`` overrides it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt's parameter numbers (glibc's malloc.h)."""
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
ENVIRONMENT_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"
TRIM_ENVIRONMENT_OVERRIDE = "MALLOC_TRIM_THRESHOLD_"


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 1 MiB and its trim threshold at 64 MiB for this process, each unless the
    environment sets it; False where the C library is not glibc (nothing changed)."""
    if ENVIRONMENT_OVERRIDE in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused; the allocator keeps its default")
        return False
    if TRIM_ENVIRONMENT_OVERRIDE not in os.environ and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        log.debug("mallopt(M_TRIM_THRESHOLD) was refused; the heap is trimmed at glibc's default")
    return True
