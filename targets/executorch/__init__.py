"""ExecuTorch: IR → ``to_edge_transform_and_lower`` (XNNPACK partitioner) → ``model.pte``.

Options read from the profile: ``partitioner`` ("xnnpack" or "none": portable kernels only),
``threads`` (XNNPACK's thread pool; 0 = ExecuTorch's default), ``precision`` and ``aot_only``
(compile-only profiles such as ``android-arm64-xnnpack``: a ``.pte`` with XNNPACK delegates is
portable across CPU architectures, since XNNPACK picks its kernels at load time, so this
machine's runtime checks its numbers; its latency is the device's to measure).

Precision: ``fp32``, ``int8`` (PT2E with XNNPACK's quantizer on the rewritten IR, calibrated;
``quantize.py``, which also counts what runs in int8 for the manifest's ``quantization``), or
``fp16`` (XNNPACK's fp16 path: the IR with fp16 weights and compute and
fp32 inputs/outputs, cast inside the program).  XNNPACK runs its fp16 kernels on arm64 natively
and on x86 with F16C/AVX2 (checked on this AMD EPYC: it delegates and runs, max abs error ~1e-4 at
outputs of order 0.1 on the zoo's tiny models, cosine 1.000000); ops XNNPACK has no fp16 kernel
for (GELU, LayerNorm, GroupNorm) run on the portable kernels in fp16.  The manifest's
``ops_by_dtype`` counts the ops per output dtype, so the real precision is on record.

The manifest reports placement: how many IR ops XNNPACK took (in how many delegated subgraphs),
how many fell back to ExecuTorch's portable kernels, and which op types fell back, with a
one-line ``delegation_summary`` (also logged at INFO).  An op that is not in the Core ATen opset,
has no kernel in this ExecuTorch runtime, breaks XNNPACK's lowering or fails in its portable
kernel fails the compile with the op's name and the module it came from.

ExecuTorch's own noise (cpuinfo's and the thread pool's C-level lines on fd 2, torchao's
import-time warnings about its cp310 binaries, torch's ``KernelPreference`` notice, the SDK's
Python warnings) is kept off stderr around import, lowering, load and the first run: the lines
are logged at DEBUG, and any other line the runtime writes is passed on.

Per-op times come from ETDump, read with the devtools ``Inspector``: each XNNPACK-internal
operator (``Convolution (NHWC, F32) IGEMM #1``, device ``XnnpackBackend``) and each fallback
kernel (``aten.mean.out#0``, device ``portable``, with its source module).  End-to-end is the
runtime's own ``Method::execute``; the unexplained remainder is delegate-call and method
overhead.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import operator
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgeformer.errors import UnsupportedOpError, UserError, first_line
from edgeformer.ir import op_name, source_path
from edgeformer.passes import PIPELINES, Pipeline

from .._support import display_name, input_shapes, quiet_sdk, unsupported_op_error
from ..base import CompileResult, OpProfile, OpTime, Runner, Target, quantizable_layers
from . import quantize
from .quantize import _op_label, _short

log = logging.getLogger(__name__)

_DELEGATE = "XnnpackBackend"
_PRECISIONS = ("fp32", "fp16", "int8")
_NOT_CORE = re.compile(r"Operator (?:torch\._ops\.)?([\w.]+) is not in Core ATen opset")
_EDGE_OPERATOR = re.compile(r"Operator: <EdgeOpOverload: ([\w.]+)>.*?with args: (\{[^}]*\})")
_FAILED_PASS = re.compile(r"running the '(\w+)' pass")
# "[method.cpp:1483] KernelCall failed at instruction 0:2 in operator aten::convolution.out: 0x12"
_KERNEL_FAILED = re.compile(r"in operator ([\w:.]+?)(?:\.out)?: 0x")
_MISSING_OP = re.compile(r"Missing operator: \[\d+\] ([\w:.]+)")
_CHECK_FAILED = re.compile(r"\] Check failed \((.*)\): ?(.*)$")
# What ExecuTorch and its imports write to stderr that says nothing about the user's model.
_NOISE = re.compile(
    r"^\[(?:cpuinfo_utils\.cpp|threadpool\.cpp):\d+\]"  # cpuinfo's /sys probing, "Resetting threadpool"
    r"|KernelPreference|torchao|Detected no triton"  # torchao's import (a cp310 binary on 3.11)
)
_SDK_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


# ----------------------------------------------------------------------------------- quiet SDK


@contextlib.contextmanager
def _quiet_python() -> Iterator[None]:
    """torchao's and torch's import-time log lines and the SDK's Python warnings, to DEBUG."""
    with quiet_sdk(*_SDK_LOGGERS), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for w in caught:
                log.debug("executorch: %s: %s", w.category.__name__, w.message)


