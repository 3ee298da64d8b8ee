"""The IR: ``torch.export``'s ExportedProgram (ATen, training IR) with static shapes.

High-level ops (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``, ``aten.layer_norm``,
``aten.group_norm``, ``aten.avg_pool2d``, ``aten.scaled_dot_product_attention``) stay whole so
passes can match them; every target runs its own decompositions.

This module owns export, ``.pt2`` save/load, the content hash that keys the compile cache, the
readable summary (ops, shapes, histogram, parameters, MACs) and :func:`run`, the reference every
numerical check compares against.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.export import ExportedProgram

from edgeformer.errors import UserError, first_line
from edgeformer.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_META_FILE = "edgeformer.json"  # extra file inside the .pt2 zip: name and input names


@dataclass
class Graph:
    """An exported program plus the little edgeformer needs beside it."""

    program: ExportedProgram
    name: str = "model"
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    _hash: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.input_names:
            self.input_names = tuple(_user_input_names(self.program))
        if not self.output_names:
            n = len(self.program.graph_signature.user_outputs)
            self.output_names = ("output",) if n == 1 else tuple(f"output_{i}" for i in range(n))

    @property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        args, kwargs = self.program.example_inputs or ((), {})
        if kwargs:
            raise UserError("models with keyword-only inputs are not supported", "pass tensors positionally")
        return tuple(args)

    def replace(self, program: ExportedProgram) -> Graph:
        """The same graph identity (name, I/O names) around a rewritten program."""
        return Graph(program, self.name, self.input_names, self.output_names)

    def serialize(self) -> bytes:
        buf = io.BytesIO()
        meta = {"name": self.name, "input_names": list(self.input_names), "output_names": list(self.output_names)}
        torch.export.save(self.program, buf, extra_files={_META_FILE: json.dumps(meta, sort_keys=True)})
        return buf.getvalue()

    def hash(self) -> str:
        """sha256 of the serialized program (torch.export.save is byte-deterministic)."""
        if self._hash is None:
            self._hash = hashlib.sha256(self.serialize()).hexdigest()
        return self._hash

    def save(self, path: str | os.PathLike) -> Path:
        return save(self, path)

    def summary(self) -> Summary:
        return summary(self)

    def run(self, inputs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        return run(self, self.example_inputs if inputs is None else inputs)


def _user_input_names(ep: ExportedProgram) -> list[str]:
    names = list(ep.graph_signature.user_inputs)
    return names if names else ["input"]


# ---------------------------------------------------------------------------------------- export


def export(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    *,
    name: str = "model",
    input_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
) -> Graph:
    """Export an ``nn.Module`` in eval mode to the IR (static shapes unless ``dynamic_batch``)."""
    if not isinstance(model, nn.Module):
        raise UserError(
            f"expected a torch.nn.Module, got {type(model).__name__}",
            "make the factory return an nn.Module instance",
        )
    model = model.eval()
    args = tuple(example_inputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = tuple({0: batch} for _ in args)
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = first_line(err)
        shapes = ", ".join("x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise UserError(
            f"torch.export could not trace {name} with input shape(s) {shapes}: {first}",
            "check --input-shape matches what the model expects (run with --debug for the trace)",
        ) from err
    graph = Graph(ep, name=name)
    if input_names:
        if len(input_names) != len(graph.input_names):
            raise UserError(f"{len(input_names)} input names given for {len(graph.input_names)} inputs")
        graph.input_names = tuple(input_names)
    return graph


# ------------------------------------------------------------------------------------- save/load


def save(graph: Graph, path: str | os.PathLike) -> Path:
    """Write ``.pt2`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    data = graph.serialize()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist", "create it or choose another -o")
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}", "choose a writable output path") from err
    return path


def load(path: str | os.PathLike) -> Graph:
    """Load a ``.pt2`` written by :func:`save` (or any ``torch.export.save`` file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"IR file {path} does not exist", "check the path, or create it with `edgeformer export`")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a valid .pt2 export (not a zip archive)", "re-create it with `edgeformer export`"
        )
    extra = {_META_FILE: ""}
    try:
        ep = torch.export.load(path, extra_files=extra)
    except Exception as err:  # noqa: BLE001 - any failure to parse is a corrupt user file
        raise UserError(
            f"{path} is not a valid .pt2 export ({type(err).__name__}: {first_line(err)})",
            "re-create it with `edgeformer export`",
        ) from err
    meta = json.loads(extra[_META_FILE]) if extra.get(_META_FILE) else {}
    return Graph(
        ep,
        name=meta.get("name", path.stem),
        input_names=tuple(meta.get("input_names", ())),
        output_names=tuple(meta.get("output_names", ())),
    )


# ------------------------------------------------------------------------------------------- run


def run(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run the IR in PyTorch: the reference for every numerical check."""
    expected = graph.example_inputs
    if len(inputs) != len(expected):
        raise UserError(f"{graph.name} takes {len(expected)} input(s), got {len(inputs)}")
    with torch.no_grad():
        out = graph.program.module()(*inputs)
    flat, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor)]


# --------------------------------------------------------------------------------------- summary


@dataclass
class NodeInfo:
    index: int
    name: str
    op: str  # e.g. "aten.conv2d"
    shape: list[int] | None
    dtype: str | None
    macs: int
    source: str  # module path the node came from, e.g. "network.0.0.mlp.fc1"


@dataclass
class Summary:
    name: str
    ir_hash: str
    inputs: list[dict]
    outputs: list[dict]
    nodes: list[NodeInfo]
    histogram: dict[str, int]
    parameters: int
    buffers: int
    total_macs: int

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_flops"] = self.total_flops
        return d

    def format(self, *, max_nodes: int | None = None) -> str:
        """The readable dump used by ``inspect`` and ``--dump-ir``."""
        lines = [
            f"# {self.name}  ir sha256 {self.ir_hash[:16]}",
            f"# parameters {self.parameters:,}  buffers {self.buffers:,}  "
            f"MACs {self.total_macs:,} ({self.total_macs / 1e9:.3f} G)",
        ]
        for io_ in self.inputs:
            lines.append(f"input  {io_['name']}: {io_['dtype']}{io_['shape']}")
        nodes = self.nodes if max_nodes is None else self.nodes[:max_nodes]
        for n in nodes:
            macs = f"  macs={n.macs:,}" if n.macs else ""
            src = f"  # {n.source}" if n.source else ""
            lines.append(f"{n.index:4d} {n.name:<28} {n.op:<42} {n.shape}{macs}{src}")
        if max_nodes is not None and len(self.nodes) > max_nodes:
            lines.append(f"     ... {len(self.nodes) - max_nodes} more nodes")
        for io_ in self.outputs:
            lines.append(f"output {io_['name']}: {io_['dtype']}{io_['shape']}")
        lines.append("# op histogram")
        for op, count in sorted(self.histogram.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{count:6d}  {op}")
        return "\n".join(lines)


def op_name(target) -> str:
    """``torch.ops.aten.conv2d.default`` → ``aten.conv2d``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::')[-1]}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"{target._qualified_op_name.replace('::', '.')}"
    return getattr(target, "__name__", str(target))


def _shape(node) -> list[int] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, torch.Tensor):
        return [int(s) if isinstance(s, int) else -1 for s in val.shape]
    return None


def _dtype(node) -> str | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return str(val.dtype).replace("torch.", "") if isinstance(val, torch.Tensor) else None


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def node_macs(node) -> int:
    """Multiply-accumulates of one node (conv, linear, matmul/bmm/mm/addmm, SDPA); 0 otherwise."""
    if node.op != "call_function":
        return 0
    op = op_name(node.target)
    out = _shape(node)
    if out is None or any(s < 0 for s in out):
        return 0
    arg_shape = lambda i: _shape(node.args[i]) if len(node.args) > i and hasattr(node.args[i], "meta") else None  # noqa: E731
    if op in (
        "aten.conv1d",
        "aten.conv2d",
        "aten.conv3d",
        "aten.convolution",
        "aten._convolution",
        "aten.conv_transpose1d",
        "aten.conv_transpose2d",
    ):
        w = arg_shape(1)
        if w is None:
            return 0
        transposed = op.startswith("aten.conv_transpose") or (
            op in ("aten.convolution", "aten._convolution") and bool(node.args[6])
        )
        if transposed:  # every input element is multiplied by (C_out/groups)·k
            x = arg_shape(0)
            return _numel(x) * w[1] * math.prod(w[2:])
        return _numel(out) * w[1] * math.prod(w[2:])  # w = (C_out, C_in/groups, *k)
    if op == "aten.linear":
        w = arg_shape(1)
        return _numel(out) * w[1] if w else 0
    if op in ("aten.matmul", "aten.mm", "aten.bmm"):
        a = arg_shape(0)
        return _numel(out) * a[-1] if a else 0
    if op in ("aten.addmm", "aten.baddbmm"):
        a = arg_shape(1)
        return _numel(out) * a[-1] if a else 0
    if op in ("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu"):
        q, k, v = arg_shape(0), arg_shape(1), arg_shape(2)
        if not (q and k and v):
            return 0
        batch = math.prod(q[:-2])
        L, E, S, Ev = q[-2], q[-1], k[-2], v[-1]
        return batch * L * S * E + batch * L * S * Ev  # q·kᵀ and attn·v
    return 0


def source_path(node) -> str:
    """The dotted path of the module a node came from (``network.0.1.mlp.fc1``), or ''.

    Read from the innermost entry of the node's ``nn_module_stack``; "" when the node has none
    (placeholders, nodes a pass inserted without copying metadata, objects that are not nodes).
    """
    stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # "L['self'].network[0][1].mlp" style paths from some torch versions → dotted
    return path.replace("L['self'].", "").replace("][", ".").replace("[", ".").replace("]", "")


def summary(graph: Graph) -> Summary:
    ep = graph.program
    sig = ep.graph_signature
    state = ep.state_dict
    params = sum(state[n].numel() for n in sig.parameters if n in state)
    buffers = sum(state[n].numel() for n in sig.buffers if n in state)
    constants = getattr(ep, "constants", {}) or {}
    params += sum(t.numel() for t in constants.values() if isinstance(t, torch.Tensor) and t.is_floating_point())
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = [
        {"name": io_name, "shape": _shape(placeholders[n]), "dtype": _dtype(placeholders[n])}
        for io_name, n in zip(graph.input_names, sig.user_inputs)
    ]
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    out_args = [a for a in torch.utils._pytree.tree_flatten(out_node.args[0])[0] if hasattr(a, "meta")]
    outputs = [{"name": nm, "shape": _shape(a), "dtype": _dtype(a)} for nm, a in zip(graph.output_names, out_args)]
    nodes: list[NodeInfo] = []
    hist: Counter[str] = Counter()
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        op = op_name(n.target)
        hist[op] += 1
        nodes.append(NodeInfo(len(nodes), n.name, op, _shape(n), _dtype(n), node_macs(n), source_path(n)))
    return Summary(
        name=graph.name,
        ir_hash=graph.hash(),
        inputs=inputs,
        outputs=outputs,
        nodes=nodes,
        histogram=dict(sorted(hist.items())),
        parameters=params,
        buffers=buffers,
        total_macs=sum(n.macs for n in nodes),
    )
