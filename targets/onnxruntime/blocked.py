"""Run whole-sample norms on ONNX Runtime's blocked (NCHWc) tensors instead of reordering around them.

A rewrite of ORT's own optimized graph, for ``optimization_level = "all"`` only (the level whose
layout transformer writes NCHWc nodes, so the model is already specific to this CPU).

Before (ORT's optimized PoolFormer block; ``lower_group_norm`` wrote GroupNorm(1, C) as
Reshape → InstanceNormalization → Reshape)::

    add_1           = nchwc.ReorderOutput(reorder_token_4, channels=64)     # blocked → NCHW
    view_2          = Reshape(add_1, [-1, 1, 200704])
    instance_norm_1 = InstanceNormalization(view_2, 1, 0)
    view_3          = Reshape(instance_norm_1, [-1, 64, 56, 56])
    reorder_token_8 = nchwc.ReorderInput(view_3)                            # NCHW → blocked
    ...             = nchwc.Conv(reorder_token_8, ...)

After::

    view_2          = Reshape(reorder_token_4, [-1, 1, 200704])
    instance_norm_1 = InstanceNormalization(view_2, 1, 0)
    reorder_token_8 = Reshape(instance_norm_1, [-1, 64, 56, 56])
    ...             = nchwc.Conv(reorder_token_8, ...)

Why it is exact: with C a multiple of the block size, a sample's NCHWc buffer (C/b, H, W, b) holds
the same C·H·W values as its NCHW buffer, only permuted, and no padding channels.  The norm's
statistics are a mean and variance over all of them, and the normalisation is elementwise, so
both commute with the permutation.  The second Reshape gives the blocked buffer back its logical
(N, C, H, W) shape, which is what ORT's NCHWc kernels read.  MLAS blocks by 8 or 16 channels,
so C % 16 == 0 is required, whatever this CPU's block size.

Why it pays: ORT's layout transformer keeps convs, pools and same-shape adds blocked but not
InstanceNormalization, so every norm cost a ReorderOutput and a ReorderInput over the whole
activation.  PoolFormer-S12 has 24 of them (48 reorders); benchmarks/passes.py times it.

Must not fire when: C is not a multiple of 16 (blocked buffers carry zero padding channels that
would join the statistics); the first Reshape does not give one instance per sample
``(N, 1, C·H·W)`` or its result has other users; the norm's scale or bias is not one value per
instance; the result leaves the graph or reaches the blocked layout other than through one
ReorderInput (unary elementwise ops such as ReLU may sit between them); a reorder is channels-last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NCHWC_DOMAIN = "com.microsoft.nchwc"
# Channels must fill whole blocks for every block size MLAS uses (8 on AVX2/NEON, 16 on AVX-512).
BLOCK_MULTIPLE = 16
# Unary elementwise ops allowed between the norm and the ReorderInput (e.g. BN → ReLU): applied to
# the blocked buffer they give the blocked form of their NCHW result.
ELEMENTWISE = frozenset(
    {
        "Relu",
        "Gelu",
        "FastGelu",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Abs",
        "Neg",
        "Exp",
        "Softplus",
        "HardSwish",
        "HardSigmoid",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Sqrt",
        "Reciprocal",
        "QuickGelu",
    }
)


@dataclass
class BlockedNormReport:
    rewritten: list[str] = field(default_factory=list)  # InstanceNormalization node names
    rejected: dict[str, str] = field(default_factory=dict)  # node name -> why it was left alone
    reorders_removed: int = 0

    def to_dict(self) -> dict:
        return {
            "norms_on_blocked_layout": len(self.rewritten),
            "reorders_removed": self.reorders_removed,
            "rejected": dict(sorted(self.rejected.items())),
        }


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _path_to_reorder_input(start, users: dict, graph_outputs: set):
    """``([start, *elementwise ops], ReorderInput)`` when ``start``'s value reaches one ReorderInput
    through single-use unary elementwise ops (they do not care about layout), else ``([], None)``."""
    chain = [start]
    while True:
        out = chain[-1].output[0]
        nxt = users.get(out, [])
        if out in graph_outputs or len(nxt) != 1:
            return [], None
        node = nxt[0]
        if node.op_type == "ReorderInput" and node.domain == NCHWC_DOMAIN:
            return chain, node
        if (
            node.op_type not in ELEMENTWISE
            or node.domain not in ("", "ai.onnx", "com.microsoft")
            or len(node.input) != 1
        ):
            return [], None
        chain.append(node)


def run_norms_blocked(model) -> BlockedNormReport:
    """Rewrite ``model`` (an ORT-optimized ``onnx.ModelProto``) in place; see the module docstring."""
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        for v in list(g.value_info) + list(g.input) + list(g.output)
    }
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    report = BlockedNormReport()
    dropped: set[int] = set()

    def reject(node, why: str) -> None:
        report.rejected[node.name or node.output[0]] = why

    for norm in [n for n in g.node if n.op_type == "InstanceNormalization" and n.domain in ("", "ai.onnx")]:
        flat = producer.get(norm.input[0])
        reorder_out = producer.get(flat.input[0]) if flat is not None and flat.op_type == "Reshape" else None
        if reorder_out is None or reorder_out.op_type != "ReorderOutput" or reorder_out.domain != NCHWC_DOMAIN:
            continue  # not fed from a blocked tensor: nothing to save
        if len(users.get(flat.output[0], [])) != 1 or flat.output[0] in graph_outputs:
            reject(norm, "the flattened tensor has users besides the norm (they expect NCHW order)")
            continue
        after = users.get(norm.output[0], [])
        unflat = after[0] if len(after) == 1 and after[0].op_type == "Reshape" else None
        chain, reorder_in = _path_to_reorder_input(unflat, users, graph_outputs) if unflat is not None else ([], None)
        if reorder_in is None:
            reject(norm, "its output does not go back to the blocked layout through one Reshape → ReorderInput")
            continue
        channels = _attrs(reorder_out).get("channels")
        if _attrs(reorder_out).get("channels_last") or _attrs(reorder_in).get("channels_last"):
            reject(norm, "a reorder is channels-last")
            continue
        if channels is None or channels % BLOCK_MULTIPLE:
            reject(norm, f"{channels} channels is not a multiple of {BLOCK_MULTIPLE}: blocks carry padding")
            continue
        nchw = shapes.get(reorder_out.output[0])
        if nchw is None or len(nchw) != 4 or nchw[1] != channels or min(nchw[1:]) <= 0:
            reject(norm, "the NCHW shape is unknown or not static")
            continue
        flat_shape = consts.get(flat.input[1]) if len(flat.input) > 1 else None
        unflat_shape = consts.get(unflat.input[1]) if len(unflat.input) > 1 else None
        per_sample = math.prod(nchw[1:])
        if flat_shape is None or list(flat_shape[1:]) != [1, per_sample] or flat_shape[0] not in (-1, nchw[0]):
            reject(norm, "the Reshape before it does not give one instance per sample")
            continue
        if unflat_shape is None or list(unflat_shape[1:]) != nchw[1:] or unflat_shape[0] not in (-1, nchw[0]):
            reject(norm, "the Reshape after it does not restore the (N, C, H, W) shape")
            continue
        scale, bias = (consts.get(name) for name in norm.input[1:3])
        if scale is None or bias is None or scale.size != 1 or bias.size != 1:
            reject(norm, "its scale/bias is not one constant per instance")
            continue
        flat.input[0] = reorder_out.input[0]  # read the blocked buffer directly
        chain[-1].output[0] = reorder_in.output[0]  # and hand the blocked consumers its result
        dropped.add(id(reorder_in))
        report.reorders_removed += 1
        if all(u is flat for u in users.get(reorder_out.output[0], [])) and reorder_out.output[0] not in graph_outputs:
            dropped.add(id(reorder_out))
            report.reorders_removed += 1
        report.rewritten.append(norm.name or norm.output[0])

    if dropped:
        keep = [n for n in g.node if id(n) not in dropped]
        del g.node[:]
        g.node.extend(keep)
        live = {v for n in g.node for v in (*n.input, *n.output)}
        stale = [v for v in g.value_info if v.name not in live]
        for v in stale:
            g.value_info.remove(v)
    report.rewritten.sort()
    return report
