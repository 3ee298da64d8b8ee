"""Core ML weight compression (int8, 4/6-bit palettes) and W8A8, validated structurally on Linux.

``options.compression`` (the compute precision stays ``options.precision``, fp16 on the shipped
profiles):

- ``w8``: ``coremltools.optimize.coreml.linear_quantize_weights``, int8 linear symmetric, one
  scale per output channel → ``constexpr_affine_dequantize`` (iOS16/17 targets) or
  ``constexpr_blockwise_shift_scale`` (iOS18+).  Data-free.
- ``palettize4`` / ``palettize6``: ``palettize_weights``, k-means (sklearn, ``random_state=0``, so
  deterministic) to a 16/64-entry lookup table per tensor → ``constexpr_lut_to_dense``.  Data-free.
- ``w8a8``: int8 weights *and* activations for A17 Pro/M4-class Neural Engines.  coremltools'
  own route (``linear_quantize_activations``) calibrates by predicting, which needs macOS, and its
  torch-side ``CoreMLQuantizer`` fails to import on torch 2.13; so the rewritten IR is quantized
  with torchao PT2E instead (``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(
  is_per_channel=False)``: per-tensor weights and activations, the layout the A17 Pro's int8
  Neural Engine path wants), calibrated on the calibration samples, exported again and converted
  with ``minimum_deployment_target >= iOS17``: the ``quantize``/``dequantize`` pairs become MIL
  ``quantize``/``dequantize`` ops and the int8 weights ``constexpr_affine_dequantize``.  Weights
  PT2E leaves float (constant operands of ops XNNPACK does not annotate, e.g. a matmul with a
  constant matrix) are then int8-compressed weight-only, per tensor, so no large float weight is
  left.

Weight threshold: coremltools compresses a weight only when it has more than ``weight_threshold``
elements (default 2048).  The tiny zoo models' weights are small (the smallest conv/linear
weights: 3x8x3x3 = 216 in efficientformer_tiny, 16x16 = 256 in pvt_v2_tiny, 432 in
poolformer_tiny), so the default would leave most of them float.  :data:`WEIGHT_THRESHOLD` = 128
compresses every conv/linear weight of every zoo model; what it leaves float is at most 256 bytes
(fp16) each, where an int8 copy plus its per-channel scales would save next to nothing.  Rank-1
tensors (biases, norm weights) are never compressed (coremltools refuses them), and neither are
per-channel vectors stored with unit dimensions (a ``(C, 1, 1)`` layer scale): one int8 scale per
element would make them larger, not smaller.

``Calibration.keep_float`` names ``torch.fx`` nodes of the rewritten IR (``quantizable_layers``).
For ``w8a8`` those nodes are left unannotated, so they compute in float with float weights.  For
weight compression each kept layer is mapped to the MIL ``const`` holding its weight (by the
weight's placeholder name, ``p_<param>`` or ``p_<param>_to_fp16``, or by the layer's output
name), which is then excluded with ``op_name_configs``; layers with no weight const (a matmul of
two activations) are recorded as unmatched.

What Linux can say: the MIL op histogram, that no float weight above the threshold is left, that
every conv/linear input of a W8A8 package is a ``quantize``→``dequantize`` pair, the spec version.
Core ML ``predict`` is macOS-only, so accuracy and speed need a Mac.  The numerical effect of the
weights is *emulated*: the weights are decompressed from the MIL program and run in the rewritten
IR in PyTorch fp32 (W8A8: the PT2E reference model the package was converted from); fp16 compute
and Core ML's kernels are not part of that emulation.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError, first_line

from ..executorch.quantize import keep_float_quantizer  # the same XNNPACK quantizer, keep-float aware

log = logging.getLogger(__name__)

SCHEMES = {
    "w8": "int8 weights (linear symmetric, per output channel); float compute",
    "palettize4": "4-bit palettized weights (16-entry k-means lookup table per tensor); float compute",
    "palettize6": "6-bit palettized weights (64-entry k-means lookup table per tensor); float compute",
    "w8a8": "int8 weights and activations, per tensor (torchao PT2E, XNNPACKQuantizer); int8 compute on A17 Pro/M4",
}
WEIGHT_ONLY = ("w8", "palettize4", "palettize6")
CALIBRATED = ("w8a8",)
WEIGHT_THRESHOLD = 128
MEASURED = "accuracy and speed need a Mac (Core ML predict is macOS-only); validated structurally here"
# MIL ops a compressed package is made of (counted in details["quantization"]["ops"])
COMPRESSION_OPS = (
    "constexpr_affine_dequantize",
    "constexpr_blockwise_shift_scale",
    "constexpr_lut_to_dense",
    "quantize",
    "dequantize",
)
_COMPUTE_OPS = ("conv", "conv_transpose", "linear", "matmul")
# the deployment target each scheme needs (constexpr_* ops: iOS16; quantize/dequantize: iOS17)
_MIN_TARGET = {"w8": "iOS16", "palettize4": "iOS16", "palettize6": "iOS16", "w8a8": "iOS17"}
_FLOAT_BITS = {"FLOAT16": 16, "BFLOAT16": 16, "FLOAT32": 32, "FLOAT64": 64}
_OBSERVERS = {"minmax": "MinMaxObserver", "entropy": "HistogramObserver"}
# single-input IR ops a weight may pass through between its placeholder and the layer
_WEIGHT_VIEWS = (
    "t",
    "permute",
    "transpose",
    "view",
    "reshape",
    "_to_copy",
    "to",
    "contiguous",
    "unsqueeze",
    "squeeze",
    "clone",
    "alias",
    "detach",
)
EMULATED_SAMPLES = 4  # calibration samples the W8A8 emulation runs besides the example inputs


# ------------------------------------------------------------------------------------- profile


def check_profile(ct, profile, target, calibration) -> None:
    """Refuse a compression the profile's deployment target or the calibration data cannot carry."""
    compression = profile.options.compression
    need = _MIN_TARGET[compression]
    if target is None or target.value < ct.target[need].value:
        have = target.name if target is not None else "coremltools' default (iOS15)"
        raise UserError(
            f"profile {profile.name}: Core ML compression {compression} needs minimum_deployment_target "
            f">= {need} ({'quantize/dequantize' if compression == 'w8a8' else 'constexpr'} ops), got {have}",
            f'set [options] minimum_deployment_target = "{need}" (or later)',
        )
    if compression in CALIBRATED:
        if calibration is None:
            raise UserError(
                f"profile {profile.name}: Core ML {compression} needs calibration data for its activation ranges",
                "add --calib digits (the tiny digits models), --calib sample-images or --calib FILE.npz|FOLDER",
            )
        if calibration.mode == "dynamic":
            raise UserError(
                f"profile {profile.name}: Core ML has no dynamic activation quantization (W8A8 is static)",
                'set [options] quantization_mode = "static" (or "auto")',
            )
        if calibration.method not in _OBSERVERS:
            raise UserError(
                f"Core ML W8A8 calibration method {calibration.method!r} is not available: torchao's "
                "observers take min/max or a histogram search, no percentile",
                'set calibration_method = "minmax" or "entropy" (the histogram observer)',
            )


