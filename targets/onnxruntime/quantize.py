"""int8: the exported fp32 ONNX quantized with ONNX Runtime's own quantizer (``onnxruntime.quantization``).

Two modes (the profile's ``quantization_mode``):

- **static** (QDQ): ``quant_pre_process`` (symbolic shapes, ORT's basic fusions such as MatMul+Add →
  Gemm), then ``quantize_static`` in QDQ format with per-channel weights and ranges calibrated on
  the compile's :class:`~edgeformer.targets.base.Calibration` samples.  ORT's QDQ transformer then
  fuses DQ → op → Q into integer kernels (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...) when
  it writes ``model.ort``.
- **dynamic**: ``quantize_dynamic`` of MatMul (and Gemm, split into MatMul + Add first: ORT's dynamic
  quantizer has no Gemm) with activation ranges computed per call; Conv stays float, because ORT's
  ``ConvInteger`` has no optimized kernel (static was 25 % faster, onnxruntime#12854).
- **auto** (:func:`choose_mode`): static for a model with any Conv, dynamic for a conv-free one with
  MatMul/Gemm.  Measured here at 1 thread (ms, fp32 / static / dynamic): LMUFormer 6.2 / 1.2 / 4.9
  and lmuformer_tiny 0.065 / 0.043 / 0.066 (its FFN, tokenizer and LMU memory are convs, which
  dynamic leaves float); a conv-free 4-block MatMul transformer 17.4 / 8.9 / 7.6.

Signedness (``int8_scheme``): on x86 the activations are uint8 and the weights int8 (U8S8),
``reduce_range`` off where the CPU has VNNI.  ORT's default S8S8 measured *slower than fp32* here
(EfficientFormer-L1, 2 threads): ``QDQIsInt8Allowed()`` is false off ARM, and MLAS has S8S8 GEMM
kernels only with AVX-VNNI-INT8, so most DQ/Q pairs stay unfused.  On ARM, S8S8 is ORT's fast path.
Without VNNI, x86 needs ``reduce_range`` (7-bit weights, VPMADDUBSW saturation).

Calibration (``METHOD_OPTIONS`` says why each method's options differ from ORT's defaults) writes
the tensor ranges as ORT's JSON cache, ``cache_dir/ort-ranges-<sha256>.json``, keyed by the fp32
ONNX's bytes, the calibration arrays' sha256, the method and its options and the onnxruntime
version; a later compile with the same key skips calibration.  ``quantize_static`` always reads
the ranges from such a file (``calibration_cache_path``), so a cache hit gives the same bytes.

``Calibration.keep_float`` names torch.fx nodes of the rewritten IR; the dynamo exporter re-traces
the program and renames them (the IR's ``conv2d_1`` can be the ONNX's ``conv2d_3``), so names are
never compared directly: :func:`onnx_layers` reads each ONNX node's ``pkg.torch.onnx.fx_node`` and
``pkg.torch.onnx.name_scopes`` metadata and matches IR layers to exported fx nodes by op, module
scope and order, checked against the parameters they take.  The matched ONNX nodes (and the nodes
ORT's pre-processing fused them into, named ``<node>/<Fusion>``) become ``nodes_to_exclude``, and
:func:`keep_inputs_float` then feeds them float tensors: excluded alone, ORT would still quantize
a DQ-fed layer's weights itself and run it as an integer kernel.

What the artifact computes in is read back from ``model.ort`` (:func:`int8_facts`): integer
kernels, Conv/MatMul/Gemm left float, and the DequantizeLinear/QuantizeLinear ORT could not fuse.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError

from .._support import cpu_flags
from ..base import QUANTIZABLE_OPS, Calibration, quantizable_layers

log = logging.getLogger(__name__)

BACKEND = "onnxruntime.quantization"
# ONNX ops that compute in float unless quantized: what int8 should replace, counted when left float.
FLOAT_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"})
# Integer kernels of ORT's CPU provider (besides every QLinear* op).
INTEGER_OPS = frozenset(
    {
        "QGemm",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QAttention",
        "DynamicQuantizeLSTM",
        "QEmbedLayerNormalization",
    }
)
METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
# The calibrator's options per method (``create_calibrator``'s extra_options), part of the cache key.
# Entropy: ORT's defaults (128 histogram bins, 128 quantized bins) leave one candidate threshold,
# the full range, so "entropy" would silently be min/max (checked: identical bytes).  512 bins give
# a real KL search at a bearable cost (ORT's search is a Python loop, quadratic in the bins: 2048
# bins took 160 s on poolformer_tiny).  Measured on the trained digits models it loses to min/max
# (mean |Δlogit| 0.21 vs 0.11 on efficientformer_tiny), so min/max stays the profile's default.
# Percentile: ORT's default range is symmetric, which wastes half of a uint8 activation's codes
# after GELU/ReLU; asymmetric like the other two (max |Δlogit| 0.48 vs 0.54, efficientformer_tiny).
METHOD_OPTIONS: dict[str, dict] = {
    "minmax": {},
    "percentile": {"percentile": 99.999, "num_bins": 2048, "symmetric": False},
    "entropy": {"num_bins": 512, "num_quantized_bins": 128, "symmetric": False},
}


@dataclass
class Int8Scheme:
    """Signedness of activations and weights, and whether weights use 7 bits, for one device."""

    activation_type: str  # onnxruntime.quantization.QuantType member name
    weight_type: str
    reduce_range: bool
    device: str
    reason: str

    @property
    def name(self) -> str:
        return ("U8" if self.activation_type == "QUInt8" else "S8") + ("U8" if self.weight_type == "QUInt8" else "S8")


def profile_arch(profile) -> str:
    """The CPU architecture the profile's artifact runs on: arm64 when the profile's name says so
    (``android-arm64-ort``; profiles have no architecture key), else this machine's (``host-*``)."""
    if re.search(r"\b(arm64|aarch64|arm)\b", profile.name.lower()):
        return "arm64"
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}.get(machine, machine)


