"""``profile.json``: the typed :class:`LatencyReport`, validated against ``schemas/profile.schema.json``.

Every field is a dataclass until :meth:`LatencyReport.to_dict`, the file boundary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edgeformer.fsutil import atomic_write_json
from edgeformer.latency import LatencyStats
from edgeformer.machine import MachineInfo
from edgeformer.manifest import validate
from edgeformer.targets import OpProfile
from edgeformer.targets.base import RemoteInfo

SCHEMA_VERSION = 1


@dataclass
class ArtifactRef:
    """Which artifact was measured."""

    path: str
    model: str
    target: str
    profile: str
    ir_hash: str = ""
    cache_key: str = ""


@dataclass
class MeasurementSettings:
    warmup: int
    min_runs: int
    min_seconds: float
    cooldown_s: float = 0.0


@dataclass
class BudgetCheck:
    latency_ms: float
    met: bool


@dataclass
class LatencyReport:
    artifact: ArtifactRef
    settings: dict  # runtime settings in effect (threads, provider, hints): each runtime its own keys
    machine: MachineInfo
    measurement: MeasurementSettings
    load_ms: float
    first_inference_ms: float
    warmup_ms: list[float]
    latency: LatencyStats
    ops: OpProfile | None = None
    budget: BudgetCheck | None = None
    remote: RemoteInfo | None = None  # when timed on a device over RPC
    kind: str = "local"
    created_at: str = ""
    edgeformer_version: str = ""
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)
    # a streaming artifact: per-frame latency, real-time factor at the frame period, reset cost
    streaming: dict | None = None
    # Where write() put it (not part of the file): what the CLI says it wrote.
    path: Path | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        for key in ("artifact", "measurement", "latency", "ops", "budget", "remote"):
            if d[key] is not None:
                d[key] = dataclasses.asdict(d[key])
        d["machine"] = self.machine.to_dict()
        return d

    def write(self, path: str | Path) -> Path:
        """Validate and write atomically (creating missing parent folders); sets ``self.path``."""
        data = self.to_dict()
        validate(data, "profile")
        self.path = atomic_write_json(Path(path), data, mkdir=True)
        return self.path