# ------------------------------------------------------------------------------ spec inspection


def _dtype(tensor_type) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(tensor_type.dataType)


def _dims(tensor_type) -> list[int]:
    return [int(d.constant.size) for d in tensor_type.dimensions]


def _bits(dtype: str) -> int:
    if dtype in _FLOAT_BITS:
        return _FLOAT_BITS[dtype]
    if dtype == "BOOL":
        return 8
    digits = re.findall(r"\d+", dtype)
    return int(digits[-1]) if digits else 0


def _nbytes(tensor_type) -> int:
    return math.ceil(math.prod(_dims(tensor_type)) * _bits(_dtype(tensor_type)) / 8)


@dataclass
class _Const:
    name: str
    dtype: str
    dims: list[int]
    consumers: list[str]  # op types reading it

    @property
    def elements(self) -> int:
        return math.prod(self.dims)

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_BITS

    @property
    def payload(self) -> bool:
        """Data of a constexpr op (int8 values, scales, a lookup table), not a weight itself."""
        return bool(self.consumers) and all(t.startswith("constexpr_") for t in self.consumers)

    @property
    def vector(self) -> bool:
        """A per-channel vector, possibly stored with unit dims (a (C, 1, 1) layer scale)."""
        return len(self.dims) <= 1 or self.elements == max(self.dims)


