"""verify: an fp16 artifact that cannot run here is checked by running its IR in fp16 on the CPU.

``iphone12-coreml`` (Core ML needs macOS) and ``intel-npu`` (OpenVINO NPU, ahead of time) both
compute in fp16.  A model that overflows fp16 (|activation| > 65504) must fail at compile time
instead of shipping with "numerics: skipped"; a well-scaled one passes, and says it was emulated.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeformer.compiler import compile
from edgeformer.errors import NumericsError
from edgeformer.manifest import read_manifest


class Overflow(nn.Module):
    """fp32-safe, but x·1e5 exceeds fp16's 65504 for |x| > 0.66: inf, then inf − inf = NaN."""

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
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_a_model_that_overflows_fp16_fails_for_iphone12_coreml(tmp_path):
    torch.manual_seed(0)
    out, keep = tmp_path / "art", tmp_path / "failed"
    with pytest.raises(NumericsError) as err:
        compile(Overflow(), "iphone12-coreml", out, input_shapes=[(1, 3, 8, 8)], keep_failed=keep)
    msg = str(err.value)
    assert "fp16 emulated on the CPU" in msg and "fp16 overflow" in msg and "65504" in msg
    # the hint blames fp16's range and rounding, not the passes
    assert "--passes" not in msg and "fp16" in err.value.fix and "fp32" in err.value.fix
    assert not out.exists()
    n = read_manifest(keep).numerics
    assert n.status == "failed" and n.method == "emulated" and n.has_nan


def test_a_well_scaled_model_passes_for_iphone12_coreml_and_says_it_was_emulated(tmp_path):
    torch.manual_seed(0)
    report = compile(Small(), "iphone12-coreml", tmp_path / "art", input_shapes=[(1, 3, 16, 16)])
    n = report.manifest.numerics
    assert n.status == "passed" and n.method == "emulated", n.reason
    assert n.reason.startswith("fp16 emulated on the CPU:") and "needs macOS" in n.reason
    assert 0 < n.max_abs_error < 0.05 and (n.atol, n.rtol, n.scale_rtol) == (0.5, 0.05, 1e-3)


def test_intel_npu_is_checked_in_fp16_emulation_too(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(NumericsError, match="fp16 overflow"):
        compile(Overflow(), "intel-npu", tmp_path / "npu", input_shapes=[(1, 3, 8, 8)])
    report = compile(Small(), "intel-npu", tmp_path / "ok", input_shapes=[(1, 3, 16, 16)])
    assert report.manifest.numerics.status == "passed" and report.manifest.numerics.method == "emulated"
