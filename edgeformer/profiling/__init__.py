"""Latency profiling of compiled artifacts: local, per-op, remote over the TVM RPC tracker, and
several artifacts side by side.

Every setting is checked before any work (a bad one is a one-line :class:`UserError`), and the
runtime's Python SDK is imported before the load timer starts: ``load_ms`` is the runtime loading
the model, not Python importing the runtime (ExecuTorch's import alone is seconds).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import edgeformer
from edgeformer.errors import UserError, first_line
from edgeformer.latency import (
    LatencyStats,
    Phases,
    alternate,
    check_output,
    check_settings,
    measure,
    percentile,
    time_calls,
)
from edgeformer.machine import MachineInfo, machine_info
from edgeformer.runtime import LoadedArtifact, load_artifact
from edgeformer.targets import OpProfile

from .report import ArtifactRef, BudgetCheck, LatencyReport, MeasurementSettings

log = logging.getLogger(__name__)

__all__ = [
    "PROFILER_OVERHEAD_RATIO",
    "ArtifactRef",
    "BudgetCheck",
    "LatencyReport",
    "LatencyStats",
    "MachineInfo",
    "MeasurementSettings",
    "Phases",
    "alternate",
    "check_output",
    "check_settings",
    "machine_info",
    "measure",
    "percentile",
    "profile_artifact",
    "profile_artifacts",
    "profiler_overhead_note",
    "time_calls",
]

# When the runtime profiler's runs take this many times the measured median or more, the per-op
# table is a picture of the profiler, and the report says so.  1.5×: the profiled runs are ~10
# calls and the measured median is of ≥ 50, so on a shared machine the two differ by up to ~20-30%
# from noise alone; 1.5× is beyond that, while the profiler's own cost on small models is 2-10×
# (ORT's per-node timers on a 0.1 ms model).
PROFILER_OVERHEAD_RATIO = 1.5


def profiler_overhead_note(ops: OpProfile | None, latency: LatencyStats) -> str | None:
    """A note when the profiled runs were far slower than the measured median, else None."""
    if ops is None or latency.median_ms <= 0 or ops.end_to_end_ms <= 0:
        return None
    ratio = ops.end_to_end_ms / latency.median_ms
    if ratio <= PROFILER_OVERHEAD_RATIO:
        return None
    return (
        f"the profiled runs took {ops.end_to_end_ms:.3f} ms, {ratio:.1f}× the measured median "
        f"{latency.median_ms:.3f} ms: profiler overhead; per-op shares are of the profiled run"
    )


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
    frame_period_ms: float | None = None,
    state: str | Path | None = None,
) -> LatencyReport:
    """Measure an artifact; writes ``profile.json`` (default: inside the artifact folder).

    A streaming artifact (``compile --streaming``) is timed step by step with its state carried,
    and the report's ``streaming`` block gives the per-frame latency, the real-time factor at the
    frame period (the manifest's, else ``frame_period_ms``, else 10 ms) and the cost of a reset.

    ``report.path`` is where it was written.
    """
    check_settings(
        min_runs=min_runs,
        min_seconds=min_seconds,
        warmup=warmup,
        cooldown_s=cooldown_s,
        ops_runs=ops_runs,
        threads=threads,
    )
    out = check_output(output)
    art = _load(path, threads)
    start = _load_state(art, state)
    inputs = art.example_inputs()
    measurement = MeasurementSettings(warmup, min_runs, min_seconds, cooldown_s)
    notes: list[str] = []
    remote_info = None
    stream_info = None
    art.target.import_sdk()  # before any timer: load_ms is not the Python import of the runtime
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
    elif art.manifest.streaming:
        runner, phases, stream_info = _measure_stream(
            art, warmup, min_runs, min_seconds, cooldown_s, frame_period_ms, start
        )
        settings, machine = runner.runner.settings(), machine_info()
        runner.close()
        notes.append(
            "a streaming artifact: each timed call is one step (a frame in, the logits so far and the "
            "new state out), the state carried from step to step"
        )
        op_profile = _profile_ops(art, inputs, ops, ops_runs, notes)
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
        op_profile = _profile_ops(art, inputs, ops, ops_runs, notes)
    report = _report(art, phases, settings, machine, measurement, op_profile, notes, remote_info)
    report.streaming = stream_info
    report.write(out or art.path / "profile.json")
    return report


DEFAULT_FRAME_PERIOD_MS = 10.0  # the real-time factor's period when neither the manifest nor the caller gives one


def _load_state(art: LoadedArtifact, state: str | Path | None) -> dict | None:
    """The ``--state`` arrays, refused unless the artifact streams and the file is a readable .npz."""
    if state is None:
        return None
    if not art.manifest.streaming:
        raise UserError(
            f"--state: {art.path} is not a streaming artifact", "compile it with --streaming, or drop --state"
        )
    try:
        with np.load(state, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise UserError(
            f"--state {state} is not a readable .npz ({first_line(err)})", "pass a numpy .npz file"
        ) from err
    return arrays


def _measure_stream(art: LoadedArtifact, warmup, min_runs, min_seconds, cooldown_s, frame_period_ms, start=None):
    """Time one step per call with the state carried; then ``reset()`` on its own."""
    block = art.manifest.streaming
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((64, *block["frame"]["shape"])).astype(np.float32)
    count = [0]

    def push(sr):
        sr.push(frames[count[0] % len(frames)])
        count[0] += 1

    runner, phases = measure(
        lambda: art.streaming_runner(start),
        push,
        warmup=warmup,
        min_runs=min_runs,
        min_seconds=min_seconds,
        cooldown_s=cooldown_s,
    )
    resets = []
    for _ in range(200):
        t0 = time.perf_counter()
        runner.reset()
        resets.append((time.perf_counter() - t0) * 1e3)
    period, origin = block.get("frame_period_ms"), "manifest"
    if period is None:
        period = frame_period_ms or DEFAULT_FRAME_PERIOD_MS
        origin = (
            "--frame-period-ms"
            if frame_period_ms
            else f"assumed ({DEFAULT_FRAME_PERIOD_MS:g} ms; the manifest has none)"
        )
    w = phases.warm
    info = {
        "frame_ms": {"median": w.median_ms, "p90": w.p90_ms, "p99": w.p99_ms},
        "frames": w.runs,
        "frame_period_ms": period,
        "frame_period_origin": origin,
        "real_time_factor": w.median_ms / period,
        "reset_ms": float(np.median(resets)),
        "reset": "StreamingRunner.reset(): every state back to its initial value (host arrays; no runtime call)",
        "delay_frames": block["delay_frames"],
    }
    return runner, phases, info


def profile_artifacts(
    paths: Sequence[str | Path],
    *,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    warmup: int = 1,
    cooldown_s: float = 0.0,
    ops: bool = False,
    ops_runs: int = 10,
    threads: int | None = None,
) -> list[LatencyReport]:
    """Measure several artifacts side by side on this machine; writes each ``DIR/profile.json``.

    Each is loaded (timed) and run once (timed) and ``warmup`` times, one after the other; then all
    are timed in alternating blocks (:func:`edgeformer.latency.alternate`) until each has
    ``min_runs`` runs and ``min_seconds`` of them, so a noisy moment hits all of them alike.
    """
    check_settings(
        min_runs=min_runs,
        min_seconds=min_seconds,
        warmup=warmup,
        cooldown_s=cooldown_s,
        ops_runs=ops_runs,
        threads=threads,
    )
    seen: dict[Path, str] = {}
    for p in paths:
        real = Path(p).resolve()
        if real in seen:
            raise UserError(f"artifact {p} is given twice (as {seen[real]} and {p})", "give each folder once")
        seen[real] = str(p)
    arts = [_load(p, threads) for p in paths]
    inputs = [a.example_inputs() for a in arts]
    for a, x in zip(arts, inputs):
        a.check_inputs(x)
        reason = a.target.can_run_here(a.profile)
        if reason:
            raise UserError(f"{a.path} ({a.target.name}) cannot run on this machine: {reason}", "profile it alone")
    runners, cold = [], []  # cold: (load_ms, first_ms, warm-up ms) per artifact
    try:
        for a, x in zip(arts, inputs):
            a.target.import_sdk()  # before the load timer, as profile_artifact does
            t0 = time.perf_counter()
            runners.append(a.runner())
            load_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            runners[-1].run(x)
            first_ms = (time.perf_counter() - t0) * 1e3
            run = runners[-1].run
            warm = time_calls(lambda run=run, x=x: run(x), min_runs=warmup, min_seconds=0.0) if warmup else []
            cold.append((load_ms, first_ms, warm))
        if cooldown_s:
            time.sleep(cooldown_s)
        names = [str(a.path) for a in arts]
        samples = alternate(
            {n: (lambda run=r.run, x=x: run(x)) for n, r, x in zip(names, runners, inputs)},
            min_runs=min_runs,
            min_seconds=min_seconds,
        )
        settings = [r.settings() for r in runners]
    finally:
        for r in runners:
            r.close()
    machine = machine_info()
    measurement = MeasurementSettings(warmup, min_runs, min_seconds, cooldown_s)
    reports = []
    for a, x, n, (load_ms, first_ms, warm), s in zip(arts, inputs, names, cold, settings):
        phases = Phases(load_ms, first_ms, warm, LatencyStats.from_samples(samples[n]), cooldown_s)
        others = ", ".join(str(b.path) for b in arts if b is not a)
        notes = [f"timed in alternating blocks with {others} (edgeformer profile with several folders)"]
        op_profile = _profile_ops(a, x, ops, ops_runs, notes)
        report = _report(a, phases, s, machine, measurement, op_profile, notes, None)
        report.write(a.path / "profile.json")
        reports.append(report)
    return reports


def _load(path: str | Path, threads: int | None) -> LoadedArtifact:
    art = load_artifact(path)
    if threads is not None:
        art.profile.options.threads = threads
    return art


def _profile_ops(art: LoadedArtifact, inputs, ops: bool, ops_runs: int, notes: list[str]) -> OpProfile | None:
    if not ops:
        return None
    try:
        return art.target.profile_ops(art, inputs, ops_runs)
    except NotImplementedError as err:
        notes.append(str(err))
        return None


def _report(art, phases: Phases, settings, machine, measurement, op_profile, notes, remote_info) -> LatencyReport:
    overhead = profiler_overhead_note(op_profile, phases.warm)
    if overhead:
        notes.append(overhead)
    budget_ms = art.profile.budget.latency_ms
    return LatencyReport(
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
        kind="remote" if remote_info else "local",
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        edgeformer_version=edgeformer.__version__,
        notes=notes,
    )