@dataclass
class _Spec:
    """The main function's ops of an ML program spec, with producers and consumers by var name."""

    ops: list
    producer: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)

    @classmethod
    def of(cls, spec) -> _Spec:
        fn = spec.mlProgram.functions["main"]
        s = cls(list(fn.block_specializations[fn.opset].operations))
        for op in s.ops:
            for out in op.outputs:
                s.producer[out.name] = op
            for arg in op.inputs.values():
                for a in arg.arguments:
                    if a.name:
                        s.consumers.setdefault(a.name, []).append(op)
        return s

    def input(self, op, key: str):
        """The op producing ``op``'s input ``key`` (None for a function input)."""
        arg = op.inputs.get(key)
        if arg is None or not arg.arguments:
            return None
        return self.producer.get(arg.arguments[0].name)

    def consts(self) -> list[_Const]:
        out = []
        for op in self.ops:
            if op.type != "const":
                continue
            t = op.outputs[0].type.tensorType
            name = op.outputs[0].name
            out.append(_Const(name, _dtype(t), _dims(t), [c.type for c in self.consumers.get(name, [])]))
        return out


def histogram(spec) -> dict[str, int]:
    hist: dict[str, int] = {}
    for op in _Spec.of(spec).ops:
        hist[op.type] = hist.get(op.type, 0) + 1
    return dict(sorted(hist.items()))


def _weight_bytes(s: _Spec) -> tuple[int, int]:
    """(float bytes of every weight uncompressed, bytes as stored): float consts count in both, a
    constexpr op counts its output at its float width before and its data (attributes and
    payload consts) after."""
    before = after = 0
    for c in s.consts():
        if c.payload:
            after += math.ceil(c.elements * _bits(c.dtype) / 8)
        elif c.is_float:
            nbytes = math.ceil(c.elements * _bits(c.dtype) / 8)
            before += nbytes
            after += nbytes
    for op in s.ops:
        if op.type.startswith("constexpr_"):
            before += _nbytes(op.outputs[0].type.tensorType)
            for key, value in op.attributes.items():
                if key != "name" and value.type.WhichOneof("type") == "tensorType":
                    after += _nbytes(value.type.tensorType)
    return before, after


# ----------------------------------------------------------------------------------- keep_float


def _base(target) -> str:
    return getattr(target, "__name__", str(target)).split(".")[0]


def layer_weights(graph, names) -> dict[str, list[str]]:
    """IR node name -> the placeholder names of the parameters/constants its weight comes from
    (through views and casts), for each of ``names`` found in the graph."""
    sig = graph.program.graph_signature
    weights = {*sig.inputs_to_parameters, *sig.inputs_to_buffers, *sig.inputs_to_lifted_tensor_constants}
    nodes = {n.name: n for n in graph.program.graph.nodes}

    def sources(node, depth=0) -> list[str]:
        if node.op == "placeholder":
            return [node.name] if node.name in weights else []
        if node.op == "call_function" and _base(node.target) in _WEIGHT_VIEWS and depth < 8 and node.args:
            first = node.args[0]
            return sources(first, depth + 1) if hasattr(first, "op") else []
        return []

    out = {}
    for name in names:
        node = nodes.get(name)
        if node is None or node.op != "call_function":
            continue
        found = []
        for arg in node.all_input_nodes:
            for ph in sources(arg):
                val = nodes[ph].meta.get("val")
                if val is None or getattr(val, "dim", lambda: 0)() >= 2:
                    found.append(ph)
        out[name] = found
    return out


def _output_names(name: str) -> tuple[str, ...]:
    return (name, f"{name}_cast_fp16", f"{name}_cast_fp32")