def _pre_process(quant_pre_process, src: Path, dst: Path, info: dict, **kw) -> None:
    """``quant_pre_process``; where ORT's symbolic shape inference crashes on the model (it did on
    ecoformer_pvt_v2_tiny, a ``TypeError`` in ``symbolic_shape_infer.py``), again with ONNX's own
    shape inference only, which is all the quantizer needs for a static-shape export."""
    try:
        quant_pre_process(str(src), str(dst), **kw)
    except Exception as err:  # noqa: BLE001 - ORT's shape inference raises anything; retried once
        log.info("quant_pre_process: symbolic shape inference failed (%s); retrying without it", err)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **kw)
        info["symbolic_shape_inference"] = f"skipped: it failed on this model ({type(err).__name__}: {err})"[:300]


def int8_scheme(profile) -> Int8Scheme:
    arch = profile_arch(profile)
    if arch.startswith("arm"):
        return Int8Scheme(
            "QInt8",
            "QInt8",
            False,
            arch,
            "arm64: ORT's QDQ transformer fuses int8 activations on ARM (QDQIsInt8Allowed) and MLAS has S8S8 kernels",
        )
    flags = cpu_flags()
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    if vnni:
        why = (
            "x86 with VNNI: MLAS's int8 GEMM/conv kernels here are U8S8; S8S8 needs AVX-VNNI-INT8 and "
            "measured slower than fp32 (QDQ left unfused)"
        )
    else:
        why = "x86 without VNNI: U8S8 with 7-bit weights (reduce_range) against VPMADDUBSW saturation"
    return Int8Scheme("QUInt8", "QInt8", not vnni, arch, why)


# ------------------------------------------------------------------------------------ mode choice


def choose_mode(requested: str, model) -> tuple[str, str]:
    """``static`` or ``dynamic`` for ``requested`` (static | dynamic | auto), and why."""
    if requested in ("static", "dynamic"):
        return requested, "the profile's quantization_mode"
    ops = Counter(n.op_type for n in model.graph.node)
    convs = ops["Conv"] + ops["ConvTranspose"]
    linears = ops["MatMul"] + ops["Gemm"]
    if convs or not linears:
        return "static", f"auto: {convs} Conv nodes (dynamic mode would leave them float; ConvInteger is slow)"
    return "dynamic", f"auto: no Conv, {linears} MatMul/Gemm nodes (dynamic measured faster on conv-free models)"


# ---------------------------------------------------------------------------------- layer mapping

_FX_NAME = re.compile(r"^%(\w+)\s*:")
_FX_TARGET = re.compile(r"target=([\w.]+)\]")
_FX_ARG = re.compile(r"%(\w+)")


