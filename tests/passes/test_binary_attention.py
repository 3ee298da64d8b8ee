"""binary_attention: products of provably integer-valued operands (±1 hash codes) become int32
matmuls, bit-exact against the float form; float products are left alone; the rewritten graphs
run on ONNX Runtime and OpenVINO; the "only where it pays" driver declines them (measured < 1x)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helper import op_counts, tiny_graph
from torch import nn

from edgeformer.ir import export
from edgeformer.models import build_model
from edgeformer.passes import PassManager, get_pass

NAME = "binary_attention"


def run_pass(graph, **options):
    manager = PassManager([NAME], options={NAME: options}, check=True, explain=True)
    new, (record,) = manager.run(graph)
    return new, record


def int_matmuls(graph) -> int:
    """matmuls whose inputs are int32 (the rewritten form)."""
    return sum(
        1
        for n in graph.program.graph.nodes
        if n.op == "call_function"
        and "matmul" in str(n.target)
        and all(a.meta["val"].dtype == torch.int32 for a in n.args[:2])
    )


class SignCodes(nn.Module):
    """Hashes tokens to ±1 codes two ways (``sign`` and EcoFormer's ``where(y >= 0, 1, -1)``) and
    takes the Hamming products: affinities h·gᵀ, the denominator h·Σg, and a float product g·v."""

    def __init__(self, dim=8, bits=16):
        super().__init__()
        self.proj = nn.Linear(dim, bits)
        self.proj2 = nn.Linear(dim, bits)
        self.to_v = nn.Linear(dim, dim)

    def forward(self, x):
        h = torch.sign(self.proj(x))  # (B, N, bits)
        g = torch.where(self.proj2(x) >= 0, 1.0, -1.0)
        aff = h @ (2 * g).transpose(-1, -2)  # through a mul by a constant and a transpose
        den = h @ g.sum(dim=-2).unsqueeze(-1) + 17 * g.shape[-2]
        ctx = g.transpose(-1, -2) @ self.to_v(x)  # a float operand: stays float
        return (aff @ self.to_v(x)) / den + (h @ ctx)


def test_it_fires_on_sign_coded_products_and_is_bit_exact():
    graph = tiny_graph(SignCodes(), (2, 12, 8))
    new, rec = run_pass(graph)
    applied = [s for s in rec.details["sites"] if s["applied"]]
    assert rec.matched == 2 and {s["bound"] for s in applied} == {16 * 2, 16 * 12}, rec.details["sites"]
    assert int_matmuls(new) == 2
    before, after = op_counts(graph), op_counts(new)
    assert after["aten._to_copy"] - before["aten._to_copy"] == 6  # two casts in and one out per product
    assert after["aten.matmul"] == before["aten.matmul"]  # same ops, integer operands
    rejected = [s for s in rec.details["sites"] if not s["applied"]]
    assert rejected and all("not provably integer-valued" in s["reason"] for s in rejected)
    for seed in range(3):
        x = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(seed)) * 3
        with torch.no_grad():
            assert torch.equal(graph.program.module()(x), new.program.module()(x))  # bit-exact


def test_it_rewrites_the_denominators_of_tiny_ecoformer_bit_exactly():
    model = build_model("ecoformer_pvt_v2_tiny").eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    graph = export(model, (x,))
    new, rec = run_pass(graph)
    sites = rec.details["sites"]
    applied = [s for s in sites if s["applied"]]
    # one per EcoFormer attention (stages 1-3): h·Σh, |Σh| ≤ N = 64, 16, 4 tokens, 16 bits
    assert [s["source"] for s in applied] == ["block1.0.attn", "block2.0.attn", "block3.0.attn"]
    assert [s["bound"] for s in applied] == [16 * 64, 16 * 16, 16 * 4]
    # hᵀ·v and h·(hᵀv) have a float operand
    assert len(sites) == 9 and all("not provably integer-valued" in s["reason"] for s in sites if not s["applied"])
    assert int_matmuls(new) == 3
    for seed in range(3):
        xi = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            assert torch.equal(graph.program.module()(xi), new.program.module()(xi))


class FloatProducts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)

    def forward(self, x):
        q, k = self.a(x), self.b(x)
        return q @ k.transpose(-1, -2) + torch.round(q) @ k.transpose(-1, -2)  # round: no static bound


class CodesTimesV(nn.Module):
    def __init__(self):
        super().__init__()
        self.h, self.v = nn.Linear(8, 16), nn.Linear(8, 8)

    def forward(self, x):
        h = torch.where(self.h(x) >= 0, 1.0, -1.0)
        return h.transpose(-1, -2) @ self.v(x)


class HugeBound(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.Linear(8, 32)

    def forward(self, x):
        h = torch.sign(self.h(x))
        return (h * 2**20) @ h.transpose(-1, -2)  # 32 · 2^20 > 2^24: fp32 is not exact there


def test_it_does_not_fire_on_float_products():
    new, rec = run_pass(tiny_graph(FloatProducts(), (1, 6, 8)))
    assert not rec.changed and rec.matched == 0 and rec.details["sites"] == []
    new, rec = run_pass(tiny_graph(CodesTimesV(), (1, 6, 8)))
    assert not rec.changed and rec.matched == 0
    (site,) = rec.details["sites"]
    assert not site["applied"] and "second operand is not provably integer-valued" in site["reason"]


def test_it_does_not_fire_where_fp32_would_not_be_exact():
    _, rec = run_pass(tiny_graph(HugeBound(), (1, 6, 8)))
    assert rec.matched == 0 and "> 2^24" in rec.details["sites"][0]["reason"], rec.details


def test_the_nodes_option_rewrites_only_the_chosen_products():
    graph = tiny_graph(SignCodes(), (2, 12, 8))
    _, rec = run_pass(graph)
    first = next(s["node"] for s in rec.details["sites"] if s["applied"])
    new, rec = run_pass(graph, nodes=first)
    assert rec.matched == 1 and int_matmuls(new) == 1
    assert any(s["reason"] == "not chosen (nodes option)" for s in rec.details["sites"] if not s["applied"])


def test_the_driver_declines_it_because_no_target_measured_runs_it_faster():
    from edgeformer.passes import Pipeline
    from edgeformer.sites import decide, site_passes

    cls = get_pass(NAME)
    assert site_passes(Pipeline((NAME,))) == [NAME]  # driven "only where it pays"
    assert cls.predicted_speedup({}) < 1.0
    sites = [{"node": "matmul_2", "source": "block1.0.attn", "applied": True, "k": 16, "bound": 50176}]
    (d,) = decide(NAME, sites, {"block1.0.attn": 0.5}, "profile", min_share=0.10, min_speedup=1.1)
    assert not d.applied and "< min_speedup 1.1x" in d.reason
    (d,) = decide(NAME, sites, {"block1.0.attn": 0.02}, "profile", min_share=0.10, min_speedup=1.1)
    assert not d.applied and "< min_share" in d.reason


@pytest.fixture(scope="module")
def tiny_eco():
    model = build_model("ecoformer_pvt_v2_tiny").eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    graph = export(model, (x,))
    new, _ = PassManager([NAME], check=False).run(graph)
    with torch.no_grad():
        ref = graph.program.module()(x).numpy()
    return new, x, ref


def test_the_integer_form_runs_on_onnx_runtime(tiny_eco, tmp_path):
    import onnx
    import onnxruntime as ort

    from edgeformer.targets.onnxruntime import export_onnx

    new, x, ref = tiny_eco
    path = tmp_path / "m.onnx"
    export_onnx(new, path)
    model = onnx.load(str(path))
    int32_casts = [n for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.INT32]
    assert len(int32_casts) >= 3  # the integer products were exported as int32 MatMuls
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_the_integer_form_runs_on_openvino(tiny_eco):
    ov = pytest.importorskip("openvino")
    new, x, ref = tiny_eco
    model = ov.convert_model(new.program)
    assert any(
        op.get_type_name() == "MatMul" and op.get_input_element_type(0) == ov.Type.i32 for op in model.get_ordered_ops()
    )
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(x.numpy())[compiled.outputs[0]]
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
