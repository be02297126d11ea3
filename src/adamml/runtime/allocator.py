"""Transparent huge pages for torch's large CPU tensors, asked for before torch starts.

torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation; with it, tensors of
2 MiB and more are backed by 2 MiB pages (``madvise(MADV_HUGEPAGE)``), so a fresh activation
buffer costs one page fault per 2 MiB instead of one per 4 KiB: activations larger than
glibc's mmap threshold are mapped afresh on every call, and faulting them in 4 KiB at a time
is a visible share of a CPU forward pass (docs/inference.md, "Page faults"). Nothing here imports
torch; a process that has already allocated with torch keeps what it had.
"""

from __future__ import annotations

import os
import sys


def request_huge_pages() -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 unless the environment says otherwise; True when it is
    on and torch has not been imported yet (so the setting will apply)."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1" and "torch" not in sys.modules
