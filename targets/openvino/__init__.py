"""OpenVINO: IR → ``ov.convert_model(ExportedProgram)`` → ``model.xml``/``model.bin``.

The model is compiled for the profile's ``device`` (CPU, GPU, NPU) with its ``performance_hint``
(latency/throughput), ``threads`` (0 = OpenVINO's default) and ``precision``:

- fp32 sets ``INFERENCE_PRECISION_HINT=f32`` explicitly.  Without it OpenVINO silently runs bf16
  on CPUs with AVX512-BF16/AMX, which moves outputs by ~1e-2.
- bf16/fp16 are accepted only when the device lists BF16/FP16 in ``OPTIMIZATION_CAPABILITIES``;
  otherwise compile fails with the device's capabilities.  fp16 also stores weights in fp16.
- int8 quantizes the converted model with NNCF (``quantize.py``: calibration, the layers kept in
  float, and what ran in int8, read back from the runtime graph); it needs ``INT8`` in the
  device's capabilities and calibration data.  ``model.xml``/``.bin`` hold the quantized model
  (FakeQuantize nodes over int8 weights).  Its float islands (GELU, norms, softmax) run with
  ``INFERENCE_PRECISION_HINT=f32`` (:data:`INT8_FLOAT_HINT`).

Ahead-of-time profiles (``aot_only``, e.g. ``intel-npu``) save the IR and, when the device's
plugin and compiler are present, an exported blob (``model.blob``) that loads without
recompiling.  Running them needs the device; :meth:`OpenVinoTarget.can_run_here` says so.

Determinism: OpenVINO names the nodes it creates from a process-wide counter (``Multiply_2710``),
so the same model converted twice in one process would give different ``model.xml`` bytes.  Those
names are renumbered by position.  The IR node → source module map is stored in the model's
``rt_info`` (``edgeformer/sources``) so per-op profiles point back at the PyTorch modules.

Per-op times come from OpenVINO's performance counters (``PERF_COUNT``), one op per executed node
of the runtime graph, as medians of per-run times after warm-up runs; the op's ``device`` is
``DEVICE/exec_type`` (e.g. ``CPU/brgconv_avx512_f32``), which also shows the precision each kernel
ran in.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError, first_line
from edgeformer.ir import source_path
from edgeformer.passes import PIPELINES, Pipeline

from .._support import cpu_flags, input_shapes, node_sources, unsupported_op_error
from ..base import CompileResult, OpProfile, OpTime, Runner, Target
from . import quantize as q

log = logging.getLogger(__name__)

# profile precision -> (INFERENCE_PRECISION_HINT value, OPTIMIZATION_CAPABILITIES entry)
_PRECISION = {"fp32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}
# profile precision -> the OPTIMIZATION_CAPABILITIES entry the device needs for it
_CAPABILITY = {**{p: cap for p, (_, cap) in _PRECISION.items()}, "int8": "INT8"}
_HINT = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
_SOURCES_KEY = ["edgeformer", "sources"]
_UNCONVERTED = re.compile(r"(?:No conversion rule found for operations|Conversion is failed for):\s*([^\n]+)")
_AUTO_NAME = re.compile(r"([A-Za-z][A-Za-z0-9]*)_\d+")
# Inferences before the counted ones in a per-op profile (the first is cold).
WARMUP_RUNS = 3


def check_precision(device: str, precision: str, capabilities: Sequence[str], device_name: str = "") -> str | None:
    """None when ``device`` can run ``precision``, else why not (and what to do)."""
    if precision not in _CAPABILITY:
        return f'OpenVINO has no precision {precision}; use precision = "fp32", "bf16", "fp16" or "int8"'
    cap = _CAPABILITY[precision]
    if cap not in capabilities:
        label = f"{device} ({device_name})" if device_name else device
        return (
            f"OpenVINO {label} does not support {precision}: its OPTIMIZATION_CAPABILITIES are "
            f'{", ".join(capabilities) or "(none)"}; use precision = "fp32" in the profile'
        )
    return None


def _device_present(core, device: str) -> bool:
    return any(d == device or d.split(".")[0] == device for d in core.available_devices)


def _supported(core, device: str) -> set[str]:
    try:
        return set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except RuntimeError:
        return set()


# The INFERENCE_PRECISION_HINT of an int8 model, i.e. of the ops left in float (GELU, norms,
# softmax, layers kept in float).  f32 rather than OpenVINO's CPU default (bf16 on AVX512-BF16/AMX):
# on EfficientFormer-L1 at 2 threads both ran alike (bf16/f32 islands 0.99x, range 0.93-1.09 over 6
# alternating rounds: the islands are a small share once convs and linears are int8), f32 had the
# lower error on the trained digits poolformer_tiny (max |Δlogit| 0.18 against 0.21), and the
# artifact then computes the same on CPUs with and without bf16.
INT8_FLOAT_HINT: str | None = "f32"


def _inference_hint(precision: str) -> str | None:
    if precision == "int8":
        return INT8_FLOAT_HINT
    return _PRECISION[precision][0] if precision in _PRECISION else None


def compile_config(core, options, *, perf_count: bool = False, device_present: bool = True) -> dict:
    """The ``compile_model`` config for a profile's options (only keys the device supports)."""
    device = options.device.upper()
    config: dict = {"PERFORMANCE_HINT": _HINT[options.performance_hint]}
    hint = _inference_hint(options.precision)
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = int(options.threads)
    if perf_count:
        config["PERF_COUNT"] = True
    if device_present:
        supported = _supported(core, device)
        dropped = sorted(k for k in config if supported and k not in supported)
        if dropped:
            log.info("OpenVINO %s does not take %s; not set", device, ", ".join(dropped))
        config = {k: v for k, v in config.items() if not supported or k in supported}
    return config


