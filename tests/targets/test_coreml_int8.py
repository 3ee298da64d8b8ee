"""Core ML int8 weights, 4/6-bit palettes and W8A8: real coremltools, checked structurally.

Core ML ``predict`` needs macOS, so these tests check the ML program itself: the compression ops
in the MIL histogram, no float weight above the threshold left, a quantize→dequantize pair on
every conv/linear input of a W8A8 package, kept-float layers left alone.  One tiny model
(``poolformer_tiny``, seeded weights: 14 conv + 1 linear) is rewritten once for every test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UserError
from edgeformer.targets import get_target
from edgeformer.targets.base import Calibration, quantizable_layers

pytest.importorskip("coremltools")

MODEL = "poolformer_tiny"
CALIBRATION_SAMPLES = 16
KEEP = ("conv2d_5", "linear")  # a 1x1 conv in the second stage and the head


@pytest.fixture(scope="module")
def rewritten():
    from edgeformer.compiler import plan, rewrite

    return rewrite(plan(MODEL, "iphone12-coreml")).graph


@pytest.fixture(scope="module")
def samples():
    from edgeformer.training import digits_dataset

    x, _ = digits_dataset(MODEL, "train")
    return [[x[i : i + 1].numpy()] for i in range(CALIBRATION_SAMPLES)]


def _calibration(samples, keep=()):
    return Calibration(samples=samples, source="digits (train split)", sha256="0" * 64, keep_float=tuple(keep))


def _compile(graph, profile, out: Path, calibration=None):
    out.mkdir(parents=True, exist_ok=True)
    return get_target("coreml").compile(graph, profile, out, calibration=calibration)


def _ops(out: Path):
    import coremltools as ct

    from edgeformer.targets.coreml import PACKAGE, mil_operations

    return mil_operations(ct.models.MLModel(str(out / PACKAGE), skip_model_load=True).get_spec())


def _input(ops, op, key):
    names = {o.outputs[0].name: o for o in ops if o.outputs}
    return names.get(op.inputs[key].arguments[0].name)


def test_profiles_and_which_compressions_need_calibration():
    target = get_target("coreml")
    expect = {
        "iphone12-coreml": ("none", "iOS16", "ALL", False),
        "iphone12-coreml-w8": ("w8", "iOS16", "ALL", False),
        "iphone12-coreml-palettize4": ("palettize4", "iOS16", "ALL", False),
        "a17-coreml-w8a8": ("w8a8", "iOS17", "CPU_AND_NE", True),
    }
    for name, (compression, ios, units, calibrated) in expect.items():
        p = load_profile(name)
        o = p.options
        assert (o.compression, o.minimum_deployment_target, o.compute_units, o.precision) == (
            compression,
            ios,
            units,
            "fp16",
        ), name
        assert target.needs_calibration(p) is calibrated, name


@pytest.mark.parametrize(
    ("compression", "op", "min_ratio"),
    [
        ("w8", "constexpr_affine_dequantize", 1.7),
        ("palettize4", "constexpr_lut_to_dense", 3.0),
        ("palettize6", "constexpr_lut_to_dense", 2.2),
    ],
)
def test_weight_compression_leaves_no_large_float_weight(rewritten, samples, tmp_path, compression, op, min_ratio):
    profile = load_profile("iphone12-coreml")
    profile.options.compression = compression
    layers = quantizable_layers(rewritten)
    # weight-only compression is data-free (the compiler passes no calibration); a Calibration here
    # only carries keep_float, which maps onto the kept layer's weight const
    keep = ("conv2d_5", "not_a_layer") if compression == "w8" else ()
    result = _compile(rewritten, profile, tmp_path, _calibration(samples, keep) if keep else None)
    assert all(result.structural_checks.values()), result.structural_checks
    checks = result.structural_checks
    assert checks["weights_compressed"] and checks["spec_version_supports_compression"]
    assert checks["palette_sizes_match" if compression.startswith("palettize") else "weights_int8"]

    q = result.details["quantization"]
    json.dumps(q)  # manifest-ready
    assert q["scheme"] == compression and q["weight_threshold"] == 128
    expected = len(layers) - (1 if keep else 0)  # every conv/linear weight but the kept one
    assert q["ops"][op] == expected == result.details["mil_op_histogram"][op] == q["compressed_weights"]
    assert sum(q["ops"].values()) == expected  # no other compression op, no quantize/dequantize
    assert q["float_weights_above_threshold"] == []
    assert q["weights_bytes_after"] * min_ratio < q["weights_bytes_before"]
    assert "need a Mac" in q["measured"] and "structurally" in q["measured"]
    emulated = q["emulated"]
    assert emulated["method"].startswith("emulated") and emulated["weights_emulated"] == expected
    assert emulated["min_cosine"] > (0.999 if compression == "w8" else 0.95)

    ops = _ops(tmp_path)
    if keep:
        assert q["kept_float"] == ["conv2d_5"] and q["unmatched_keep_float"] == ["not_a_layer"]
        (kept_const,) = q["kept_float_weights"]["conv2d_5"]
        conv = next(o for o in ops if o.type == "conv" and o.outputs[0].name.startswith("conv2d_5_"))
        assert _input(ops, conv, "weight").type == "const"  # still float
        assert conv.inputs["weight"].arguments[0].name == kept_const
        assert q["largest_float_const"]["name"] == kept_const  # the only large float weight left
    else:
        assert q["largest_float_const"]["elements"] <= 256  # biases, norm weights, layer scales
    for o in ops:
        if o.type in ("conv", "linear") and not (keep and o.outputs[0].name.startswith("conv2d_5_")):
            assert _input(ops, o, "weight").type == op, o.outputs[0].name


def test_w8a8_quantizes_every_conv_linear_input_and_keeps_float_layers(rewritten, samples, tmp_path):
    profile = load_profile("a17-coreml-w8a8")
    calibration = _calibration(samples, (*KEEP, "not_a_node"))
    result = _compile(rewritten, profile, tmp_path, calibration)
    checks = result.structural_checks
    assert all(checks.values()), checks
    assert checks["activations_quantized"] and checks["weights_per_tensor"] and checks["weights_compressed"]
    assert result.details["specification_version"] == 8 and result.details["minimum_deployment_target"] == "iOS17"

    q = result.details["quantization"]
    json.dumps(q)
    layers = quantizable_layers(rewritten)
    assert q["scheme"] == "w8a8" and q["observer"] == "MinMaxObserver" and q["per_channel"] is False
    assert q["kept_float"] == list(KEEP) and q["unmatched_keep_float"] == ["not_a_node"]
    assert set(q["kept_float_weights"]) == set(KEEP)
    assert q["quantized_layers"] == len(layers) - len(KEEP) and q["layers_without_qdq_input"] == []
    assert q["ops"]["quantize"] > 0 and q["ops"]["dequantize"] >= q["ops"]["quantize"]
    assert q["ops"]["constexpr_affine_dequantize"] >= len(layers) - len(KEEP)
    assert q["calibration"]["samples"] == CALIBRATION_SAMPLES and q["calibration_samples"] == CALIBRATION_SAMPLES
    assert q["emulated"]["method"].startswith("emulated") and q["emulated"]["min_cosine"] > 0.9
    assert "need a Mac" in q["measured"]

    ops = _ops(tmp_path)
    gemms = [o for o in ops if o.type in ("conv", "linear")]
    assert len(gemms) == len(layers)
    kept_weights = {n for names in q["kept_float_weights"].values() for n in names}
    for o in gemms:
        weight, x = _input(ops, o, "weight"), _input(ops, o, "x")
        if o.inputs["weight"].arguments[0].name in kept_weights:  # kept: float weight, float input
            assert weight.type == "const" and x.type != "dequantize"
        else:
            assert weight.type == "constexpr_affine_dequantize"
            assert x.type == "dequantize" and _input(ops, x, "input").type == "quantize"
    assert len([o for o in gemms if o.inputs["weight"].arguments[0].name in kept_weights]) == len(KEEP)


class MatmulConst(nn.Module):
    """A matmul with a constant matrix: XNNPACK's quantizer leaves it float (it annotates no matmul)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.mix = nn.Parameter(torch.randn(16, 16) * 0.1)

    def forward(self, x):
        return torch.matmul(self.fc(x), self.mix)


