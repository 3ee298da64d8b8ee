"""numerics: the scale-aware comparison against PyTorch, and the fp16 emulation on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer.ir import export
from edgeformer.numerics import FP16_MAX, compare, emulate, run_in_precision


def _large_output(scale: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((4, 64)) * scale
    ref[0, :4] = [1e-3, -2e-3, 0.0, 5e-4]  # elements near 0 carry the rounding of their large neighbours
    return ref.astype(np.float32)


def test_large_outputs_pass_when_the_error_is_rounding_at_their_scale():
    ref = _large_output(3e4)
    # what an fp32 runtime does at 3e4: a couple of ulps (2e-3 each) on every element, near-0 ones too
    out = ref + np.float32(4e-3) * np.sign(np.random.default_rng(1).standard_normal(ref.shape)).astype(np.float32)
    report = compare([ref], [out], atol=1e-4, rtol=0.0, scale_rtol=1e-5, min_cosine=0.9999)
    assert report.status == "passed", report.reason
    assert report.per_output[0]["scale"] == pytest.approx(float(np.abs(ref).max()))
    assert report.max_abs_error == pytest.approx(float(np.abs(out.astype(np.float64) - ref).max()))
    assert report.max_abs_error > 1e-3  # ten times atol: the scale term accepted it


def test_an_error_beyond_the_scale_tolerance_fails_naming_the_bound():
    ref = _large_output(3e4)
    out = ref.copy()
    out[0, 0] += 3.0  # 1e-4 of the output's scale: ten times the scale term
    report = compare([ref], [out], atol=1e-4, rtol=0.0, scale_rtol=1e-5, min_cosine=0.9999, names=["boxes"])
    assert report.status == "failed"
    assert "boxes: max abs error 3" in report.reason and "scale_rtol 1e-05" in report.reason
    assert "max|ref|" in report.reason and not report.per_output[0]["passed"]


def test_without_a_scale_term_the_comparison_stays_absolute_and_elementwise():
    ref = np.array([1.0, 1000.0], dtype=np.float32)
    out = ref + np.array([0.0, 0.05], dtype=np.float32)
    assert compare([ref], [out], atol=1e-4, rtol=1e-4, scale_rtol=0.0, min_cosine=0.0).status == "passed"
    out = ref + np.array([0.05, 0.0], dtype=np.float32)  # rtol·|ref| is per element: 1e-4 at 1.0
    assert compare([ref], [out], atol=1e-4, rtol=1e-4, scale_rtol=0.0, min_cosine=0.0).status == "failed"


def test_the_report_records_every_tolerance_it_applied():
    ref = np.ones((2, 3), dtype=np.float32)
    report = compare([ref], [ref], atol=1e-4, rtol=2e-4, scale_rtol=1e-5, min_cosine=0.999)
    assert (report.atol, report.rtol, report.scale_rtol, report.min_cosine) == (1e-4, 2e-4, 1e-5, 0.999)
    assert report.method == "runtime" and report.status == "passed"


def test_nan_in_an_output_fails_at_any_scale():
    ref = _large_output(1e3)
    out = ref.copy()
    out[1, 1] = np.nan
    report = compare([ref], [out], atol=1.0, rtol=1.0, scale_rtol=1.0, min_cosine=-1.0)
    assert report.status == "failed" and report.has_nan and "NaN/inf" in report.reason


class Overflow(nn.Module):
    """fp32-safe, but x·1e5 is beyond fp16's ±65504 for |x| > 0.66: inf, then inf − inf = NaN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = x * 1e5
        return self.conv(y - y.mean())


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.nn.functional.gelu(self.conv(x)).mean((2, 3))
        return self.head(self.norm(x).softmax(-1))


def _graph(model, shape=(1, 3, 8, 8)):
    torch.manual_seed(0)
    return export(model.eval(), (torch.randn(*shape),))


def test_fp16_emulation_names_the_activation_beyond_the_fp16_range():
    graph = _graph(Overflow())
    run = run_in_precision(graph, graph.example_inputs, "fp16")
    assert run.overflow.startswith("mul ") and f"{FP16_MAX:g}" in run.overflow
    assert all(o.dtype == np.float16 for o in run.outputs)


def test_fp16_emulation_fails_an_overflowing_model_and_says_it_was_emulated():
    graph = _graph(Overflow())
    reference = [t.numpy() for t in graph.run()]
    report = emulate(graph, reference, "fp16", atol=0.5, rtol=0.05, scale_rtol=1e-3, min_cosine=0.999)
    assert report.status == "failed" and report.method == "emulated"
    assert report.reason.startswith("fp16 emulated on the CPU:") and "fp16 overflow" in report.reason


def test_fp16_emulation_of_a_well_scaled_model_passes_close_to_fp32():
    graph = _graph(Small())
    reference = [t.numpy() for t in graph.run()]
    run = run_in_precision(graph, graph.example_inputs, "fp16")
    assert run.overflow == "" and 0 < np.abs(run.outputs[0] - reference[0]).max() < 1e-2  # fp16, not fp32
    report = emulate(graph, reference, "fp16", atol=0.5, rtol=0.05, scale_rtol=1e-3, min_cosine=0.999)
    assert report.status == "passed" and report.method == "emulated", report.reason
    assert report.reason.startswith("fp16 emulated on the CPU:")
