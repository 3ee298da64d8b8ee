"""Core ML: IR → ``coremltools.convert(ExportedProgram)`` → ``model.mlpackage`` (ML program).

Options read from the profile:

- ``precision``: fp16 (Core ML's usual choice; the ``iphone12-coreml`` profile uses it) or fp32.
  Inputs and outputs stay fp32 either way, so the app-facing interface matches the IR.
- ``compute_units``: ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE.  Core ML applies them at load
  time, so they are recorded in the manifest and used by the macOS runner.
- ``minimum_deployment_target``: e.g. iOS16 (empty = coremltools' default for ML programs).
- ``compression``: none, w8 (int8 weights), palettize4/palettize6 (4/6-bit lookup tables) or
  w8a8 (int8 weights and activations via torchao PT2E, calibrated: ``needs_calibration``); the
  compute precision stays ``precision``.  :mod:`.compress` has the recipes, the structural checks
  (``weights_compressed``, ``activations_quantized``, ...) and ``details["quantization"]``.

Before converting, every IR op is checked against coremltools' op registry, so an op Core ML
cannot convert fails with its name and the module it came from rather than deep in the
converter.

On Linux, coremltools converts but cannot predict, so the artifact is validated structurally:
the package reloads, every op converted, the I/O names, shapes and dtypes match the IR, the
specification version matches the deployment target, the precision is what the profile asked
for.  The MIL op histogram goes into the manifest.  On macOS the same code loads the package
with the profile's compute units, predicts (so ``compile`` checks numerics) and, for per-op
profiles, reads Core ML's compute plan: the preferred compute unit of every op and its
*estimated* share of the cost (Core ML has no per-op timer), scaled to the measured latency.

Determinism: coremltools writes random UUIDs into the package's ``Manifest.json``; they are
replaced by UUIDs derived from each item's path, so the same IR gives the same package bytes.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError, first_line
from edgeformer.ir import op_name

from .._support import dtype_name, input_shapes, quiet_sdk, unsupported_op_error
from ..base import CompileResult, OpProfile, OpTime, Runner, Target
from . import compress
from .stateful import STATE_PREFIX, convert_stateful

log = logging.getLogger(__name__)

PACKAGE = "model.mlpackage"
DEBUG_HANDLE_MAP = "executorch_debug_handle_mapping.json"
_PRECISIONS = ("fp16", "fp32")
# IR dtype -> (numpy dtype Core ML takes, ArrayFeatureType name); Core ML has no int64 I/O
_IO_DTYPES = {
    "float32": (np.float32, "FLOAT32"),
    "float16": (np.float16, "FLOAT16"),
    "int32": (np.int32, "INT32"),
    "int64": (np.int32, "INT32"),
}
_SDK_LOGGERS = ("coremltools", "torchao", "torchao.kernel.intmm")
_UUID_NAMESPACE = uuid.UUID("6f1c3a52-2b8e-4d7e-9c1a-0e5d2f7b8a41")


def on_macos() -> bool:
    return platform.system() == "Darwin"


def _deployment_target(ct, name: str):
    if not name:
        return None
    known = {t.name.lower(): t for t in ct.target}
    try:
        return known[name.lower()]
    except KeyError:
        raise UserError(
            f"unknown Core ML minimum_deployment_target {name!r}",
            f"use one of {', '.join(sorted(t.name for t in ct.target))}",
        ) from None


# Identity ops in an inference graph that coremltools has no converter for (a full-range slice
# such as ``H[:, :seq_len]`` exports as aten.alias).
_IDENTITY_OPS = ("aten.alias", "aten.alias_copy", "aten.detach", "aten.detach_copy", "aten.lift_fresh_copy")


def drop_identity_ops(program) -> int:
    """Remove the identity ops coremltools cannot convert from an ExportedProgram, in place."""
    dropped = 0
    for node in list(program.graph.nodes):
        if node.op == "call_function" and op_name(node.target) in _IDENTITY_OPS:
            node.replace_all_uses_with(node.args[0])
            program.graph.erase_node(node)
            dropped += 1
    if dropped:
        program.graph_module.recompile()
        log.info("coreml: dropped %d identity ops (alias/detach) before conversion", dropped)
    return dropped


def _program(graph):
    """coremltools takes the ATen (inference) dialect, not torch.export's training IR."""
    program = graph.program.run_decompositions({})
    drop_identity_ops(program)
    return graph.replace(program)


