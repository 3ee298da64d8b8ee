"""Fold RepBN / PRepBN at eval (SLAB: ``BN(x) + α·x``) into the linear layers that read it.

Before (tokens ``(B, N, C)``, BatchNorm1d over channels)::

    transpose   = aten.transpose.int(x, 1, 2)
    batch_norm  = aten.batch_norm(transpose, p_bn_weight, p_bn_bias, b_bn_running_mean,
                                  b_bn_running_var, False, 0.1, 1e-05, False)
    transpose_1 = aten.transpose.int(batch_norm, 1, 2)
    mul         = aten.mul.Tensor(p_alpha, x)
    add         = aten.add.Tensor(transpose_1, mul)
    linear      = aten.linear(add, p_qkv_weight, p_qkv_bias)

After::

    linear      = aten.linear(x, p_qkv_weight, p_qkv_bias)       # W' = W·diag(a), b' = W·t + b

Algebra (swin_transformer.py ``merge_bn``): with s = γ/√(σ²+ε), ``RepBN(x) = a ⊙ x + t`` where
``a = s + α`` and ``t = β − μ·s``; a following linear computes ``(W diag(a)) x + (W t + b)``.  α may
be a scalar or per channel; a bare ``BN(x) + x`` is α = 1.

Must not fire when: the BN is in training mode or has no running statistics; the two branches
read different tensors; the BN's transposes do not restore the input layout; α is not constant;
any reader of the sum is not a linear or 1×1 unpadded conv on the channel axis (e.g. the
detection backbone's ``F.pad`` after the norm: padded tokens would get ``t`` instead of zeros).

Options: none.
"""

from __future__ import annotations

import torch
from torch import fx

from ._affine import bn_affine, fold_into_consumer, per_channel, trace_consumers
from ._graph import Editor, arg, is_op, shape, strip_permutes
from .base import Pass, PassResult


def _bn_branch(node):
    """``(bn, x, axis)`` when ``node`` is ``BN`` of ``x`` over ``x``'s ``axis``, layout restored."""
    bn, perm_out = strip_permutes(node)
    if not is_op(bn, "aten.batch_norm"):
        return None
    x, perm_in = strip_permutes(arg(bn, "input"))
    if [perm_in[d] for d in perm_out] != list(range(len(perm_in))):
        return None
    return bn, x, perm_in[1]


def _alpha_branch(ed: Editor, node, x):
    """α when ``node`` is ``α·x`` (or ``x``) with constant α, else None."""
    if node is x:
        return torch.ones((), dtype=torch.float64)
    if is_op(node, "aten.mul") and x in node.args:
        other = node.args[1] if node.args[0] is x else node.args[0]
        if isinstance(other, (int, float)):
            return torch.tensor(float(other), dtype=torch.float64)
        return ed.const(other) if isinstance(other, fx.Node) else None
    return None


class FoldRepBN(Pass):
    name = "fold_repbn"
    summary = "Fold RepBN/PRepBN (BN(x) + alpha*x) into the following linear"
    exact = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for add in [n for n in ed.graph.nodes if is_op(n, "aten.add")]:
            if len(add.args) < 2 or arg(add, "alpha") != 1:
                continue
            for p, q in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
                branch = _bn_branch(p) if isinstance(p, fx.Node) else None
                if branch is None:
                    continue
                bn, x, axis = branch
                alpha = _alpha_branch(ed, q, x)
                if alpha is None:
                    ed.reject(add, f"the other branch is not a constant multiple of {x.name}")
                    break
                affine = bn_affine(ed, bn)
                if isinstance(affine, str):
                    ed.reject(add, affine)
                    break
                s, t = affine
                alpha = per_channel(alpha, shape(x), axis)
                if alpha is None:
                    ed.reject(add, "α is not a scalar or per-channel")
                    break
                consumers, reason = trace_consumers(add, axis)
                if not consumers:
                    ed.reject(add, reason)
                    break
                for c in consumers:
                    fold_into_consumer(ed, c, s + alpha.double(), t)
                ed.replace(add, x)
                ed.match(bn, add, *consumers)
                break
        return self.result(graph, ed)
