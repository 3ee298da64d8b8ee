"""ONNX Runtime: the embedded default target.

IR → ``torch.onnx.export(ep, dynamo=True)`` → ``model.onnx`` → ORT-optimized ``model.ort`` (the
mobile format) → InferenceSession on the CPU execution provider.  At optimization level "all"
edgeformer also rewrites ORT's own optimized graph: norms over a whole sample run on the blocked
NCHWc tensors instead of being reordered out and back (``_ort_blocked.py``); the manifest's
``ort_blocked_layout`` says what changed, and the compile's numerics check covers it.

Options read from the profile: ``threads`` (0 = ORT's default), ``optimization_level``
(disable/basic/extended/all; "all" adds layout transforms specific to this CPU, so use "extended"
for a ``model.ort`` that ships to other devices) and ``execution_mode``.

Determinism: ORT serialises part of the ``.ort`` flatbuffer from an address-ordered map, so the
same model gives different bytes run to run.  The conversion therefore runs in a subprocess with
address-space randomisation off (``setarch -R``), which makes it byte-identical; it also keeps a
native crash on a malformed model out of the compiler's process.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.errors import UnsupportedOpError, UserError

from .base import CompileResult, OpProfile, OpTime, Runner, Target

log = logging.getLogger(__name__)

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_CONVERT = r"""
import sys, onnxruntime as ort
src, dst, level, threads, fmt = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
so = ort.SessionOptions()
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
so.optimized_model_filepath = dst
so.add_session_config_entry("session.save_model_format", fmt)
so.intra_op_num_threads = 1
so.log_severity_level = 3
ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
"""


def export_onnx(graph, path: Path, *, opset: int | None = None) -> None:
    """IR → ONNX with the dynamo exporter; unsupported ops become one clear UserError."""
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    kwargs = {"opset_version": opset} if opset else {}
    try:
        program = torch.onnx.export(
            graph.program,
            tuple(graph.example_inputs),
            dynamo=True,
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            optimize=True,
            verbose=False,
            report=False,
            **kwargs,
        )
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; translate them
        msg = str(err)
        op = _unsupported_op(msg)
        if op:
            src = _source_of(graph, op)
            raise UnsupportedOpError(
                f"ONNX export has no conversion for {op}{f' (from {src})' if src else ''}",
                "rewrite that part of the model, or pick a target that supports it (see `edgeformer targets`)",
            ) from err
        raise UserError(
            f"ONNX export failed: {msg.strip().splitlines()[0] if msg.strip() else type(err).__name__}",
            "run with --debug for the exporter's trace",
        ) from err
    program.save(str(path), external_data=False)


def _unsupported_op(msg: str) -> str | None:
    import re

    m = re.search(r"(aten[.:]{1,2}[\w.]+|[\w]+::[\w.]+)", msg)
    if m and (
        "No decomposition" in msg
        or "not supported" in msg
        or "Unsupported" in msg
        or "no ONNX" in msg.lower()
        or "DispatchError" in msg
        or "registered" in msg
    ):
        return m.group(1).replace("::", ".")
    return None


def _source_of(graph, op: str) -> str:
    from edgeformer.ir import _source, op_name

    for n in graph.program.graph.nodes:
        if n.op == "call_function" and op.startswith(op_name(n.target)):
            return _source(n)
    return ""


# Beyond this the optimized graph no longer fits one protobuf (2 GB) and is left as ORT wrote it.
_MAX_REWRITE_BYTES = 1_800_000_000


def optimize_for_host(src: Path, dst: Path, level: str, fmt: str = "ORT") -> dict:
    """ORT's own graph optimization of ``src`` at ``level``, then ours on top of it, saved to ``dst``.

    At level "all" ORT's layout transformer writes CPU-specific NCHWc nodes; the graph it saved is
    then rewritten by :func:`edgeformer.targets._ort_blocked.run_norms_blocked` (norms run on the
    blocked layout, without reorders) and converted again.  Returns that rewrite's report (empty
    for other levels).  ``fmt`` is "ORT" (the mobile format) or "ONNX".
    """
    if level != "all":
        _ort_subprocess(src, dst, level, fmt)
        return {}
    import onnx

    from ._ort_blocked import run_norms_blocked

    with tempfile.TemporaryDirectory(prefix=".ort-opt-", dir=dst.parent) as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _ort_subprocess(src, optimized, level, "ONNX")
        if optimized.stat().st_size > _MAX_REWRITE_BYTES:
            _ort_subprocess(src, dst, level, fmt)
            return {"skipped": "the optimized graph is too large for one protobuf"}
        model = onnx.load(str(optimized))
        report = run_norms_blocked(model)
        if report.rewritten:
            onnx.save(model, str(optimized))
        # ORT optimizes once more on load; on this graph that changes nothing (checked by tests).
        _ort_subprocess(optimized, dst, level, fmt)
    return report.to_dict()


def _ort_subprocess(src: Path, dst: Path, level: str, fmt: str) -> None:
    cmd = [sys.executable, "-c", _CONVERT, str(src), str(dst), _LEVELS[level], "1", fmt]
    setarch = shutil.which("setarch")
    if setarch and platform.system() == "Linux":
        cmd = [setarch, platform.machine(), "-R", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and setarch and "setarch" in proc.stderr:  # personality() refused
        proc = subprocess.run(cmd[3:], capture_output=True, text=True)
    if proc.returncode != 0 or not dst.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"ONNX Runtime could not load the exported model: {tail}", "run with --debug and report it")


def _source_map(onnx_path: Path) -> dict[str, str]:
    """ONNX node name and output value names → source module path (exporter name-scope metadata).

    ``pkg.torch.onnx.name_scopes`` holds cumulative module paths ending with the op, e.g.
    ``['', 'network.0', 'network.0.1', 'network.0.1.mlp', 'gelu']``: the module is the one before
    the op.  Output names are mapped too because ORT names rewritten nodes after their outputs.
    """
    import ast

    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    out = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in ast.literal_eval(prop.value)[:-1] if s]
                except (ValueError, SyntaxError):
                    continue
                module = scopes[-1] if scopes else ""
                out[node.name] = module
                for value in node.output:
                    out.setdefault(value, module)
    return out


class OrtRunner(Runner):
    def __init__(self, path: Path, options, *, profile_dir: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[options.optimization_level])
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
    name = "onnxruntime"
    description = "ONNX Runtime, CPU execution provider; ships model.onnx and the mobile model.ort"
    extra = "onnxruntime"
    distributions = ("onnxruntime", "onnx", "onnxscript")
    main_file = "model.ort"

    def compile(self, graph, profile, out_dir: Path) -> CompileResult:
        onnx_path = out_dir / "model.onnx"
        export_onnx(graph, onnx_path)
        layout = optimize_for_host(onnx_path, out_dir / "model.ort", profile.options.optimization_level)
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        hist: dict[str, int] = defaultdict(int)
        for n in model.graph.node:
            hist[n.op_type] += 1
        return CompileResult(
            files=["model.ort", "model.onnx"],
            details={
                "onnx_opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                "onnx_nodes": len(model.graph.node),
                "onnx_op_histogram": dict(sorted(hist.items())),
                "ort_optimization_level": profile.options.optimization_level,
                "ort_format_portable": profile.options.optimization_level != "all",
                **({"ort_blocked_layout": layout} if layout else {}),
            },
        )

    def _model_path(self, artifact_dir: Path) -> Path:
        ort_path = artifact_dir / "model.ort"
        return ort_path if ort_path.is_file() else artifact_dir / "model.onnx"

    def load(self, artifact_dir: Path, manifest, profile) -> OrtRunner:
        return OrtRunner(self._model_path(Path(artifact_dir)), profile.options)

    def profile_ops(self, artifact_dir, manifest, profile, inputs, runs: int) -> OpProfile:
        """Per-node times from ORT's own profiler, mapped back to the source module."""
        artifact_dir = Path(artifact_dir)
        sources = _source_map(artifact_dir / "model.onnx") if (artifact_dir / "model.onnx").is_file() else {}
        with tempfile.TemporaryDirectory(prefix="edgeformer-ortprof-") as tmp:
            runner = OrtRunner(self._model_path(artifact_dir), profile.options, profile_dir=tmp)
            runner.run(inputs)  # warm-up: its events are excluded below
            for _ in range(runs):
                runner.run(inputs)
            trace = json.loads(Path(runner.session.end_profiling()).read_text())
        run_events = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
        counted = run_events[-runs:]
        t0 = counted[0]["ts"] if counted else 0
        per_node: dict[str, dict] = {}
        for e in trace:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < t0:
                continue
            name = e["name"][: -len("_kernel_time")]
            args = e.get("args", {})
            d = per_node.setdefault(
                name, {"us": 0.0, "n": 0, "type": args.get("op_name", "?"), "device": args.get("provider", "")}
            )
            d["us"] += e["dur"]
            d["n"] += 1
        e2e_ms = sum(e["dur"] for e in counted) / max(len(counted), 1) / 1e3
        ops = [
            OpTime(
                name=name,
                type=d["type"],
                time_ms=d["us"] / runs / 1e3,
                share=0.0,
                calls=max(1, round(d["n"] / runs)),
                device=d["device"].replace("ExecutionProvider", "") or None,
                source=_lookup_source(name, sources),
            )
            for name, d in per_node.items()
        ]
        return OpProfile.build(
            "onnxruntime",
            runs,
            e2e_ms,
            ops,
            notes=["times are ORT profiler kernel times; unexplained = session overhead"],
        )


def _lookup_source(node_name: str, sources: dict[str, str]) -> str | None:
    """ORT keeps the ONNX node name, or names a rewritten node after an output plus a suffix."""
    import re

    base = node_name.split("/")[0]
    candidates = [node_name, base, re.sub(r"(_nchwc|_token_\d+|_fused)+$", "", base)]
    candidates.append(re.sub(r"_(mul|add|sub|relu|gelu)_nchwc$", "", base))
    for c in candidates:
        if sources.get(c):
            return sources[c]
    return None