class _Captured:
    lines: list[str]

    def __init__(self) -> None:
        self.lines = []


@contextlib.contextmanager
def _native_stderr() -> Iterator[_Captured]:
    """Capture what C code writes to fd 2 during the call (cpuinfo, the runtime's own log).

    Known noise is logged at DEBUG; any other line is written to stderr afterwards, so nothing
    the runtime says is lost.  When the call raises, the lines stay in the yielded object for the
    caller's one-line error instead (and at DEBUG).
    """
    cap = _Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    failed = False
    # The runtime's log may go through Python's sys.stderr too (the pybindings' log sink), which is
    # fd 2 only when nothing has replaced it (pytest, a notebook): capture both.
    py_err = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stderr(py_err):
                yield cap
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace") + py_err.getvalue()
            for line in text.splitlines():
                if line.strip():
                    log.debug("executorch stderr: %s", line)
            cap.lines = [ln for ln in text.splitlines() if ln.strip() and not _NOISE.search(ln)]
            if cap.lines and not failed:
                os.write(2, ("\n".join(cap.lines) + "\n").encode())


def _runtime():
    """``executorch.runtime.Runtime`` (its first import pulls in torchao: quietly)."""
    with _quiet_python():
        from executorch.runtime import Runtime

    return Runtime


# ------------------------------------------------------------------------------------ placement


def _is_bookkeeping(node) -> bool:
    return node.target is operator.getitem or "executorch_call_delegate" in str(node.target)