def match_kept(spec, graph, keep_float) -> tuple[dict[str, list[str]], set[str], list[str]]:
    """Map kept IR layers onto the ML program: ``(layer -> MIL weight consts, MIL compute ops' output
    names of kept layers, unmatched layer names)``."""
    s = _Spec.of(spec)
    float_consts = {c.name for c in s.consts() if c.is_float and not c.payload and len(c.dims) >= 2}
    by_output = {op.outputs[0].name: op for op in s.ops if op.type in _COMPUTE_OPS and op.outputs}
    placeholders = layer_weights(graph, keep_float)
    consts: dict[str, list[str]] = {}
    kept_ops: set[str] = set()
    unmatched = []
    for layer in keep_float:
        found = []
        for ph in placeholders.get(layer, []):
            found += [n for n in (ph, f"{ph}_to_fp16", f"{ph}_to_fp32") if n in float_consts]
        for out in _output_names(layer):
            op = by_output.get(out)
            if op is None:
                continue
            kept_ops.add(out)
            for key in ("weight", "x", "y"):
                p = s.input(op, key)
                if p is not None and p.type == "const" and p.outputs[0].name in float_consts:
                    found.append(p.outputs[0].name)
        found = sorted(set(found))
        if found:
            consts[layer] = found
        else:
            unmatched.append(layer)
    # compute ops whose weight is a kept const are kept layers too (a renamed output)
    kept_names = {n for v in consts.values() for n in v}
    for out, op in by_output.items():
        p = s.input(op, "weight")
        if p is not None and p.outputs[0].name in kept_names:
            kept_ops.add(out)
    return consts, kept_ops, unmatched


# ------------------------------------------------------------------------------ weight-only path


def skip_names(spec, kept_consts) -> dict[str, None]:
    """op_name_configs entries (None = leave float): kept layers' weights and per-channel vectors."""
    names = {n for v in kept_consts.values() for n in v}
    names |= {c.name for c in _Spec.of(spec).consts() if c.is_float and len(c.dims) >= 2 and c.vector}
    return dict.fromkeys(sorted(names))


def compress_weights(mlmodel, compression: str, skip: dict[str, None], *, granularity: str = "per_channel"):
    """The mlmodel with its weights int8-quantized (w8) or palettized (palettize4/6)."""
    import coremltools.optimize as cto

    if compression.startswith("palettize"):
        cfg = cto.coreml.OpPalettizerConfig(
            mode="kmeans", nbits=int(compression[-1]), granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD
        )
        fn = cto.coreml.palettize_weights
    else:
        cfg = cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity=granularity, weight_threshold=WEIGHT_THRESHOLD
        )
        fn = cto.coreml.linear_quantize_weights
    config = cto.coreml.OptimizationConfig(global_config=cfg, op_name_configs=dict(skip))
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # A tensor with fewer distinct values than the palette is stored exactly (sklearn warns
            # that k-means found fewer clusters); an output channel whose largest |w| is below
            # ~4e-6 has an int8 scale that underflows fp16 to 0 (numpy warns dividing by it),
            # and dequantizes to zeros, which such a channel already is in fp16.
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            return fn(mlmodel, config)
    except Exception as err:  # noqa: BLE001 - the compression passes raise many types
        raise UserError(
            f"Core ML {compression} compression failed: {first_line(err)}", "run with --debug for the trace"
        ) from err


def leftover_weights(spec, kept_consts) -> list[str]:
    """Float weights above the threshold that are neither kept float nor per-channel vectors."""
    kept = {n for v in kept_consts.values() for n in v}
    return [
        c.name
        for c in _Spec.of(spec).consts()
        if c.is_float
        and not c.payload
        and len(c.dims) >= 2
        and not c.vector
        and c.elements > WEIGHT_THRESHOLD
        and c.name not in kept
    ]


# ----------------------------------------------------------------------------------- W8A8 (PT2E)


def _config(method: str):
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import observer

    config = get_symmetric_quantization_config(is_per_channel=False)
    name = _OBSERVERS[method]
    act = dataclasses.replace(
        config.input_activation, observer_or_fake_quant_ctr=getattr(observer, name).with_args(eps=2**-12)
    )
    return dataclasses.replace(config, input_activation=act, output_activation=act), name