def _op_base(target: str) -> str:
    """``torch.ops.aten.conv2d.default`` / ``conv2d.default`` → ``conv2d``."""
    parts = target.split(".")
    if parts[:3] == ["torch", "ops", "aten"]:
        parts = parts[3:]
    elif parts[:1] == ["aten"]:
        parts = parts[1:]
    return parts[0] if parts else target


@dataclass
class _FxLayer:
    name: str  # the fx node's name (IR or exported program)
    op: str  # conv2d, linear, matmul, ...
    scope: str  # innermost module path ("" at the top)
    params: tuple[str, ...]  # the placeholders (parameters, buffers, constants) it reads
    onnx_nodes: list[str]  # ONNX Conv/MatMul/Gemm nodes exported from it (exported side only)


_PARAM_PREFIXES = ("p_", "b_", "c_")  # torch.export's placeholder names: parameters, buffers, constants


def _is_param(name: str, user_inputs: set[str]) -> bool:
    return name.startswith(_PARAM_PREFIXES) and name not in user_inputs


def _ir_layers(graph) -> list[_FxLayer]:
    names = set(quantizable_layers(graph))
    user_inputs = set(graph.program.graph_signature.user_inputs)
    out = []
    for node in graph.program.graph.nodes:
        if node.name not in names:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        scope = list(stack.values())[-1][0] if stack else ""
        params = tuple(a.name for a in node.all_input_nodes if a.op == "placeholder" and _is_param(a.name, user_inputs))
        out.append(_FxLayer(node.name, _op_base(getattr(node.target, "__name__", str(node.target))), scope, params, []))
    return out


def onnx_layers(model, user_inputs: set[str] = frozenset()) -> list[_FxLayer]:
    """The exported program's conv/linear/matmul fx nodes, read from the ONNX metadata, in graph order."""
    layers: dict[str, _FxLayer] = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        fx = meta.get("pkg.torch.onnx.fx_node", "")
        name, target = _FX_NAME.search(fx), _FX_TARGET.search(fx)
        if not name or not target or _op_base(target.group(1)) not in QUANTIZABLE_OPS:
            continue
        layer = layers.get(name.group(1))
        if layer is None:
            try:
                scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
            except (ValueError, SyntaxError):
                scopes = []
            args = fx.split("](", 1)[1] if "](" in fx else ""
            params = tuple(a for a in _FX_ARG.findall(args) if _is_param(a, user_inputs))
            layer = layers[name.group(1)] = _FxLayer(
                name.group(1), _op_base(target.group(1)), scopes[-2] if len(scopes) >= 2 else "", params, []
            )
        if node.op_type in FLOAT_COMPUTE_OPS:
            layer.onnx_nodes.append(node.name)
    return list(layers.values())


def map_layers(graph, model) -> dict[str, list[str]]:
    """IR layer name → the exported ONNX compute nodes it became (only layers matched for sure).

    IR layers and exported fx nodes are grouped by (op, module scope) and paired in graph order
    when both sides hold the same number; a pair whose parameters differ is dropped.
    """
    user_inputs = set(graph.program.graph_signature.user_inputs)
    ir_side, onnx_side = _ir_layers(graph), onnx_layers(model, user_inputs)
    groups: dict[tuple[str, str], list[list[_FxLayer]]] = defaultdict(lambda: [[], []])
    for layer in ir_side:
        groups[(layer.op, layer.scope)][0].append(layer)
    for layer in onnx_side:
        groups[(layer.op, layer.scope)][1].append(layer)
    mapping: dict[str, list[str]] = {}
    for ir_group, onnx_group in groups.values():
        if len(ir_group) != len(onnx_group):
            continue
        for a, b in zip(ir_group, onnx_group):
            if a.params == b.params and b.onnx_nodes:
                mapping[a.name] = list(b.onnx_nodes)
    return mapping


def _exclusions(names: list[str], model) -> list[str]:
    """The nodes of ``model`` (after ORT's pre-processing) that are, or were fused from, ``names``."""
    wanted = set(names)
    return [n.name for n in model.graph.node if n.name in wanted or n.name.split("/", 1)[0] in wanted]


