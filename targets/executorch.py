"""ExecuTorch: IR → ``to_edge_transform_and_lower`` (XNNPACK partitioner) → ``model.pte``.

Options read from the profile: ``partitioner`` ("xnnpack" or "none": portable kernels only),
``threads`` (XNNPACK's thread pool; 0 = ExecuTorch's default) and ``aot_only`` (compile-only
profiles such as ``android-arm64-xnnpack``: a ``.pte`` with XNNPACK delegates is portable across
CPU architectures, since XNNPACK picks its kernels at load time, but running it needs the device).

The manifest reports placement: how many IR ops XNNPACK took (in how many delegated subgraphs),
how many fell back to ExecuTorch's portable kernels, and which op types fell back.  An op that is
not in the Core ATen opset, or has no kernel in this ExecuTorch runtime, fails the compile with
the op's name and the module it came from.

Per-op times come from ETDump, read with the devtools ``Inspector``: each XNNPACK-internal
operator (``Convolution (NHWC, F32) IGEMM #1``, device ``XnnpackBackend``) and each fallback
kernel (``aten.mean.out#0``, device ``portable``, with its source module).  End-to-end is the
runtime's own ``Method::execute``; the unexplained remainder is delegate-call and method
overhead.
"""

from __future__ import annotations

import logging
import operator
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError, first_line
from edgeformer.ir import source_path

from ._support import quiet_sdk, unsupported_op_error
from .base import CompileResult, OpProfile, OpTime, Runner, Target

log = logging.getLogger(__name__)

_DELEGATE = "XnnpackBackend"
_NOT_CORE = re.compile(r"Operator (?:torch\._ops\.)?([\w.]+) is not in Core ATen opset")


def _op_label(target) -> str:
    """Edge-dialect target → ``aten.mean.dim`` style name."""
    name = getattr(target, "__name__", None) or str(target)
    schema = getattr(target, "_schema", None)
    if schema is not None:
        base = schema.name.replace("::", ".")
        return f"{base}.{schema.overload_name}" if schema.overload_name else base
    return name


def _is_bookkeeping(node) -> bool:
    return node.target is operator.getitem or "executorch_call_delegate" in str(node.target)


def delegation(edge_program) -> dict:
    """Placement of the lowered edge program's ops: delegated to XNNPACK vs fallen back."""
    gm = edge_program.graph_module
    delegated: dict[str, int] = {}
    fallback: dict[str, int] = {}
    fallback_nodes: list[dict] = []
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            for inner in getattr(gm, node.name).original_module.graph.nodes:
                if inner.op == "call_function" and not _is_bookkeeping(inner):
                    label = _op_label(inner.target)
                    delegated[label] = delegated.get(label, 0) + 1
        elif node.op == "call_function" and not _is_bookkeeping(node):
            label = _op_label(node.target)
            fallback[label] = fallback.get(label, 0) + 1
            fallback_nodes.append({"op": label, "source": source_path(node) or None})
    return {
        "delegate": _DELEGATE if subgraphs else None,
        "delegated_subgraphs": subgraphs,
        "delegated_ops": sum(delegated.values()),
        "fallback_ops": sum(fallback.values()),
        "delegated_op_types": dict(sorted(delegated.items())),
        "fallback_op_types": dict(sorted(fallback.items())),
        # in execution order: ETDump's portable-kernel events follow it, which gives their sources
        "fallback_nodes": fallback_nodes,
    }


def _lower(graph, partitioner: str):
    from executorch.exir import to_edge_transform_and_lower

    partitioners = []
    if partitioner == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners = [XnnpackPartitioner()]
    try:
        return to_edge_transform_and_lower(graph.program, partitioner=partitioners)
    except Exception as err:  # noqa: BLE001 - SpecViolationError and friends
        found = _NOT_CORE.search(str(err))
        if found:
            raise unsupported_op_error(
                graph,
                "ExecuTorch",
                [found.group(1)],
                "it is not a Core ATen op, so ExecuTorch has no kernel for it: rewrite that module, "
                "or choose another target (`edgeformer targets`)",
            ) from err
        raise UserError(
            f"ExecuTorch could not lower {graph.name}: {first_line(err)}", "run with --debug for the trace"
        ) from err


