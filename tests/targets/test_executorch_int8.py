"""ExecuTorch int8 (issue 12): PT2E with XNNPACK's quantizer on the rewritten IR, real executorch.

Trained tiny digits models (accuracy means nothing on random weights), calibrated on the first 64
train images, judged on the 360 held-out ones.  Few compiles: int8 lowering is the slow part.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.compiler import plan, rewrite
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UserError
from edgeformer.targets import Calibration, get_target, quantizable_layers
from edgeformer.targets.executorch import quantize
from edgeformer.training import digits_dataset


def _calibration(name: str, keep_float=()) -> Calibration:
    x, _ = digits_dataset(name, "train")
    samples = [[x[i : i + 1].numpy()] for i in range(64)]
    return Calibration(samples, "digits (train split)", "test", keep_float=tuple(keep_float))


def _with(profile, **options):
    return dataclasses.replace(profile, options=dataclasses.replace(profile.options, **options))


def _held_out(p, runner, name, n=None):
    """(fp32 torch logits, int8 .pte logits, labels) on the digits test split (its first ``n``),
    one image per call."""
    x, y = digits_dataset(name, "test")
    x, y = x[:n], y[:n]
    module = p.graph.program.module()  # the exported model before passes: the exact fp32 reference
    with torch.no_grad():
        ref = np.concatenate([module(x[i : i + 1]).numpy() for i in range(len(x))])
    got = np.concatenate([runner.run([x[i : i + 1].numpy()])[0] for i in range(len(x))])
    return ref, got, y.numpy()


def _cosine(a, b) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _compiled(tmp_path_factory, trained, name, profile, keep_float=lambda graph: ()):
    """(plan, rewritten IR, artifact folder, CompileResult); ``keep_float(graph)`` picks the names.
    ``trained=None``: the zoo's seeded random weights."""
    p = plan(name, profile, weights=trained(name) if trained else None)
    graph = rewrite(p).graph
    out = tmp_path_factory.mktemp(f"{name}-int8")
    calib = _calibration(name, keep_float(graph))
    return p, graph, out, get_target("executorch").compile(graph, p.profile, out, calibration=calib)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, trained):
    """poolformer_tiny, static int8, its second conv kept in float (plus a name that matches nothing)."""
    compiled = _compiled(
        tmp_path_factory,
        trained,
        "poolformer_tiny",
        load_profile("host-executorch-int8"),
        lambda graph: [quantizable_layers(graph)[1], "no_such_node"],
    )
    return (*compiled, quantizable_layers(compiled[1])[1])


def test_int8_is_a_calibrated_precision_of_the_target():
    target = get_target("executorch")
    assert "int8" in target.precisions and target.calibrated_precisions == ("int8",)
    assert target.needs_calibration(load_profile("host-executorch-int8"))
    assert not target.needs_calibration(load_profile("host-executorch"))


def test_static_int8_delegates_quantized_ops_and_records_them(pool):
    p, graph, out, result, kept = pool
    q = result.details["quantization"]
    assert (q["backend"], q["mode"], q["per_channel"], q["calibration_used"]) == ("pt2e+xnnpack", "static", True, True)
    assert q["calibration"]["samples"] == 64 and q["calibration"]["source"] == "digits (train split)"
    assert q["mode_reason"].startswith("auto: ") and "static" in q["mode_reason"]
    convs = sum(1 for n in quantizable_layers(graph) if n.startswith("conv2d"))
    # every conv but the kept one, the head linear, the residual adds and layer-scale muls run int8
    assert q["int8_ops"]["convolution"] == convs - 1 and q["int8_ops"]["linear"] == 1
    assert q["int8_ops"]["add"] > 0 and q["int8_ops"]["mul"] > 0
    assert q["int8_op_count"] == sum(q["int8_ops"].values())
    # LayerNorm (the lowered GroupNorm) has no XNNPACK kernel: it runs portable between delegates
    assert q["fallback_op_types"]["native_layer_norm"] > 0 and q["fallbacks"] == result.details["fallback_ops"]
    assert result.structural_checks == {"int8_delegated": True}
    fp32_bytes = 4 * sum(t.numel() for t in graph.program.state_dict.values())
    assert (out / "model.pte").stat().st_size < 0.5 * fp32_bytes  # int8 weights


def test_int8_counts_match_the_kernels_xnnpack_runs(pool):
    """The manifest's counts (read from the lowered graph) against the XNNPACK operators ETDump
    names: int8 ``Convolution (NHWC, QC8)`` and ``Fully Connected (NC, QS8, QC8W)`` (XNNPACK runs a
    1×1 conv as a GEMM), and one F32 GEMM, the kept layer."""
    p, graph, out, result, kept = pool
    ops = get_target("executorch").profile_ops(Artifact(out, None, p.profile), [graph.example_inputs[0].numpy()], 1)
    gemms = [o.type for o in ops.ops if o.type.startswith(("Convolution (", "Fully Connected ("))]
    q = result.details["quantization"]
    int8 = [k for k in gemms if "QC8" in k]
    assert len(int8) == q["int8_ops"]["convolution"] + q["int8_ops"]["linear"], gemms
    assert len([k for k in gemms if "F32" in k]) == q["float_op_count"] == 1, gemms


