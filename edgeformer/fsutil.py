"""Atomic file writes (a temp file in the same folder, fsync, then ``os.replace``) and the cache root.

Readers never see a half-written file, and a failure leaves the old file (or nothing) behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """Where edgeformer caches compiles and tuning databases: ``$EDGEFORMER_CACHE_DIR``, else
    ``~/.cache/edgeformer``."""
    return Path(os.environ.get("EDGEFORMER_CACHE_DIR") or Path.home() / ".cache" / "edgeformer")


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the mode a plain ``open(path, "w")`` would give
    (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.chmod(tmp, 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data, *, indent: int = 2, mkdir: bool = False) -> Path:
    """``data`` as sorted JSON; ``mkdir`` creates the parent folders first."""
    if mkdir:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode())


def make_temp_dir(prefix: str, parent: Path) -> Path:
    """A temp folder beside the destination, with normal (umask) permissions, not mkdtemp's 0700."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Atomically move a finished folder into place, replacing an older one."""
    _fsync_tree(tmp)
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