def _decoder(program):
    """OpenVINO's own decoder of the ExportedProgram (what ``convert_model`` builds from it), or
    None when this OpenVINO does not have it where expected."""
    try:
        from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder
    except ImportError:
        return None
    make = getattr(TorchFXPythonDecoder, "from_exported_program", None)
    if make is None:
        return None
    # As inside convert_model (ovc's init_logger): its decomposition table logs a warning with a
    # traceback for every op this torch no longer lists, on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return make(program)
    finally:
        root.setLevel(level)


def _convert(graph):
    """``(ov.Model, the decomposed GraphModule OpenVINO converted, or None)``.

    The decoder is built here rather than inside ``convert_model`` so its GraphModule, whose node
    names the converted ops carry, maps IR layers to OV ops (``quantize.layer_ops``)."""
    import openvino as ov

    try:
        decoder = _decoder(graph.program)
        if decoder is None:
            return ov.convert_model(graph.program), None
        return ov.convert_model(decoder), getattr(decoder, "pt_module", None)
    except Exception as err:  # noqa: BLE001 - the frontend raises OpConversionFailure and others
        found = _UNCONVERTED.search(str(err))
        if found:
            ops = [o.strip() for o in found.group(1).split(",") if o.strip()]
            raise unsupported_op_error(graph, f"OpenVINO {ov.__version__.split('-')[0]}", ops) from err
        raise UserError(
            f"OpenVINO could not convert {graph.name}: {first_line(err)}", "run with --debug for the converter's trace"
        ) from err


def _prepare(model, graph) -> None:
    """Static shapes and the graph's I/O names."""
    import openvino as ov

    model.reshape({i: ov.PartialShape(shape) for i, shape in enumerate(input_shapes(graph))})
    if len(model.inputs) != len(graph.input_names) or len(model.outputs) != len(graph.output_names):
        raise UserError(
            f"OpenVINO produced {len(model.inputs)} inputs/{len(model.outputs)} outputs for a graph with "
            f"{len(graph.input_names)}/{len(graph.output_names)}",
            "report this model as a bug",
        )
    for port, name in zip(model.inputs, graph.input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, graph.output_names):
        port.get_tensor().set_names({name})
    model.set_friendly_name(graph.name)


def _name(model, graph, decomposed=None) -> None:
    """Deterministic names for the nodes OpenVINO (and NNCF) created, and the source map."""
    for i, op in enumerate(model.get_ordered_ops()):
        m = _AUTO_NAME.fullmatch(op.get_friendly_name())
        if m and op.get_type_name() != "Parameter":
            op.set_friendly_name(f"{m.group(1)}_n{i}")
    sources = node_sources(graph) if decomposed is None else _decomposed_sources(decomposed, node_sources(graph))
    model.set_rt_info(json.dumps(_source_map(model, sources), sort_keys=True), _SOURCES_KEY)


