"""ONNX Runtime int8 (host-ort-int8) on a model trained on digits, with the real onnxruntime: static
U8S8 QDQ agrees with the fp32 model, the manifest says what ORT fused, calibrated ranges come from
the content cache, a keep_float layer (named as the rewritten IR names it) stays float, S8S8 leaves
the QDQ graph unfused on x86, and dynamic mode quantizes LMUFormer's MatMuls, never its convs."""

from __future__ import annotations

import copy
import hashlib
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from edgeformer.artifact import Artifact
from edgeformer.compiler import plan, rewrite
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UserError
from edgeformer.targets import Calibration, get_target, quantizable_layers
from edgeformer.targets.onnxruntime import OnnxRuntimeTarget
from edgeformer.targets.onnxruntime.quantize import choose_mode, cpu_flags, ort_nodes
from edgeformer.training import digits_dataset

TARGET = get_target("onnxruntime")
PROFILE = "host-ort-int8"


def _model(name: str, weights, profile=PROFILE) -> SimpleNamespace:
    p = plan(name, profile, weights=weights)
    x, _ = digits_dataset(name, "train")
    samples = [[x[i : i + 1].numpy()] for i in range(64)]
    x_test, _ = digits_dataset(name, "test")
    with torch.no_grad():
        logits = p.source.module.eval()(x_test).numpy()
    sha = hashlib.sha256(b"".join(s[0].tobytes() for s in samples)).hexdigest()
    graph = rewrite(p, check=False).graph
    return SimpleNamespace(graph=graph, samples=samples, sha=sha, x_test=x_test, logits=logits, fp32=logits.argmax(-1))


def _calibration(m, cache_dir, **kw) -> Calibration:
    return Calibration(m.samples, "digits (train split), first 64", m.sha, cache_dir=cache_dir, **kw)


def _outputs(out, profile, m) -> np.ndarray:
    runner = TARGET.load(Artifact(out, None, profile))
    return np.concatenate([runner.run([m.x_test[i : i + 1].numpy()])[0] for i in range(len(m.fp32))])


def _agreement(out, profile, m) -> float:
    return float((_outputs(out, profile, m).argmax(-1) == m.fp32).mean())


@pytest.fixture(scope="module")
def pool(trained, tmp_path_factory):
    m = _model("poolformer_tiny", trained("poolformer_tiny"))
    m.profile, m.cache = load_profile(PROFILE), tmp_path_factory.mktemp("ranges")
    m.cal = _calibration(m, m.cache)
    m.out = tmp_path_factory.mktemp("int8")
    m.result = TARGET.compile(m.graph, m.profile, m.out, calibration=m.cal)
    return m


def test_int8_is_a_calibrated_precision_and_refuses_to_compile_without_data(tmp_path):
    assert "int8" in OnnxRuntimeTarget.precisions and OnnxRuntimeTarget.calibrated_precisions == ("int8",)
    assert TARGET.needs_calibration(load_profile(PROFILE)) and not TARGET.needs_calibration(load_profile("host-ort"))
    with pytest.raises(UserError, match="calibration"):
        TARGET.compile(None, load_profile(PROFILE), tmp_path)


def test_static_u8s8_agrees_with_the_fp32_model_on_held_out_digits(pool):
    assert pool.result.files == ["model.ort", "model.onnx"]
    assert _agreement(pool.out, pool.profile, pool) >= 0.98


