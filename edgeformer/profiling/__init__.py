"""Latency profiling of compiled artifacts: local, per-op, and remote over the TVM RPC tracker."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from .machine import machine_info
from .measure import LatencyStats, Phases, measure, percentile, time_calls
from .report import ProfileReport

log = logging.getLogger(__name__)

__all__ = [
    "LatencyStats",
    "Phases",
    "ProfileReport",
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
) -> ProfileReport:
    """Measure an artifact; writes ``profile.json`` (default: inside the artifact folder)."""
    import edgeformer
    from edgeformer.runtime import load_artifact

    art = load_artifact(path)
    if threads is not None:
        art.profile.options.threads = threads
    inputs = art.example_inputs()
    measurement = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds, "cooldown_s": cooldown_s}
    notes: list[str] = []
    remote_info = None
    if remote:
        profile_remote = getattr(art.target, "profile_remote", None)
        if profile_remote is None:
            from edgeformer.errors import UserError

            raise UserError(
                f"remote profiling is not available for {art.target.name} artifacts",
                "compile with a TVM profile (e.g. --profile rpi4-tvm) to profile over RPC",
            )
        result = profile_remote(
            art.path,
            art.manifest,
            art.profile,
            tracker=remote,
            key=key or (art.profile.remote.key if art.profile.remote else ""),
            inputs=inputs,
            min_runs=min_runs,
            min_seconds=min_seconds,
            warmup=warmup,
        )
        phases, settings, machine, remote_info = (
            result["phases"],
            result["settings"],
            result["machine"],
            result["remote"],
        )
        notes += result.get("notes", [])
        op_profile = result.get("ops")
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
                op_profile = art.target.profile_ops(art.path, art.manifest, art.profile, inputs, ops_runs).to_dict()
            except NotImplementedError as err:
                notes.append(str(err))
    budget_ms = art.profile.budget.latency_ms
    report = ProfileReport(
        artifact={
            "path": str(art.path),
            "model": art.manifest.model.get("name", "?"),
            "target": art.target.name,
            "profile": art.profile.name,
            "ir_hash": art.manifest.ir_hash,
            "cache_key": art.manifest.cache_key,
        },
        settings=settings,
        machine=machine,
        measurement=measurement,
        load_ms=phases.load_ms,
        first_inference_ms=phases.first_inference_ms,
        warmup_ms=phases.warmup_ms,
        latency=phases.warm.to_dict(),
        ops=op_profile,
        budget={"latency_ms": budget_ms, "met": phases.warm.median_ms <= budget_ms} if budget_ms else None,
        remote=remote_info,
        kind="remote" if remote else "local",
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        edgeformer_version=edgeformer.__version__,
        notes=notes,
    )
    report.write(Path(output) if output else art.path / "profile.json")
    return report
