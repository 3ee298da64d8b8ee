"""``profile.json``: the typed report, validated against ``schemas/profile.schema.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edgeformer.fsutil import atomic_write_json
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
        path = atomic_write_json(Path(path), data)
        return path