def unconvertible_ops(program) -> list[str]:
    """IR ops (``aten.erfinv``) that coremltools has no converter for."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind

    missing = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        try:
            kind = node.target.name()
        except AttributeError:
            kind = getattr(node.target, "__name__", str(node.target))
        if _TORCH_OPS_REGISTRY.get_func(sanitize_op_kind(kind)) is None:
            missing.add(op_name(node.target))
    return sorted(missing)


def _io_specs(graph) -> tuple[list[dict], list[dict]]:
    """Names, shapes and dtypes of the IR's inputs and outputs (from the exported program)."""
    placeholders = {n.name: n for n in graph.program.graph.nodes if n.op == "placeholder"}
    inputs = [
        {"name": name, "shape": shape, "dtype": dtype_name(placeholders[p].meta["val"].dtype)}
        for name, shape, p in zip(graph.input_names, input_shapes(graph), graph.program.graph_signature.user_inputs)
    ]
    out_node = next(n for n in graph.program.graph.nodes if n.op == "output")
    vals = [a.meta["val"] for a in out_node.args[0] if hasattr(a, "meta")]
    outputs = [
        {"name": name, "shape": [int(d) if isinstance(d, int) else -1 for d in v.shape], "dtype": dtype_name(v.dtype)}
        for name, v in zip(graph.output_names, vals)
    ]
    return inputs, outputs


def _fix_package_manifest(package: Path) -> None:
    """Replace the random item UUIDs in Manifest.json by ones derived from the item paths."""
    path = package / "Manifest.json"
    data = json.loads(path.read_text())
    entries = data.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(_UUID_NAMESPACE, item["path"])).upper() for old, item in entries.items()}
    data["itemInfoEntries"] = {
        renamed[old]: item for old, item in sorted(entries.items(), key=lambda kv: renamed[kv[0]])
    }
    if data.get("rootModelIdentifier") in renamed:
        data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


def mil_operations(spec) -> list:
    """Operations of the ML program's main function (the block for its opset)."""
    fn = spec.mlProgram.functions["main"]
    return list(fn.block_specializations[fn.opset].operations)


def _feature(feature) -> dict:
    from coremltools.proto import FeatureTypes_pb2

    arr = feature.type.multiArrayType
    return {
        "name": feature.name,
        "shape": [int(d) for d in arr.shape],
        "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType),
    }


def structural_checks(
    spec, inputs: list[dict], outputs: list[dict], *, precision: str, target, missing_ops: list[str]
) -> tuple[dict[str, bool], list[str]]:
    """The checks that stand in for numerics where Core ML cannot run; (checks, problems)."""
    got_in = [_feature(f) for f in spec.description.input]
    got_out = [_feature(f) for f in spec.description.output]
    ops = mil_operations(spec)
    fp16_ops = sum(1 for op in ops if op.type != "const" for o in op.outputs if o.type.tensorType.dataType == _MIL_FP16)
    checks = {
        "spec_loads": bool(spec.WhichOneof("Type") == "mlProgram" and ops),
        "every_op_converted": not missing_ops,
        "input_names_match": [f["name"] for f in got_in] == [s["name"] for s in inputs],
        "input_shapes_match": [f["shape"] for f in got_in] == [s["shape"] for s in inputs],
        "input_dtypes_match": [f["dtype"] for f in got_in] == [_IO_DTYPES[s["dtype"]][1] for s in inputs],
        "output_names_match": [f["name"] for f in got_out] == [s["name"] for s in outputs],
        "output_shapes_match": [f["shape"] for f in got_out] == [s["shape"] for s in outputs],
        "output_dtypes_match": [f["dtype"] for f in got_out] == [_IO_DTYPES[s["dtype"]][1] for s in outputs],
        "deployment_target_matches": target is None or spec.specificationVersion == target.value,
        "precision_matches": (fp16_ops > 0) if precision == "fp16" else fp16_ops == 0,
    }
    problems = []
    for key, ok in sorted(checks.items()):
        if not ok:
            problems.append(key)
    if problems:
        log.warning(
            "coreml structural checks failed: %s (inputs %s vs %s, outputs %s vs %s)",
            ", ".join(problems),
            got_in,
            inputs,
            got_out,
            outputs,
        )
    return checks, problems


