"""Files only their owner may read (keys, secrets), written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` with mode 0600 from its first byte, replacing the file at once: a reader
    (HAProxy reloading a certificate, a restart) never sees half of it."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when a stale staged file was there
    with os.fdopen(fd, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)
    os.replace(staged, path)
