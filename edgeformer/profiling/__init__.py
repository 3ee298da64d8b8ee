"""Latency profiling of compiled artifacts: local, per-op, and remote over the TVM RPC tracker."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import edgeformer
from edgeformer.latency import LatencyStats, Phases, measure, percentile, time_calls
from edgeformer.machine import MachineInfo, machine_info
from edgeformer.runtime import load_artifact

from .report import ArtifactRef, BudgetCheck, LatencyReport, MeasurementSettings

log = logging.getLogger(__name__)

__all__ = [
    "ArtifactRef",
    "BudgetCheck",
    "LatencyReport",
    "LatencyStats",
    "MachineInfo",
    "MeasurementSettings",
    "Phases",
    "machine_info",
    "measure",
    "percentile",
    "profile_artifact",
    "time_calls",
]


def profile_artifact(
    path: str | Path,
    *,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    warmup: int = 1,
    cooldown_s: float = 0.0,
    ops: bool = False,
    ops_runs: int = 10,
    threads: int | None = None,
    remote: str | None = None,
    key: str | None = None,
    output: str | Path | None = None,
) -> LatencyReport:
    """Measure an artifact; writes ``profile.json`` (default: inside the artifact folder)."""
    art = load_artifact(path)
    if threads is not None:
        art.profile.options.threads = threads
    inputs = art.example_inputs()
    measurement = MeasurementSettings(warmup, min_runs, min_seconds, cooldown_s)
    notes: list[str] = []
    remote_info = None
    if remote:
        result = art.target.profile_remote(
            art,
            tracker=remote,
            key=key or (art.profile.remote.key if art.profile.remote else ""),
            inputs=inputs,
            min_runs=min_runs,
            min_seconds=min_seconds,
            warmup=warmup,
        )
        phases, settings, machine, remote_info = result.phases, result.settings, result.machine, result.remote
        notes += result.notes
        op_profile = result.ops
    else:
        art.check_inputs(inputs)
        runner, phases = measure(
            lambda: art.runner(),
            lambda r: r.run(inputs),
            warmup=warmup,
            min_runs=min_runs,
            min_seconds=min_seconds,
            cooldown_s=cooldown_s,
        )
        settings, machine = runner.settings(), machine_info()
        runner.close()
        op_profile = None
        if ops:
            try:
                op_profile = art.target.profile_ops(art, inputs, ops_runs)
            except NotImplementedError as err:
                notes.append(str(err))
    budget_ms = art.profile.budget.latency_ms
    report = LatencyReport(
        artifact=ArtifactRef(
            path=str(art.path),
            model=art.manifest.model.name,
            target=art.target.name,
            profile=art.profile.name,
            ir_hash=art.manifest.ir_hash,
            cache_key=art.manifest.cache_key,
        ),
        settings=settings,
        machine=machine,
        measurement=measurement,
        load_ms=phases.load_ms,
        first_inference_ms=phases.first_inference_ms,
        warmup_ms=phases.warmup_ms,
        latency=phases.warm,
        ops=op_profile,
        budget=BudgetCheck(budget_ms, phases.warm.median_ms <= budget_ms) if budget_ms else None,
        remote=remote_info,
        kind="remote" if remote else "local",
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        edgeformer_version=edgeformer.__version__,
        notes=notes,
    )
    report.write(Path(output) if output else art.path / "profile.json")
    return report