def _dtype(node) -> str | None:
    val = node.meta.get("val")
    dtype = getattr(val, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else None


def delegation_summary(placement: dict, partitioner: str = "xnnpack", limit: int = 4) -> str:
    """One line: ``XNNPACK: 24 ops in 6 partitions; 17 on portable kernels (where, any, …)``."""
    fallback = placement["fallback_op_types"]
    by_count: dict[str, int] = {}
    for label, n in fallback.items():
        by_count[_short(label)] = by_count.get(_short(label), 0) + n
    names = [k for k, _ in sorted(by_count.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown = ", ".join(names[:limit]) + (" …" if len(names) > limit else "")
    portable = f"{placement['fallback_ops']} on portable kernels" + (f" ({shown})" if shown else "")
    if partitioner != "xnnpack":
        return f"no delegate (partitioner {partitioner}): {portable}"
    parts = placement["delegated_subgraphs"]
    return f"XNNPACK: {placement['delegated_ops']} ops in {parts} partition{'' if parts == 1 else 's'}; {portable}"


def delegation(edge_program, partitioner: str = "xnnpack") -> dict:
    """Placement of the lowered edge program's ops: delegated to XNNPACK vs fallen back."""
    gm = edge_program.graph_module
    delegated: dict[str, int] = {}
    fallback: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    fallback_nodes: list[dict] = []
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            for inner in getattr(gm, node.name).original_module.graph.nodes:
                if inner.op == "call_function" and not _is_bookkeeping(inner):
                    label = _op_label(inner.target)
                    delegated[label] = delegated.get(label, 0) + 1
                    if dtype := _dtype(inner):
                        dtypes[dtype] = dtypes.get(dtype, 0) + 1
        elif node.op == "call_function" and not _is_bookkeeping(node):
            label = _op_label(node.target)
            fallback[label] = fallback.get(label, 0) + 1
            fallback_nodes.append({"op": label, "source": source_path(node) or None})
            if dtype := _dtype(node):
                dtypes[dtype] = dtypes.get(dtype, 0) + 1
    placement = {
        "delegate": _DELEGATE if subgraphs else None,
        "delegated_subgraphs": subgraphs,
        "delegated_ops": sum(delegated.values()),
        "fallback_ops": sum(fallback.values()),
        "delegated_op_types": dict(sorted(delegated.items())),
        "fallback_op_types": dict(sorted(fallback.items())),
        # in execution order: ETDump's portable-kernel events follow it, which gives their sources
        "fallback_nodes": fallback_nodes,
        # ops (delegated and portable) by the dtype they compute in: the real precision
        "ops_by_dtype": dict(sorted(dtypes.items())),
    }
    placement["delegation_summary"] = delegation_summary(placement, partitioner)
    return placement


# --------------------------------------------------------------------------------------- errors


def _ir_op(graph, edge_node) -> str:
    """The IR op an edge-dialect node came from (``from_node`` provenance), else its own name."""
    names = {n.name: n for n in graph.program.graph.nodes if n.op == "call_function"}
    sources = edge_node.meta.get("from_node") or []
    while sources:
        src = sources[-1]
        if getattr(src, "name", None) in names and not getattr(src, "from_node", None):
            return op_name(names[src.name].target)
        sources = getattr(src, "from_node", None) or []
    return display_name(_op_label(edge_node.target))


def _failing_node(err: BaseException):
    """The FX node an SDK pass was working on when it raised (innermost frame with a ``node``)."""
    from torch import fx

    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for exc in reversed(chain):  # the root cause first
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):
            for name in ("node", "n", "target_node"):
                node = frame.f_locals.get(name)
                if isinstance(node, fx.Node) and node.op == "call_function":
                    return exc, node
    return chain[-1] if chain else None, None


def _ops_named_in(graph, text: str) -> list[str]:
    """IR ops whose name appears in an SDK message (``view_as_complex_copy does not …``)."""
    found = set()
    for node in graph.program.graph.nodes:
        if node.op == "call_function":
            base = op_name(node.target).split(".")[-1]
            if len(base) > 3 and re.search(rf"\b_?{re.escape(base)}(?:_copy)?\b", text):
                found.add(op_name(node.target))
    return sorted(found)


_FIX = "rewrite that module, or choose another target (`edgeformer targets`)"


def _lowering_error(graph, err: Exception, stage: str) -> UserError:
    """One line naming the op and its module for a failure in ``to_edge_transform_and_lower``/``to_executorch``."""
    text = "\n".join(str(e) for e in _chain(err))
    found = _NOT_CORE.search(text)
    if found:
        op = display_name(found.group(1))
        ir_ops = [op]
        _, node = _failing_node(err)
        if node is not None and (origin := _ir_op(graph, node)) != op:
            ir_ops = [origin]
            op = f"{op} (what {origin} decomposes to)"
        return unsupported_op_error(
            graph,
            "ExecuTorch",
            ir_ops,
            f"it needs {op}, which is not a Core ATen op, so ExecuTorch has no kernel for it: {_FIX}",
        )
    found = _EDGE_OPERATOR.search(text)
    if found:  # the edge verifier: "These operators are taking Tensor inputs with mismatched dtypes"
        op = display_name(found.group(1))
        dtypes = sorted(set(re.findall(r"torch\.(\w+)", found.group(2))))
        complex_ = [d for d in dtypes if d.startswith("complex")]
        why = (
            f"it computes on {', '.join(complex_)} tensors, which ExecuTorch's kernels do not take"
            if complex_
            else f"its inputs and outputs mix dtypes ({', '.join(dtypes)}), which ExecuTorch's kernels do not"
        )
        return unsupported_op_error(graph, "ExecuTorch", [op], f"{why}: {_FIX}")
    root, node = _failing_node(err)
    failed_pass = _FAILED_PASS.search(text)
    if node is not None:
        where = f"XNNPACK's {failed_pass.group(1)}" if failed_pass else f"ExecuTorch's {stage}"
        fix = (
            'set partitioner = "none" in the profile (portable kernels only), or rewrite that module'
            if failed_pass
            else _FIX
        )
        return unsupported_op_error(
            graph, "ExecuTorch", [_ir_op(graph, node)], f"{where} failed on it ({first_line(root)}): {fix}"
        )
    named = _ops_named_in(graph, text)
    if named:
        return unsupported_op_error(
            graph, "ExecuTorch", named, f"ExecuTorch's {stage} failed: {first_line(err)}; {_FIX}"
        )
    return UserError(f"ExecuTorch could not {stage} {graph.name}: {first_line(err)}", "run with --debug for the trace")


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _kernel_error(lines: list[str], fallback_nodes: list[dict], err: Exception) -> UserError:
    """A failed load or run, from the runtime's own log lines: which kernel, where it came from, why."""
    text = "\n".join(lines)
    missing = _MISSING_OP.findall(text)
    failed = _KERNEL_FAILED.search(text)
    checks = [m for ln in lines if (m := _CHECK_FAILED.search(ln))]
    why = "; ".join(dict.fromkeys((c.group(2) or c.group(1)).strip() for c in checks)) or first_line(err)
    if missing or failed:
        kernels = sorted({k.replace("::", ".").removesuffix("_out").removesuffix(".out") for k in missing}) or [
            failed.group(1).replace("::", ".")
        ]
        parts = []
        for kernel in kernels:
            base = kernel.split(".")[:2]
            sources = [n["source"] for n in fallback_nodes if n["op"].split(".")[:2] == base and n.get("source")]
            where = f" (in {', '.join(dict.fromkeys(sources[:3]))})" if sources else ""
            parts.append(f"{'.'.join(base)}{where}")
        noun = "op" if len(parts) == 1 else "ops"
        if missing:
            return UnsupportedOpError(
                f"this ExecuTorch runtime has no kernel for {noun} {', '.join(parts)}",
                "rewrite that module, or reinstall executorch with those kernels",
            )
        return UnsupportedOpError(
            f"ExecuTorch's portable kernel for {noun} {', '.join(parts)} failed: {why}",
            "rewrite that module so the op has a supported form, or choose another target (`edgeformer targets`)",
        )
    return UserError(f"ExecuTorch failed: {why}", "run with --debug for the runtime's log")


# ------------------------------------------------------------------------------------- lowering


def _half_program(graph):
    """The IR in fp16 (weights, buffers and compute) behind fp32 inputs and outputs."""
    import torch
    from torch import nn

    if any(-1 in s for s in input_shapes(graph)):
        raise UserError(
            f"ExecuTorch fp16 lowering of {graph.name} needs static shapes", "compile without dynamic batch"
        )
    module = copy.deepcopy(graph.program.module()).half()

    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = module

        def forward(self, *xs):
            out = self.body(*[x.half() if x.is_floating_point() else x for x in xs])
            flat, spec = torch.utils._pytree.tree_flatten(out)
            flat = [o.float() if isinstance(o, torch.Tensor) and o.dtype == torch.float16 else o for o in flat]
            return torch.utils._pytree.tree_unflatten(flat, spec)

    try:
        return torch.export.export(Half(), tuple(graph.example_inputs), strict=False)
    except Exception as err:  # noqa: BLE001 - an op with a hard-coded fp32 operand, ...
        named = _ops_named_in(graph, str(err))
        if named:
            raise unsupported_op_error(
                graph, "ExecuTorch fp16", named, f"it does not run in fp16 ({first_line(err)}): use precision fp32"
            ) from err
        raise UserError(
            f"ExecuTorch could not convert {graph.name} to fp16: {first_line(err)}", 'use precision = "fp32"'
        ) from err


def _lower(graph, partitioner: str, precision: str = "fp32", program=None):
    """``to_edge_transform_and_lower`` of ``program`` (default: the IR, or its fp16 form)."""
    with _quiet_python():
        from executorch.exir import to_edge_transform_and_lower

        partitioners = []
        if partitioner == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioners = [XnnpackPartitioner()]
    if program is None:
        program = _half_program(graph) if precision == "fp16" else graph.program
    if partitioner == "xnnpack":
        program = softmax_as_2d(program)
    try:
        return to_edge_transform_and_lower(program, partitioner=partitioners)
    except Exception as err:  # noqa: BLE001 - SpecViolationError and friends
        raise _lowering_error(graph, err, "lower") from err


# Ops that end XNNPACK's channels-last (NHWC) tagging on the way back from a softmax: past them the
# tensor is in NCHW order again (reshapes, permutes and matmuls need it).
_LAYOUT_BARRIERS = (
    "view",
    "reshape",
    "_unsafe_view",
    "permute",
    "transpose",
    "bmm",
    "matmul",
    "mm",
    "linear",
    "addmm",
    "expand",
    "flatten",
    "unsqueeze",
    "squeeze",
    "cat",
    "split",
    "slice",
    "select",
)


def _after_conv(node, depth: int = 12) -> bool:
    """True when ``node`` comes from a convolution through layout-preserving ops only (elementwise,
    q/dq, clone): the tensors XNNPACK's ChannelsLastTaggedReshapePass keeps in NHWC."""
    frontier, seen = [node], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if n in seen or n.op != "call_function":
                continue
            seen.add(n)
            base = op_name(n.target).split(".")[-1]
            if base in ("convolution", "conv2d", "conv1d"):
                return True
            if base in _LAYOUT_BARRIERS:
                continue
            nxt.extend(n.all_input_nodes)
        frontier = nxt
    return False


def softmax_as_2d(program):
    """``program`` with every last-axis softmax of a rank-4 conv output taken on a 2-D view.

    ExecuTorch 1.5.1's XNNPACK delegate computes such a softmax along the wrong axis: its
    ChannelsLastTaggedReshapePass keeps the conv output in NHWC, and the softmax is then taken over
    memory's last axis (channels) instead of W.  Measured: Conv2d(4, 4, 1) → softmax(-1) on
    1×4×6×6 inputs, max |Δ| 0.83 against PyTorch; the trained efficientformer_v2_tiny (talking-head
    convs around its attention softmax) cosine 0.970.  A view to (N·C·H, W) makes XNNPACK convert to
    NCHW first, so the softmax is exact (|Δ| ≤ 2e-6).  Returns ``program`` itself when nothing
    matches, else a rewritten copy (the IR is shared with the numerics check and stays as it was).
    """
    import torch

    aten = torch.ops.aten
    targets = (aten._softmax.default, aten.softmax.int)

    def matches(n) -> bool:
        if n.op != "call_function" or n.target not in targets:
            return False
        val = n.args[0].meta.get("val")
        if val is None or val.dim() != 4:
            return False
        return n.args[1] in (-1, 3) and _after_conv(n.args[0])

    if not any(matches(n) for n in program.graph.nodes):
        return program
    program = copy.deepcopy(program)
    graph = program.graph
    for n in [n for n in graph.nodes if matches(n)]:
        x = n.args[0]
        shape = list(x.meta["val"].shape)
        with graph.inserting_before(n):
            flat = graph.call_function(aten.view.default, (x, [-1, shape[-1]]))
        flat.meta = {**x.meta, "val": x.meta["val"].reshape(-1, shape[-1])}
        n.args = (flat, 1, *n.args[2:])
        old_val = n.meta["val"]
        n.meta["val"] = old_val.reshape(-1, shape[-1])
        with graph.inserting_after(n):
            back = graph.call_function(aten.view.default, (n, shape))
        back.meta = {**n.meta, "val": old_val}
        n.replace_all_uses_with(back, delete_user_cb=lambda user, back=back: user is not back)
    graph.lint()
    program.graph_module.recompile()
    return program


def _check_kernels(graph, program) -> list[str]:
    """Kernel ops the .pte needs that this ExecuTorch runtime lacks (empty when all are there)."""
    available = _runtime().get().operator_registry.operator_names
    missing = []
    for plan in program.executorch_program.execution_plan:
        for op in plan.operators:
            name = f"{op.name}.{op.overload}" if op.overload else op.name
            if name not in available:
                missing.append(name)
    return sorted(set(missing))


def _timed_median(raw: list[float], runs: int) -> float:
    """An event's median time over the counted runs (one slow run must not move it): the first
    sample, the warm-up run's, is dropped when the event recorded one more than ``runs``."""
    timed = raw[1:] if len(raw) > runs else raw
    return float(statistics.median(timed)) if timed else 0.0


class ExecuTorchRunner(Runner):
    def __init__(self, pte: Path, options, *, etdump: bool = False, fallback_nodes: list[dict] | None = None):
        import torch  # noqa: F401 - executorch.runtime takes torch tensors

        self._fallback_nodes = fallback_nodes or []
        with _quiet_python():
            from executorch.runtime import Runtime, Verification

        cap = None
        try:
            with _native_stderr() as cap:
                runtime = Runtime.get()
                if options.threads:
                    runtime._legacy_module._unsafe_reset_threadpool(int(options.threads))
                self.program = runtime.load_program(
                    pte, verification=Verification.Minimal, enable_etdump=etdump, debug_buffer_size=0
                )
                self.method = self.program.load_method("forward")
        except RuntimeError as err:
            raise _kernel_error(cap.lines if cap else [], self._fallback_nodes, err) from err
        self._runtime = runtime
        self._partitioner = options.partitioner
        self._warm = False

    def _execute(self, inputs):
        import torch

        return self.method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not self._warm:  # the first run sets up XNNPACK's workspace and may log: captured
            outputs = self._checked(inputs)
            self._warm = True
        else:
            try:
                outputs = self._execute(inputs)
            except RuntimeError:  # the kernels logged why to fd 2: run again to read it
                outputs = self._checked(inputs)
        return [o.detach().numpy().copy() for o in outputs]

    def _checked(self, inputs):
        cap = None
        try:
            with _native_stderr() as cap:
                return self._execute(inputs)
        except RuntimeError as err:
            raise _kernel_error(cap.lines if cap else [], self._fallback_nodes, err) from err

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


def _fallback_nodes(artifact) -> list[dict]:
    details = getattr(artifact.manifest, "target_details", None) or {}
    return details.get("fallback_nodes") or []


class ExecuTorchTarget(Target):
    exports_loops = True  # a LIF recurrence as one scan: ExecuTorch runs it on its portable kernels
    name = "executorch"
    description = "PyTorch ExecuTorch with the XNNPACK delegate; ships model.pte (Android, iOS, Linux)"
    extra = "executorch"
    distributions = ("executorch",)
    sdk_modules = ("torch", "executorch.runtime")
    main_file = "model.pte"
    precisions = _PRECISIONS
    calibrated_precisions = ("int8",)
    # The exact pipeline, then SDPA in the bmm form XNNPACK delegates (ExecuTorch's own SDPA
    # decomposition leaves a dead safe-softmax mask on portable kernels).  Last: it matches SDPA
    # alone, which no exact pass creates or consumes, and leaves no constants for fold_constants.
    # ExecuTorch only: ORT and OpenVINO keep SDPA for their own attention kernels (measured in
    # benchmarks/sdpa_executorch.py).
    pipeline = Pipeline([*PIPELINES["exact"], "decompose_unmasked_sdpa"])

    def import_sdk(self) -> None:
        with _quiet_python():
            super().import_sdk()

    def can_verify_here(self, profile) -> str | None:
        """An ahead-of-time profile too: XNNPACK's .pte is portable, this runtime checks its numbers."""
        reason = self.is_available()
        if reason:
            return reason
        if profile.options.partitioner == "xnnpack" and not _runtime().get().backend_registry.is_available(_DELEGATE):
            return f"this ExecuTorch runtime has no {_DELEGATE} registered; reinstall executorch"
        return None

    def can_run_here(self, profile) -> str | None:
        reason = self.can_verify_here(profile)
        if reason:
            return reason
        opts = profile.options
        if opts.aot_only:
            device = opts.device if opts.device.upper() != "CPU" else "its target device"
            return (
                f"profile {profile.name} compiles ahead of time only: model.pte runs on {device} "
                "(push it with adb and run executor_runner or the ExecuTorch benchmark app)"
            )
        return None

    def compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        with _quiet_python():
            return self._compile(graph, profile, out_dir, calibration)

    def _compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        opts = profile.options
        if opts.precision not in _PRECISIONS:
            raise UserError(
                f"profile {profile.name}: ExecuTorch precision {opts.precision} is not supported",
                f"use precision = one of {', '.join(_PRECISIONS)}",
            )
        program, quant = None, None
        if opts.precision == "int8":
            program, quant = self._quantize(graph, profile, calibration)
        try:
            edge = _lower(graph, opts.partitioner, opts.precision, program)
        except UserError as err:
            if quant is not None:  # XNNPACK's int8 lowering: the partitioner fix does not apply
                other = "static" if quant["mode"] == quantize.DYNAMIC else "dynamic"
                err.fix = f'in int8 ({quant["mode"]}): try quantization_mode = "{other}", or precision = "fp32"'
            raise
        placement = delegation(edge.exported_program(), opts.partitioner)
        if quant is not None:  # before to_executorch, which adds memory planning's alloc nodes
            layers = set(quantizable_layers(graph))
            quant.update(quantize.int8_placement(edge.exported_program(), quant["mode"], layers))
        try:
            program = edge.to_executorch()
        except Exception as err:  # noqa: BLE001
            raise _lowering_error(graph, err, "emit") from err
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
        log.info("executorch: %s", placement["delegation_summary"])
        kernels = sorted(
            {
                f"{o.name}.{o.overload}" if o.overload else o.name
                for p in program.executorch_program.execution_plan
                for o in p.operators
            }
        )
        details = {
            "partitioner": opts.partitioner,
            "compute_precision": opts.precision,
            **placement,
            "portable_kernels": kernels,
            "pte_bytes": len(program.buffer),
        }
        if opts.aot_only:
            details["runs_on"] = opts.device
        checks = {}
        if quant is not None:
            details["quantization"] = quant
            checks["int8_delegated"] = quant["int8_op_count"] > 0
            log.info(
                "executorch int8 (%s): %d int8 ops in XNNPACK, %d conv/linear float, %d ops outside the delegate",
                quant["mode"],
                quant["int8_op_count"],
                quant["float_op_count"],
                quant["fallbacks"],
            )
        return CompileResult(files=["model.pte"], details=details, structural_checks=checks)

    def _quantize(self, graph, profile, calibration):
        """The int8 program (PT2E with XNNPACK's quantizer, ``quantize.py``) and its manifest facts."""
        opts = profile.options
        if calibration is None:
            raise UserError(
                f"profile {profile.name} compiles int8, which needs calibration data",
                "pass calibration (--calib digits|FILE.npz)",
            )
        if opts.partitioner != "xnnpack":
            raise UserError(
                f"profile {profile.name}: ExecuTorch int8 needs the XNNPACK delegate (portable kernels are fp32)",
                'set partitioner = "xnnpack"',
            )
        mode, why = quantize.choose_mode(graph, opts.quantization_mode)
        program, quant = quantize.quantize(graph, calibration, mode)
        quant["mode_reason"] = why
        quant["calibration"] = calibration.to_dict()
        return program, quant

    def load(self, artifact) -> ExecuTorchRunner:
        reason = self.can_verify_here(artifact.profile)
        if reason:
            raise UserError(f"cannot run {artifact.path} here: {reason}")
        return ExecuTorchRunner(
            Path(artifact.path) / "model.pte", artifact.profile.options, fallback_nodes=_fallback_nodes(artifact)
        )

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        """Per-op times from ETDump (devtools Inspector): each event's median over ``runs`` runs, after
        a warm-up run whose sample is dropped."""
        with _quiet_python():
            from executorch.devtools import Inspector

        runs = max(1, runs)
        runner = ExecuTorchRunner(
            Path(artifact.path) / "model.pte",
            artifact.profile.options,
            etdump=True,
            fallback_nodes=_fallback_nodes(artifact),
        )
        t0 = 0.0
        for i in range(runs + 1):
            if i == 1:
                t0 = time.perf_counter()
            runner.run(inputs)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        with tempfile.TemporaryDirectory(prefix="edgeformer-etdump-") as tmp, _quiet_python():
            etdump, debug = Path(tmp) / "model.etdp", Path(tmp) / "debug.bin"
            runner.program.write_etdump_result_to_file(str(etdump), str(debug))
            inspector = Inspector(etdump_path=str(etdump))
        fallback_nodes = _fallback_nodes(artifact)
        ops, e2e_ms, native_index, delegate_index = [], 0.0, 0, 0
        for block in inspector.event_blocks:
            if block.name != "Execute":
                continue
            for event in block.events:
                median_ms = _timed_median(list(event.perf_data.raw) if event.perf_data else [], runs)
                if event.name == "Method::execute":
                    e2e_ms = median_ms
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
                            time_ms=median_ms,
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
                            time_ms=median_ms,
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
