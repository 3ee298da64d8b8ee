"""What a measurement ran on: CPU model, cores, governor (where readable), OS.

:class:`MachineInfo` is recorded in every latency report; a remote device reports its own through
the RPC server (``edgeformer rpc-server`` registers :func:`machine_info` there).
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass
class MachineInfo:
    cpu_model: str
    logical_cores: int
    usable_cores: int | None = None  # CPUs this process may run on (affinity)
    governor: str | None = None  # cpufreq governor, where readable
    machine: str = ""  # e.g. x86_64, aarch64
    system: str = ""
    python: str = ""
    hostname: str = ""
    # Set when the machine is a device reached through a TVM RPC tracker.
    device_key: str | None = None
    server: str | None = None
    tracker: str | None = None

    _REMOTE = ("device_key", "server", "tracker")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in self._REMOTE:
            if d[key] is None:
                del d[key]
        if d["usable_cores"] is None:
            del d["usable_cores"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MachineInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def machine_info() -> MachineInfo:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return MachineInfo(
        cpu_model=cpu_model(),
        logical_cores=os.cpu_count() or 0,
        usable_cores=affinity or 0,
        governor=_read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        machine=platform.machine(),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        hostname=platform.node(),
    )