def _decomposed_sources(decomposed, ir_sources: dict[str, str]) -> dict[str, str]:
    """Node of OpenVINO's decomposed program (whose names the converted ops carry) → source module.

    Its own ``nn_module_stack`` first, else that of the IR node it came from.  Not the IR node of
    the same name: a decomposition that adds ops renumbers the names after it (``native_layer_norm_2``
    of the decomposed program need not be the IR's)."""
    out = {}
    for node in decomposed.graph.nodes:
        if node.op != "call_function":
            continue
        src = source_path(node) or next((ir_sources[o] for o in q.origins(node) if o in ir_sources), None)
        if src:
            out[node.name] = src
    return out


def _source_map(model, ir_sources: dict[str, str]) -> dict[str, str]:
    """OpenVINO node name → source module.

    Nodes converted from an IR node are named ``<ir node>/<aten op>/<OV op>``.  Nodes OpenVINO
    created while converting (e.g. a convolution with a folded batch norm) take the source of
    their first consumer that has one, which is the neighbouring module.
    """
    out: dict[str, str] = {}
    for op in reversed(model.get_ordered_ops()):
        name = op.get_friendly_name()
        src = ir_sources.get(name.split("/")[0])
        if src is None and op.get_type_name() not in ("Constant", "Parameter", "Result"):
            # sorted: get_target_inputs() is a set, and the first consumer with a source wins
            consumers = sorted(
                (t.get_node() for port in op.outputs() for t in port.get_target_inputs()),
                key=lambda c: c.get_friendly_name(),
            )
            src = next((out[c.get_friendly_name()] for c in consumers if c.get_friendly_name() in out), None)
        if src:
            out[name] = src
    return out


def _histogram(model) -> dict[str, int]:
    hist: dict[str, int] = {}
    for op in model.get_ordered_ops():
        hist[op.get_type_name()] = hist.get(op.get_type_name(), 0) + 1
    return dict(sorted(hist.items()))


class OpenVinoRunner(Runner):
    """One compiled model and one synchronous infer request."""

    def __init__(self, artifact_dir: Path, options, *, perf_count: bool = False):
        import openvino as ov

        self.core = ov.Core()
        self.device = options.device.upper()
        self.config = compile_config(self.core, options, perf_count=perf_count)
        blob = artifact_dir / "model.blob"
        if blob.is_file() and self.device != "CPU":
            with open(blob, "rb") as f:
                self.compiled = self.core.import_model(f.read(), self.device, self.config)
        else:
            self.model = self.core.read_model(str(artifact_dir / "model.xml"))
            self.compiled = self.core.compile_model(self.model, self.device, self.config)
        self.request = self.compiled.create_infer_request()
        self._hint = options.performance_hint
        self._threads = options.threads

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer([np.ascontiguousarray(x) for x in inputs])
        return [np.array(result[port]) for port in self.compiled.outputs]

    def _prop(self, key: str):
        try:
            value = self.compiled.get_property(key)
        except RuntimeError:
            return None
        if hasattr(value, "get_type_name"):  # an ov.Type such as f32
            return value.get_type_name()
        return value if isinstance(value, (int, float, bool)) else str(value)

    def settings(self) -> dict:
        import openvino as ov

        return {
            "runtime": "openvino",
            "version": ov.__version__,
            "device": self.device,
            "performance_hint": self._prop("PERFORMANCE_HINT") or self._hint,
            "inference_precision": self._prop("INFERENCE_PRECISION_HINT"),
            "inference_threads": self._prop("INFERENCE_NUM_THREADS") or self._threads or "default",
            "streams": self._prop("NUM_STREAMS"),
            "execution_devices": self._prop("EXECUTION_DEVICES"),
            "model_file": "model.xml",
        }


