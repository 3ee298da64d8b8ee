"""OpenVINO int8 (NNCF) and bf16: a trained digits model, real OpenVINO and NNCF, no mocks.

Accuracy is judged on the held-out digits split against the trained fp32 PyTorch model (random
weights make int8 agreement meaningless); what ran in int8 is read back from the runtime graph.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgeformer.artifact import Artifact
from edgeformer.compiler import plan, rewrite
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UserError
from edgeformer.numerics import compare
from edgeformer.targets import get_target
from edgeformer.targets.base import Calibration, quantizable_layers
from edgeformer.targets.openvino import check_precision
from edgeformer.training import digits_dataset

MODEL = "poolformer_tiny"
INT8 = {"u8", "i8"}


def _calibration(x: torch.Tensor, **kw) -> Calibration:
    samples = [[x[i : i + 1].numpy()] for i in range(64)]
    sha = hashlib.sha256(b"".join(s[0].tobytes() for s in samples)).hexdigest()
    return Calibration(samples=samples, source="digits (train split)", sha256=sha, **kw)


def _compile(graph, profile, out: Path, calibration=None):
    out.mkdir(parents=True, exist_ok=True)
    return get_target("openvino").compile(graph, profile, out, calibration=calibration)


def _run_all(profile, out: Path, x: torch.Tensor):
    runner = get_target("openvino").load(Artifact(out, None, profile))
    return runner, np.concatenate([runner.run([x[i : i + 1].numpy()])[0] for i in range(len(x))])


def _runtime_layers(runner) -> list[tuple[str, str, set[str]]]:
    """(layer type, runtime precision, original OV names) of every node of the executed graph."""
    out = []
    for op in runner.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        names = {op.get_friendly_name(), *info["originalLayersNames"].astype(str).split(",")}
        out.append((info["layerType"].astype(str), info["runtimePrecision"].astype(str).lower(), names))
    return out


@pytest.fixture(scope="module")
def int8(trained, tmp_path_factory):
    profile = load_profile("host-openvino-int8")
    p = plan(MODEL, profile, weights=trained(MODEL))
    graph = rewrite(p).graph
    x_train, _ = digits_dataset(MODEL, "train")
    x_test, y_test = digits_dataset(MODEL, "test")
    with torch.no_grad():
        ref = p.source.module.eval()(x_test).numpy()
    calibration = _calibration(x_train)
    out = tmp_path_factory.mktemp("ov-int8")
    result = _compile(graph, profile, out, calibration)
    return SimpleNamespace(
        profile=profile, graph=graph, x_train=x_train, x_test=x_test, ref=ref, cal=calibration, out=out, result=result
    )


def test_int8_is_a_calibrated_precision_of_the_openvino_target():
    target = get_target("openvino")
    assert "int8" in target.precisions and target.calibrated_precisions == ("int8",)
    assert target.needs_calibration(load_profile("host-openvino-int8"))
    assert not target.needs_calibration(load_profile("host-openvino"))
    assert not target.needs_calibration(load_profile("host-openvino-bf16"))
    assert check_precision("CPU", "int8", ["FP32", "INT8"]) is None
    assert "does not support int8" in check_precision("CPU", "int8", ["FP32"], "Some CPU")


def test_compile_records_the_nncf_quantization_and_every_conv_runs_int8(int8):
    r = int8.result
    q = r.details["quantization"]
    assert r.files == ["model.xml", "model.bin"]
    assert (q["backend"], q["preset"], q["method"], q["target_device"]) == ("nncf", "performance", "minmax", "CPU")
    assert q["subset_size"] == 64 and q["calibration"] == int8.cal.to_dict()
    assert q["kept_float"] == [] and q["unmatched_keep_float"] == []
    assert r.details["ov_op_histogram"]["FakeQuantize"] == q["fake_quantize"] > 0
    convs = sum(n.startswith("conv") for n in quantizable_layers(int8.graph))
    assert q["int8_ops"] == {"Convolution": convs, "FullyConnected": 1}
    assert q["float_ops"] == {}
    assert r.structural_checks == {"int8_convs": True}


def test_int8_agrees_with_fp32_torch_on_held_out_digits_and_runs_int8_when_loaded(int8):
    runner, got = _run_all(int8.profile, int8.out, int8.x_test)
    agreement = (got.argmax(1) == int8.ref.argmax(1)).mean()
    assert agreement >= 0.98, f"top-1 agreement {agreement:.3f}"
    n = int8.profile.numerics
    report = compare([int8.ref], [got], atol=n.atol, rtol=n.rtol, scale_rtol=n.scale_rtol, min_cosine=n.min_cosine)
    assert report.status == "passed", report.reason
    convs = [prec for layer, prec, _ in _runtime_layers(runner) if layer == "Convolution"]
    assert convs and set(convs) <= INT8  # the loaded model.xml, not only the compile-time check


def test_keep_float_keeps_that_conv_in_float_and_reports_unmatched_names(int8, tmp_path):
    layer = [n for n in quantizable_layers(int8.graph) if n.startswith("conv")][3]
    cal = _calibration(int8.x_train, keep_float=(layer, "no_such_layer"))
    r = _compile(int8.graph, int8.profile, tmp_path, cal)
    q = r.details["quantization"]
    assert q["kept_float"] == [layer] and q["unmatched_keep_float"] == ["no_such_layer"]
    assert len(q["kept_float_ops"]) == 1 and q["kept_float_ops"][0].endswith("/Convolution")
    assert q["float_ops"] == {"Convolution": 1} and q["kept_float_convs"] == 1
    assert r.structural_checks == {"int8_convs": True}  # every conv not kept in float is int8
    runner, got = _run_all(int8.profile, tmp_path, int8.x_test[:32])
    kept_op = q["kept_float_ops"][0]
    convs = [(prec, kept_op in names) for layer, prec, names in _runtime_layers(runner) if layer == "Convolution"]
    assert [prec for prec, kept in convs if kept] in (["f32"], ["bf16"])
    assert all(prec in INT8 for prec, kept in convs if not kept)
    assert (got.argmax(1) == int8.ref[:32].argmax(1)).mean() >= 0.95


def test_int8_without_calibration_or_with_dynamic_mode_is_refused_before_writing(int8, tmp_path):
    with pytest.raises(UserError, match="needs calibration data"):
        _compile(int8.graph, int8.profile, tmp_path)
    with pytest.raises(UserError, match="statically"):
        _compile(int8.graph, int8.profile, tmp_path, _calibration(int8.x_train, mode="dynamic"))
    assert not (tmp_path / "model.xml").exists()


def test_bf16_profile_compiles_and_runs_where_the_cpu_has_bf16_and_is_refused_where_not(int8, tmp_path):
    import openvino as ov

    profile = load_profile("host-openvino-bf16")
    assert profile.options.precision == "bf16"
    assert "does not support bf16" in check_precision("CPU", "bf16", ["FP32", "INT8"], "Some CPU")
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(UserError, match="does not support bf16"):
            _compile(int8.graph, profile, tmp_path)
        assert not (tmp_path / "model.xml").exists()
        return
    r = _compile(int8.graph, profile, tmp_path)
    assert r.details["compiled_precision"] == "bf16" and "quantization" not in r.details
    runner, got = _run_all(profile, tmp_path, int8.x_test[:64])
    assert runner.settings()["inference_precision"] == "bf16"
    n = profile.numerics
    report = compare([int8.ref[:64]], [got], atol=n.atol, rtol=n.rtol, scale_rtol=n.scale_rtol, min_cosine=n.min_cosine)
    assert report.status == "passed", report.reason
    assert (got.argmax(1) == int8.ref[:64].argmax(1)).mean() >= 0.98