def test_w8a8_compresses_the_weights_pt2e_leaves_float(tmp_path):
    torch.manual_seed(0)
    graph = ir.export(MatmulConst().eval(), (torch.randn(1, 4, 16),), name="mm", input_names=["x"])
    samples = [[np.random.default_rng(i).standard_normal((1, 4, 16), dtype=np.float32)] for i in range(4)]
    result = _compile(graph, load_profile("a17-coreml-w8a8"), tmp_path, _calibration(samples))
    assert all(result.structural_checks.values()), result.structural_checks
    q = result.details["quantization"]
    assert len(q["weight_only_int8"]) == 1  # the 16x16 matrix, int8 per tensor after conversion
    assert q["ops"]["constexpr_affine_dequantize"] == 2 and q["float_weights_above_threshold"] == []
    assert q["largest_float_const"]["elements"] == 16  # the bias


def test_compression_refuses_what_the_profile_cannot_carry(rewritten, samples, tmp_path):
    profile = load_profile("a17-coreml-w8a8")
    with pytest.raises(UserError, match="needs calibration data"):
        _compile(rewritten, profile, tmp_path / "a")
    with pytest.raises(UserError, match="no dynamic activation quantization"):
        _compile(rewritten, profile, tmp_path / "b", Calibration(samples, "digits", "0", mode="dynamic"))
    profile.options.minimum_deployment_target = "iOS16"
    with pytest.raises(UserError, match="iOS17"):
        _compile(rewritten, profile, tmp_path / "c", _calibration(samples))
    profile = load_profile("iphone12-coreml-palettize4")
    profile.options.minimum_deployment_target = ""
    with pytest.raises(UserError, match="iOS16"):
        _compile(rewritten, profile, tmp_path / "d")


def test_the_default_fp16_profile_is_unchanged(rewritten, tmp_path):
    result = _compile(rewritten, load_profile("iphone12-coreml"), tmp_path)
    d = result.details
    assert "quantization" not in d
    assert set(d) == {
        "compute_precision",
        "compute_units",
        "minimum_deployment_target",
        "specification_version",
        "mil_ops",
        "mil_consts",
        "mil_op_histogram",
        "validated",
    }
    assert not any(t.startswith("constexpr_") or t in ("quantize", "dequantize") for t in d["mil_op_histogram"])
    assert "weights_compressed" not in result.structural_checks and all(result.structural_checks.values())
    assert d["specification_version"] == 7 and d["mil_op_histogram"]["conv"] == 14
