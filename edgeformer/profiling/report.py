"""``profile.json``: the typed report, validated against ``schemas/profile.schema.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeformer.manifest import validate

SCHEMA_VERSION = 1


@dataclass
class ProfileReport:
    artifact: dict  # path, model, target, profile, ir_hash, cache_key
    settings: dict  # runtime settings in effect (threads, provider, hints)
    machine: dict  # cpu model, cores, governor
    measurement: dict  # warmup, min_runs, min_seconds, cooldown_s
    load_ms: float
    first_inference_ms: float
    warmup_ms: list[float]
    latency: dict  # LatencyStats.to_dict()
    ops: dict | None = None  # OpProfile.to_dict()
    budget: dict | None = None  # {"latency_ms", "met"}
    remote: dict | None = None  # {"tracker", "key"} when timed on a device over RPC
    kind: str = "local"
    created_at: str = ""
    edgeformer_version: str = ""
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> Path:
        data = self.to_dict()
        validate(data, "profile")
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
