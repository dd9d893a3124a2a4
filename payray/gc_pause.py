"""Bulk work that builds millions of long-lived objects and no reference cycles (a simulated day, a million
simulated charges) runs with Python's cyclic collector off: it would only rescan live objects, again and
again. Reference counting still frees everything."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """The cyclic collector off for the block, and back as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
