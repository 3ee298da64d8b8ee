"""ONNX Runtime fp16: model.onnx computes in fp16 with fp32 I/O, the manifest says what each file
really computes in, and the compile's numerics check passes at fp16 tolerances (host-ort-fp16)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.compiler import compile as compile_model
from edgeformer.device_profiles import load_profile
from edgeformer.targets import get_target
from edgeformer.targets.onnxruntime import OnnxRuntimeTarget


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.nn.functional.gelu(self.stem(x)).mean((2, 3))
        return self.head(self.norm(y))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _initializers(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in model.graph.initializer:
        name = TensorProto.DataType.Name(t.data_type)
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_fp16_is_a_precision_the_target_declares():
    assert "fp16" in OnnxRuntimeTarget.precisions and "fp32" in OnnxRuntimeTarget.precisions


def test_host_ort_fp16_profile_has_fp16_tolerances():
    p = load_profile("host-ort-fp16")
    assert (p.target, p.options.precision) == ("onnxruntime", "fp16")
    n = p.numerics
    # onnxruntime's fp16 op tests: atol 2.5e-3, rtol 1e-3; SNR > 20 dB end to end guarantees cos >= 0.995
    assert (n.atol, n.rtol, n.min_cosine) == (2.5e-3, 1e-3, 0.995)


def test_compile_with_host_ort_fp16_gives_an_fp16_artifact_with_fp32_io(tmp_path):
    torch.manual_seed(0)
    # force_approx: at 16×16 fp16 is slower than fp32 here, so the speed gate would ship the exact twin
    report = compile_model(
        Small(), "host-ort-fp16", tmp_path / "art", input_shapes=[(1, 3, 16, 16)], use_cache=False, force_approx=True
    )
    m = report.manifest
    a = m.approximation  # no data given: judged on random probe inputs, errors only
    assert a.shipped == "approximate" and a.accuracy["data"]["source"] == "random inputs"
    assert a.accuracy["cosine"] > 0.995 and a.accuracy.get("reference_top1") is None and a.speed["measured"]
    out = tmp_path / "art"
    assert m.profile.options.precision == "fp16"
    d = m.target_details
    assert d["onnx_compute_precision"] == "fp16" and d["io_precision"] == "fp32"

    model = onnx.load(str(out / "model.onnx"))
    counts = _initializers(model)
    assert counts.get("FLOAT16", 0) > 0 and counts.get("FLOAT", 0) == 0, counts
    assert d["onnx_initializers_by_precision"] == {"fp16": counts["FLOAT16"]}
    for value in [*model.graph.input, *model.graph.output]:  # the manifest's I/O: float32
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    assert [s.dtype for s in m.inputs] == ["float32"] and [s.dtype for s in m.outputs] == ["float32"]

    # what model.ort computes in, as read from the file, is what the manifest says
    by_precision = d["ort_nodes_by_precision"]
    assert set(by_precision) <= {"fp16", "fp32"} and sum(by_precision.values()) > 0
    expected = {frozenset({"fp16"}): "fp16", frozenset({"fp32"}): "fp32"}.get(
        frozenset(k for k, v in by_precision.items() if v), "mixed fp16/fp32"
    )
    assert d["compute_precision"] == expected
    if by_precision.get("fp32"):  # ops this ORT build has no fp16 kernel for are named
        assert sum(d["ort_fp32_ops"].values()) == by_precision["fp32"]

    n = m.numerics
    assert n.status == "passed", n.reason
    assert (n.atol, n.min_cosine) == (2.5e-3, 0.995)
    session = ort.InferenceSession(str(out / "model.ort"), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"]


def test_fp16_compile_is_deterministic(tmp_path):
    torch.manual_seed(0)
    graph = ir.export(Small().eval(), (torch.randn(1, 3, 16, 16),), name="small")
    profile = load_profile("host-ort-fp16")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        get_target("onnxruntime").compile(graph, profile, tmp_path / name)
    for f in ("model.onnx", "model.ort"):
        assert _sha(tmp_path / "a" / f) == _sha(tmp_path / "b" / f), f


def test_fp32_compile_says_it_computes_in_fp32(tmp_path):
    torch.manual_seed(0)
    graph = ir.export(Small().eval(), (torch.randn(1, 3, 16, 16),), name="small")
    d = get_target("onnxruntime").compile(graph, load_profile("host-ort"), tmp_path).details
    assert d["compute_precision"] == "fp32" and d["onnx_compute_precision"] == "fp32"
    assert set(d["ort_nodes_by_precision"]) == {"fp32"} and "ort_fp32_ops" not in d
    assert set(d["onnx_initializers_by_precision"]) == {"fp32"}


@pytest.mark.parametrize("name", ["poolformer_tiny", "efficientformer_tiny"])
def test_zoo_tiny_models_run_in_fp16_within_fp16_tolerance(name, tmp_path):
    from edgeformer.sources import load_model

    graph = load_model(name).graph  # seeded zoo build, exported
    profile = load_profile("host-ort-fp16")
    target = get_target("onnxruntime")
    result = target.compile(graph, profile, tmp_path)
    assert result.details["onnx_compute_precision"] == "fp16"
    runner = target.load(Artifact(tmp_path, None, profile))
    got = runner.run([t.numpy() for t in graph.example_inputs])[0]
    ref = ir.run(graph, graph.example_inputs)[0].numpy()
    assert got.dtype == np.float32
    n = profile.numerics
    assert np.all(np.abs(got - ref) <= n.atol + n.rtol * np.abs(ref)), float(np.abs(got - ref).max())
    snr_db = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got - ref).astype(np.float64) ** 2))
    assert snr_db > 20, snr_db
