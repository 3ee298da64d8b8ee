"""Profiler: run counts and durations, statistics, profile.json schema, per-op breakdown."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jsonschema
import pytest

from edgeformer.compiler import compile
from edgeformer.machine import machine_info
from edgeformer.manifest import schema
from edgeformer.profiling import (
    PROFILER_OVERHEAD_RATIO,
    ArtifactRef,
    BudgetCheck,
    LatencyReport,
    LatencyStats,
    MeasurementSettings,
    measure,
    percentile,
    profile_artifact,
    profiler_overhead_note,
    time_calls,
)
from edgeformer.report.text import profile_table
from edgeformer.targets import OpProfile, OpTime


def test_timed_runs_reach_both_minimum_count_and_duration():
    calls = []
    samples = time_calls(lambda: calls.append(1), min_runs=7, min_seconds=0.0)
    assert len(samples) == 7
    t0 = time.perf_counter()
    samples = time_calls(lambda: time.sleep(0.002), min_runs=3, min_seconds=0.1)
    assert time.perf_counter() - t0 >= 0.1 and len(samples) >= 3 and len(samples) > 10


def test_statistics_are_computed_from_the_raw_samples():
    s = LatencyStats.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median_ms, s.min_ms, s.max_ms, s.mean_ms) == (3.0, 1.0, 5.0, 3.0)
    assert s.p90_ms == pytest.approx(4.6) and s.p99_ms == pytest.approx(4.96)
    assert s.std_ms == pytest.approx(2**0.5)
    assert s.samples_ms == [5.0, 1.0, 3.0, 2.0, 4.0] and s.runs == 5
    assert percentile([1.0, 2.0], 50) == 1.5


def test_measure_separates_load_first_warmup_and_warm_runs():
    calls = {"load": 0, "run": 0}

    def load():
        calls["load"] += 1
        time.sleep(0.02)
        return "runner"

    def run(r):
        assert r == "runner"
        calls["run"] += 1
        time.sleep(0.03 if calls["run"] == 1 else 0.001)  # a slow cold first call

    _, phases = measure(load, run, warmup=2, min_runs=5, min_seconds=0.0)
    assert calls == {"load": 1, "run": 1 + 2 + 5}
    assert phases.load_ms >= 20 and phases.first_inference_ms >= 30
    assert len(phases.warmup_ms) == 2 and phases.warm.runs == 5
    assert phases.warm.median_ms < phases.first_inference_ms


def test_op_profile_sorts_ops_and_reports_the_unexplained_remainder():
    ops = [OpTime("a", "Conv", 1.0, 0), OpTime("b", "Add", 3.0, 0, device="CPU"), OpTime("c", "Conv", 2.0, 0)]
    p = OpProfile.build("rt", 4, 10.0, ops)
    assert [o.name for o in p.ops] == ["b", "c", "a"]
    assert p.explained_ms == 6.0 and p.unexplained_ms == 4.0 and p.unexplained_share == pytest.approx(0.4)
    assert p.ops[0].share == pytest.approx(0.3)
    assert p.by_type == {"Add": 3.0, "Conv": 3.0} and p.by_device == {"CPU": 1}


def test_profile_report_is_written_and_validates_against_the_schema(user_models):
    compile("mymodels:tiny", "host-ort", user_models / "art", input_shapes=[(1, 3, 16, 16)])
    report = profile_artifact(user_models / "art", min_runs=5, min_seconds=0.0, ops=True, ops_runs=3)
    data = json.loads((user_models / "art" / "profile.json").read_text())
    jsonschema.validate(data, schema("profile"))
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["latency"]["runs"] >= 5 and len(data["latency"]["samples_ms"]) == data["latency"]["runs"]
    assert data["load_ms"] > 0 and data["first_inference_ms"] > 0
    assert data["machine"]["cpu_model"] and data["machine"]["logical_cores"] >= 1
    assert data["settings"]["execution_provider"] == "CPUExecutionProvider"
    ops = data["ops"]
    assert ops["runtime"] == "onnxruntime" and len(ops["ops"]) >= 2
    times = [o["time_ms"] for o in ops["ops"]]
    assert times == sorted(times, reverse=True)
    assert ops["unexplained_ms"] == pytest.approx(ops["end_to_end_ms"] - sum(times), abs=1e-6)
    assert any(o.get("source") for o in ops["ops"]), "no op mapped back to its source module"


def test_latency_budget_is_reported(user_models, tmp_path):
    prof = tmp_path / "budget.toml"
    prof.write_text('name = "b"\ntarget = "onnxruntime"\n[budget]\nlatency_ms = 10000\n')
    compile("mymodels:tiny", str(prof), user_models / "art", input_shapes=[(1, 3, 16, 16)])
    report = profile_artifact(user_models / "art", min_runs=3, min_seconds=0.0, output=tmp_path / "p.json")
    assert report.budget == BudgetCheck(latency_ms=10000.0, met=True)
    assert report.to_dict()["budget"] == {"latency_ms": 10000.0, "met": True}
    assert (tmp_path / "p.json").is_file()


# Fresh interpreters: what a user's first `edgeformer profile` pays.  The import is timed after
# edgeformer.profiling is loaded (torch with it), as profile_artifact would find things.
_PROFILE = (
    "import json, sys\n"
    "from edgeformer.profiling import profile_artifact\n"
    "r = profile_artifact(sys.argv[1], min_runs=3, min_seconds=0.0, output=sys.argv[2])\n"
    "print(json.dumps({'load_ms': r.load_ms}))\n"
)
_IMPORT = (
    "import importlib, sys, time\n"
    "import edgeformer.profiling\n"
    "t0 = time.perf_counter()\n"
    "importlib.import_module(sys.argv[1])\n"
    "print((time.perf_counter() - t0) * 1e3)\n"
)


def test_load_ms_does_not_include_the_runtime_import(user_models):
    compile("mymodels:tiny", "host-executorch", user_models / "et", input_shapes=[(1, 3, 8, 8)])
    run = [sys.executable, "-c", _PROFILE, str(user_models / "et"), str(user_models / "p.json")]
    profiled = subprocess.run(run, capture_output=True, text=True)
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    load_ms = json.loads(profiled.stdout.strip().splitlines()[-1])["load_ms"]
    # After the profile run, so the files are in the page cache: the import is at its cheapest.
    imported = subprocess.run([sys.executable, "-c", _IMPORT, "executorch.runtime"], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-2000:]
    import_ms = float(imported.stdout.strip().splitlines()[-1])
    assert load_ms < import_ms / 2, f"load_ms {load_ms:.1f} vs importing executorch.runtime {import_ms:.1f} ms"


def _report(median_ms: float, end_to_end_ms: float, notes=()):
    ops = OpProfile.build("onnxruntime", 10, end_to_end_ms, [OpTime("conv", "Conv", end_to_end_ms / 4, 0)])
    return LatencyReport(
        artifact=ArtifactRef("art", "tiny", "onnxruntime", "host-ort"),
        settings={},
        machine=machine_info(),
        measurement=MeasurementSettings(1, 5, 0.0),
        load_ms=1.0,
        first_inference_ms=1.0,
        warmup_ms=[],
        latency=LatencyStats.from_samples([median_ms] * 5),
        ops=ops,
        notes=list(notes),
    )


def _render(report) -> str:
    from rich.console import Console

    con = Console(record=True, width=200)
    profile_table(report, con)
    return con.export_text()


def test_a_profiled_run_far_slower_than_the_median_is_called_profiler_overhead():
    slow = profiler_overhead_note(_report(0.1, 0.4).ops, _report(0.1, 0.4).latency)
    assert slow == (
        "the profiled runs took 0.400 ms, 4.0× the measured median 0.100 ms: profiler overhead; "
        "per-op shares are of the profiled run"
    )
    assert profiler_overhead_note(_report(1.0, 1.2).ops, _report(1.0, 1.2).latency) is None  # within noise
    text = _render(_report(0.1, 0.4, [slow]))
    assert "not in any op: session/dispatch overhead and profiler cost" in text
    assert "runtime overhead between ops" not in text and "4.0× the measured median" in text
    assert "of the profiled run" in text  # the table title says what the shares are of


def test_the_profiler_overhead_note_follows_the_measured_ratio(user_models):
    compile("mymodels:tiny", "host-ort", user_models / "art", input_shapes=[(1, 3, 8, 8)])
    report = profile_artifact(user_models / "art", min_runs=20, min_seconds=0.0, ops=True, ops_runs=10)
    ratio = report.ops.end_to_end_ms / report.latency.median_ms
    noted = [n for n in report.notes if "profiler overhead" in n]
    assert bool(noted) == (ratio > PROFILER_OVERHEAD_RATIO), (ratio, report.notes)
