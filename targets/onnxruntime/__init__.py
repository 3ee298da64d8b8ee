"""ONNX Runtime: the embedded default target.

IR → ``torch.onnx.export(ep, dynamo=True)`` → ``model.onnx`` → ORT-optimized ``model.ort`` (ORT's
flatbuffer format) → InferenceSession on the CPU execution provider.

``model.ort`` is optimized for a CPU, not a portable mobile file: at optimization level "all" ORT's
layout transformer writes NCHWc nodes (``com.microsoft.nchwc``) whose weights are blocked for this
CPU (8 channels on AVX2, 16 on AVX-512), and such a file loads only where ORT's CPU provider has
NCHWc kernels of the same block size.  The manifest counts them (``ort_nchwc_nodes``), says whether
the file is portable (``ort_format_portable``) and, when it is not, why (``ort_cpu_specific``).  Level
"extended" writes no NCHWc node: the ``android-arm64-ort`` profile uses it for phones.  At level "all"
edgeformer also rewrites ORT's own optimized graph: norms over a whole sample run on the blocked
NCHWc tensors instead of being reordered out and back (``blocked.py``); the manifest's
``ort_blocked_layout`` says what changed, and the compile's numerics check covers it.

Precisions: fp32, fp16 (``fp16.py``: the graph computes in fp16, its I/O stays fp32) and int8
(``quantize.py``: ORT's own quantizer, static QDQ calibrated on the compile's ``Calibration`` or
dynamic for conv-free MatMul models; ``model.onnx`` is the quantized model, ``model.ort`` its
optimized form, and ``details["quantization"]`` says what ORT fused into integer kernels).  What each
file really computes in is read back from the files (``graph_facts.py``) into the manifest:
``compute_precision`` and ``ort_nodes_by_precision`` for ``model.ort``, ``onnx_compute_precision``
and ``*_initializers_by_precision``.  ORT's CPU provider has no fp16 kernel for most ops on x86, so
there an fp16 ``model.ort`` runs those in fp32 between casts it wrote into the file
(``ort_fp16_fallback`` says so); ``model.onnx`` is the fp16 file for devices with fp16 kernels.

Options read from the profile: ``threads`` (0 = ORT's default), ``optimization_level``
(disable/basic/extended/all), ``execution_mode`` and ``precision``; for int8 also
``quantization_mode`` and ``calibration_method`` (through the ``Calibration`` context).

Files: ``export.py`` (IR → ONNX), ``fp16.py`` (fp16 conversion), ``quantize.py`` (int8), ``optimize.py`` (ORT's
optimization in a deterministic subprocess), ``blocked.py`` (the blocked-layout rewrite),
``graph_facts.py`` (what the files hold), ``profiler.py`` (per-op times).

The pipeline's pass options were chosen by measurement (figures: docs/benchmarks.md): ORT runs
GroupNorm(1, C) fastest as a reshaped InstanceNormalization, and with the pool mixer as two
depthwise 1x1 convs (``branch_convs``) its NCHWc layout engine keeps the residual stream blocked
and folds the adds into the convs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.device_profiles import DeviceProfile
from edgeformer.errors import UserError
from edgeformer.passes import PIPELINES, Pipeline

from ..base import CompileResult, OpProfile, Runner, Target
from .export import export_onnx
from .fp16 import convert_to_fp16
from .graph_facts import GraphFacts, nchwc_block, onnx_facts, ort_facts, summarize
from .optimize import LEVELS, optimize_for_host
from .profiler import WARMUP_RUNS, op_profile, source_map
from .quantize import int8_facts, quantize_int8

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeTarget", "OrtRunner", "export_onnx", "optimize_for_host"]


class OrtRunner(Runner):
    def __init__(self, path: Path, options, *, profile_dir: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[options.optimization_level])
        so.log_severity_level = 3
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "ort")
        self._threads = options.threads
        self._level = options.optimization_level
        self._path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs)))

    def settings(self) -> dict:
        import onnxruntime as ort

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "execution_provider": "CPUExecutionProvider",
            "intra_op_threads": self._threads or "default (physical cores)",
            "graph_optimization_level": self._level,
            "model_file": self._path.name,
        }


class OnnxRuntimeTarget(Target):
    exports_loops = True  # a LIF recurrence as one scan: ONNX Scan
    name = "onnxruntime"
    description = (
        "ONNX Runtime, CPU execution provider; ships model.onnx and model.ort (ORT format: specific to "
        'this CPU at optimization level "all", portable at "extended")'
    )
    extra = "onnxruntime"
    distributions = ("onnxruntime", "onnx", "onnxscript")
    sdk_modules = ("onnxruntime",)
    main_file = "model.ort"
    pipeline = Pipeline(
        PIPELINES["exact"],
        {"fold_pool_mixer": {"branch_convs": True}, "lower_group_norm": {"form": "instance_norm"}},
    )

    precisions = ("fp32", "fp16", "int8")
    calibrated_precisions = ("int8",)

    def default_pipeline(self, profile: DeviceProfile) -> Pipeline:
        """int8 takes the pool mixer as a depthwise conv (``fold_pool_mixer dw_conv``): ORT's
        QLinearAveragePool was 7.6 ms of EfficientFormer-L1's int8 run (0.4 ms as a float pool), and
        the dw-conv form took L1 int8 from 13.12 to 10.16 ms (0.750× → 0.581× fp32) and PoolFormer-S12
        int8 from 21.87 to 14.51 ms (0.920× → 0.610×), same runs, output cosine unchanged
        (docs/benchmarks.md).  In fp32 the same form is slower (+8.4 %), so fp32 keeps branch_convs."""
        if profile.options.precision == "int8":
            return Pipeline(self.pipeline.names, {**self.pipeline.options, "fold_pool_mixer": {"dw_conv": True}})
        return self.pipeline

    def compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        opts = profile.options
        if opts.precision not in self.precisions:
            raise UserError(
                f"profile {profile.name}: the onnxruntime target does not implement precision {opts.precision}",
                f"set [options] precision to one of {', '.join(self.precisions)}",
            )
        if opts.precision == "int8" and calibration is None:
            raise UserError(
                f"profile {profile.name}: int8 needs calibration data",
                "give calibration samples (compile(..., calibration=Calibration(...)) or --calib)",
            )
        onnx_path = out_dir / "model.onnx"
        export_onnx(graph, onnx_path)
        conversion = convert_to_fp16(onnx_path) if opts.precision == "fp16" else None
        quantization = quantize_int8(graph, onnx_path, profile, calibration) if opts.precision == "int8" else None
        layout = optimize_for_host(onnx_path, out_dir / "model.ort", opts.optimization_level)
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        hist: dict[str, int] = defaultdict(int)
        for n in model.graph.node:
            hist[n.op_type] += 1
        in_onnx, in_ort = onnx_facts(model), ort_facts(out_dir / "model.ort")
        details = {
            "onnx_opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "onnx_nodes": len(model.graph.node),
            "onnx_op_histogram": dict(sorted(hist.items())),
            "ort_optimization_level": opts.optimization_level,
            "ort_nchwc_nodes": in_ort.nchwc_nodes,
            "ort_format_portable": in_ort.nchwc_nodes == 0,
            **({"ort_cpu_specific": _cpu_specific(in_ort)} if in_ort.nchwc_nodes else {}),
            **({"ort_blocked_layout": layout} if layout else {}),
            **_precision_details(in_onnx, in_ort, opts.precision),
            **({"fp16_conversion": conversion} if conversion else {}),
        }
        checks: dict[str, bool] = {}
        if quantization is not None:
            facts, checks = int8_facts(out_dir / "model.ort", model, quantization)
            details["quantization"] = {**quantization, **facts}
            _int8_precision(details, facts, model)
        return CompileResult(files=["model.ort", "model.onnx"], details=details, structural_checks=checks)

    @staticmethod
    def _model_path(artifact_dir: Path) -> Path:
        ort_path = artifact_dir / "model.ort"
        return ort_path if ort_path.is_file() else artifact_dir / "model.onnx"

    def load(self, artifact) -> OrtRunner:
        return OrtRunner(self._model_path(Path(artifact.path)), artifact.profile.options)

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        """Per-node times from ORT's own profiler, mapped back to the source module.

        ``WARMUP_RUNS`` runs come first (ORT's profiler cannot be switched on mid-session, so their
        events are in the trace and left out by time); each node's time is then its median over the
        ``runs`` counted runs, and the end-to-end time the median of their ``model_run`` events.
        """
        folder = Path(artifact.path)
        sources = source_map(folder / "model.onnx") if (folder / "model.onnx").is_file() else {}
        runs = max(1, runs)
        with tempfile.TemporaryDirectory(prefix="edgeformer-ortprof-") as tmp:
            runner = OrtRunner(self._model_path(folder), artifact.profile.options, profile_dir=tmp)
            for _ in range(WARMUP_RUNS + runs):
                runner.run(inputs)
            trace = json.loads(Path(runner.session.end_profiling()).read_text())
        return op_profile(trace, runs, sources, warmup=WARMUP_RUNS)


def _cpu_specific(facts: GraphFacts) -> str:
    return (
        f"{facts.nchwc_nodes} NCHWc layout nodes (com.microsoft.nchwc) with weights blocked for this CPU "
        f"({nchwc_block()}): model.ort loads only where ONNX Runtime's CPU provider has NCHWc kernels of "
        'the same block size; compile with optimization_level = "extended" (profile android-arm64-ort) '
        "for a portable model.ort"
    )


# Integer initializer types of a quantized model, by the names the manifest uses.
_INT_TYPES = {2: "uint8", 3: "int8", 6: "int32"}


def _int8_precision(details: dict, facts: dict, model) -> None:
    """Count the integer kernels beside the float nodes (``graph_facts`` counts floating nodes only,
    so an int8 ``model.ort`` would read "fp32"), and the integer initializers of ``model.onnx``."""
    by = {**details["ort_nodes_by_precision"], "int8": facts["int8_op_count"]}
    details["ort_nodes_by_precision"] = dict(sorted(by.items()))
    details["compute_precision"] = summarize(details["ort_nodes_by_precision"])
    ints = Counter(_INT_TYPES[t.data_type] for t in model.graph.initializer if t.data_type in _INT_TYPES)
    onnx_inits = {**details["onnx_initializers_by_precision"], **ints}
    details["onnx_initializers_by_precision"] = dict(sorted(onnx_inits.items()))


def _precision_details(in_onnx: GraphFacts, in_ort: GraphFacts, precision: str) -> dict:
    """What the files compute in, read from them; for fp16, which nodes ORT here keeps in fp32."""
    import onnxruntime as ort

    details = {
        "compute_precision": in_ort.compute_precision,
        "ort_nodes_by_precision": in_ort.nodes_by_precision,
        "ort_initializers_by_precision": in_ort.initializers_by_precision,
        "onnx_compute_precision": in_onnx.compute_precision,
        "onnx_initializers_by_precision": in_onnx.initializers_by_precision,
        "io_precision": summarize(dict(Counter(in_onnx.io_precisions))),
    }
    fp32 = in_ort.ops_by_precision.get("fp32", {})
    if precision == "fp16" and fp32:
        total = sum(in_ort.nodes_by_precision.values())
        top = ", ".join(f"{op} x{n}" for op, n in sorted(fp32.items(), key=lambda kv: (-kv[1], kv[0]))[:4])
        details["ort_fp32_ops"] = fp32
        details["ort_fp16_fallback"] = (
            f"model.onnx computes in fp16; this ONNX Runtime ({ort.__version__}, CPU provider) has no fp16 "
            f"kernel for {sum(fp32.values())} of its {total} compute nodes ({top}), so model.ort runs them in "
            "fp32 between casts written into the file (on any device), and the numerics check measured that; "
            "ship model.onnx to a device whose ONNX Runtime has fp16 kernels"
        )
    return details