def _quantizer_call(model_name: str, fn, *args, **kwargs) -> None:
    """``quantize_static`` with its failures as one line: it raises bare ValueErrors on graphs it
    cannot handle (poolformer_tiny without fold_norm_affine: "Quantization parameter shared mode is
    not supported for weight yet")."""
    try:
        fn(*args, **kwargs)
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise UserError(
            f"onnxruntime.quantization cannot quantize {model_name}: {type(err).__name__}: {err}".splitlines()[0],
            "keep the default passes (a dropped pass can leave a graph its quantizer refuses), try "
            'quantization_mode = "dynamic" or another int8 target (host-openvino-int8, host-executorch-int8), '
            "or compile fp32",
        ) from err


def _batched_weight_matmuls(model) -> list[str]:
    """MatMul nodes whose constant B has more than 2 dimensions (EcoFormer's hash projections,
    ``[heads, d, bits]``): quantized per channel they become a QLinearMatMul that ORT refuses to run
    ("weight zero point must be a scalar, 1D tensor of size 1, or last to second dimension is 1")."""
    dims = {t.name: len(t.dims) for t in model.graph.initializer}
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and dims.get(n.input[1], 2) > 2
    ]


# ------------------------------------------------------------------------------------ quantizing


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over the calibration samples."""

    def __init__(self, samples: list[list[np.ndarray]], input_names: list[str]):
        self._feeds = [dict(zip(input_names, (np.ascontiguousarray(a) for a in s))) for s in samples]
        self._i = 0

    def get_next(self):
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self):
        self._i = 0

    def __len__(self):
        return len(self._feeds)


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs through the root logger and its histogram calibrators print progress to
    stdout (the CLI's output): both are silenced while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def ranges_key(onnx_bytes: bytes, calibration: Calibration, method: str) -> str:
    import onnxruntime as ort

    h = hashlib.sha256()
    h.update(hashlib.sha256(onnx_bytes).hexdigest().encode())
    key = {
        "calibration": calibration.sha256,
        "method": method,
        "options": METHOD_OPTIONS[method],
        "ort": ort.__version__,
    }
    h.update(json.dumps(key, sort_keys=True).encode())
    return h.hexdigest()


def _ranges(pre: Path, input_names: list[str], calibration: Calibration, onnx_bytes: bytes, work: Path):
    """The calibrated tensor ranges as ORT's JSON cache file: (path, cache path or None, hit)."""
    cache = None
    if calibration.cache_dir is not None:
        folder = Path(calibration.cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        cache = folder / f"ort-ranges-{ranges_key(onnx_bytes, calibration, calibration.method)}.json"
        if cache.is_file():
            return cache, cache, True
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        pre,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static calibrates by default
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, METHODS[calibration.method]),
        extra_options=dict(METHOD_OPTIONS[calibration.method]),
    )
    calibrator.collect_data(_Reader(calibration.samples, input_names))
    ranges = work / "ranges.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    del calibrator
    if cache is None:
        return ranges, None, False
    fd, tmp = tempfile.mkstemp(prefix=".ort-ranges-", suffix=".tmp", dir=cache.parent)
    os.close(fd)
    shutil.copyfile(ranges, tmp)
    os.replace(tmp, cache)  # complete files only: a parallel compile reads the old or the new one
    return ranges, cache, False


