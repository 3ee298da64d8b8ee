"""ONNX Runtime target: IR → model.onnx → model.ort, deterministic bytes, levels, runner, per-op sources."""

from __future__ import annotations

import hashlib
import platform

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UnsupportedOpError
from edgeformer.targets import get_target
from edgeformer.targets.onnxruntime import optimize_for_host


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(32, 32, 1), nn.GELU())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class Lgamma(nn.Module):
    def forward(self, x):
        return torch.lgamma(torch.sigmoid(x) + 1)


class WithLgamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = Lgamma()

    def forward(self, x):
        return self.head(self.body(x))


def _graph(model=None, shape=(1, 3, 16, 16)):
    torch.manual_seed(0)
    return ir.export((model or Net()).eval(), (torch.randn(*shape),), name="net")


def _profile(level: str = "all"):
    profile = load_profile("host-ort")
    profile.options.optimization_level = level
    return profile


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    graph, profile = _graph(), _profile()
    out = tmp_path_factory.mktemp("ort")
    return graph, profile, out, get_target("onnxruntime").compile(graph, profile, out)


def test_compile_writes_the_ort_model_and_the_portable_onnx(compiled):
    graph, _, out, result = compiled
    assert result.files == ["model.ort", "model.onnx"]
    assert (out / "model.ort").stat().st_size > 0
    model = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in model.graph.input] == list(graph.input_names)
    d = result.details
    assert d["ort_optimization_level"] == "all" and d["ort_format_portable"] is False
    assert d["onnx_nodes"] == len(model.graph.node) and sum(d["onnx_op_histogram"].values()) == d["onnx_nodes"]


def test_runner_matches_pytorch_and_reports_its_settings(compiled):
    graph, profile, out, _ = compiled
    runner = get_target("onnxruntime").load(Artifact(out, None, profile))
    got = runner.run([t.numpy() for t in graph.example_inputs])
    np.testing.assert_allclose(got[0], ir.run(graph, graph.example_inputs)[0].numpy(), atol=1e-5)
    s = runner.settings()
    assert s["runtime"] == "onnxruntime" and s["model_file"] == "model.ort"
    assert s["graph_optimization_level"] == "all" and s["execution_provider"] == "CPUExecutionProvider"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="NCHWc kernels are x86-64 only")
def test_level_all_is_cpu_specific_and_extended_is_portable(compiled, tmp_path):
    _, _, out, _ = compiled
    domains = {}
    for level in ("all", "extended"):
        dst = tmp_path / f"{level}.onnx"
        optimize_for_host(out / "model.onnx", dst, level, fmt="ONNX")
        domains[level] = {n.domain for n in onnx.load(str(dst)).graph.node}
    assert "com.microsoft.nchwc" in domains["all"]
    assert "com.microsoft.nchwc" not in domains["extended"]
    (tmp_path / "ext").mkdir()
    result = get_target("onnxruntime").compile(_graph(), _profile("extended"), tmp_path / "ext")
    assert result.details["ort_format_portable"] is True and "ort_blocked_layout" not in result.details


def test_per_op_profile_maps_nodes_to_source_modules(compiled):
    graph, profile, out, _ = compiled
    prof = get_target("onnxruntime").profile_ops(
        Artifact(out, None, profile), [t.numpy() for t in graph.example_inputs], 3
    )
    assert prof.runtime == "onnxruntime" and prof.runs == 3
    sources = {o.source for o in prof.ops if o.source}
    assert sources & {"stem", "block.0", "block.1", "head"}, sources


def test_unsupported_op_names_the_op_and_its_module(tmp_path):
    with pytest.raises(UnsupportedOpError) as err:
        get_target("onnxruntime").compile(_graph(WithLgamma(), (1, 4)), _profile(), tmp_path)
    msg = str(err.value)
    assert "lgamma" in msg and "head (Lgamma)" in msg and err.value.exit_code == 2


# ------------------------------------------------------------------ model.ort bytes (issue 11, item 9)


def test_same_graph_gives_byte_identical_model_ort_in_another_folder(compiled, tmp_path):
    graph, profile, out, _ = compiled
    other = tmp_path / ("x" * 37)
    other.mkdir()
    get_target("onnxruntime").compile(graph, profile, other)
    assert _sha(other / "model.onnx") == _sha(out / "model.onnx")
    assert _sha(other / "model.ort") == _sha(out / "model.ort")


@pytest.mark.parametrize("level", ["all", "extended"])
def test_model_ort_bytes_do_not_depend_on_the_output_folder_or_the_environment(level, tmp_path, monkeypatch):
    from edgeformer.compiler import compile as compile_model

    def build(out):
        torch.manual_seed(0)
        return compile_model(Net(), _profile(level), out, input_shapes=[(1, 3, 16, 16)], use_cache=False)

    short, long = tmp_path / "a", tmp_path / ("artifact-with-a-much-longer-name" * 2)
    build(short)
    monkeypatch.setenv("EDGEFORMER_TEST_UNRELATED", "x" * 20_000)  # shifts the process's memory layout
    build(long)
    assert _sha(short / "model.onnx") == _sha(long / "model.onnx")
    assert _sha(short / "model.ort") == _sha(long / "model.ort")


# ---------------------------------------------------------- model.ort is CPU-specific (issue 11, item 18)


def test_description_does_not_call_model_ort_mobile_and_says_when_it_is_cpu_specific():
    description = get_target("onnxruntime").description
    assert "mobile" not in description
    assert "model.ort" in description and "extended" in description


