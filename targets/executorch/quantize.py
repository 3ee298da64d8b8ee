"""int8 for ExecuTorch/XNNPACK: PT2E with XNNPACK's own quantizer on the rewritten IR.

Flow (executorch 1.5.1, torchao 0.18; docs/specs QUANTIZATION.md §3)::

    IR' (after the target's passes) ─ .module() ─ prepare_pt2e(XNNPACKQuantizer) ─ calibrate ─
    convert_pt2e ─ torch.export ─ to_edge_transform_and_lower(XnnpackPartitioner) ─ model.pte

The rewritten IR's ``program.module()`` keeps the IR's ``torch.fx`` node names (``conv2d_3``,
``linear``), so ``Calibration.keep_float`` names the same nodes here as ``quantizable_layers``
lists.  Those nodes are left unannotated (``KeepFloat``): XNNPACKQuantizer's filter function is
applied to every node of an annotation partition, inputs included, so filtering a kept conv would
also leave the add after it in float; instead their annotations are removed after the quantizer
annotated the graph and before it propagates shared ranges through views and permutes.

Modes (``options.quantization_mode``):

- ``static``: int8 activations with ranges from the calibration samples, per-channel symmetric
  int8 weights (``get_symmetric_quantization_config(is_per_channel=True)``).  XNNPACK then runs
  conv, linear, add, mul, cat, relu and the views/permutes between them in int8; sub (which the
  quantizer does not annotate), GELU, softmax, avg_pool2d and bmm run in fp32 inside the delegate
  between a dequantize and a quantize, and layer_norm falls back to the portable kernel.
- ``dynamic``: linear inputs quantized per call inside XNNPACK's GEMM (``is_dynamic=True``);
  everything else stays fp32 (LMUFormer's conv1d too).  The calibration samples are not used: the
  example inputs run once, for the weight observers.
- ``auto``: dynamic for conv-free models, static otherwise (:func:`choose_mode` has the measurement).

``calibration.method``: ``minmax`` takes each activation's observed min/max
(``MinMaxObserver``); ``entropy`` uses XNNPACK's own default, ``HistogramObserver``, which
searches a histogram for the range with the least quantization error; ``percentile`` has no
observer in torchao and is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import operator

from edgeformer.errors import UserError, first_line
from edgeformer.passes import bn_scale_shift

from .._support import input_shapes
from ..base import quantizable_layers

STATIC, DYNAMIC = "static", "dynamic"
# Edge-dialect conv/linear ops, for the float_ops count.
_EDGE_GEMMS = ("convolution", "linear", "addmm", "mm")
_OBSERVERS = {"minmax": "MinMaxObserver", "entropy": "HistogramObserver"}


# ----------------------------------------------------------------------------------------- mode


def layer_mix(graph) -> dict[str, int]:
    """Counts of the IR's linear and conv calls (``linear``, ``conv``)."""
    mix = {"linear": 0, "conv": 0}
    for node in graph.program.graph.nodes:
        if node.op != "call_function":
            continue
        base = getattr(node.target, "__name__", "").split(".")[0]
        if base == "linear":
            mix["linear"] += 1
        elif base in ("conv1d", "conv2d", "convolution"):
            mix["conv"] += 1
    return mix