def _has_batch_norm(module) -> bool:
    return any(n.op == "call_function" and "batch_norm" in _base(n.target) for n in module.graph.nodes)


@dataclass
class W8A8:
    program: object  # the quantized ExportedProgram (ATen inference dialect)
    float_module: object
    quantized_module: object
    facts: dict


def quantize_activations(graph, calibration, drop_identity_ops) -> W8A8:
    """PT2E on the rewritten IR: prepare (keep_float unannotated), calibrate, convert, export again."""
    import copy

    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = graph.program.module()
    names = {n.name for n in module.graph.nodes if n.op == "call_function"}
    wanted = tuple(calibration.keep_float)
    kept = [n for n in wanted if n in names]
    unmatched = [n for n in wanted if n not in names]
    config, observer = _config(calibration.method)
    try:
        prepared = prepare_pt2e(
            copy.deepcopy(module), keep_float_quantizer(config, frozenset(kept), _has_batch_norm(module))
        )
    except Exception as err:  # noqa: BLE001 - the quantizer's pattern matching on an unusual graph
        raise UserError(
            f"Core ML W8A8: the PT2E quantizer could not prepare {graph.name}: {first_line(err)}",
            'use compression = "w8" (weight-only), or run with --debug for the trace',
        ) from err
    with torch.no_grad():
        for sample in calibration.samples:
            prepared(*[torch.from_numpy(np.asarray(a)).to(t.dtype) for a, t in zip(sample, graph.example_inputs)])
    converted = convert_pt2e(prepared)
    try:
        program = torch.export.export(converted, tuple(graph.example_inputs), strict=False).run_decompositions({})
    except Exception as err:  # noqa: BLE001
        raise UserError(
            f"Core ML W8A8: the quantized {graph.name} could not be exported again: {first_line(err)}",
            'use compression = "w8" (weight-only), or run with --debug for the trace',
        ) from err
    drop_identity_ops(program)
    facts = {
        "backend": "torchao pt2e (XNNPACKQuantizer, per-tensor symmetric) -> coremltools",
        "per_channel": False,
        "observer": observer,
        "calibration_samples": len(calibration.samples),
        "kept_float": kept,
        "unmatched_keep_float": unmatched,
    }
    return W8A8(program, module, converted, facts)


# ---------------------------------------------------------------------------------------- apply


@dataclass
class Compressed:
    mlmodel: object
    facts: dict  # for details["quantization"] (inspect() adds the package's own facts)
    kept_consts: dict[str, list[str]]  # kept IR layer -> its MIL weight consts
    kept_ops: set[str]  # output names of the kept layers' MIL compute ops


def apply(mlmodel, graph, compression: str, calibration, w8a8: W8A8 | None) -> Compressed:
    """Compress the converted ``mlmodel`` (``graph``: the rewritten IR; ``w8a8``: set when the
    mlmodel was converted from the PT2E program)."""
    keep = tuple(calibration.keep_float) if calibration is not None else ()
    kept_consts, kept_ops, unmatched = match_kept(mlmodel.get_spec(), graph, keep)
    facts: dict = {"scheme": compression, "description": SCHEMES[compression], "weight_threshold": WEIGHT_THRESHOLD}
    if w8a8 is None:
        mlmodel = compress_weights(mlmodel, compression, skip_names(mlmodel.get_spec(), kept_consts))
        facts["kept_float"] = sorted(kept_consts)
        facts["unmatched_keep_float"] = unmatched
        facts["kept_float_weights"] = kept_consts
        facts["emulated"] = emulate_weights(mlmodel, graph)
    else:
        facts.update(w8a8.facts)
        facts["kept_float_weights"] = kept_consts
        # weights PT2E left float (constant operands of ops it does not annotate): int8 weight-only
        leftovers = leftover_weights(mlmodel.get_spec(), kept_consts)
        facts["weight_only_int8"] = leftovers
        if leftovers:
            skip = skip_names(mlmodel.get_spec(), kept_consts)
            mlmodel = compress_weights(mlmodel, "w8", skip, granularity="per_tensor")
        facts["emulated"] = emulate_w8a8(w8a8, graph, calibration)
    if calibration is not None:
        facts["calibration"] = calibration.to_dict()
    return Compressed(mlmodel, facts, kept_consts, kept_ops)


