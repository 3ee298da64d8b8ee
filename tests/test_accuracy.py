"""The approximation contract (edgeformer/accuracy.py, compiler.approximate) on trained tiny models.

Real ONNX Runtime artifacts, real digits data: the accuracy block, both gates, the speed gate
refusing an int8 model that is slower than fp32 (the tiny 32×32 models on ORT are such a case),
the mixed-precision restore, and the user errors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from importlib import resources

import numpy as np
import pytest

from edgeformer import accuracy, compiler
from edgeformer.errors import UserError
from edgeformer.manifest import read_manifest

MODEL = "poolformer_tiny"


# ------------------------------------------------------------------------------------ statistics


def test_wilson_interval_matches_the_closed_form_and_stays_in_range():
    lo, hi = accuracy.wilson_interval(347, 360)
    assert lo == pytest.approx(0.9392, abs=2e-4) and hi == pytest.approx(0.9788, abs=2e-4)
    assert accuracy.wilson_interval(360, 360)[1] == 1.0
    assert accuracy.wilson_interval(0, 10)[0] == 0.0


def test_mcnemar_exact_p_values():
    assert accuracy.mcnemar_exact(0, 0) == 1.0
    assert accuracy.mcnemar_exact(1, 0) == 1.0  # one flipped image is noise
    assert accuracy.mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert accuracy.mcnemar_exact(10, 2) == pytest.approx(2 * sum(math.comb(12, i) for i in range(3)) / 2**12)


def test_accuracy_block_counts_and_random_weights_say_agreement_is_meaningless():
    from edgeformer.data import Dataset

    labels = np.array([0, 1, 2, 1])
    ds = Dataset("toy", "toy", "eval", [np.zeros((4, 3))], labels)
    ref = [np.eye(3)[[0, 1, 2, 2]] * 5.0]  # 3 of 4 right
    app = [np.eye(3)[[0, 1, 1, 2]] * 5.0]  # 2 of 4 right: loses image 2
    block = accuracy.accuracy_block(ds, ref, app, weights="checkpoint")
    assert block.reference_top1.correct == 3 and block.approx_top1.correct == 2
    assert block.accuracy_drop_points == pytest.approx(25.0)
    assert block.agreement == {"count": 3, "n": 4, "rate": 0.75}
    assert block.mcnemar == {"b": 1, "c": 0, "p": 1.0}
    gate = accuracy.accuracy_gate(block, max_accuracy_drop=1.0, max_error=0.01)
    assert gate.name == "accuracy" and not gate.passed

    random = accuracy.accuracy_block(ds, ref, app, weights="random")
    assert random.agreement is None and random.reference_top1 is None
    assert any("not meaningful" in n for n in random.notes)
    assert accuracy.accuracy_gate(random, max_accuracy_drop=1.0, max_error=0.5).name == "error"


# ------------------------------------------------------------------------------ the whole contract


def _compile(tmp_path, weights, profile="host-ort-int8", name="art", **kw):
    kw.setdefault("calib", "digits")
    return compiler.compile(MODEL, profile, tmp_path / name, weights=weights, **kw)


def test_int8_on_a_tiny_model_is_refused_by_the_speed_gate_with_both_medians(tmp_path, trained):
    w = trained(MODEL)
    report = _compile(tmp_path, w, eval="digits")
    m = report.manifest
    a = m.approximation
    acc = a.accuracy
    # The accuracy block: counts, intervals, the paired test, agreement, errors.
    assert acc["samples"] == 360 and acc["data"]["labelled"]
    assert acc["reference_top1"]["n"] == 360 and acc["approx_top1"]["n"] == 360
    assert abs(acc["accuracy_drop_points"]) <= 1.0
    assert acc["agreement"]["count"] >= 0.98 * 360
    assert 0 <= acc["mcnemar"]["p"] <= 1 and acc["cosine"] > 0.99
    assert a.gates[0]["name"] == "accuracy" and a.gates[0]["passed"]
    assert a.calibration["source"].startswith("digits (train split)") and a.calibration["samples"] == 128
    # The speed gate measured both and shipped the exact artifact (ORT int8 is slower at 32×32).
    sp = a.speed
    assert sp["measured"] and sp["exact_median_ms"] > 0 and sp["approx_median_ms"] > 0
    assert not sp["passed"] and sp["speedup"] < 1.1
    assert a.shipped == "exact" and "exact artifact ships" in a.reason
    assert m.profile.options.precision == "fp32"  # what the folder really holds
    assert m.target_details.get("quantization") is None
    assert m.numerics.status == "passed"


def test_openvino_int8_speed_gate_also_times_openvinos_own_bf16_default_where_the_cpu_has_it(tmp_path, trained):
    """OpenVINO runs bf16 by itself on CPUs with BF16, so int8 is also timed against that, in the
    same alternating blocks; where the CPU has no BF16 nothing but fp32 is compared."""
    import openvino as ov

    from edgeformer.device_profiles import load_profile
    from edgeformer.targets import get_target
    from edgeformer.targets.openvino import check_precision

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    has_bf16 = check_precision("CPU", "bf16", caps) is None
    target = get_target("openvino")
    assert target.runtime_default_precisions(load_profile("host-openvino-int8")) == (("bf16",) if has_bf16 else ())
    assert target.runtime_default_precisions(load_profile("host-openvino")) == ()
    assert get_target("onnxruntime").runtime_default_precisions(load_profile("host-ort-int8")) == ()
    report = _compile(tmp_path, trained(MODEL), profile="host-openvino-int8", force_approx=True)
    sp = report.manifest.approximation.speed
    assert sp["measured"] and sp["exact_median_ms"] > 0
    if has_bf16:
        row = sp["runtime_defaults"]["bf16"]
        assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
        assert row["approx_speedup"] == pytest.approx(row["median_ms"] / sp["approx_median_ms"], rel=1e-2)
    else:
        assert sp["runtime_defaults"] == {}
    assert not list(tmp_path.glob(".*twin*"))  # the bf16 twin's scratch folder is gone


def test_force_approx_ships_the_int8_model_and_says_so(tmp_path, trained):
    report = _compile(tmp_path, trained(MODEL), eval="digits", force_approx=True)
    a = report.manifest.approximation
    assert a.shipped == "approximate"
    assert a.forced == (not a.speed["passed"])
    q = report.manifest.target_details["quantization"]
    assert sum(q["int8_ops"].values()) > 0
    assert report.manifest.profile.options.precision == "int8"
    # the shipped int8 artifact runs and matches the block's figures on the data
    assert report.manifest.numerics.method == "runtime" and "digits (test split)" in report.manifest.numerics.reason


OUTLIER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Outlier(nn.Module):
        # Channel 0 of conv a is ~1000x its other channels: one per-tensor int8 range for conv b's
        # input leaves the other 15 channels about one step, so b alone ruins the outputs.
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Linear(16, 10)
            with torch.no_grad():
                self.a.weight[0] *= 1000.0
                self.a.bias[0] = 1000.0
                self.b.weight[:, 0] /= 1000.0

        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return self.head(torch.relu(y).mean((2, 3)))

    def build():
        return Outlier()
    """
)


