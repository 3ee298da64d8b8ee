"""int8 for the OpenVINO target: NNCF post-training quantization of the converted ``ov.Model``.

``nncf.quantize`` inserts FakeQuantize nodes, which OpenVINO's CPU plugin folds into u8/i8
kernels (oneDNN with VNNI/AMX).  The settings, measured on a 2-core AVX512-VNNI/AMX Xeon (trained
digits models: 360 held-out images, 64 calibration images; EfficientFormer-L1: 224², random weights):

- NNCF's default preset (``performance``: symmetric weights and activations, the CNN placement).
  ``ModelType.TRANSFORMER`` leaves the pool mixer's AvgPool/Subtract and the GroupNorm inputs
  unquantized; it was no faster on L1 and less accurate (the planning measurements).
- ``target_device`` follows the profile's device (CPU here; ``CPU_SPR`` was no faster on L1 and
  left one linear in float); ``subset_size`` is every calibration sample given.
- Full ``BiasCorrection`` (``fast_bias_correction=False``), not NNCF's default FastBiasCorrection,
  which broke the trained ``efficientformer_tiny``: 44 % top-1 agreement with fp32 at 64, 128 and
  300 samples alike, against 99.4 % with the full one and 99.2 % with none.  The full one also had
  the lowest error (mean |Δlogit| 0.045, against 0.12 with none and 1.47 with the fast one).  It
  took no longer on the tiny models and 2.4x the fast one's time on L1.
- ``OverflowFix.DISABLE`` (full 8-bit weights in the first conv too): NNCF's default 7-bit
  first-layer weights only guard against ``VPMADDUBSW`` saturation on CPUs without VNNI, where
  :func:`overflow_fix` keeps it.  On L1 both ran alike and were equally accurate.
- ``calibration_method``: ``minmax`` is the global min/max over the calibration set
  (``RangeEstimatorParametersSet.MINMAX`` for activations, as the other targets' minmax; NNCF's own
  default, the mean of per-sample min/max, was no more accurate on L1), ``percentile`` the mean of
  per-sample 0.01 %/99.99 % quantiles (``MEAN_QUANTILE``), ``entropy`` NNCF's histogram search for
  the range of least quantization error (``HISTOGRAM``).  Weights always use their own min/max.

Keeping layers in float (``Calibration.keep_float``): those are ``torch.fx`` node names of the
rewritten IR (:func:`~edgeformer.targets.base.quantizable_layers`).  ``ov.convert_model`` first
runs OpenVINO's decompositions on the ExportedProgram, which renames nodes (``conv2d_3`` becomes
``convolution_3``) but records each new node's origin in ``meta["from_node"]``; OpenVINO names the
ops it converts a node into ``<node>/<aten op>/<OV op>``.  :func:`layer_ops` follows that chain
from an IR layer to its Convolution/MatMul ops, which go to ``nncf.IgnoredScope(names=...)``.

What ran in int8 is read back from the compiled model's runtime graph (:func:`runtime_precisions`):
every Convolution/FullyConnected/MatMul node's ``runtimePrecision``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence

from edgeformer.errors import UserError

from ..base import Calibration, quantizable_layers

log = logging.getLogger(__name__)

# OV ops NNCF quantizes as a layer (its weights and its input activations)
WEIGHTED_OPS = frozenset(
    {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul"}
)
# runtime-graph layer types counted in the int8/float summary
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul")
INT8_PRECISIONS = frozenset({"u8", "i8"})
# profile calibration_method -> NNCF RangeEstimatorParametersSet attribute (activations)
RANGE_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}
# profile device -> nncf.TargetDevice member
TARGET_DEVICES = {"CPU": "CPU", "GPU": "GPU", "NPU": "NPU"}
PRESET = "performance"  # NNCF's default preset for model_type=None, named here for the manifest


def origins(node) -> list[str]:
    """Names of the nodes ``node`` was derived from, nearest first (its ``meta["from_node"]`` chain:
    for a node of OpenVINO's decomposed program, the rewritten IR's node first)."""
    names: list[str] = []
    level = list(node.meta.get("from_node") or ())
    while level:
        names.extend(src.name for src in level if src.name not in names)
        level = [up for src in level for up in (getattr(src, "from_node", None) or ())]
    return names


def layer_ops(graph, decomposed, model) -> dict[str, list[str]]:
    """IR layer (``quantizable_layers(graph)``) → friendly names of the OV ops it became.

    ``decomposed`` is the GraphModule OpenVINO converted (after its decompositions); None (an
    OpenVINO whose decoder could not be reached) maps nothing.
    """
    layers = quantizable_layers(graph)
    out: dict[str, list[str]] = {name: [] for name in layers}
    if decomposed is None:
        return out
    wanted = set(layers)
    # decomposed node name -> the IR layers it came from
    came_from: dict[str, set[str]] = {}
    for node in decomposed.graph.nodes:
        if node.op == "call_function":
            hit = {node.name, *origins(node)} & wanted
            if hit:
                came_from[node.name] = hit
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_OPS:
            continue
        name = op.get_friendly_name()
        for layer in sorted(came_from.get(name.split("/")[0], ())):
            out[layer].append(name)
    return out


def overflow_fix(cpu_flags: Iterable[str] | None) -> str:
    """``DISABLE`` where the int8 dot product cannot saturate (VNNI or AMX), else NNCF's default.

    ``cpu_flags``: the CPU's feature flags (None when unknown, e.g. compiling for another device)."""
    flags = set(cpu_flags or ())
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "DISABLE"
    return "FIRST_LAYER"


