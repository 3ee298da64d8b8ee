"""What the shipped files really hold, read from the files: the precision each node computes in, the
initializers' precisions, and the CPU-specific NCHWc layout nodes of ``model.ort``.

``model.ort`` is read with the flatbuffer bindings ONNX Runtime ships (``onnxruntime.tools.
ort_format_model``); it records every value's type, so a node's precision is its first floating
input's.  ORT fixes those precisions when it saves the file: for an fp16 graph it wraps every node
its CPU provider has no fp16 kernel for in casts to fp32 (``InsertedPrecisionFreeCast_*``), and the
file keeps them, on any device it is copied to.  ``model.onnx`` is read with ``onnx`` (types from
shape inference).
"""

from __future__ import annotations

import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .._support import cpu_flags
from .blocked import NCHWC_DOMAIN

# ONNX TensorProto element types that are floating point, by the names the manifest uses.
FLOAT_TYPES = {1: "fp32", 10: "fp16", 11: "fp64", 16: "bf16"}
# Nodes that move or reinterpret data without arithmetic: not counted as computing in a precision.
DATA_MOVEMENT = frozenset(
    {
        "Cast",
        "CastLike",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "DepthToSpace",
        "Expand",
        "Flatten",
        "Gather",
        "GatherElements",
        "Identity",
        "Pad",
        "ReorderInput",
        "ReorderOutput",
        "Reshape",
        "Shape",
        "Size",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)


@dataclass
class GraphFacts:
    nodes_by_precision: dict[str, int] = field(default_factory=dict)  # compute nodes per precision
    ops_by_precision: dict[str, dict[str, int]] = field(default_factory=dict)  # precision -> op type -> n
    initializers_by_precision: dict[str, int] = field(default_factory=dict)
    io_precisions: list[str] = field(default_factory=list)  # graph inputs and outputs (floating ones)
    nchwc_nodes: int = 0

    @property
    def compute_precision(self) -> str:
        return summarize(self.nodes_by_precision)


def summarize(counts: dict[str, int]) -> str:
    """The one precision every counted node has (e.g. fp16), else "mixed fp16/fp32" and the like."""
    present = sorted(k for k, v in counts.items() if v)
    if not present:
        return "none (no floating-point compute nodes)"
    return present[0] if len(present) == 1 else "mixed " + "/".join(present)


def _facts(nodes, types: dict[str, int], initializers: dict[str, int], io: list[str]) -> GraphFacts:
    facts = GraphFacts()
    per_op: dict[str, Counter] = {}
    for domain, op_type, inputs in nodes:
        if domain == NCHWC_DOMAIN:
            facts.nchwc_nodes += 1
        if op_type in DATA_MOVEMENT:
            continue
        precision = next((FLOAT_TYPES[types[i]] for i in inputs if types.get(i) in FLOAT_TYPES), None)
        if precision is None:  # integer or shape arithmetic
            continue
        per_op.setdefault(precision, Counter())[op_type] += 1
    facts.ops_by_precision = {p: dict(sorted(c.items())) for p, c in sorted(per_op.items())}
    facts.nodes_by_precision = {p: sum(c.values()) for p, c in sorted(per_op.items())}
    facts.initializers_by_precision = dict(
        sorted(Counter(FLOAT_TYPES[t] for t in initializers.values() if t in FLOAT_TYPES).items())
    )
    facts.io_precisions = [FLOAT_TYPES[types[n]] for n in io if types.get(n) in FLOAT_TYPES]
    return facts


def onnx_facts(model) -> GraphFacts:
    """Facts of an ``onnx.ModelProto`` (types from its value_info, completed by shape inference)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a refinement; the exporter's value_info suffices
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    initializers = {t.name: t.data_type for t in g.initializer}
    types.update(initializers)
    nodes = [(n.domain, n.op_type, list(n.input)) for n in g.node]
    return _facts(nodes, types, initializers, [v.name for v in [*g.input, *g.output]])


def ort_facts(path: Path) -> GraphFacts:
    """Facts of an ORT-format file, as ONNX Runtime saved it (its node args carry their types)."""
    import onnxruntime.tools.ort_format_model  # noqa: F401 - puts ORT's flatbuffer bindings on sys.path
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        InferenceSession,
        TensorTypeAndShape,
        TypeInfoValue,
    )

    buf = Path(path).read_bytes()
    graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    types: dict[str, int] = {}
    for i in range(graph.NodeArgsLength()):
        arg = graph.NodeArgs(i)
        info = arg.Type()
        if info is None or info.ValueType() != TypeInfoValue.TypeInfoValue.tensor_type:
            continue
        tensor = TensorTypeAndShape.TensorTypeAndShape()
        table = info.Value()
        tensor.Init(table.Bytes, table.Pos)
        types[arg.Name().decode()] = tensor.ElemType()
    initializers = {}
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        initializers[t.Name().decode()] = t.DataType()
    types.update(initializers)
    nodes = []
    for i in range(graph.NodesLength()):
        n = graph.Nodes(i)
        inputs = [n.Inputs(j).decode() for j in range(n.InputsLength())]
        nodes.append(((n.Domain() or b"").decode(), n.OpType().decode(), inputs))
    io = [graph.Inputs(i).decode() for i in range(graph.InputsLength())]
    io += [graph.Outputs(i).decode() for i in range(graph.OutputsLength())]
    return _facts(nodes, types, initializers, io)


def nchwc_block() -> str:
    """This CPU's NCHWc block as ONNX Runtime's MLAS picks it (the channels one block holds)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        flags = cpu_flags()
        if not flags:
            return "x86-64: MLAS's block for this CPU (8 channels, 16 with AVX-512)"
        if "avx512f" in flags:
            return "x86-64 with AVX-512: 16-channel blocks"
        return "x86-64 without AVX-512: 8-channel blocks"
    return f"{machine}: blocks of MLAS's size for this CPU"