def choose_mode(graph, requested: str) -> tuple[str, str]:
    """``(mode, why)`` for ``quantization_mode`` ``static``/``dynamic``/``auto``.

    ``auto`` is dynamic for a conv-free model (linear layers only), static otherwise.  Dynamic
    quantizes linear layers only (XNNPACK's qd8 GEMMs: the input quantized per call inside the op,
    no q/dq around the float ops); static also runs convs, adds and muls in int8.  Measured at 2
    threads against the fp32 .pte (random weights, 32 random calibration inputs):

    - LMUFormer 1×128×128 (9 conv1d, 3 linear after the passes): static 5.5 ms (2.8×), dynamic
      14.1 ms (1.07×), fp32 15.1 ms.  Its MLP and tokenizer are convs, which dynamic leaves fp32.
      On the trained lmuformer_tiny both agree ≥ 99.4 % with fp32 top-1.
    - A conv-free 4-block MLP stack 1×128×256 (10 linear, LayerNorm, GELU): dynamic 5.9 ms (3.7×,
      cosine 0.99994), static 7.8 ms (2.8×, cosine 0.9976).
    - PVT-v2-b0 (41 linear, 18 conv): static lowers (cosine 0.994); dynamic fails in XNNPACK's
      ChannelsLastTaggedReshapePass, so "mostly linear" is not enough for dynamic.
    """
    if requested in (STATIC, DYNAMIC):
        return requested, f"quantization_mode = {requested}"
    mix = layer_mix(graph)
    counts = f"{mix['conv']} conv, {mix['linear']} linear"
    if mix["linear"] and not mix["conv"]:
        return DYNAMIC, f"auto: conv-free model ({counts}): dynamic, measured faster and closer than static there"
    return STATIC, f"auto: {counts}: static, which also runs convs in int8 (dynamic covers linear only)"


# ------------------------------------------------------------------------------------ quantizer


def _config(mode: str, method: str, per_channel: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import observer

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=mode == DYNAMIC)
    if mode == DYNAMIC:
        return config, "PlaceholderObserver (ranges per call)"
    if method not in _OBSERVERS:
        raise UserError(
            f"ExecuTorch int8 calibration method {method!r} is not available: torchao's observers take "
            "min/max or a histogram search, no percentile",
            'set calibration_method = "minmax" or "entropy" (XNNPACK\'s default histogram observer)',
        )
    name = _OBSERVERS[method]
    act = config.input_activation
    act = dataclasses.replace(act, observer_or_fake_quant_ctr=getattr(observer, name).with_args(eps=2**-12))
    return dataclasses.replace(config, input_activation=act, output_activation=act), name