def _check_kernels(graph, program) -> list[str]:
    """Kernel ops the .pte needs that this ExecuTorch runtime lacks (empty when all are there)."""
    from executorch.runtime import Runtime

    available = Runtime.get().operator_registry.operator_names
    missing = []
    for plan in program.executorch_program.execution_plan:
        for op in plan.operators:
            name = f"{op.name}.{op.overload}" if op.overload else op.name
            if name not in available:
                missing.append(name)
    return sorted(set(missing))


class ExecuTorchRunner(Runner):
    def __init__(self, pte: Path, options, *, etdump: bool = False):
        import torch  # noqa: F401 - executorch.runtime takes torch tensors
        from executorch.runtime import Runtime, Verification

        runtime = Runtime.get()
        if options.threads:
            runtime._legacy_module._unsafe_reset_threadpool(int(options.threads))
        self._runtime = runtime
        self.program = runtime.load_program(
            pte, verification=Verification.Minimal, enable_etdump=etdump, debug_buffer_size=0
        )
        self.method = self.program.load_method("forward")
        self._partitioner = options.partitioner

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        outputs = self.method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [o.detach().numpy().copy() for o in outputs]

    def settings(self) -> dict:
        from executorch.version import __version__

        try:
            threads = self._runtime._legacy_module._threadpool_get_thread_count()
        except AttributeError:
            threads = "default"
        return {
            "runtime": "executorch",
            "version": __version__,
            "delegate": _DELEGATE if self._partitioner == "xnnpack" else "none (portable kernels)",
            "threads": threads,
            "model_file": "model.pte",
        }