class OpenVinoTarget(Target):
    name = "openvino"
    description = "Intel OpenVINO Runtime (CPU here; GPU/NPU on Intel hardware); ships model.xml + model.bin"
    extra = "openvino"
    distributions = ("openvino",)
    sdk_modules = ("openvino",)
    main_file = "model.xml"
    # OpenVINO fuses GroupNorm(1, C) written as one LayerNorm into its MVN kernel (figures:
    # docs/benchmarks.md); it fuses the pool mixer's plain form itself.
    pipeline = Pipeline(PIPELINES["exact"], {"lower_group_norm": {"form": "layer_norm"}})
    precisions = (*_PRECISION, "int8")
    calibrated_precisions = ("int8",)

    def can_run_here(self, profile) -> str | None:
        reason = self.is_available()
        if reason:
            return reason
        opts = profile.options
        device = opts.device.upper()
        import openvino as ov

        core = ov.Core()
        present = _device_present(core, device)
        if opts.aot_only:
            where = "present here, but" if present else f"absent here (devices: {', '.join(core.available_devices)});"
            return (
                f"profile {profile.name} compiles ahead of time only: running needs the OpenVINO {device} "
                f"device, {where} copy the artifact to a machine with an Intel {device}"
            )
        if not present:
            return (
                f"OpenVINO device {device} is not present on this machine "
                f"(devices: {', '.join(core.available_devices)}); run the artifact where the {device} is"
            )
        return check_precision(
            device,
            opts.precision,
            core.get_property(device, "OPTIMIZATION_CAPABILITIES"),
            core.get_property(device, "FULL_DEVICE_NAME"),
        )

    def runtime_default_precisions(self, profile) -> tuple[str, ...]:
        """bf16 for an int8 profile on a device that lists BF16: OpenVINO's own default there, the speed
        an int8 artifact has to beat to be worth its error (issue 12)."""
        opts = profile.options
        if opts.precision != "int8" or opts.aot_only or self.is_available():
            return ()
        import openvino as ov

        core = ov.Core()
        device = opts.device.upper()
        if not _device_present(core, device):
            return ()
        return (
            ("bf16",)
            if check_precision(device, "bf16", core.get_property(device, "OPTIMIZATION_CAPABILITIES")) is None
            else ()
        )

    def compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        import openvino as ov

        opts = profile.options
        device = opts.device.upper()
        core = ov.Core()
        present = _device_present(core, device)
        if present or opts.precision not in _CAPABILITY:
            caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES") if present else []
            problem = check_precision(
                device, opts.precision, caps, core.get_property(device, "FULL_DEVICE_NAME") if present else ""
            )
            if problem:
                raise UserError(f"profile {profile.name}: {problem.split('; ')[0]}", problem.split("; ", 1)[-1])
        int8 = opts.precision == "int8"
        if int8:
            calibration = q.check_calibration(calibration, profile.name)
        model, decomposed = _convert(graph)
        _prepare(model, graph)
        quantization = None
        if int8:
            fix = q.overflow_fix((cpu_flags() or None) if device == "CPU" else None)
            model, quantization = q.quantize(model, graph, decomposed, calibration, device, fix)
        _name(model, graph, decomposed)
        compress = opts.precision == "fp16"
        ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=compress)
        files = ["model.xml", "model.bin"]
        details = {
            "device": device,
            "device_present_at_compile": present,
            "performance_hint": opts.performance_hint,
            "inference_precision": _inference_hint(opts.precision) or "default",
            "threads": opts.threads or "default",
            "weights_fp16": compress,
            "ov_ops": len(model.get_ordered_ops()),
            "ov_op_histogram": _histogram(model),
        }
        checks: dict[str, bool] = {}
        if present and not opts.aot_only:
            # Compile once now so a bad config fails at compile time, not on first use.
            compiled = core.compile_model(model, device, compile_config(core, opts))
            if "INFERENCE_PRECISION_HINT" in _supported(core, device):
                details["compiled_precision"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            if quantization is not None:
                counts, checks = q.runtime_precisions(compiled, quantization["kept_float_ops"])
                quantization.update(counts)
        if quantization is not None:
            details["quantization"] = quantization
        if device != "CPU":
            blob = self._export_blob(core, model, opts, out_dir / "model.blob", present)
            details["blob"] = blob
            if blob.startswith("model.blob"):
                files.append("model.blob")
        return CompileResult(files=files, details=details, structural_checks=checks)

    @staticmethod
    def _export_blob(core, model, opts, path: Path, present: bool) -> str:
        """Compile ahead of time for a non-CPU device and export the blob, where this machine can."""
        device = opts.device.upper()
        try:
            compiled = core.compile_model(model, device, compile_config(core, opts, device_present=present))
            path.write_bytes(compiled.export_model())
            return "model.blob: compiled ahead of time for " + device
        except Exception as err:  # noqa: BLE001 - plugin/compiler missing is expected off-device
            path.unlink(missing_ok=True)
            reason = first_line(err)
            cause = re.search(r"(Cannot load library[^:]*|VCL compiler loading failed[^.]*)", str(err))
            return (
                f"not produced: OpenVINO's {device} compiler is not usable here "
                f"({cause.group(1) if cause else reason}); model.xml compiles on the device at load time"
            )

    def load(self, artifact) -> OpenVinoRunner:
        reason = self.can_run_here(artifact.profile)
        if reason:
            raise UserError(f"cannot run {artifact.path} here: {reason}")
        return OpenVinoRunner(Path(artifact.path), artifact.profile.options)

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        """Per-node times from OpenVINO's performance counters, mapped back to source modules.

        The CPU plugin reports each node's *mean since the model was compiled* (whole µs), so the
        cold first inference and any one slow run leak into every later reading.  The counters are
        read after every run, ``WARMUP_RUNS`` warm-up runs first; each counted run's time per node is
        the difference of two consecutive running totals (mean × runs so far), and the op's time is
        the median of those (:func:`per_run_medians`).  The end-to-end time is the median wall time
        of the counted runs.
        """
        runner = OpenVinoRunner(Path(artifact.path), artifact.profile.options, perf_count=True)
        runs, warmup = max(1, runs), WARMUP_RUNS
        snapshots, walls = [], []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            runner.run(inputs)
            if i >= warmup:
                walls.append((time.perf_counter() - t0) * 1e3)
            snapshots.append(_counters(runner.request))
        sources = _runtime_sources(runner)
        ops = [
            OpTime(
                name=name,
                type=node_type,
                time_ms=time_ms,
                share=0.0,
                device=f"{runner.device}/{exec_type}",
                source=sources.get(name),
            )
            for name, (node_type, exec_type, time_ms) in per_run_medians(snapshots, warmup).items()
        ]
        precision = runner.settings().get("inference_precision")
        runner.close()
        return OpProfile.build(
            "openvino",
            runs,
            statistics.median(walls),
            ops,
            notes=[
                f"OpenVINO performance counters (real time) on {runner.device}, inference precision "
                f"{precision}: medians over {runs} runs after {warmup} warm-up runs, per node and end to end",
                "per-run node times are differences of the plugin's running means (whole microseconds), so each "
                f"is uncertain by up to {warmup + runs} µs",
                "nodes fused by OpenVINO report under the surviving node; "
                "unexplained = infer-request and Python overhead",
            ],
        )


def per_run_medians(snapshots: Sequence[dict], warmup: int) -> dict[str, tuple[str, str, float]]:
    """Node → (type, exec type, median ms per run) of the runs after the first ``warmup``.

    ``snapshots[k]`` holds the counters read after run ``k + 1`` of the compiled model: per node its
    mean real time over all runs so far.  Run ``k``'s own time is ``mean_k·k − mean_{k−1}·(k−1)``.
    """
    out = {}
    first = max(1, warmup)  # run 1 has no earlier total to subtract; it is always a warm-up run
    for name, (node_type, exec_type, _) in snapshots[-1].items() if snapshots else ():
        per_run = []
        for k in range(first + 1, len(snapshots) + 1):
            now, before = snapshots[k - 1].get(name), snapshots[k - 2].get(name)
            total_now = now[2] * k if now else 0.0
            total_before = before[2] * (k - 1) if before else 0.0
            per_run.append(max(0.0, total_now - total_before))
        if per_run:
            out[name] = (node_type, exec_type, statistics.median(per_run))
    return out


def _counters(request) -> dict[str, tuple[str, str, float]]:
    """Executed node → (type, exec type, mean real time in ms) as the plugin reports it now."""
    return {
        info.node_name: (info.node_type, info.exec_type, info.real_time.total_seconds() * 1e3)
        for info in request.get_profiling_info()
        if info.status.name == "EXECUTED"
    }


def _runtime_sources(runner: OpenVinoRunner) -> dict[str, str]:
    """Runtime node name → source module, via originalLayersNames and the stored IR source map."""
    model = getattr(runner, "model", None)
    try:
        sources = json.loads(model.get_rt_info(_SOURCES_KEY).astype(str)) if model is not None else {}
    except (RuntimeError, ValueError):
        sources = {}
    if not sources:
        return {}
    out = {}
    for op in runner.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        originals = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info.keys() else []
        for original in [op.get_friendly_name(), *originals]:  # the node's own name first
            src = sources.get(original) or sources.get(original.split("/")[0])
            if src:
                out[op.get_friendly_name()] = src
                break
    return out
