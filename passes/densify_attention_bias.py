"""Replace a gather from a constant bias table (EfficientFormer attention bias) by its dense result.

Before::

    index = aten.index.Tensor(p_attention_biases, [None, b_attention_bias_idxs])   # (8, 49)[:, (49, 49)]
    add   = aten.add.Tensor(mul, index)                                          # scores + bias

After::

    add   = aten.add.Tensor(mul, p_attention_biases_dense)                        # (8, 49, 49) constant

Algebra: ``table[:, idx]`` with a constant table and constant indices is itself a constant; at
inference the gather is pure overhead (a Gather per attention layer in ONNX, an index kernel in
every runtime).  The dense bias is ``N²/len(table)`` times larger (49× for L1's 7×7 tokens), which
is why fold_constants, which refuses to grow tensors, leaves this to a pass of its own.

Matches ``aten.index.Tensor``, ``aten.index_select``, ``aten.gather`` and ``aten.embedding``.

Must not fire when: the table or the indices depend on the input (a data-dependent gather); the
dense result would exceed ``max_numel`` elements.

Options: ``max_numel`` (int, default 4_194_304: 16 MiB of fp32) caps the dense bias size.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult

GATHERS = ("aten.index", "aten.index_select", "aten.gather", "aten.embedding")


class DensifyAttentionBias(Pass):
    name = "densify_attention_bias"
    summary = "Replace gathers from constant bias tables (attention bias) by dense constants"
    exact = True

    @dataclass
    class Options:
        max_numel: int = 4_194_304

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for node in [n for n in ed.graph.nodes if is_op(n, *GATHERS)]:
            table = arg(node, "weight") if is_op(node, "aten.embedding") else arg(node, "self")
            if ed.const(table) is None:
                continue  # gathers from activations (token selection, ...) are not bias tables
            value = ed.const(node)
            if value is None:
                ed.reject(node, "the indices depend on the input")
                continue
            numel = value.numel()
            if numel > self.options.max_numel:
                ed.reject(node, f"the dense result has {numel:,} elements (> max_numel {self.options.max_numel:,})")
                continue
            target = ed.specs[table.name].target if table.name in ed.specs else node.name
            dense = ed.add_param(f"{target}_dense", value.clone())
            ed.replace(node, dense)
            ed.match(node, note=f"{tuple(shape(table) or ())} table → dense {tuple(value.shape)}")
        return self.result(graph, ed)