@pytest.fixture
def outlier_model(tmp_path, monkeypatch):
    (tmp_path / "outlier.py").write_text(OUTLIER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "outlier:build"
    sys.modules.pop("outlier", None)


def test_a_failed_accuracy_gate_returns_the_most_sensitive_layer_to_float(tmp_path, outlier_model):
    report = compiler.compile(
        outlier_model,
        "host-ort-int8",
        tmp_path / "o",
        input_shapes=[(1, 3, 32, 32)],
        calib="digits",
        calib_size=32,
        force_approx=True,
    )
    a = report.manifest.approximation
    # all-int8 failed the error gate; keeping conv b (ranked first) in float passed it
    assert [r["passed"] for r in a.restore] == [False, True]
    assert a.sensitivity[0]["layer"] == "conv2d_1" and a.sensitivity[0]["source"] == "b"
    assert [k["layer"] for k in a.kept_float] == ["conv2d_1"]
    assert a.gates[0]["passed"] and 1 - a.accuracy["cosine"] <= 0.01
    q = report.manifest.target_details["quantization"]
    assert q["kept_float"] == ["conv2d_1"] and sum(q["int8_ops"].values()) > 0


def test_an_accuracy_gate_no_restore_can_pass_names_the_worst_layers_and_writes_nothing(tmp_path, outlier_model):
    profile = tmp_path / "one-float-layer.toml"
    text = resources.files("edgeformer.profiles").joinpath("host-ort-int8.toml").read_text()
    profile.write_text(
        text.replace('name = "host-ort-int8"', 'name = "strict"') + "\n[approximation]\nmax_float_layers = 0\n"
    )
    with pytest.raises(UserError) as err:
        compiler.compile(
            outlier_model, profile, tmp_path / "art", input_shapes=[(1, 3, 32, 32)], calib="digits", calib_size=32
        )
    assert "fails the accuracy gate" in err.value.problem and "most sensitive layers: conv2d_1 (b)" in err.value.problem
    assert err.value.exit_code == 2 and "--max-error" in err.value.fix
    assert not (tmp_path / "art").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art")]


def test_int8_without_calibration_data_is_a_user_error():
    with pytest.raises(UserError, match="needs calibration data") as err:
        compiler.compile(MODEL, "host-ort-int8", "unused")
    assert "--calib" in err.value.fix


def test_data_for_an_exact_profile_is_a_user_error():
    with pytest.raises(UserError, match="nothing is approximated"):
        compiler.compile(MODEL, "host-ort", "unused", eval="digits")


def test_tvm_refuses_int8_and_names_the_targets_that_do_it():
    with pytest.raises(UserError, match="no integer conv/matmul lowering") as err:
        compiler.compile(MODEL, "host-tvm", "unused", precision="int8", calib="digits")
    assert "host-ort-int8" in err.value.fix


def test_random_weights_report_errors_but_no_agreement(tmp_path):
    report = compiler.compile(MODEL, "host-ort-int8", tmp_path / "r", calib="digits", calib_size=32, force_approx=True)
    acc = report.manifest.approximation.accuracy
    assert acc["weights"] == "random" and acc["agreement"] is None
    assert any("not meaningful" in n for n in acc["notes"])
    assert acc["cosine"] is not None and acc["max_abs_error"] is not None


def test_fp16_without_data_is_judged_on_random_probe_inputs_and_speed_gated(tmp_path):
    """No --calib/--eval: the contract still runs on a host profile (errors, the error gate, the
    speed gate), on the example inputs plus seeded draws, and never calls anything accuracy."""
    report = compiler.compile(MODEL, "host-ort-fp16", tmp_path / "p", use_cache=False)
    m = report.manifest
    a = m.approximation
    assert a is not None and a.kind == "precision fp16" and a.speed["measured"]
    assert a.accuracy["data"]["source"] == "random inputs" and a.accuracy["samples"] == 8
    assert a.accuracy.get("reference_top1") is None and a.accuracy["cosine"] > 0.995
    assert [g["name"] for g in a.gates] == ["error"] and a.gates[0]["passed"]
    # whichever ships, the manifest says which, and the artifact is that precision
    shipped = {"approximate": "fp16", "exact": "fp32"}[a.shipped]
    assert m.profile.options.precision == shipped, a.reason
    assert m.numerics.status == "passed"


def test_fp16_numerics_failure_on_probe_inputs_keeps_the_failed_build_when_asked(tmp_path):
    from edgeformer.device_profiles import load_profile
    from edgeformer.errors import NumericsError

    profile = load_profile("host-ort-fp16")
    profile.numerics.atol, profile.numerics.rtol, profile.numerics.scale_rtol = 1e-9, 0.0, 0.0
    with pytest.raises(NumericsError, match="outputs disagree with the exact fp32 model") as err:
        compiler.compile(MODEL, profile, tmp_path / "o", keep_failed=tmp_path / "kept", use_cache=False)
    assert "fp16's rounding or range" in err.value.fix and str(tmp_path / "kept") in err.value.fix
    assert not (tmp_path / "o").exists() and read_manifest(tmp_path / "kept").numerics.status == "failed"


def test_the_exact_twin_keeps_the_callers_pass_edits_where_only_pass_options_differ(tmp_path):
    """ORT int8's pipeline differs from fp32's only in fold_pool_mixer's form; the exact twin that
    ships when the speed gate says no (min_speedup 100 makes it say no) must keep ``--passes``."""
    from edgeformer.device_profiles import load_profile
    from edgeformer.targets import get_target

    ort = get_target("onnxruntime")
    assert ort.default_pipeline(load_profile("host-ort-int8")).names == ort.pipeline.names
    report = compiler.compile(
        MODEL,
        "host-ort-int8",
        tmp_path / "t",
        calib="digits",
        calib_size=8,
        min_speedup=100,
        passes="-fold_layer_scale",
    )
    m = report.manifest
    assert m.approximation.shipped == "exact" and m.profile.options.precision == "fp32"
    names = [r.name for r in m.passes]
    assert "fold_layer_scale" not in names and "fold_pool_mixer" in names


def test_precision_flag_picks_the_shipped_sibling_profile():
    from edgeformer.device_profiles import load_profile, with_precision

    assert with_precision(load_profile("host-ort"), "int8").name == "host-ort-int8"
    custom = with_precision(load_profile("android-arm64-ort"), "fp16")
    assert custom.options.precision == "fp16" and custom.numerics.atol == pytest.approx(2.5e-3)


def test_cli_compile_int8_prints_the_accuracy_block_and_the_speed_decision(tmp_path, trained):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "edgeformer.cli", "compile", MODEL, "--weights", str(trained(MODEL))]
    cmd += ["--profile", "host-ort-int8", "--calib", "digits", "--eval", "digits", "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "approximation: precision int8, judged on 360 samples of digits (test split)" in text
    assert "top-1 exact fp32" in text and "McNemar p" in text and "top-1 agreement" in text
    assert "accuracy gate: passed" in text and "speed gate:" in text and "shipped:" in text
    data = json.loads((out / "manifest.json").read_text())
    assert data["approximation"]["speed"]["measured"] is True
    assert read_manifest(out).approximation is not None
