"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``.

Readers never see a half-written file, and a failure leaves the old file (or nothing) behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data, *, indent: int = 2) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode())
