"""What edgeformer keeps in its cache, and cleaning it.

The cache root is ``$EDGEFORMER_CACHE_DIR``, else ``~/.cache/edgeformer`` (:func:`fsutil.cache_root`).
It holds ``compile/<key>/`` (finished artifacts, keyed by sha256 of IR, pipeline, target options,
versions and tolerances: an identical re-compile copies one instead of compiling) and
``tvm-tune/<profile>/<workload>/database.json`` (TVM tuning databases: hours of work, so cleaning
them is asked for separately).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeformer.fsutil import cache_root

# kind -> sub-folder of the cache root
KINDS = {"compile": "compile", "tuning": "tvm-tune"}


@dataclass
class CacheUsage:
    kind: str
    path: Path
    entries: int  # artifacts (compile) or databases (tuning)
    bytes: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "entries": self.entries, "bytes": self.bytes}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def usage(root: Path | None = None) -> list[CacheUsage]:
    """Entries and bytes per kind of cache content."""
    root = root or cache_root()
    out = []
    for kind, sub in KINDS.items():
        folder = root / sub
        if kind == "compile":
            entries = (
                [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
            )
        else:
            entries = list(folder.glob("*/*/database.json")) if folder.is_dir() else []
        out.append(CacheUsage(kind, folder, len(entries), _size(folder) if folder.is_dir() else 0))
    return out


def clean(kinds: list[str], root: Path | None = None) -> list[CacheUsage]:
    """Delete the given kinds of cache content; returns what was removed."""
    root = root or cache_root()
    removed = [u for u in usage(root) if u.kind in kinds]
    for u in removed:
        if u.path.is_dir():
            shutil.rmtree(u.path)
    return removed
