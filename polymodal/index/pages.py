"""2 MB pages under the vectors a search scans.

A flat FAISS search reads every vector for each query, and over 4 KiB pages that walk misses the TLB: on 2 MB pages
a query ran 1.4-1.6x faster at 1M x 256 and 1.6-2.3x at 20k-150k x 384 (benchmarks/index_huge_pages.py). Linux does
that by itself only where transparent huge pages are "always"; many distributions set "madvise", where a program must
ask: MADV_HUGEPAGE marks the range, MADV_COLLAPSE (Linux 6.1+) moves the pages it already has. Moving them costs about
as much CPU as 100 queries save (2.2 s at 1M x 256), so only a process that searches on (a server) asks. Asking is a
hint: elsewhere (other systems, older kernels, THP off) it does nothing and searches are as before.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Callable

import faiss

log = logging.getLogger(__name__)

MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
HUGE = 1 << 21
MIN_BYTES = 16 << 20  # 10k photos at 384 dims: below this a query takes well under a millisecond anyway
CHUNK = 64 << 20  # moved a chunk at a time (about 0.15 s), so that a move no longer wanted stops soon


def vectors_of(index) -> tuple[int, int] | None:
    """(address, bytes) of a flat index's vectors (an IndexIDMap's inner one), or None for another kind."""
    flat = faiss.downcast_index(getattr(index, "index", index))
    codes = getattr(flat, "codes", None)
    if codes is None or not codes.size():
        return None
    return int(codes.data()), int(codes.size())


def advise_huge_pages(index, wanted: Callable[[], bool] | None = None) -> bool:
    """Ask Linux to put `index`'s vectors on 2 MB pages, the ones they have now included (this takes a while: about
    as long as reading them). -> whether the kernel moved them. The index must stay alive meanwhile. ``wanted``,
    asked before each chunk: False stops the move (a server's removal made a new copy of the index: moving the
    old one on cost a second index's memory and 2 s of CPU per removal at 1M photos, for no search)."""
    where = vectors_of(index) if sys.platform.startswith("linux") else None
    if where is None or where[1] < MIN_BYTES:
        return False
    start = (where[0] + HUGE - 1) & ~(HUGE - 1)  # whole 2 MB pages inside the buffer: the ends are shared with others
    end = (where[0] + where[1]) & ~(HUGE - 1)
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    if madvise(start, end - start, MADV_HUGEPAGE) != 0:  # THP off ("never") or not built in
        log.debug("madvise(MADV_HUGEPAGE): errno %d", ctypes.get_errno())
        return False
    for at in range(start, end, CHUNK):
        if wanted is not None and not wanted():
            return False
        if madvise(at, min(CHUNK, end - at), MADV_COLLAPSE) != 0:  # before Linux 6.1 (EINVAL), or no 2 MB pages free
            log.debug("madvise(MADV_COLLAPSE): errno %d", ctypes.get_errno())
            return False
    return True