def test_keep_float_leaves_exactly_that_layer_in_float(pool):
    *_, result, kept = pool
    q = result.details["quantization"]
    assert q["kept_float"] == [kept] and q["unmatched_keep_float"] == ["no_such_node"]
    assert q["calibration"]["keep_float"] == [kept, "no_such_node"]
    assert q["float_layers"] == [kept] and q["float_op_count"] == 1 == q["float_ops"]["convolution"]


def test_static_int8_agrees_with_fp32_torch_on_held_out_digits(pool):
    p, graph, out, result, kept = pool
    runner = get_target("executorch").load(Artifact(out, None, p.profile))
    ref, got, labels = _held_out(p, runner, "poolformer_tiny")
    agree = (ref.argmax(1) == got.argmax(1)).mean()
    assert agree >= 0.98, f"top-1 agreement {agree:.4f}"
    assert (got.argmax(1) == labels).mean() >= (ref.argmax(1) == labels).mean() - 0.02
    assert _cosine(ref, got) >= p.profile.numerics.min_cosine


def test_android_int8_profile_is_aot_only_and_verified_here(pool):
    """Like its fp32 twin: the XNNPACK .pte is portable, so this runtime checks its numbers."""
    p, graph, out, *_ = pool
    android = load_profile("android-arm64-xnnpack-int8")
    target = get_target("executorch")
    assert android.options.precision == "int8" and target.needs_calibration(android)
    assert target.can_verify_here(android) is None and "arm64 Android" in target.can_run_here(android)
    x = graph.example_inputs[0].numpy()
    a = target.load(Artifact(out, None, android)).run([x])[0]
    b = target.load(Artifact(out, None, p.profile)).run([x])[0]
    np.testing.assert_array_equal(a, b)


def test_dynamic_int8_on_lmuformer_quantizes_its_linears_per_call(tmp_path_factory):
    """Structure and numerics only, on random weights (training LMUFormer for this one test cost
    a minute; accuracy is the static test's and test_accuracy's job)."""
    profile = _with(load_profile("host-executorch-int8"), quantization_mode="dynamic")
    p, graph, out, result = _compiled(tmp_path_factory, None, "lmuformer_tiny", profile)
    q = result.details["quantization"]
    assert (q["mode"], q["calibration_used"], q["observer"].split()[0]) == ("dynamic", False, "PlaceholderObserver")
    # dynamic covers linear only: LMUFormer's tokenizer and MLP convs stay fp32 (why auto picks static)
    assert q["int8_ops"] == {"linear": 3} and q["float_ops"] == {"convolution": 9}
    assert result.structural_checks["int8_delegated"]
    runner = get_target("executorch").load(Artifact(out, None, profile))
    ref, got, _ = _held_out(p, runner, "lmuformer_tiny", n=48)
    assert _cosine(ref, got) >= 0.999


class LinearOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_auto_mode_is_static_unless_the_model_is_conv_free():
    """Measured (targets/executorch/quantize.py): dynamic only pays where it covers every GEMM."""
    lmu = rewrite(plan("lmuformer_tiny", "host-executorch-int8")).graph
    assert quantize.choose_mode(lmu, "auto")[0] == "static"
    linear = ir.export(LinearOnly().eval(), (torch.randn(1, 5, 8),), name="linear")
    mode, why = quantize.choose_mode(linear, "auto")
    assert mode == "dynamic" and "conv-free" in why
    assert quantize.choose_mode(linear, "static") == ("static", "quantization_mode = static")


def test_int8_needs_calibration_data_and_a_known_observer(tmp_path):
    graph = ir.export(LinearOnly().eval(), (torch.randn(1, 5, 8),), name="linear")
    profile = load_profile("host-executorch-int8")
    target = get_target("executorch")
    with pytest.raises(UserError, match="needs calibration data"):
        target.compile(graph, profile, tmp_path)
    calib = Calibration([[np.zeros((1, 5, 8), np.float32)]], "zeros", "0", method="percentile")
    with pytest.raises(UserError, match="percentile"):
        target.compile(graph, _with(profile, quantization_mode="static"), tmp_path, calibration=calib)
    assert not (tmp_path / "model.pte").exists()


