"""Latency measurement per docs/measurement.md: the ground-floor statistics every report uses.

Load time, first (cold) inference, warm-up runs reported apart, then timed runs until BOTH a
minimum count and a minimum duration are reached.  Raw samples are kept; the statistics are
median, p90, p99, min, mean and std of per-call wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


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
