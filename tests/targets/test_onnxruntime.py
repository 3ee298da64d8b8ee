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