_MIL_FP16 = 10  # MIL DataType.FLOAT16 in coremltools.proto.MIL_pb2


class CoreMLRunner(Runner):
    """macOS only: the package loaded by Core ML with the profile's compute units."""

    def __init__(self, package: Path, options):
        import coremltools as ct

        self.compute_units = options.compute_units
        self.model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit[options.compute_units])
        spec = self.model.get_spec()
        self.inputs = [_feature(f) for f in spec.description.input]
        self.output_names = [f.name for f in spec.description.output]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {}
        for spec, x in zip(self.inputs, inputs):
            dtype = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32}.get(spec["dtype"], np.float32)
            feed[spec["name"]] = np.ascontiguousarray(x, dtype=dtype)
        out = self.model.predict(feed)
        return [np.asarray(out[name], dtype=np.float32) for name in self.output_names]

    def settings(self) -> dict:
        import coremltools as ct

        return {
            "runtime": "coreml",
            "coremltools": ct.__version__,
            "compute_units": self.compute_units,
            "macos": platform.mac_ver()[0],
            "model_file": PACKAGE,
        }


class CoreMLTarget(Target):
    name = "coreml"
    description = "Apple Core ML ML program (.mlpackage); converts anywhere, runs on macOS/iOS"
    extra = "coreml"
    distributions = ("coremltools",)
    sdk_modules = ("coremltools",)
    main_file = PACKAGE
    precisions = tuple(sorted(_PRECISIONS, reverse=True))

    def can_run_here(self, profile) -> str | None:
        reason = self.is_available()
        if reason:
            return reason
        if not on_macos():
            return (
                f"Core ML execution needs macOS (this is {platform.system()}): the package was validated "
                "structurally instead; run `edgeformer profile` on a Mac for numerics and latency"
            )
        if profile.options.aot_only:
            return f"profile {profile.name} compiles ahead of time only: run model.mlpackage in the app on the device"
        return None

    def needs_calibration(self, profile) -> bool:
        """W8A8 calibrates its activation ranges; weight-only int8 and palettization are data-free."""
        return profile.options.compression in compress.CALIBRATED

    def compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        with quiet_sdk(*_SDK_LOGGERS):
            return self._compile(graph, profile, out_dir, calibration)

    def _compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        import coremltools as ct

        opts = profile.options
        if opts.precision not in _PRECISIONS:
            raise UserError(
                f"profile {profile.name}: Core ML precision {opts.precision} is not supported here",
                'use precision = "fp16" or "fp32" with [options] compression = "w8", "palettize4", '
                '"palettize6" or "w8a8" for int8/palettized weights',
            )
        if is_streaming_step(graph):
            return _compile_stateful(graph, profile, out_dir)
        target = _deployment_target(ct, opts.minimum_deployment_target)
        compression = opts.compression
        if compression != "none":
            compress.check_profile(ct, profile, target, calibration)
        rewritten = graph
        graph = _program(graph)
        missing = unconvertible_ops(graph.program)
        if missing:
            raise unsupported_op_error(graph, f"Core ML (coremltools {ct.__version__})", missing)
        inputs, outputs = _io_specs(graph)
        for spec in inputs + outputs:
            if -1 in spec["shape"]:
                raise UserError(
                    f"the Core ML target needs static shapes; {spec['name']} has {spec['shape']}",
                    "compile without dynamic batch (one package per input shape)",
                )
            if spec["dtype"] not in _IO_DTYPES:
                raise UserError(
                    f"Core ML has no {spec['dtype']} tensors (input/output {spec['name']})",
                    "cast it to float32 or int32 in the model",
                )
        kwargs = {"minimum_deployment_target": target} if target is not None else {}
        source = graph.program
        w8a8 = None
        if compression == "w8a8":
            w8a8 = compress.quantize_activations(rewritten, calibration, drop_identity_ops)
            source = w8a8.program
            missing = unconvertible_ops(source)
            if missing:
                raise unsupported_op_error(graph, f"Core ML (coremltools {ct.__version__}) W8A8", missing)
        try:
            mlmodel = ct.convert(
                source,
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if opts.precision == "fp16" else ct.precision.FLOAT32,
                compute_units=ct.ComputeUnit[opts.compute_units],
                inputs=[
                    ct.TensorType(name=s["name"], shape=s["shape"], dtype=_IO_DTYPES[s["dtype"]][0]) for s in inputs
                ],
                outputs=[ct.TensorType(name=s["name"], dtype=_IO_DTYPES[s["dtype"]][0]) for s in outputs],
                skip_model_load=not on_macos(),
                **kwargs,
            )
        except Exception as err:  # noqa: BLE001 - the converter raises many types
            raise UserError(
                f"Core ML could not convert {graph.name}: {first_line(err)}",
                "run with --debug for the converter's trace",
            ) from err
        compressed = None
        if compression != "none":
            compressed = compress.apply(mlmodel, rewritten, compression, calibration, w8a8)
            mlmodel = compressed.mlmodel
        package = out_dir / PACKAGE
        mlmodel.save(str(package))
        # coremltools writes ExecuTorch's Core ML delegate a map of debug handles to MIL ops when the
        # program came from torch.export; an app's Core ML does not read it (it is outside the
        # package's Manifest.json), so it is not shipped.
        (package / DEBUG_HANDLE_MAP).unlink(missing_ok=True)
        _fix_package_manifest(package)

        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        checks, problems = structural_checks(
            spec, inputs, outputs, precision=opts.precision, target=target, missing_ops=missing
        )
        ops = mil_operations(spec)
        hist: dict[str, int] = {}
        for op in ops:
            hist[op.type] = hist.get(op.type, 0) + 1
        details = {
            "compute_precision": opts.precision,
            "compute_units": opts.compute_units,
            "minimum_deployment_target": target.name if target is not None else "coremltools default",
            "specification_version": int(spec.specificationVersion),
            "mil_ops": sum(n for t, n in hist.items() if t != "const"),
            "mil_consts": hist.get("const", 0),
            "mil_op_histogram": dict(sorted(hist.items())),
            "validated": "predicted on macOS" if on_macos() else "structurally (Core ML cannot run on this OS)",
        }
        if compressed is not None:
            facts, more = compress.inspect(spec, compression, compressed.kept_consts, compressed.kept_ops, package)
            checks.update(more)
            failed = [k for k, ok in more.items() if not ok]
            if failed:
                log.warning("coreml %s structural checks failed: %s (%s)", compression, ", ".join(failed), facts)
            problems = sorted(problems + failed)
            details["quantization"] = {**compressed.facts, **facts, "measured": compress.MEASURED}
        if problems:
            details["structural_problems"] = problems
        files = sorted(p.relative_to(out_dir).as_posix() for p in package.rglob("*") if p.is_file())
        return CompileResult(files=files, details=details, structural_checks=checks)

    def cannot_stream(self, profile) -> str | None:
        """Core ML streams as a stateful model (fp16 states, iOS 18) at fp16 or fp32 compute."""
        if profile.options.compression != "none":
            kind = profile.options.compression
            return f"a compressed Core ML model ({kind}) does not stream; compile it uncompressed"
        if profile.options.precision not in ("fp16", "fp32"):
            return f"Core ML streams at fp16 or fp32, the profile asks for {profile.options.precision}"
        return None

    def load(self, artifact) -> CoreMLRunner:
        reason = self.can_run_here(artifact.profile)
        if reason:
            raise UserError(f"cannot run {artifact.path} here: {reason}")
        return CoreMLRunner(Path(artifact.path) / PACKAGE, artifact.profile.options)

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        """macOS: each op's preferred compute unit and estimated cost share (Core ML's compute plan)."""
        profile = artifact.profile
        reason = self.can_run_here(profile)
        if reason:
            raise UserError(f"Core ML latency and per-op profiles need macOS: {reason}")
        import coremltools as ct
        from coremltools.models.compute_plan import MLComputePlan

        runner = self.load(artifact)
        runner.run(inputs)  # warm-up
        runs = max(1, runs)
        t0 = time.perf_counter()
        for _ in range(runs):
            runner.run(inputs)
        e2e_ms = (time.perf_counter() - t0) * 1e3 / runs
        plan = MLComputePlan.load_from_path(
            runner.model.get_compiled_model_path(), compute_units=ct.ComputeUnit[profile.options.compute_units]
        )
        ops = []
        for i, op in enumerate(plan.model_structure.program.functions["main"].block.operations):
            if op.operator_name == "const":
                continue
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            cost = plan.get_estimated_cost_for_mlprogram_operation(op)
            device = (
                type(usage.preferred_compute_device).__name__.replace("ML", "").replace("ComputeDevice", "")
                if usage
                else None
            )
            name = op.outputs[0].name if op.outputs else f"{op.operator_name}_{i}"
            ops.append(
                OpTime(
                    name=name,
                    type=op.operator_name,
                    time_ms=(cost.weight if cost else 0.0) * e2e_ms,
                    share=0.0,
                    device=device,
                )
            )
        return OpProfile.build(
            "coreml",
            runs,
            e2e_ms,
            ops,
            notes=[
                "Core ML has no per-op timer: times are the compute plan's estimated cost share x measured latency",
                f"compute units {profile.options.compute_units}; device = the op's preferred compute unit",
            ],
        )