def _ort_node_domains(path) -> set[str]:
    """The domains of the nodes in an ORT-format file, read with ORT's own flatbuffer bindings (the
    file's opset imports list every domain ORT knows, so its bytes always contain "nchwc")."""
    import onnxruntime.tools.ort_format_model  # noqa: F401 - puts the bindings on sys.path
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(path.read_bytes(), 0).Model().Graph()
    return {(graph.Nodes(i).Domain() or b"").decode() for i in range(graph.NodesLength())}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="NCHWc kernels are x86-64 only")
def test_level_all_details_count_the_nchwc_nodes_and_say_the_file_is_cpu_specific(compiled):
    _, _, out, result = compiled
    d = result.details
    assert d["ort_format_portable"] is False and d["ort_nchwc_nodes"] > 0
    assert "NCHWc" in d["ort_cpu_specific"] and "extended" in d["ort_cpu_specific"]
    assert str(d["ort_nchwc_nodes"]) in d["ort_cpu_specific"]
    assert "com.microsoft.nchwc" in _ort_node_domains(out / "model.ort")


def test_android_arm64_ort_profile_ships_a_portable_model_ort_checked_here(tmp_path):
    from edgeformer.compiler import compile as compile_model

    profile = load_profile("android-arm64-ort")
    assert profile.target == "onnxruntime" and profile.options.optimization_level == "extended"
    assert "arm" in profile.description.lower() and "portable" in profile.description
    torch.manual_seed(0)
    report = compile_model(Net(), profile, tmp_path / "art", input_shapes=[(1, 3, 16, 16)], use_cache=False)
    d = report.manifest.target_details
    assert d["ort_format_portable"] is True and d["ort_nchwc_nodes"] == 0 and "ort_cpu_specific" not in d
    assert "com.microsoft.nchwc" not in _ort_node_domains(tmp_path / "art" / "model.ort")
    assert report.manifest.numerics.status == "passed"
    dst = tmp_path / "optimized.onnx"  # the same graph as ONNX: no NCHWc node either
    optimize_for_host(tmp_path / "art" / "model.onnx", dst, "extended", fmt="ONNX")
    assert "com.microsoft.nchwc" not in {n.domain for n in onnx.load(str(dst)).graph.node}


# ------------------------------------------------------------- per-op profiles (issue 11, item 6)


def _real_trace(compiled, tmp_path, runs: int = 5):
    """A real ORT profiler trace of ``runs`` runs of the tiny model."""
    import json

    from edgeformer.targets.onnxruntime import OrtRunner

    graph, profile, out, _ = compiled
    runner = OrtRunner(out / "model.ort", profile.options, profile_dir=str(tmp_path))
    inputs = [t.numpy() for t in graph.example_inputs]
    for _ in range(runs):
        runner.run(inputs)
    return json.loads(open(runner.session.end_profiling()).read())


def _with_slow_run(trace: list[dict], node: str, slow_us: float) -> list[dict]:
    """``trace`` plus a copy of its last run in which ``node``'s kernel takes ``slow_us``."""
    import copy

    last = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"][-1]
    end = max(e["ts"] + e.get("dur", 0) for e in trace)
    shift = end + 10 - last["ts"]
    extra, grow = [], 0
    for e in sorted(trace, key=lambda e: e["ts"]):
        if not (last["ts"] <= e["ts"] <= last["ts"] + last["dur"]) or e is last:
            continue
        e = copy.deepcopy(e)
        e["ts"] += shift + grow
        if e.get("cat") == "Node" and e["name"] == f"{node}_kernel_time":
            grow += slow_us - e["dur"]
            e["dur"] = slow_us
        extra.append(e)
    run = dict(copy.deepcopy(last), ts=last["ts"] + shift, dur=last["dur"] + grow)
    return [*trace, run, *extra]


def test_op_profile_takes_each_node_s_median_so_one_outlier_run_does_not_dominate(compiled, tmp_path):
    from edgeformer.targets.onnxruntime.profiler import op_profile

    trace = _real_trace(compiled, tmp_path, runs=5)
    kernels = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    node = max(kernels, key=lambda e: e["dur"])["name"][: -len("_kernel_time")]
    normal = sorted(e["dur"] for e in kernels if e["name"] == f"{node}_kernel_time")
    assert len(normal) == 5
    slowed = op_profile(_with_slow_run(trace, node, 100 * normal[-1]), 6, {})
    assert slowed.runs == 6
    # five normal runs and one 100x outlier: the median lies between the 3rd and 4th normal run
    got_us = {o.name: o.time_ms for o in slowed.ops}[node] * 1e3
    assert normal[2] <= got_us <= normal[3], (got_us, normal)
    model_runs = sorted(e["dur"] for e in trace if e.get("name") == "model_run")
    assert model_runs[2] <= slowed.end_to_end_ms * 1e3 <= model_runs[3], (slowed.end_to_end_ms, model_runs)
    assert any("median" in note for note in slowed.notes)
    assert op_profile(trace, 5, {}).ops  # the real trace alone aggregates too


def test_profile_ops_warms_up_before_the_counted_runs(compiled, monkeypatch):
    from edgeformer.targets.onnxruntime import OrtRunner

    graph, profile, out, _ = compiled
    calls = []
    real = OrtRunner.run
    monkeypatch.setattr(OrtRunner, "run", lambda self, inputs: calls.append(1) or real(self, inputs))
    inputs = [t.numpy() for t in graph.example_inputs]
    prof = get_target("onnxruntime").profile_ops(Artifact(out, None, profile), inputs, 4)
    assert prof.runs == 4 and len(calls) >= 4 + 3
