"""Profiler: run counts and durations, statistics, profile.json schema, per-op breakdown."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from edgeformer.compiler import compile
from edgeformer.manifest import schema
from edgeformer.profiling import BudgetCheck, LatencyStats, measure, percentile, profile_artifact, time_calls
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
