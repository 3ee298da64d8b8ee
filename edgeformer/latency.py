"""Latency measurement per docs/measurement.md: the ground-floor statistics every report uses.

Load time, first (cold) inference, warm-up runs reported apart, then timed runs until BOTH a
minimum count and a minimum duration are reached.  Raw samples are kept; the statistics are
median, p90, p99, min, mean and std of per-call wall time.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeformer.errors import UserError


@dataclass
class LatencyStats:
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float
    total_s: float
    statistic: str = "per-call wall time (time.perf_counter), one inference per sample"
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_samples(cls, samples_ms: list[float], statistic: str | None = None) -> LatencyStats:
        s = sorted(samples_ms)
        if not s:
            raise ValueError("no samples")
        kw = {"statistic": statistic} if statistic else {}
        return cls(
            runs=len(s),
            median_ms=statistics.median(s),
            p90_ms=percentile(s, 90),
            p99_ms=percentile(s, 99),
            min_ms=s[0],
            max_ms=s[-1],
            mean_ms=statistics.fmean(s),
            std_ms=statistics.pstdev(s) if len(s) > 1 else 0.0,
            total_s=sum(s) / 1e3,
            samples_ms=list(samples_ms),
            **kw,
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Phases:
    load_ms: float
    first_inference_ms: float
    warmup_ms: list[float]
    warm: LatencyStats
    cooldown_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def check_settings(
    *,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    warmup: int = 1,
    cooldown_s: float = 0.0,
    ops_runs: int = 10,
    threads: int | None = None,
) -> None:
    """Refuse a measurement setting that cannot work, before anything is loaded or timed."""
    checks = (
        ("--runs", "min_runs", min_runs, 1, "at least 1"),
        ("--min-seconds", "min_seconds", min_seconds, 0, "0 or more"),
        ("--warmup", "warmup", warmup, 0, "0 or more"),
        ("--cooldown", "cooldown_s", cooldown_s, 0, "0 or more"),
        ("--ops-runs", "ops_runs", ops_runs, 1, "at least 1"),
        ("--threads", "threads", threads, 0, "0 (the runtime's default) or more"),
    )
    for flag, name, value, minimum, wanted in checks:
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value) or value < minimum:
            raise UserError(f"{flag} ({name}) must be {wanted}, got {value:g}", f"pass {flag} {minimum} or more")


def check_output(output: str | Path | None, flag: str = "-o") -> Path | None:
    """The report path, refused when it is a folder or its folder cannot be created or written.

    Missing parent folders are created when the report is written (as ``compile -o`` does).
    """
    if output is None:
        return None
    path = Path(output)
    if path.is_dir() or str(output).endswith(("/", os.sep)):
        raise UserError(f"{flag} {output} is a folder", f"give {flag} a file path, e.g. {path / 'profile.json'}")
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create folder {path.parent}: {existing} is a file", f"choose another path for {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: folder {existing} is not writable", f"choose a writable path for {flag}")
    return path


def time_calls(
    fn: Callable[[], object], *, min_runs: int, min_seconds: float, max_runs: int | None = None
) -> list[float]:
    """Call ``fn`` until both ``min_runs`` calls and ``min_seconds`` have passed; ms per call."""
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if max_runs and len(samples) >= max_runs:
            break
    return samples


def measure(
    load: Callable[[], object],
    run: Callable[[object], object],
    *,
    warmup: int = 1,
    min_runs: int = 50,
    min_seconds: float = 1.0,
    max_runs: int | None = None,
    cooldown_s: float = 0.0,
) -> tuple[object, Phases]:
    """Time ``load()``, the first ``run(loaded)``, ``warmup`` more runs, then the warm runs."""
    t0 = time.perf_counter()
    loaded = load()
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    run(loaded)
    first_ms = (time.perf_counter() - t0) * 1e3
    warm_samples = time_calls(lambda: run(loaded), min_runs=warmup, min_seconds=0.0) if warmup else []
    if cooldown_s:
        time.sleep(cooldown_s)
    samples = time_calls(lambda: run(loaded), min_runs=max(1, min_runs), min_seconds=min_seconds, max_runs=max_runs)
    return loaded, Phases(load_ms, first_ms, warm_samples, LatencyStats.from_samples(samples), cooldown_s)


# Sleep before each block of ``alternate``: runtimes keep their worker threads spinning for a while
# after a call, and without the pause the previous candidate's spinning pool steals the cores from
# the next (measured on 2 cores: ORT right after TVM read 31.6 ms instead of 9 ms; benchmarks/).
SETTLE_S = 0.1


def alternate(
    candidates: Mapping[str, Callable[[], object]],
    *,
    min_runs: int,
    min_seconds: float,
    blocks: int = 10,
    settle_s: float = SETTLE_S,
) -> dict[str, list[float]]:
    """Time several candidates in alternating blocks, so machine noise hits all of them alike.

    Call-by-call interleaving is wrong for runtimes with spinning thread pools (above); each block
    instead runs one candidate alone: ``settle_s`` of sleep, one untimed call, then timed calls,
    about ``1/blocks`` of the wanted runs and seconds.  The order reverses every round.  Ends when
    every candidate has both ``min_runs`` samples and ``min_seconds`` of timed calls (all run in
    every round, so the faster ones end with more samples).  Returns
    per-call milliseconds per candidate.
    """
    blocks = max(1, blocks)
    block_runs = max(1, math.ceil(min_runs / blocks))
    block_s = min_seconds / blocks
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}

    def done(name: str) -> bool:
        s = samples[name]
        return len(s) >= min_runs and sum(s) / 1e3 >= min_seconds

    r = 0
    while not all(done(n) for n in names):
        for name in names if r % 2 == 0 else names[::-1]:  # every candidate every round: alike
            fn = candidates[name]
            if settle_s:
                time.sleep(settle_s)
            fn()
            start, n = time.perf_counter(), 0
            while n < block_runs or time.perf_counter() - start < block_s:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
                n += 1
        r += 1
    return samples
