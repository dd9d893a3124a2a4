"""The pool of ledger writers and the routing of a merchant to its writer.

A merchant's postings always go to the same writer (a stable hash of its id), so its balance rows are only
ever updated by one connection; each writer has its own shard of the house accounts, so writers never wait
on each other's rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TypeVar, cast

from ray.actor import ActorHandle

from actors.ledger_writer import LedgerWriterActor

W = TypeVar("W")


def writer_name(index: int) -> str:
    return f"ledger_writer:{index}"


def writer_index(merchant_id: str, pool_size: int) -> int:
    """The writer for ``merchant_id``: CRC-32 of its UTF-8 bytes, stable across processes and restarts
    (unlike ``hash``, which is salted per process)."""
    if pool_size < 1:
        raise ValueError("pool_size must be at least 1")
    return zlib.crc32(merchant_id.encode("utf-8")) % pool_size


def writer_for(writers: Sequence[W], merchant_id: str) -> W:
    return writers[writer_index(merchant_id, len(writers))]


def get_or_create_writers(database_url: str, pool_size: int, namespace: str) -> list[ActorHandle]:
    """Handles to the named, detached writers ``ledger_writer:0 … pool_size-1``, created if missing.

    Writer ``i`` owns house-account shard ``i``. Changing the pool size re-routes some merchants: that stays
    correct (balance rows are locked), but two writers may then briefly update one merchant's rows.
    """
    if pool_size < 1:
        raise ValueError("pool_size must be at least 1")
    handles: list[ActorHandle] = []
    for i in range(pool_size):
        handle = LedgerWriterActor.options(
            name=writer_name(i),
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
        ).remote(database_url, i)
        handles.append(cast(ActorHandle, handle))
    return handles