class ResidualBatchNorm(nn.Module):
    """conv → residual add → a batch norm on the sum (no conv before it, as LMUFormer's ``prev_bn``)
    → conv: XNNPACK's quantizer leaves that batch norm unannotated."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv0, self.bn, self.conv1 = nn.Conv1d(c, c, 1), nn.BatchNorm1d(c), nn.Conv1d(c, c, 3, padding=1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # statistics unlike the identity, so a dropped or wrong affine shows
            self.bn.running_mean.copy_(torch.randn(c, generator=gen))
            self.bn.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.2)
            self.bn.weight.copy_(torch.randn(c, generator=gen))
            self.bn.bias.copy_(torch.randn(c, generator=gen))

    def forward(self, x):
        return self.conv1(self.bn(x + self.conv0(x)))


def test_a_batch_norm_after_no_conv_is_an_exact_depthwise_conv_that_runs_int8(tmp_path):
    """ExecuTorch 1.5.1 cannot lower a lone batch norm on an int8 input (spiking_lmuformer_tiny
    failed so); quantize() rewrites it into the depthwise 1-tap conv it computes first."""
    model = ResidualBatchNorm().eval()
    graph = ir.export(model, (torch.randn(1, 8, 16),), name="residual_bn")
    module = graph.program.module()
    rewritten = copy.deepcopy(module)
    assert quantize.batch_norms_as_convs(rewritten) == ["batch_norm"]
    assert not any("batch_norm" in str(n.target) for n in rewritten.graph.nodes if n.op == "call_function")
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-5)

    gen = np.random.default_rng(2)
    samples = [[gen.standard_normal((1, 8, 16)).astype(np.float32)] for _ in range(16)]
    calib = Calibration(samples, "normal", "test")
    profile = _with(load_profile("host-executorch-int8"), quantization_mode="static")
    target = get_target("executorch")
    result = target.compile(graph, profile, tmp_path, calibration=calib)
    q = result.details["quantization"]
    assert q["batch_norms_as_convs"] == ["batch_norm"]
    assert q["int8_ops"]["convolution"] == 3 and q["float_op_count"] == 0, q  # the batch norm's conv too
    runner = target.load(Artifact(tmp_path, None, profile))
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(s[0])).numpy() for s in samples])
    got = np.concatenate([runner.run(s)[0] for s in samples])
    assert _cosine(ref, got) >= 0.995
    # Without the rewrite ExecuTorch 1.5.1's lowering refuses the model ("Weight and Input should
    # both be quantized"); checking that here costs ~60 s in torchao's conv-bn folding, so it is not.


class Conv1dStack(nn.Module):
    """Three conv1d layers as LMUFormer's tokenizer has them (padding, a stride, a grouped one)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv0 = nn.Conv1d(4, c, 3, padding=1)
        self.conv1 = nn.Conv1d(c, c, 3, stride=2, padding=2, dilation=2, groups=2)
        self.conv2 = nn.Conv1d(c, c, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(torch.relu(self.conv0(x)))))


def test_a_conv1d_kept_in_float_between_int8_neighbours_loads_and_runs(tmp_path, monkeypatch):
    """ExecuTorch 1.5.1 cannot take a float conv1d between int8 neighbours (lmuformer_tiny could keep
    none of its convs in float); quantize() rewrites a kept conv1d into the conv2d it computes,
    between two views."""
    model = Conv1dStack().eval()
    graph = ir.export(model, (torch.randn(1, 4, 32),), name="conv1d_stack")
    layers = quantizable_layers(graph)
    kept = layers[1]
    rewritten = copy.deepcopy(graph.program.module())
    assert quantize.float_conv1d_as_conv2d(rewritten, frozenset({kept})) == [kept]
    x = torch.randn(4, 4, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), atol=1e-5)

    gen = np.random.default_rng(2)
    samples = [[gen.standard_normal((1, 4, 32)).astype(np.float32)] for _ in range(16)]
    calib = Calibration(samples, "normal", "test", keep_float=(kept,))
    profile = _with(load_profile("host-executorch-int8"), quantization_mode="static")
    target = get_target("executorch")
    result = target.compile(graph, profile, tmp_path, calibration=calib)
    q = result.details["quantization"]
    assert q["kept_float"] == [kept] and q["float_layers"] == [kept], q
    assert q["float_ops"] == {"convolution": 1} and q["int8_ops"]["convolution"] == 2, q
    assert q["fallbacks"] == 0, q  # the views run inside the delegate too
    runner = target.load(Artifact(tmp_path, None, profile))
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(s[0])).numpy() for s in samples])
    got = np.concatenate([runner.run(s)[0] for s in samples])
    assert _cosine(ref, got) >= 0.995

    # without the rewrite ExecuTorch refuses it, at lowering here ("Weight and Input should both be
    # quantized") or at load in lmuformer_tiny (the invalid squeeze): the workaround is needed
    monkeypatch.setattr(quantize, "float_conv1d_as_conv2d", lambda module, keep: [])
    with pytest.raises(UserError, match="quantized|load"):
        target.compile(graph, profile, tmp_path / "plain", calibration=calib)
        target.load(Artifact(tmp_path / "plain", None, profile))