# ------------------------------------------------------------------------------------ emulation


def _compare(ref_outputs, got_outputs) -> dict:
    max_abs, cos = 0.0, 1.0
    for ref, got in zip(ref_outputs, got_outputs):
        r = np.asarray(ref, dtype=np.float64).ravel()
        g = np.asarray(got, dtype=np.float64).ravel()
        max_abs = max(max_abs, float(np.abs(r - g).max()) if r.size else 0.0)
        denom = float(np.linalg.norm(r) * np.linalg.norm(g))
        cos = min(cos, float(r @ g / denom) if denom > 0 else 1.0)
    return {"max_abs_error": max_abs, "min_cosine": cos}


def _outputs(result) -> list[np.ndarray]:
    items = result if isinstance(result, (tuple, list)) else [result]
    return [t.detach().float().numpy() for t in items]


def _metrics(ref_fn, got_fn, inputs) -> dict:
    import torch

    worst = {"max_abs_error": 0.0, "min_cosine": 1.0}
    with torch.no_grad():
        for args in inputs:
            m = _compare(_outputs(ref_fn(*args)), _outputs(got_fn(*args)))
            worst["max_abs_error"] = max(worst["max_abs_error"], m["max_abs_error"])
            worst["min_cosine"] = min(worst["min_cosine"], m["min_cosine"])
    return worst


def emulate_weights(mlmodel, graph) -> dict:
    """The compressed weights decompressed from the MIL program and run in the rewritten IR (fp32)."""
    import torch

    prog = getattr(mlmodel, "_mil_program", None)
    if prog is None:
        return {"skipped": "no MIL program in memory"}
    sig = graph.program.graph_signature
    to_fqn = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    module = graph.program.module()
    current = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    values, compressed = {}, 0
    for op in prog.functions["main"].operations:
        if not op.op_type.startswith("constexpr_"):
            continue
        compressed += 1
        base = re.sub(r"_(quantized|palettized)$", "", op.name)
        base = re.sub(r"_to_fp(16|32)$", "", base)
        fqn = to_fqn.get(base)
        if fqn is None or fqn not in current:
            continue
        val = np.asarray(op.materialized_val_inference(), dtype=np.float32)
        if tuple(val.shape) != tuple(current[fqn].shape):
            continue
        values[fqn] = torch.from_numpy(val)
    inputs = [tuple(graph.example_inputs)]
    metrics = _metrics(module, lambda *a: torch.func.functional_call(module, values, a, strict=False), inputs)
    return {
        "method": "emulated: weights decompressed from the MIL program, run in the rewritten IR in PyTorch fp32 "
        "(fp16 compute and Core ML kernels not emulated)",
        "weights_emulated": len(values),
        "weights_compressed": compressed,
        "inputs": len(inputs),
        **metrics,
    }


def emulate_w8a8(q: W8A8, graph, calibration) -> dict:
    """The PT2E reference model (the graph the package was converted from) against the float IR."""
    import torch

    inputs = [tuple(graph.example_inputs)]
    for sample in calibration.samples[:EMULATED_SAMPLES]:
        inputs.append(tuple(torch.from_numpy(np.asarray(a)).to(t.dtype) for a, t in zip(sample, graph.example_inputs)))
    return {
        "method": "emulated: the PT2E reference (quantize/dequantize) model in PyTorch fp32, the graph the package "
        "was converted from (fp16 compute and Core ML's int8 kernels not emulated)",
        "inputs": len(inputs),
        "inputs_from": "example inputs and the first calibration samples",
        **_metrics(q.float_module, q.quantized_module, inputs),
    }


# ------------------------------------------------------------------------------------- checking


