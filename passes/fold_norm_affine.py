"""Fold a LayerNorm/GroupNorm affine (γ, β) into the linear / 1×1 conv layers that read the norm.

Before (PoolFormer norm2 → fc1)::

    group_norm_1 = aten.group_norm(add, 1, p_norm2_weight, p_norm2_bias, 1e-05)
    conv2d       = aten.conv2d(group_norm_1, p_mlp_fc1_weight, p_mlp_fc1_bias)

After::

    group_norm_1 = aten.group_norm(add, 1, None, None, 1e-05)
    conv2d       = aten.conv2d(group_norm_1, p_mlp_fc1_weight, p_mlp_fc1_bias)   # W' = W·diag(γ), b' = W·β + b

and for a final norm read through a spatial/token mean (EfficientFormer ``LN → mean(-2) → head``,
PoolFormer ``GN → mean([-2, -1]) → head``) the affine commutes with the mean and folds into head.

Algebra: the statistics cannot be folded, only the per-channel affine ``γ ⊙ x̂ + β``; a consumer
computes ``W (γ ⊙ x̂ + β) + b = (W diag(γ)) x̂ + (W β + b)``.  A mean over non-channel axes has
weights summing to 1, so ``mean(γ ⊙ x̂ + β) = γ ⊙ mean(x̂) + β``.

Must not fire when: any user of the norm output (after means/transposes) is something other
than a linear or conv reading the channel axis (a residual add, an attention matmul, a pool: see
fold_pool_mixer); the consumer conv pads with zeros; the consumer is a grouped conv; a mean
includes the channel axis; a LayerNorm normalises over more than one axis (γ is not per channel).

Options: none.
"""

from __future__ import annotations

from ._affine import fold_into_consumer, trace_consumers
from ._graph import Editor, arg, is_op, set_arg, shape
from .base import Pass, PassResult


class FoldNormAffine(Pass):
    name = "fold_norm_affine"
    summary = "Fold LayerNorm/GroupNorm gamma/beta into the following linear or 1x1 conv"
    exact = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for norm in [n for n in ed.graph.nodes if is_op(n, "aten.layer_norm", "aten.group_norm")]:
            w_node, b_node = arg(norm, "weight"), arg(norm, "bias")
            if w_node is None and b_node is None:
                continue  # no affine left (already folded, or elementwise_affine=False)
            if is_op(norm, "aten.layer_norm"):
                if len(arg(norm, "normalized_shape")) != 1:
                    ed.reject(norm, "layer_norm normalises over more than one axis")
                    continue
                axis = len(shape(norm)) - 1
            else:
                axis = 1
            gamma = ed.const(w_node) if w_node is not None else None
            beta = ed.const(b_node) if b_node is not None else None
            if (w_node is not None and gamma is None) or (b_node is not None and beta is None):
                ed.reject(norm, "the affine parameters are not constant")
                continue
            consumers, reason = trace_consumers(norm, axis)
            if not consumers:
                ed.reject(norm, reason)
                continue
            for c in consumers:
                fold_into_consumer(ed, c, gamma, beta)
            set_arg(norm, "weight", None)
            set_arg(norm, "bias", None)
            ed.match(norm, *consumers)
        return self.result(graph, ed)