def is_streaming_step(graph) -> bool:
    """A ``compile --streaming`` step: inputs ``frame``, ``flush`` and ``state_*`` (edgeformer/streaming.py)."""
    names = list(graph.input_names)
    return names[:2] == ["frame", "flush"] and len(names) > 2 and all(n.startswith(STATE_PREFIX) for n in names[2:])


class _Step:
    """The rewritten step program as a module ``convert_stateful`` can hold: an exported program's
    module refuses ``eval()``, which is a no-op for it (it was exported in eval mode)."""

    def __new__(cls, module):
        import torch

        class Step(torch.nn.Module):
            def __init__(self):
                super().__init__()
                object.__setattr__(self, "inner", module)  # not a child: eval() must not reach it

            def forward(self, *args):
                return self.inner(*args)

        return Step()


def _compile_stateful(graph, profile, out_dir: Path) -> CompileResult:
    """The streaming step as a stateful ML program: every ``state_*`` a Core ML state (fp16, iOS 18),
    the app feeding only ``frame`` and ``flush`` (targets/coreml/stateful.py)."""
    shapes = input_shapes(graph)
    states = [(n[len(STATE_PREFIX) :], tuple(sh)) for n, sh in zip(graph.input_names[2:], shapes[2:])]
    package = out_dir / PACKAGE
    step, precision = _Step(graph.program.module()), profile.options.precision
    details = convert_stateful(step, states, package, frame_shape=tuple(shapes[0]), precision=precision)
    checks = details.pop("checks")
    details["streaming"] = (
        "a stateful model: the manifest's streaming states are Core ML states (make_state() once, then "
        "predict(frame, flush) updates them in place); validated structurally on this OS"
    )
    files = sorted(p.relative_to(out_dir).as_posix() for p in package.rglob("*") if p.is_file())
    return CompileResult(files=files, details=details, structural_checks=checks)