def check_calibration(calibration: Calibration | None, profile_name: str) -> Calibration:
    if calibration is None or not calibration.samples:
        raise UserError(
            f"profile {profile_name}: precision int8 needs calibration data, and none was given",
            "pass calibration samples (--calib digits|photos|FILE.npz)",
        )
    if calibration.mode == "dynamic":
        raise UserError(
            f"profile {profile_name}: the OpenVINO target quantizes activations statically (NNCF calibrated "
            'ranges); quantization_mode = "dynamic" is not available',
            'set [options] quantization_mode = "static" or "auto"',
        )
    if calibration.method not in RANGE_ESTIMATORS:
        raise UserError(
            f"profile {profile_name}: calibration_method {calibration.method!r} is not one of "
            f"{', '.join(RANGE_ESTIMATORS)}",
            "fix [options] calibration_method",
        )
    return calibration


def quantize(model, graph, decomposed, calibration: Calibration, device: str, fix: str):
    """``(quantized ov.Model, facts for details["quantization"])``."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ops = layer_ops(graph, decomposed, model)
    kept, unmatched, ignored = [], [], []
    for layer in calibration.keep_float:
        if ops.get(layer):
            kept.append(layer)
            ignored.extend(ops[layer])
        else:
            unmatched.append(layer)
    estimator = RANGE_ESTIMATORS[calibration.method]
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix[fix],
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, estimator),
    )
    target_device = nncf.TargetDevice[TARGET_DEVICES.get(device, "ANY")]
    log.info(
        "NNCF: calibrating %d samples (%s), %d layers kept in float", len(calibration.samples), estimator, len(kept)
    )
    with _quiet_nncf():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration.samples),
            subset_size=len(calibration.samples),
            target_device=target_device,
            fast_bias_correction=False,
            ignored_scope=nncf.IgnoredScope(names=sorted(set(ignored)), validate=False) if ignored else None,
            advanced_parameters=advanced,
        )
    facts = {
        "backend": "nncf",
        "nncf": nncf.__version__,
        "preset": PRESET,
        "method": calibration.method,
        "range_estimator": f"activations {estimator}, weights MINMAX",
        "overflow_fix": fix,
        "bias_correction": "full (BiasCorrection)",
        "target_device": target_device.value,
        "subset_size": len(calibration.samples),
        "calibration": calibration.to_dict(),
        "kept_float": kept,
        "kept_float_ops": sorted(set(ignored)),
        "unmatched_keep_float": unmatched,
        "fake_quantize": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops()),
    }
    return quantized, facts


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs INFO lines and draws progress bars on stdout, which is the CLI's (``--json``):
    keep its warnings, drop the rest."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(max(level, logging.WARNING))
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        nncf_log.setLevel(level)


def _rt(info, key: str) -> str:
    return info[key].astype(str) if key in info.keys() else ""


def runtime_precisions(compiled, kept_ops: Sequence[str] = ()) -> tuple[dict, dict[str, bool]]:
    """From the compiled model's runtime graph: per layer type how many compute nodes run u8/i8 and
    how many in float, and the structural check that every Convolution not kept in float runs int8."""
    kept = set(kept_ops)
    int8: dict[str, int] = {t: 0 for t in COMPUTE_LAYERS}
    flt: dict[str, int] = {t: 0 for t in COMPUTE_LAYERS}
    float_convs, kept_convs = [], 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = _rt(info, "layerType")
        if layer not in COMPUTE_LAYERS:
            continue
        precision = _rt(info, "runtimePrecision").lower()
        if precision in INT8_PRECISIONS:
            int8[layer] += 1
            continue
        flt[layer] += 1
        if layer == "Convolution":
            originals = {op.get_friendly_name(), *_rt(info, "originalLayersNames").split(",")}
            if originals & kept:
                kept_convs += 1
            else:
                float_convs.append(f"{op.get_friendly_name()} ({precision})")
    counts = {
        "int8_ops": {k: v for k, v in int8.items() if v},
        "float_ops": {k: v for k, v in flt.items() if v},
        "int8_op_count": sum(int8.values()),
        "float_op_count": sum(flt.values()),
        "float_convs_not_kept": float_convs,
        "kept_float_convs": kept_convs,
    }
    checks = {}
    if int8["Convolution"] + flt["Convolution"]:
        checks["int8_convs"] = not float_convs
    return counts, checks