# Activations the QDQ quantizer may drop, folding them into the upstream tensor's quantized range.
_REMOVABLE = frozenset({"Relu", "Clip"})
# Single-input data movement that ORT's optimizers move DequantizeLinear across.
_TRANSPARENT = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def keep_inputs_float(model, pre_model, kept: list[str]) -> dict:
    """Feed the ``kept`` nodes of the QDQ ``model`` float tensors, not dequantized copies.

    ``nodes_to_exclude`` only stops the quantizer from quantizing a node.  When its input is
    quantized anyway (for another consumer, or by a ReLU's own QDQ) it reads
    ``DequantizeLinear(QuantizeLinear(x))``, possibly through a Transpose or Reshape, and ORT's
    WeightBiasQuantization transformer then quantizes the float weights of a DQ-fed Conv/MatMul/Gemm
    *per tensor* and fuses it into an integer kernel: the layer is not float, and less accurate
    than int8 per channel (lmuformer_tiny with its 2nd tokenizer conv "kept": cosine 0.990 → 0.937).
    So each such input path is rebuilt from ``x``: the data-movement nodes between the DQ and the
    kept node are copied, and where the quantizer removed a ReLU/Clip producing ``x`` (its clamp
    then lives in the quantized range) a copy of that activation is put back.  Other consumers keep
    the quantized path.  Returns what was rewired.
    """
    from onnx import helper

    producer = {o: n for n in model.graph.node for o in n.output}
    pre_producer = {o: n for n in pre_model.graph.node for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    wanted, added = set(kept), []
    report: dict = {"rewired": 0, "activations_restored": 0, "nodes_copied": 0, "left_quantized": []}

    def copy_of(node, first_input: str, tag: str):
        suffix = f"{tag}_{len(added)}"  # a removed ReLU's output name is its upstream node's now
        clone = helper.make_node(
            node.op_type, [first_input, *node.input[1:]], [f"{node.output[0]}/{suffix}"], name=f"{node.name}/{suffix}"
        )
        clone.domain = node.domain
        clone.attribute.extend(node.attribute)
        added.append(clone)
        return clone.output[0]

    for node in list(model.graph.node):
        if node.name not in wanted:
            continue
        tag = f"float_for_{node.name}"
        for k, name in enumerate(node.input):
            # Walk up through data movement and Q/DQ pairs to the float tensor the path starts from;
            # ``path`` holds the nodes to copy (kept node first), ``bypassed`` the DQs skipped.
            path, bypassed, t, ok = [], 0, name, True
            while len(path) < 16:
                p = producer.get(t)
                if p is not None and p.op_type == "DequantizeLinear":
                    q = producer.get(p.input[0])
                    if q is None or q.op_type != "QuantizeLinear":
                        ok = False  # a quantized initializer: excluded nodes do not get those
                        break
                    x, before, now = q.input[0], pre_producer.get(q.input[0]), producer.get(q.input[0])
                    bypassed += 1
                    if x not in graph_inputs and not (now and before and now.name == before.name):
                        if before is None or before.op_type not in _REMOVABLE or now is None:
                            ok = False
                            break
                        path.append(before)  # the quantizer dropped this activation: put it back
                    t = x
                elif p is not None and p.op_type in _TRANSPARENT:
                    path.append(p)
                    t = p.input[0]
                else:
                    break
            if not ok:
                report["left_quantized"].append(f"{node.name}:{name}")
                continue
            if not bypassed:
                continue  # already a float path
            source = t
            for p in reversed(path):
                restored = p.op_type in _REMOVABLE and producer.get(p.output[0]) is not p
                source = copy_of(p, source, tag)
                report["activations_restored" if restored else "nodes_copied"] += 1
            node.input[k] = source
            report["rewired"] += 1
    if added:  # topological order: each copy right after the node that produces its input
        have = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
        pre_inits = {t.name: t for t in pre_model.graph.initializer}
        for name in {i for n in added for i in n.input[1:]} - have:  # e.g. a removed Clip's min/max
            if name in pre_inits:
                model.graph.initializer.append(pre_inits[name])
        nodes = list(model.graph.node)
        for extra in added:
            at = next((i for i, n in enumerate(nodes) if extra.input[0] in n.output), -1)
            nodes.insert(at + 1, extra)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    _drop_dead_qdq(model)
    return report


def _drop_dead_qdq(model) -> None:
    """Remove QuantizeLinear/DequantizeLinear nodes whose outputs nothing reads any more."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [
            n
            for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _split_gemms(model) -> int:
    """Gemm(A, B, C) with constant B → MatMul(A, Bᵀ) + C, in place (ORT's dynamic quantizer has no Gemm)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, split = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            nodes.append(node)
            continue
        b = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            b = b.T
        b_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), b_name))
        has_c = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_c else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], b_name], [mm_out], name=node.name))
        if has_c:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}/bias"))
        split += 1
    if split:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        onnx.checker.check_model(model)
    return split


