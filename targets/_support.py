"""Helpers shared by the OpenVINO, Core ML and ExecuTorch targets (no vendor SDK imports here).

- :func:`unsupported_op_error` turns "the converter has no rule for these ops" into one
  :class:`UnsupportedOpError` naming each op, the IR node and the source module it came from.
- :func:`node_sources` maps IR node names to source module paths (``nn_module_stack``), which the
  targets store beside their runtime files so per-op profiles can point back at the model.
- :func:`input_shapes` gives the static input shapes (-1 for a dynamic dimension).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator

from edgeformer.errors import UnsupportedOpError
from edgeformer.ir import Graph, op_name, source_path

_log = logging.getLogger(__name__)


def _module_path_and_class(node) -> tuple[str, str]:
    """("blocks.0.act", "GELU"): the innermost source module of a node and its class name."""
    path = source_path(node)
    if not path:
        return "", ""
    cls = list(node.meta["nn_module_stack"].values())[-1][1]
    cls_name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].strip("'>")
    return path, cls_name


def node_sources(graph: Graph) -> dict[str, str]:
    """IR node name → dotted source module path, for every call node that has one (sorted)."""
    out = {}
    for node in graph.program.graph.nodes:
        if node.op == "call_function" and (path := source_path(node)):
            out[node.name] = path
    return dict(sorted(out.items()))


def _base(op: str) -> str:
    """aten.special_erfinv.default / aten::erfinv / erfinv → erfinv (decompositions rename a few)."""
    name = op.replace("::", ".")
    parts = [p for p in name.split(".") if p not in ("aten", "prims", "default", "Tensor", "Scalar", "out")]
    base = parts[0] if parts else name
    return base.removeprefix("special_").rstrip("_")


def _matches(node, op: str) -> bool:
    """``op`` as a converter spells it (aten.lgamma.default, aten::lgamma, lgamma) vs an IR node."""
    return node.op == "call_function" and _base(op_name(node.target)) == _base(op)


def display_name(op: str) -> str:
    """aten::lgamma.default → aten.lgamma"""
    return op.replace("::", ".").removesuffix(".default")


def op_locations(graph: Graph, op: str, limit: int = 3) -> list[str]:
    """Where ``op`` occurs: "node lgamma in blocks.0.act (GELU)", up to ``limit`` places."""
    places = []
    for node in graph.program.graph.nodes:
        if _matches(node, op):
            path, cls = _module_path_and_class(node)
            where = f"{path} ({cls})" if path else "the model's forward()"
            places.append(f"node {node.name} in {where}")
    more = len(places) - limit
    return places[:limit] + ([f"{more} more"] if more > 0 else [])


def unsupported_op_error(graph: Graph, runtime: str, ops: Iterable[str], fix: str | None = None) -> UnsupportedOpError:
    """One clear error for ops a converter cannot handle: each op with where it came from."""
    parts = []
    for op in sorted(set(ops), key=display_name):
        places = op_locations(graph, op)
        name = display_name(op)
        parts.append(f"{name} (at {'; '.join(places)})" if places else name)
    fix = fix or (
        "rewrite or replace that module (e.g. with a supported approximation), "
        "or choose another target: `edgeformer targets` lists them"
    )
    noun = "op" if len(parts) == 1 else "ops"
    return UnsupportedOpError(f"{runtime} cannot convert {noun} {', '.join(parts)}", fix)


def input_shapes(graph: Graph) -> list[list[int]]:
    """Static input shapes of the IR's user inputs; a symbolic (dynamic) dimension is -1."""
    placeholders = {n.name: n for n in graph.program.graph.nodes if n.op == "placeholder"}
    shapes = []
    for name in graph.program.graph_signature.user_inputs:
        val = placeholders[name].meta.get("val")
        shapes.append([int(d) if isinstance(d, int) else -1 for d in val.shape])
    return shapes


def dtype_name(dtype) -> str:
    """torch/numpy dtype → "float32" style name."""
    return str(dtype).replace("torch.", "")


@contextlib.contextmanager
def quiet_sdk(*loggers: str) -> Iterator[None]:
    """Hide an SDK's import-time warnings and progress bars (coremltools, torchao) for a call.

    They are about the SDK's own optional parts (its macOS-only bindings, untested torch
    versions), not about the user's model; ``--debug`` style logging at DEBUG level keeps them.
    """
    saved = {}
    for name in loggers:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.DEBUG:
            saved[name] = logger.level
            logger.setLevel(logging.ERROR)
    # tqdm bars go to sys.stderr (logging handlers keep their own stream, so errors still show)
    bars = io.StringIO()
    try:
        with contextlib.redirect_stderr(bars):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if bars.getvalue():
            _log.debug("%s", bars.getvalue()[-2000:])


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (Linux ``/proc/cpuinfo``); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
