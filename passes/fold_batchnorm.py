"""Fold eval-mode BatchNorm into the conv/linear before it, or into the conv/linear after it.

Before::

    conv2d     = aten.conv2d(x, p_proj_weight, p_proj_bias, [2, 2], [1, 1])
    batch_norm = aten.batch_norm(conv2d, p_norm_weight, p_norm_bias, b_norm_running_mean,
                                 b_norm_running_var, False, 0.1, 1e-05, False)

After::

    conv2d     = aten.conv2d(x, p_proj_weight, p_proj_bias, [2, 2], [1, 1])   # folded values

and, for a BN that precedes a layer (LMUFormer tokenizer ``relu → BN → conv``)::

    batch_norm = aten.batch_norm(relu, ...)          →   conv1d = aten.conv1d(relu, w', b')
    conv1d     = aten.conv1d(batch_norm, w, b)

Algebra (s = γ/√(σ²+ε), t = β − μ·s): after a layer ``W' = diag(s)·W, b' = s·b + t`` (grouped and
depthwise convs too: rows are output channels); before a layer ``W' = W·diag(s), b' = b + W·t``
(summed over the kernel; grouped convs index their own input channels).  A linear followed by
``transpose`` then BN (tokens ``(B, N, C)`` normalised as ``(B, C, N)``) is traced through the
transpose.  Before a *padded* k×k conv, ``W·t`` is not a constant: padded taps read 0, not ``t``.
With ``border_bias_map`` the shift becomes the exact constant map ``conv(t·1, W) + b`` added after
the conv (one add of a constant replaces the BN); without it that case is refused.

Must not fire when: the BN runs in training mode or has no running statistics; the producing
layer's output has a second user (that user would see folded values); a following conv pads with
zeros and ``border_bias_map`` is off (not exact at borders); any other user of the BN output is
not a conv/linear reading the channel axis (ReLU, residual add, LIF neuron, ...).

Options: ``after`` (bool, default True) folds into the preceding layer; ``before`` (bool, default
True) folds into the following layers; ``border_bias_map`` (bool, default True) allows the exact
bias-map fold before padded convs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._affine import bn_affine, channel_axis, fold_into_consumer, fold_into_producer, trace_consumers
from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult


def trace_producer(bn):
    """The conv/linear whose output channels reach ``bn``'s axis 1 (through transposes)."""
    cur, axis = arg(bn, "input"), 1
    while is_op(cur, "aten.transpose", "aten.permute"):
        if len(cur.users) != 1:
            return None, f"{cur.name} has a second user"
        rank = len(shape(cur))
        if is_op(cur, "aten.transpose"):
            d0, d1 = arg(cur, "dim0") % rank, arg(cur, "dim1") % rank
            axis = d1 if axis == d0 else d0 if axis == d1 else axis
        else:
            axis = [d % rank for d in arg(cur, "dims")][axis]
        cur = arg(cur, "self")
    if channel_axis(cur) is None:
        return None, f"its input {cur.name} is not a conv or linear"
    if len(cur.users) != 1:
        return None, f"{'conv' if 'conv' in str(cur.target) else 'linear'} output has a second user"
    if channel_axis(cur) != axis:
        return None, f"{cur.name}'s channels are not the normalised axis"
    return cur, None


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    summary = "Fold eval BatchNorm into the conv/linear before it, or the conv/linear after it"
    exact = True

    @dataclass
    class Options:
        after: bool = True
        before: bool = True
        border_bias_map: bool = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        pending = []
        # Folds into producers first: a later fold *before* a padded conv appends an add after that
        # conv, which would hide the conv from a BN that follows it.
        for bn in [n for n in ed.graph.nodes if is_op(n, "aten.batch_norm")]:
            affine = bn_affine(ed, bn)
            if isinstance(affine, str):
                ed.reject(bn, affine)
                continue
            producer, why_not = trace_producer(bn) if self.options.after else (None, "after=False")
            if producer is None:
                pending.append((bn, affine, why_not))
                continue
            fold_into_producer(ed, producer, *affine)
            ed.replace(bn, arg(bn, "input"))
            ed.match(producer, bn, note="into the layer before")
        for bn, (s, t), why_not_after in pending:
            consumers, why_not = (
                trace_consumers(bn, 1, self.options.border_bias_map) if self.options.before else ([], "before=False")
            )
            if not consumers:
                ed.reject(bn, f"{why_not_after}; and {why_not}")
                continue
            for c in consumers:
                fold_into_consumer(ed, c, s, t)
            ed.replace(bn, arg(bn, "input"))
            ed.match(bn, *consumers, note="into the layer(s) after")
        return self.result(graph, ed)