def inspect(spec, compression: str, kept_consts: dict[str, list[str]], kept_ops: set[str], package: Path):
    """``(facts, checks)`` for details["quantization"] and the structural checks."""
    s = _Spec.of(spec)
    hist: dict[str, int] = {}
    for op in s.ops:
        hist[op.type] = hist.get(op.type, 0) + 1
    kept = {n for v in kept_consts.values() for n in v}
    left = [c for c in s.consts() if c.is_float and not c.payload and c.consumers]
    largest = max(left, key=lambda c: (c.elements, c.name), default=None)
    above = [
        c.name
        for c in left
        if len(c.dims) >= 2 and not c.vector and c.elements > WEIGHT_THRESHOLD and c.name not in kept
    ]
    before, after = _weight_bytes(s)
    weight_file = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    compressed_ops = [op for op in s.ops if op.type.startswith("constexpr_")]
    facts = {
        "ops": {t: hist.get(t, 0) for t in COMPRESSION_OPS},
        "compressed_weights": len(compressed_ops),
        "largest_float_const": (
            {"name": largest.name, "shape": largest.dims, "elements": largest.elements} if largest else None
        ),
        "float_weights_above_threshold": sorted(above),
        "weights_bytes_before": before,
        "weights_bytes_after": after,
        "compression_ratio": round(before / after, 3) if after else None,
        "weight_file_bytes": weight_file.stat().st_size if weight_file.is_file() else 0,
    }
    checks = {
        "weights_compressed": bool(compressed_ops) and not above,
        "spec_version_supports_compression": int(spec.specificationVersion) >= (8 if compression == "w8a8" else 7),
    }
    if compression.startswith("palettize"):
        entries = 2 ** int(compression[-1])
        luts = [op for op in s.ops if op.type == "constexpr_lut_to_dense"]
        checks["palette_sizes_match"] = bool(luts) and all(_lut_entries(s, op) == entries for op in luts)
    elif compression == "w8":
        checks["weights_int8"] = bool(compressed_ops) and all(_int8_data(s, op) for op in compressed_ops)
    if compression == "w8a8":
        gemms = [op for op in s.ops if op.type in ("conv", "conv_transpose", "linear")]
        quantized = [op for op in gemms if op.outputs[0].name not in kept_ops]
        unquantized = [op.outputs[0].name for op in quantized if not _qdq_input(s, op)]
        facts["quantized_layers"] = len(quantized) - len(unquantized)
        facts["float_layers"] = sorted(kept_ops & {op.outputs[0].name for op in gemms})
        facts["layers_without_qdq_input"] = unquantized
        checks["activations_quantized"] = bool(quantized) and not unquantized
        checks["weights_per_tensor"] = (
            all(_per_tensor(op) for op in s.ops if op.type == "constexpr_affine_dequantize")
            and hist.get("constexpr_affine_dequantize", 0) > 0
        )
    return facts, checks


def _attr_or_input(s: _Spec, op, key: str):
    """The tensor type of ``op``'s attribute or const input ``key``."""
    if key in op.attributes:
        return op.attributes[key].type.tensorType
    p = s.input(op, key)
    return p.outputs[0].type.tensorType if p is not None else None


def _lut_entries(s: _Spec, op) -> int:
    """Palette size of a constexpr_lut_to_dense (iOS16: lut [2^n]; iOS18: lut [..., 2^n, vector])."""
    t = _attr_or_input(s, op, "lut")
    dims = _dims(t) if t is not None else []
    if len(dims) == 1:
        return dims[0]
    return dims[-2] if len(dims) >= 2 else 0


def _int8_data(s: _Spec, op) -> bool:
    t = _attr_or_input(s, op, "quantized_data") or _attr_or_input(s, op, "data")
    return t is not None and _dtype(t) in ("INT8", "UINT8")


def _per_tensor(op) -> bool:
    scale = op.attributes.get("scale")
    return scale is not None and math.prod(_dims(scale.type.tensorType)) == 1


def _qdq_input(s: _Spec, op) -> bool:
    """``op``'s activation input is ``dequantize(quantize(...))``."""
    dq = s.input(op, "x")
    if dq is None or dq.type != "dequantize":
        return False
    q = s.input(dq, "input")
    return q is not None and q.type == "quantize"