def keep_float_quantizer(config, keep: frozenset[str], batch_norms: bool):
    """XNNPACK's PT2E quantizer with ``config``, leaving the ``keep`` nodes in float (also the Core ML
    W8A8 path's quantizer, ``targets/coreml/compress.py``)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import propagate_annotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    class KeepFloat(XNNPACKQuantizer):
        """XNNPACKQuantizer that leaves the ``keep`` nodes unannotated (float), their neighbours not.

        Without batch norms in the graph (fold_batchnorm ran) the conv-bn patterns cannot match;
        they are dropped, since matching them exports 12 pattern graphs (a third of prepare_pt2e)."""

        SUPPORTED_PATTERNS = [q for q in XNNPACKQuantizer.SUPPORTED_PATTERNS if batch_norms or "_bn" not in q.name]

        def annotate(self, model):
            model = self._annotate_for_quantization_config(model)
            for node in model.graph.nodes:
                if node.name in keep:
                    node.meta.pop(Q_ANNOTATION_KEY, None)
            propagate_annotation(model)
            return model

    return KeepFloat().set_global(config)


def quantize(graph, calibration, mode: str, per_channel: bool = True):
    """``(exported int8 program, facts)`` for the rewritten IR: prepare, calibrate, convert, export."""
    import torch

    if any(-1 in s for s in input_shapes(graph)):
        raise UserError(
            f"ExecuTorch int8 quantization of {graph.name} needs static shapes", "compile without dynamic batch"
        )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    layers = _quantizable(graph)
    wanted = tuple(calibration.keep_float)
    kept = [n for n in wanted if n in layers]
    unmatched = [n for n in wanted if n not in layers]
    config, observer = _config(mode, calibration.method, per_channel)
    module = copy.deepcopy(graph.program.module())
    as_convs = batch_norms_as_convs(module) if mode == STATIC else []
    as_conv2d = float_conv1d_as_conv2d(module, frozenset(kept))
    keep = frozenset(kept) | {f"{n}_as_conv2d" for n in as_conv2d}
    try:
        prepared = prepare_pt2e(module, keep_float_quantizer(config, keep, _has_batch_norm(graph)))
    except Exception as err:  # noqa: BLE001 - the quantizer's pattern matching on an unusual graph
        raise UserError(
            f"ExecuTorch int8: XNNPACK's quantizer could not prepare {graph.name}: {first_line(err)}",
            'compile with precision = "fp32", or run with --debug for the trace',
        ) from err
    # Weight observers record their ranges in the forward pass too: dynamic mode runs the example
    # inputs once (its activation ranges are taken per call), static mode the calibration samples.
    samples = (
        [[t.detach() for t in graph.example_inputs]]
        if mode == DYNAMIC
        else [[torch.from_numpy(a).to(t.dtype) for a, t in zip(s, graph.example_inputs)] for s in calibration.samples]
    )
    with torch.no_grad():
        for sample in samples:
            prepared(*sample)
    converted = convert_pt2e(prepared)
    try:
        program = torch.export.export(converted, tuple(graph.example_inputs), strict=False)
    except Exception as err:  # noqa: BLE001
        raise UserError(
            f"ExecuTorch int8: the quantized {graph.name} could not be exported again: {first_line(err)}",
            'compile with precision = "fp32", or run with --debug for the trace',
        ) from err
    facts = {
        "backend": "pt2e+xnnpack",
        "mode": mode,
        "per_channel": per_channel,
        "observer": observer,
        "calibration_used": mode == STATIC,
        "kept_float": kept,
        "unmatched_keep_float": unmatched,
    }
    if as_convs:
        facts["batch_norms_as_convs"] = as_convs
    return program, facts


_CONVS = ("conv1d", "conv2d", "convolution")


def _attr(module, target: str):
    """``module``'s attribute at the dotted ``target`` of a get_attr node."""
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def batch_norms_as_convs(module) -> list[str]:
    """Rewrite ``module``'s inference batch norms that do not follow a conv into the depthwise
    1-tap conv they compute, ``w = γ / √(σ² + ε)``, ``b = β − μ·w``; returns their node names.

    A batch norm after a conv is left to the quantizer's conv-bn patterns, which fold it.
    """
    import torch

    def getattr_path(target):
        return _attr(module, target)

    graph, done = module.graph, []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.batch_norm.default:
            continue
        x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
        rank = x.meta["val"].dim() if "val" in x.meta else 0
        if training or rank not in (3, 4) or any(k in str(x.target) for k in _CONVS):
            continue
        if any(a is not None and a.op != "get_attr" for a in (weight, bias, mean, var)):
            continue
        with torch.no_grad():
            mu = getattr_path(mean.target)
            gamma = getattr_path(weight.target) if weight is not None else torch.ones_like(mu)
            beta = getattr_path(bias.target) if bias is not None else torch.zeros_like(mu)
            w, b = (t.to(mu.dtype) for t in bn_scale_shift(gamma, beta, mu, getattr_path(var.target), eps))
        channels = w.numel()
        w = w.reshape(channels, 1, *([1] * (rank - 2)))
        names = []
        for suffix, value in (("weight", w), ("bias", b)):
            name = f"{node.name}_as_conv_{suffix}"
            module.register_parameter(name, torch.nn.Parameter(value.contiguous(), requires_grad=False))
            names.append(name)
        with graph.inserting_before(node):
            w_node, b_node = graph.get_attr(names[0]), graph.get_attr(names[1])
            w_node.meta["val"], b_node.meta["val"] = w, b
            conv = torch.ops.aten.conv1d.default if rank == 3 else torch.ops.aten.conv2d.default
            ones, zeros = [1] * (rank - 2), [0] * (rank - 2)
            new = graph.create_node(
                "call_function", conv, (x, w_node, b_node, ones, zeros, ones, channels), name=f"{node.name}_as_conv"
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        done.append(node.name)
    if done:
        module.recompile()
    return done


def float_conv1d_as_conv2d(module, keep: frozenset[str]) -> list[str]:
    """Rewrite the ``keep`` (float) conv1d nodes of ``module`` into the conv2d over a height-1 view
    they compute (view to N×C×1×L, conv2d, view back); returns their node names.

    ExecuTorch 1.5.1's XNNPACK delegate reshapes a conv1d itself, and for a float conv1d between int8
    neighbours it emits a squeeze on an undefined value ("Failed to create squeeze node 65535"), so
    the program does not load: lmuformer_tiny could keep none of its convs in float.  As a conv2d
    between two views it loads, and runs in float inside the delegate.
    """
    import torch

    aten = torch.ops.aten
    graph, done = module.graph, []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.conv1d.default or node.name not in keep:
            continue
        defaults = [None, [1], [0], [1], 1]  # bias, stride, padding, dilation, groups
        x, weight, bias, stride, padding, dilation, groups = [*node.args, *defaults[len(node.args) - 2 :]]
        if weight.op != "get_attr":
            continue
        obj = _attr(module, weight.target)
        name = f"{node.name}_as_conv2d_weight"
        w2 = obj.detach().unsqueeze(2).contiguous()
        module.register_parameter(name, torch.nn.Parameter(w2, requires_grad=False))
        with graph.inserting_before(node):
            w_node = graph.get_attr(name)
            w_node.meta["val"] = w2
            _, c, length = x.meta["val"].shape
            x2 = graph.call_function(aten.view.default, (x, [-1, c, 1, length]))
            conv = graph.create_node(
                "call_function",
                aten.conv2d.default,
                (x2, w_node, bias, [1, *stride], [0, *padding], [1, *dilation], groups),
                name=f"{node.name}_as_conv2d",
            )
            out = graph.call_function(aten.view.default, (conv, [-1, *node.meta["val"].shape[1:]]))
        x2.meta = {**x.meta, "val": x.meta["val"].unsqueeze(2)}
        conv.meta = {**node.meta, "val": node.meta["val"].unsqueeze(2)}
        out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        done.append(node.name)
    if done:
        module.recompile()
    return done


def _has_batch_norm(graph) -> bool:
    return any(n.op == "call_function" and "batch_norm" in str(n.target) for n in graph.program.graph.nodes)


def _quantizable(graph) -> set[str]:
    return set(quantizable_layers(graph))


# ------------------------------------------------------------------------------------ placement


def _quant_precisions() -> dict[str, set[str]]:
    """Op name (``convolution``, overloads merged) -> the quant precisions XNNPACK's partitioner takes it in."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    out: dict[str, set[str]] = {}
    for cls in ALL_PARTITIONER_CONFIGS:
        try:
            precisions = {p.name for p in cls().supported_precision_types()}
        except Exception:  # noqa: BLE001, S112 - a config that needs arguments: not a compute op here
            continue
        base = cls.target_name.split(".")[0]
        out[base] = out.get(base, set()) | (precisions & {"STATIC_QUANT", "DYNAMIC_QUANT"})
    return out


def _is_qdq(node) -> bool:
    name = str(node.target)
    return any(k in name for k in ("quantize_per_", "dequantize_", "quantize_affine", "choose_qparams"))


def _is_dequant(node) -> bool:
    return hasattr(node, "target") and "dequantize" in str(node.target)


def _is_quant(node) -> bool:
    name = str(getattr(node, "target", ""))
    return "quantize_per_" in name and "dequantize" not in name


def _reads_writes_int8(node, mode: str) -> bool:
    """XNNPACK runs ``node`` in int8: static, every tensor input is dequantized int8 and every user
    quantizes its output again (else it runs in fp32 between convert nodes); dynamic, its inputs
    are dequantized (activation per call, weight per channel) and its output is float."""
    inputs = [a for a in node.all_input_nodes if a.op != "placeholder" or not _is_param_like(a)]
    if not inputs or not all(_is_dequant(a) for a in inputs):
        return False
    return mode == DYNAMIC or _quantized_output(node)


# Activations XNNPACK fuses into the op before them (output clamping): look through them.
_FUSED = ("relu", "hardtanh", "clamp")


def _quantized_output(node) -> bool:
    users = list(node.users)
    if len(users) == 1 and any(f"aten.{f}" in str(users[0].target) for f in _FUSED):
        users = list(users[0].users)
    return bool(users) and all(_is_quant(u) for u in users)


def _is_param_like(node) -> bool:
    """A lifted bias or constant (a placeholder that is not a dequantize): not an activation."""
    val = node.meta.get("val")
    return val is not None and getattr(val, "dim", lambda: 0)() <= 1


def _ir_layer(node, layers: set[str]) -> str | None:
    """The IR conv/linear an edge node came from (the root of its ``from_node`` provenance)."""
    found, sources = None, node.meta.get("from_node") or []
    while sources:
        src = sources[-1]
        if getattr(src, "name", None) in layers:
            found = src.name
        sources = getattr(src, "from_node", None) or []
    return found


def int8_placement(edge_program, mode: str, layers: set[str] = frozenset()) -> dict:
    """What runs in int8: quantized ops inside the XNNPACK delegates, conv/linear left float, and ops
    outside any delegate.

    An op inside a delegate counts as int8 when XNNPACK's partitioner config for its type takes it
    in the mode's quantized precision and it reads (and, static, writes) int8 tensors, which XNNPACK
    fuses into an int8 kernel (:func:`_reads_writes_int8`); other ops between a dequantize and a
    quantize (GELU, avg_pool2d) run in fp32 between XNNPACK convert nodes.  ``float_layers`` names
    the IR conv/linear nodes (of ``layers``) left in float, a kept layer among them.
    """
    precision = "DYNAMIC_QUANT" if mode == DYNAMIC else "STATIC_QUANT"
    supported = _quant_precisions()
    gm = edge_program.graph_module
    int8: dict[str, int] = {}
    float_gemm: dict[str, int] = {}
    fallback: dict[str, int] = {}
    float_layers: list[str] = []

    def gemm(node) -> bool:
        return _short(_op_label(node.target)) in _EDGE_GEMMS

    def left_float(node) -> None:
        label = _short(_op_label(node.target))
        float_gemm[label] = float_gemm.get(label, 0) + 1
        if (name := _ir_layer(node, layers)) is not None:
            float_layers.append(name)

    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            for inner in getattr(gm, node.name).original_module.graph.nodes:
                if inner.op != "call_function" or inner.target is operator.getitem or _is_qdq(inner):
                    continue
                label = _op_label(inner.target)
                quantized = precision in supported.get(_short(label), set()) and _reads_writes_int8(inner, mode)
                if quantized:
                    int8[_short(label)] = int8.get(_short(label), 0) + 1
                elif gemm(inner):
                    left_float(inner)
        elif node.op == "call_function" and node.target is not operator.getitem:
            if "executorch_call_delegate" in str(node.target):
                continue
            label = _op_label(node.target)
            fallback[_short(label)] = fallback.get(_short(label), 0) + 1
            if gemm(node):
                left_float(node)
    return {
        # the same keys as the ORT and OpenVINO int8 paths: op type -> count, and the totals
        "int8_ops": dict(sorted(int8.items())),
        "float_ops": dict(sorted(float_gemm.items())),
        "int8_op_count": sum(int8.values()),
        "float_op_count": sum(float_gemm.values()),
        "float_layers": float_layers,
        "fallbacks": sum(fallback.values()),
        "fallback_op_types": dict(sorted(fallback.items())),
    }


def _op_label(target) -> str:
    """Edge-dialect target → ``aten.mean.dim`` style name."""
    name = getattr(target, "__name__", None) or str(target)
    schema = getattr(target, "_schema", None)
    if schema is not None:
        base = schema.name.replace("::", ".")
        return f"{base}.{schema.overload_name}" if schema.overload_name else base
    return name


def _short(label: str) -> str:
    """aten.where.self → where; dim_order_ops._to_dim_order_copy → _to_dim_order_copy"""
    parts = label.split(".")
    return parts[1] if len(parts) > 1 else parts[0]
