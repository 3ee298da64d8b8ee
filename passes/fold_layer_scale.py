"""Fold a per-channel scale (layer scale) into the conv/linear that produces the scaled value.

Before::

    conv2d_1    = aten.conv2d(gelu, p_fc2_weight, p_fc2_bias)
    unsqueeze   = aten.unsqueeze(p_layer_scale_2, -1)
    unsqueeze_1 = aten.unsqueeze(unsqueeze, -1)
    mul         = aten.mul.Tensor(unsqueeze_1, conv2d_1)
    add         = aten.add.Tensor(x, mul)

After::

    conv2d_1    = aten.conv2d(gelu, p_fc2_weight, p_fc2_bias)      # W' = diag(λ)·W, b' = λ·b
    add         = aten.add.Tensor(x, conv2d_1)

Algebra: ``λ ⊙ (W x + b) = (diag(λ) W) x + λ ⊙ b`` for a λ that varies only along the layer's
output-channel axis (a scalar included).  Runs after fold_batchnorm, so EfficientFormer's
``ls2 ⊙ BN(fc2(·))`` already reads ``ls2 ⊙ fc2'(·)``.

Must not fire when: the scaled value is not a conv/linear output (PoolFormer's ``ls1 ⊙ (pool − x)``
stays a multiply; see fold_pool_mixer); the conv/linear output has a second user; the scale varies
along another axis or broadcasts the output to a bigger shape; the scale is not constant.

Options: none.
"""

from __future__ import annotations

from edgeformer.ir import op_name

from ._affine import channel_axis, fold_into_producer, per_channel, scaled_operand
from ._graph import Editor, is_op, shape
from .base import Pass, PassResult


class FoldLayerScale(Pass):
    name = "fold_layer_scale"
    summary = "Fold per-channel scales (layer scale) into the conv/linear producing the scaled value"
    exact = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for mul in [n for n in ed.graph.nodes if is_op(n, "aten.mul")]:
            found = scaled_operand(ed, mul)
            if found is None:
                continue  # not a multiply by a constant: not a near-miss worth reporting
            x, scale = found
            axis = channel_axis(x)
            if axis is None:
                hint = "; run fold_batchnorm first" if is_op(x, "aten.batch_norm") else ""
                ed.reject(mul, f"scales {x.name} ({op_name(x.target)}), not a conv/linear output{hint}")
                continue
            if len(x.users) != 1:
                ed.reject(mul, f"{x.name} output has a second user")
                continue
            if shape(mul) != shape(x):
                ed.reject(mul, "the scale broadcasts the output to a bigger shape")
                continue
            vec = per_channel(scale, shape(x), axis)
            if vec is None:
                ed.reject(mul, f"the scale {tuple(scale.shape)} is not per output channel of {x.name}")
                continue
            fold_into_producer(ed, x, vec)
            ed.replace(mul, x)
            ed.match(x, mul)
        return self.result(graph, ed)