def test_details_say_what_was_quantized_and_what_ort_fused(pool):
    q = pool.result.details["quantization"]
    assert (q["backend"], q["mode"], q["method"]) == ("onnxruntime.quantization", "static", "minmax")
    assert q["per_channel"] is True
    assert q["calibration"] == pool.cal.to_dict() and q["calibration_cache"]["hit"] is False
    # x86 with VNNI (this CPU): U8S8 at 8 bits; without VNNI 7-bit weights
    assert (q["activation_type"], q["weight_type"], q["scheme"]) == ("QUInt8", "QInt8", "U8S8")
    assert q["reduce_range"] is not bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})
    convs = sum(1 for n in quantizable_layers(pool.graph) if n.startswith("conv"))
    assert q["layers_mapped"] == f"{len(quantizable_layers(pool.graph))}/{len(quantizable_layers(pool.graph))}"
    # every conv and the head run as integer kernels in model.ort; nothing heavy is left float
    assert q["int8_ops"]["QLinearConv"] == convs and q["int8_ops"]["QGemm"] == 1 and q["float_ops"] == {}
    assert q["int8_op_count"] == sum(q["int8_ops"].values()) and q["dequantized_conv_inputs"] == 0
    assert pool.result.structural_checks == {"int8_convs_fused": True, "no_conv_integer": True}
    assert pool.result.details["compute_precision"] == "mixed fp32/int8"
    ops = {n.op_type for n in onnx.load(str(pool.out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # model.onnx is the QDQ model
    assert q["onnx_quantize_linear"] > 0 and q["dequantize_linear_left"] < q["onnx_dequantize_linear"]


def test_keep_float_layer_stays_float_and_the_ranges_come_from_the_cache(pool, tmp_path):
    # The exporter renames fx nodes: the IR's conv2d_1 (network.0.0.mlp.fc1) is the ONNX's conv2d_3.
    layer = "conv2d_1"
    assert layer in quantizable_layers(pool.graph)
    cal = _calibration(pool, pool.cache, keep_float=(layer, "no_such_layer"))
    result = TARGET.compile(pool.graph, pool.profile, tmp_path, calibration=cal)
    q = result.details["quantization"]
    assert q["calibration_cache"] == {**pool.result.details["quantization"]["calibration_cache"], "hit": True}
    assert q["kept_float"] == [layer] and q["unmatched_keep_float"] == ["no_such_layer"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    kept = [n for n in model.graph.node if n.name in q["onnx_nodes_kept_float"]]
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert [n.op_type for n in kept] == ["Conv"] and kept[0].input[1] == "network.0.0.mlp.fc1.weight"
    assert kept[0].input[1] in floats
    assert result.structural_checks["keep_float_applied"] is True
    before = pool.result.details["quantization"]["int8_ops"]["QLinearConv"]
    assert q["int8_ops"]["QLinearConv"] == before - 1 and sum(q["float_ops"].values()) == 1
    assert _agreement(tmp_path, pool.profile, pool) >= 0.98


def test_s8s8_the_api_default_leaves_qdq_unfused_on_x86(pool, tmp_path):
    # What U8S8 avoids: on x86 ORT fuses int8 activations only where MLAS has S8S8 kernels.  An ARM
    # profile asks for S8S8 (right there); compiled on this x86 CPU it shows the unfused graph.
    arm = copy.deepcopy(pool.profile)
    arm.name = "android-arm64-ort-int8"
    result = TARGET.compile(pool.graph, arm, tmp_path, calibration=pool.cal)
    s8, u8 = result.details["quantization"], pool.result.details["quantization"]
    assert (s8["scheme"], s8["activation_type"], s8["device"]) == ("S8S8", "QInt8", "arm64")
    assert s8["calibration_cache"]["hit"] is True  # ranges do not depend on the integer types
    assert s8["dequantize_linear_left"] > u8["dequantize_linear_left"]
    assert s8["int8_op_count"] < u8["int8_op_count"]


@pytest.fixture(scope="module")
def lmu():
    # Structure and numerics only, so random weights do (top-1 of untrained logits means nothing).
    torch.manual_seed(0)
    return _model("lmuformer_tiny", None)


def test_a_kept_layer_reads_float_even_where_its_input_was_quantized_for_a_removed_relu(lmu, tmp_path):
    # The tokenizer's Conv → ReLU → conv: the quantizer drops the ReLU into the first conv's
    # quantized output, and ORT would re-quantize a DQ-fed conv's float weights itself.
    cal = _calibration(lmu, None, keep_float=("conv1d_1",))
    result = TARGET.compile(lmu.graph, load_profile(PROFILE), tmp_path, calibration=cal)
    q = result.details["quantization"]
    assert q["mode"] == "static" and q["mode_reason"].startswith("auto: 9 Conv")  # the auto rule on LMUFormer
    assert q["kept_float_inputs"]["rewired"] == 1 and q["kept_float_inputs"]["activations_restored"] == 1
    assert result.structural_checks["keep_float_applied"] and result.structural_checks["int8_convs_fused"]
    assert q["kept_float_still_quantized"] == [] and q["float_ops"] == {"Conv": 1, "FusedConv": 1}
    model = onnx.load(str(tmp_path / "model.onnx"))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    (kept,) = [n for n in model.graph.node if n.name in q["onnx_nodes_kept_float"]]
    assert producer[kept.input[0]] == "Relu"  # the restored ReLU, on the float tensor
    got = _outputs(tmp_path, load_profile(PROFILE), lmu).ravel()
    assert got @ lmu.logits.ravel() / np.linalg.norm(got) / np.linalg.norm(lmu.logits) >= 0.99


def test_dynamic_mode_quantizes_lmuformer_matmuls_and_never_its_convs(lmu, tmp_path):
    profile = load_profile(PROFILE)
    profile.options.quantization_mode = "dynamic"
    m = lmu
    result = TARGET.compile(m.graph, profile, tmp_path, calibration=_calibration(m, None))
    q = result.details["quantization"]
    assert (q["mode"], q["activation_type"], q["weight_type"]) == ("dynamic", "QUInt8", "QInt8")
    onnx_ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "Conv"} <= onnx_ops and "ConvInteger" not in onnx_ops
    ort_ops = {op for _, op, _, _, _ in ort_nodes(tmp_path / "model.ort")}
    assert ort_ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger"}
    assert "ConvInteger" not in ort_ops and q["float_ops"].keys() & {"Conv", "FusedConv"}
    assert result.structural_checks == {"no_conv_integer": True}
    got = _outputs(tmp_path, profile, m).ravel()
    assert got @ m.logits.ravel() / np.linalg.norm(got) / np.linalg.norm(m.logits) >= 0.999


def _onnx(*op_types: str):
    nodes = [helper.make_node(op, ["x", "w"], [f"y{i}"], name=f"n{i}") for i, op in enumerate(op_types)]
    return helper.make_model(helper.make_graph(nodes, "g", [], []))


def test_auto_mode_rule():
    # Measured at 1 thread (ms, fp32 / static / dynamic): LMUFormer 6.2 / 1.2 / 4.9 (its FFN and LMU
    # memory are convs, dynamic leaves them float); a conv-free 4-block MatMul transformer 17.4 / 8.9 / 7.6.
    assert choose_mode("auto", _onnx("Conv", "MatMul", "Gemm"))[0] == "static"
    assert choose_mode("auto", _onnx("MatMul", "Gemm", "Add"))[0] == "dynamic"
    assert choose_mode("dynamic", _onnx("Conv"))[0] == "dynamic"


def test_ecoformer_quantizes_where_ort_shape_inference_crashes_and_keeps_batched_weight_matmuls_float(tmp_path):
    """EcoFormer's hash projections are MatMuls with 3-D constant weights: ORT's symbolic shape
    inference crashed on the model (a TypeError), and per-channel QLinearMatMul refuses them at run
    time.  Structure and numerics, random weights."""
    torch.manual_seed(0)
    m = _model("ecoformer_pvt_v2_tiny", None)
    result = TARGET.compile(m.graph, load_profile(PROFILE), tmp_path, calibration=_calibration(m, None))
    q = result.details["quantization"]
    assert q["symbolic_shape_inference"].startswith("skipped: it failed on this model")
    batched = q["matmuls_with_batched_weights_kept_float"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    kept = [n for n in model.graph.node if n.name in batched]
    assert batched and len(kept) == len(batched)  # e.g. the hash projections, one per attention
    assert all(n.op_type == "MatMul" and n.input[1] in floats and n.input[1] not in producer for n in kept)
    assert q["int8_op_count"] > 0
    got = _outputs(tmp_path, load_profile(PROFILE), m).ravel()
    assert got @ m.logits.ravel() / np.linalg.norm(got) / np.linalg.norm(m.logits) >= 0.99


def test_a_graph_the_quantizer_refuses_is_one_line_naming_the_fix(tmp_path):
    """Without fold_norm_affine, quantize_static raises a bare ValueError on poolformer_tiny."""
    from edgeformer.compiler import compile as compile_model

    with pytest.raises(UserError, match="onnxruntime.quantization cannot quantize poolformer_tiny") as err:
        compile_model(
            "poolformer_tiny", PROFILE, tmp_path / "o", calib="digits", calib_size=8, passes="-fold_norm_affine"
        )
    assert "keep the default passes" in err.value.fix and not (tmp_path / "o").exists()
