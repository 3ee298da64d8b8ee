"""Merge parallel linear heads on the same input that are summed (and averaged) into one linear.

Before (EfficientFormer / DeiT distillation heads at eval)::

    linear   = aten.linear(mean, p_head_weight, p_head_bias)
    linear_1 = aten.linear(mean, p_dist_head_weight, p_dist_head_bias)
    add      = aten.add.Tensor(linear, linear_1)
    div      = aten.div.Tensor(add, 2)

After::

    linear_2 = aten.linear(mean, p_head_weight_merged, p_head_bias_merged)   # (W_h + W_d)/2, (b_h + b_d)/2

Algebra: ``(W₁x + b₁) + (W₂x + b₂) = (W₁ + W₂)x + (b₁ + b₂)``, and a following division or
multiplication by a scalar ``k`` scales both; a chain of adds over n heads merges the same way.

Must not fire when: the heads read different tensors; a head's output has another user (it is
still needed alone, e.g. training returns both); weights are not constant; the add has ``alpha``
other than 1 or broadcasts.

Options: none.
"""

from __future__ import annotations

import torch
from torch import fx

from ._affine import layer_name
from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult

aten = torch.ops.aten


def _heads(add: fx.Node) -> list[fx.Node] | None:
    """The linear leaves of a tree of single-use adds rooted at ``add``."""
    leaves: list[fx.Node] = []
    for a in add.args[:2]:
        if is_op(a, "aten.add") and len(a.users) == 1 and arg(a, "alpha") == 1:
            sub = _heads(a)
            if sub is None:
                return None
            leaves += sub
        elif is_op(a, "aten.linear"):
            leaves.append(a)
        else:
            return None
    return leaves


class MergeParallelHeads(Pass):
    name = "merge_parallel_heads"
    summary = "Merge parallel linear heads summed/averaged on the same input into one linear"
    exact = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for add in [n for n in ed.graph.nodes if is_op(n, "aten.add")]:
            if add not in ed.graph.nodes or arg(add, "alpha") != 1:
                continue
            users = list(add.users)
            if len(users) == 1 and is_op(users[0], "aten.add") and _heads(users[0]) is not None:
                continue  # an inner add: the root of the tree handles it
            heads = _heads(add)
            if heads is None:
                continue
            x = arg(heads[0], "input")
            if any(arg(h, "input") is not x for h in heads):
                ed.reject(add, "the summed linears read different inputs")
                continue
            if any(len(h.users) != 1 for h in heads):
                ed.reject(add, "a head's output has another user")
                continue
            if len({shape(h) for h in heads} | {shape(add)}) != 1:
                ed.reject(add, "the heads' outputs differ in shape (broadcasting add)")
                continue
            ws = [ed.const(arg(h, "weight")) for h in heads]
            bs = [
                ed.const(arg(h, "bias")) if arg(h, "bias") is not None else torch.zeros(w.shape[0])
                for h, w in zip(heads, ws)
            ]
            if any(v is None for v in ws + bs):
                ed.reject(add, "a head's weights are not constant")
                continue
            k, end = 1.0, add
            if len(users) == 1 and is_op(users[0], "aten.div", "aten.mul") and users[0].args[0] is add:
                other = users[0].args[1]
                if isinstance(other, (int, float)) and not isinstance(other, bool) and other != 0:
                    k, end = (1.0 / other if is_op(users[0], "aten.div") else float(other)), users[0]
            w = sum(v.double() for v in ws) * k
            b = sum(v.double() for v in bs) * k
            target = layer_name(ed, heads[0])
            wp = ed.add_param(f"{target}.merged.weight", w.to(ws[0].dtype))
            bp = ed.add_param(f"{target}.merged.bias", b.to(ws[0].dtype))
            merged = ed.call(aten.linear.default, (x, wp, bp), before=end, like=heads[0])
            ed.replace(end, merged)
            ed.match(*heads, add, *([end] if end is not add else []))
        return self.result(graph, ed)