class ExecuTorchTarget(Target):
    name = "executorch"
    description = "PyTorch ExecuTorch with the XNNPACK delegate; ships model.pte (Android, iOS, Linux)"
    extra = "executorch"
    distributions = ("executorch",)
    sdk_modules = ("torch", "executorch.runtime")
    main_file = "model.pte"

    def can_run_here(self, profile) -> str | None:
        reason = self.is_available()
        if reason:
            return reason
        opts = profile.options
        if opts.aot_only:
            device = opts.device if opts.device.upper() != "CPU" else "its target device"
            return (
                f"profile {profile.name} compiles ahead of time only: model.pte runs on {device} "
                "(push it with adb and run executor_runner or the ExecuTorch benchmark app)"
            )
        if opts.partitioner == "xnnpack":
            from executorch.runtime import Runtime

            if not Runtime.get().backend_registry.is_available(_DELEGATE):
                return f"this ExecuTorch runtime has no {_DELEGATE} registered; reinstall executorch"
        return None

    def compile(self, graph, profile, out_dir: Path) -> CompileResult:
        with quiet_sdk("torchao", "torchao.kernel.intmm"):
            return self._compile(graph, profile, out_dir)

    def _compile(self, graph, profile, out_dir: Path) -> CompileResult:
        opts = profile.options
        edge = _lower(graph, opts.partitioner)
        placement = delegation(edge.exported_program())
        try:
            program = edge.to_executorch()
        except Exception as err:  # noqa: BLE001
            raise UserError(
                f"ExecuTorch could not emit {graph.name}: {first_line(err)}", "run with --debug for the trace"
            ) from err
        missing = _check_kernels(graph, program)
        if missing:
            ops = [m.split(".")[0].replace("::", ".") for m in missing]
            raise unsupported_op_error(
                graph,
                "this ExecuTorch runtime (no kernel)",
                ops,
                f"no kernel registered for {', '.join(missing)}: rewrite that module, or choose another target",
            )
        (out_dir / "model.pte").write_bytes(program.buffer)
        log.info(
            "executorch: %d ops delegated to XNNPACK in %d subgraphs, %d fell back",
            placement["delegated_ops"],
            placement["delegated_subgraphs"],
            placement["fallback_ops"],
        )
        kernels = sorted(
            {
                f"{o.name}.{o.overload}" if o.overload else o.name
                for p in program.executorch_program.execution_plan
                for o in p.operators
            }
        )
        details = {
            "partitioner": opts.partitioner,
            **placement,
            "portable_kernels": kernels,
            "pte_bytes": len(program.buffer),
        }
        if opts.aot_only:
            details["runs_on"] = opts.device
        return CompileResult(files=["model.pte"], details=details)

    def load(self, artifact) -> ExecuTorchRunner:
        reason = self.can_run_here(artifact.profile)
        if reason:
            raise UserError(f"cannot run {artifact.path} here: {reason}")
        return ExecuTorchRunner(Path(artifact.path) / "model.pte", artifact.profile.options)

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        """Per-op times from ETDump (devtools Inspector); the first run is a warm-up and dropped."""
        from executorch.devtools import Inspector

        runs = max(1, runs)
        runner = ExecuTorchRunner(Path(artifact.path) / "model.pte", artifact.profile.options, etdump=True)
        t0 = 0.0
        for i in range(runs + 1):
            if i == 1:
                t0 = time.perf_counter()
            runner.run(inputs)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        with tempfile.TemporaryDirectory(prefix="edgeformer-etdump-") as tmp:
            etdump, debug = Path(tmp) / "model.etdp", Path(tmp) / "debug.bin"
            runner.program.write_etdump_result_to_file(str(etdump), str(debug))
            inspector = Inspector(etdump_path=str(etdump))
        fallback_nodes = artifact.manifest.target_details.get("fallback_nodes") or []
        ops, e2e_ms, native_index, delegate_index = [], 0.0, 0, 0
        for block in inspector.event_blocks:
            if block.name != "Execute":
                continue
            for event in block.events:
                raw = list(event.perf_data.raw) if event.perf_data else []
                timed = raw[1:] if len(raw) > runs else raw  # drop the warm-up sample
                mean = sum(timed) / len(timed) if timed else 0.0
                if event.name == "Method::execute":
                    e2e_ms = mean
                elif event.name == "DELEGATE_CALL":  # follows the delegate's own operator events
                    delegate_index += 1  # its overhead beyond them stays unexplained
                elif event.name == "OPERATOR_CALL":
                    continue  # wraps the native_call_* event before it
                elif event.name.startswith("native_call_"):
                    kernel = event.name[len("native_call_") :]
                    node = fallback_nodes[native_index] if native_index < len(fallback_nodes) else {}
                    ops.append(
                        OpTime(
                            name=f"{kernel}#{native_index}",
                            type=f"aten.{kernel.split('.')[0]}",
                            time_ms=mean,
                            share=0.0,
                            device="portable",
                            source=node.get("source"),
                        )
                    )
                    native_index += 1
                else:
                    # XNNPACK numbers its operators per delegate: prefix the delegate's index
                    ops.append(
                        OpTime(
                            name=f"delegate{delegate_index}/{event.name}",
                            type=re.sub(r"\s*#\d+$", "", event.name),
                            time_ms=mean,
                            share=0.0,
                            device=event.delegate_backend_name or _DELEGATE,
                        )
                    )
        notes = [
            "ETDump via the ExecuTorch devtools Inspector; end-to-end is the runtime's Method::execute "
            f"(Python wall time per run: {wall_ms:.4f} ms)",
            "XNNPACK-internal operators are not mapped back to source modules (that needs an ETRecord); "
            "unexplained = delegate-call and method overhead",
        ]
        runner.close()
        return OpProfile.build("executorch", runs, e2e_ms or wall_ms, ops, notes=notes)