def quantize_int8(graph, onnx_path: Path, profile, calibration: Calibration) -> dict:
    """Quantize the fp32 ``onnx_path`` in place; returns ``details["quantization"]`` (op counts added
    later from ``model.ort`` by :func:`int8_facts`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = calibration.method
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}", f"use one of {', '.join(METHODS)}")
    onnx_bytes = onnx_path.read_bytes()
    model = onnx.load_from_string(onnx_bytes)
    # The calibration context carries the profile's choice; "auto" there defers to the profile.
    requested = calibration.mode if calibration.mode != "auto" else profile.options.quantization_mode
    mode, mode_reason = choose_mode(requested, model)
    scheme = int8_scheme(profile)
    layer_map = map_layers(graph, model)
    kept = [name for name in calibration.keep_float if name in layer_map]
    unmatched = [name for name in calibration.keep_float if name not in layer_map]
    onnx_kept = [n for name in kept for n in layer_map[name]]
    info: dict = {
        "backend": BACKEND,
        "mode": mode,
        "mode_reason": mode_reason,
        "format": "QDQ" if mode == "static" else "IntegerOps (dynamic)",
        "activation_type": "QUInt8" if mode == "dynamic" else scheme.activation_type,
        "weight_type": scheme.weight_type,
        "scheme": "U8S8" if mode == "dynamic" else scheme.name,
        "scheme_reason": scheme.reason if mode == "static" else "dynamic activations are always uint8 in ORT",
        "device": scheme.device,
        "per_channel": True,
        "reduce_range": scheme.reduce_range,
        "method": method if mode == "static" else "dynamic (per-call ranges)",
        "calibration": calibration.to_dict(),
        "kept_float": kept,
        "unmatched_keep_float": unmatched,
        "layers_mapped": f"{len(layer_map)}/{len(quantizable_layers(graph))}",
    }
    with tempfile.TemporaryDirectory(prefix=".ort-quant-", dir=onnx_path.parent) as tmp, _quiet():
        work = Path(tmp)
        pre = work / "pre.onnx"
        if mode == "dynamic":
            split = _split_gemms(model)
            onnx.save(model, str(work / "split.onnx"))
            # no ORT optimization here: it would fuse MatMul + Add back into Gemm
            _pre_process(quant_pre_process, work / "split.onnx", pre, info, skip_optimization=True)
            info["gemms_split"] = split
        else:
            _pre_process(quant_pre_process, onnx_path, pre, info)
        pre_model = onnx.load(str(pre))
        exclude = _exclusions(onnx_kept, pre_model)
        info["onnx_nodes_kept_float"] = exclude
        batched = _batched_weight_matmuls(pre_model)
        if batched:  # ORT's QLinearMatMul takes a per-channel zero point only for a 2-D weight
            info["matmuls_with_batched_weights_kept_float"] = batched
            exclude = [*exclude, *(n for n in batched if n not in exclude)]
        out = work / "int8.onnx"
        if mode == "dynamic":
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                reduce_range=scheme.reduce_range,
                weight_type=getattr(QuantType, scheme.weight_type),
                nodes_to_exclude=exclude,
            )
        else:
            t0 = time.perf_counter()
            inits = {t.name for t in pre_model.graph.initializer}
            inputs = [i.name for i in pre_model.graph.input if i.name not in inits]
            ranges, cache, hit = _ranges(pre, inputs, calibration, onnx_bytes, work)
            info["calibrate_s"] = round(time.perf_counter() - t0, 3)
            # Ranges always come from the file, computed now or cached: the same bytes either way.
            _quantizer_call(
                graph.name,
                quantize_static,
                str(pre),
                str(out),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=scheme.reduce_range,
                activation_type=getattr(QuantType, scheme.activation_type),
                weight_type=getattr(QuantType, scheme.weight_type),
                nodes_to_exclude=exclude,
                calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                calibration_cache_path=str(ranges),
            )
            info["calibration_cache"] = {"path": str(cache) if cache else None, "hit": hit}
            if exclude:
                qdq = onnx.load(str(out))
                info["kept_float_inputs"] = keep_inputs_float(qdq, pre_model, exclude)
                onnx.save(qdq, str(out))
        os.replace(out, onnx_path)
    return info


# -------------------------------------------------------------------------------- what ORT wrote


def ort_nodes(path: Path) -> list[tuple[str, str, list[str], list[str], str]]:
    """(domain, op type, inputs, outputs, name) of every node of an ORT-format file."""
    import onnxruntime.tools.ort_format_model  # noqa: F401 - puts ORT's flatbuffer bindings on sys.path
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    buf = Path(path).read_bytes()
    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    nodes = []
    for i in range(graph.NodesLength()):
        n = graph.Nodes(i)
        nodes.append(
            (
                (n.Domain() or b"").decode(),
                n.OpType().decode(),
                [n.Inputs(j).decode() for j in range(n.InputsLength())],
                [n.Outputs(j).decode() for j in range(n.OutputsLength())],
                (n.Name() or b"").decode(),
            )
        )
    return nodes


def is_integer_op(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in INTEGER_OPS


def int8_facts(ort_path: Path, onnx_model, info: dict) -> tuple[dict, dict[str, bool]]:
    """Op counts of the optimized ``model.ort`` and the quantized ``model.onnx``, and structural checks.

    ``keep_float_applied``: every kept-float node of ``model.onnx`` reads float tensors (no
    DequantizeLinear upstream of it through data movement, no integer initializer), so no ORT
    transformer can turn it into an integer kernel, and ``model.ort`` has at least that many float
    Conv/MatMul/Gemm.  (ORT renames what it fuses: conv + ReLU at level "all" became ``relu_1_nchwc``,
    so nodes are not looked up by name in ``model.ort``.)
    """
    nodes = ort_nodes(ort_path)
    producer = {out: op for _, op, _, outs, _ in nodes for out in outs}
    readers = defaultdict(set)
    for _, op, ins, _, _ in nodes:
        for i in ins:
            readers[i].add(op)
    int8 = Counter(op for _, op, _, _, _ in nodes if is_integer_op(op))
    floats = Counter(op for _, op, _, _, _ in nodes if op in FLOAT_COMPUTE_OPS)
    dq_fed = [
        outs
        for _, op, ins, outs, _ in nodes
        if op in ("Conv", "FusedConv", "ConvTranspose") and any(producer.get(i) == "DequantizeLinear" for i in ins)
    ]
    kept = info.get("onnx_nodes_kept_float", [])
    # a conv whose output feeds a kept-float layer has no Q to fuse with: a boundary, not a miss
    boundary = sum(1 for outs in dq_fed if not any("QuantizeLinear" in readers[o] for o in outs))
    onnx_ops = Counter(n.op_type for n in onnx_model.graph.node)
    facts = {
        "int8_ops": dict(sorted(int8.items())),
        "float_ops": dict(sorted(floats.items())),
        "int8_op_count": sum(int8.values()),
        "float_op_count": sum(floats.values()),
        "dequantize_linear_left": sum(1 for _, op, _, _, _ in nodes if op == "DequantizeLinear"),
        "quantize_linear_left": sum(1 for _, op, _, _, _ in nodes if op == "QuantizeLinear"),
        "dynamic_quantize_linear": sum(1 for _, op, _, _, _ in nodes if op == "DynamicQuantizeLinear"),
        "dequantized_conv_inputs": len(dq_fed),
        "float_boundary_convs": boundary if kept else 0,
        "onnx_quantize_linear": onnx_ops["QuantizeLinear"],
        "onnx_dequantize_linear": onnx_ops["DequantizeLinear"],
        "onnx_integer_ops": dict(sorted((k, v) for k, v in onnx_ops.items() if is_integer_op(k))),
    }
    checks = {}
    if info["mode"] == "static" and (onnx_ops["Conv"] or onnx_ops["ConvTranspose"]):
        # kept-float convs read float tensors (keep_inputs_float): any other DQ → Conv is a missed fusion
        checks["int8_convs_fused"] = len(dq_fed) - (boundary if kept else 0) == 0
    checks["no_conv_integer"] = "ConvInteger" not in int8 and "ConvInteger" not in onnx_ops
    if kept:
        quantized = _quantized_kept(onnx_model, kept)
        facts["kept_float_still_quantized"] = quantized
        checks["keep_float_applied"] = not quantized and facts["float_op_count"] >= len(kept)
    return facts, checks


def _quantized_kept(model, kept: list[str]) -> list[str]:
    """The ``kept`` nodes of ``model`` that read a dequantized tensor or an integer initializer."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}

    def dequantized(t: str) -> bool:
        for _ in range(32):
            p = producer.get(t)
            if p is None or p.op_type not in _TRANSPARENT | {"DequantizeLinear", "DynamicQuantizeLinear"}:
                return False
            if p.op_type in ("DequantizeLinear", "DynamicQuantizeLinear"):
                return True
            t = p.input[0]
        return True

    def integer(t: str) -> bool:
        return t in inits and inits[t] != 1  # TensorProto.FLOAT

    return [
        k
        for k in kept
        if (node := by_name.get(k)) is None or any(dequantized(i) or integer(i) for i in node.input if i)
    ]
