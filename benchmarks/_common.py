"""Shared helpers for side-by-side benchmarks: alternating A/B timing and result files."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(os.environ.get("EDGEFORMER_BENCH_DIR", Path(__file__).resolve().parent.parent / "bench-results"))


def alternate(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 10,
    per_round: int = 5,
    warmup: int = 3,
    settle_s: float = 0.1,
) -> dict[str, list[float]]:
    """Time every candidate in interleaved rounds so machine noise hits all of them alike.

    Each block starts after ``settle_s`` of sleep and one untimed call: runtimes keep their worker
    threads spinning for a while after a call, and without the pause the previous candidate's
    spinning pool steals the cores from the next one (seen here: ORT right after TVM read 31.6 ms
    instead of 9 ms).  Returns per-call milliseconds per candidate (rounds × per_round each).
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]  # alternate the order too
        for name in order:
            fn = candidates[name]
            time.sleep(settle_s)
            fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, dict]:
    out = {}
    for name, s in samples.items():
        s_sorted = sorted(s)
        out[name] = {
            "median_ms": statistics.median(s),
            "p90_ms": s_sorted[int(0.9 * (len(s) - 1))],
            "min_ms": s_sorted[0],
            "mean_ms": statistics.fmean(s),
            "runs": len(s),
        }
    return out


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path
