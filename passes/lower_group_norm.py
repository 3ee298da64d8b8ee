"""Rewrite an affine-free GroupNorm with one group as the normalisation the target runs fastest.

Before (PoolFormer's norms once fold_pool_mixer / fold_norm_affine took γ and β)::

    group_norm = aten.group_norm(add, 1, None, None, 1e-05)

After, ``form="layer_norm"`` (the default; OpenVINO: one MVN)::

    layer_norm = aten.layer_norm(add, [64, 56, 56], None, None, 1e-05)

or ``form="instance_norm"`` (ONNX Runtime)::

    reshape       = aten.reshape(add, [-1, 1, 200704])
    instance_norm = aten.instance_norm(reshape, None, None, None, None, True, 0.1, 1e-05, False)
    reshape_1     = aten.reshape(instance_norm, [-1, 64, 56, 56])

Algebra: with one group, GroupNorm's statistics are the mean and variance over (C, H, W) per
sample: LayerNorm's over ``normalized_shape = (C, H, W)``, and InstanceNorm's over a (N, 1, C·H·W)
view; with no affine all three are ``(x − μ)/√(σ² + ε)``.

Why: exporters write ``group_norm`` with its affine even when it is gone.  ONNX: Reshape →
InstanceNormalization → Reshape → Mul(ones) → Add(zeros); OpenVINO's frontend even adds
Broadcast/Gather for the missing γ.  Folding γ and β away pays only once the norm is rewritten.
Each target picks the form its runtime runs fastest in its ``pipeline`` options (ORT:
instance_norm, OpenVINO: layer_norm); the per-op and whole-model figures behind that choice are
in docs/benchmarks.md (``lower_group_norm``).

Must not fire when: the GroupNorm has more than one group (statistics per group, not per
sample); it still has γ or β (LayerNorm's affine would need them expanded to (C, H, W)); the
(C, H, W) shape is not static (a dynamic batch is fine).

Options: ``form`` (str, "layer_norm" or "instance_norm", default "layer_norm").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edgeformer.errors import UserError

from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult

aten = torch.ops.aten
FORMS = ("layer_norm", "instance_norm")


class LowerGroupNorm(Pass):
    name = "lower_group_norm"
    summary = "Rewrite affine-free GroupNorm(1, C) as LayerNorm/InstanceNorm (no exported Mul/Add)"
    exact = True

    @dataclass
    class Options:
        form: str = "layer_norm"

    def run(self, graph) -> PassResult:
        if self.options.form not in FORMS:
            raise UserError(f"lower_group_norm form must be one of {', '.join(FORMS)}, got {self.options.form!r}")
        ed = Editor(graph)
        for gn in [n for n in ed.graph.nodes if is_op(n, "aten.group_norm")]:
            if arg(gn, "num_groups") != 1:
                ed.reject(gn, f"{arg(gn, 'num_groups')} groups: statistics are per group, not per sample")
                continue
            if arg(gn, "weight") is not None or arg(gn, "bias") is not None:
                ed.reject(gn, "it still has an affine (γ/β not folded by fold_pool_mixer/fold_norm_affine)")
                continue
            dims = shape(gn)
            if dims is None or any(d < 0 for d in dims[1:]):
                ed.reject(gn, "the (C, H, W) shape is not static")
                continue
            x, eps = arg(gn, "input"), arg(gn, "eps")
            if self.options.form == "layer_norm":
                out = ed.call(aten.layer_norm.default, (x, list(dims[1:]), None, None, eps), before=gn, like=gn)
            else:
                flat = ed.call(aten.reshape.default, (x, [-1, 1, math.prod(dims[1:])]), before=gn, like=gn)
                norm = ed.call(
                    aten.instance_norm.default,
                    (flat, None, None, None, None, True, 0.1, eps, False),
                    before=gn,
                    like=gn,
                )
                out = ed.call(aten.reshape.default, (norm, [-1, *dims[1:]]), before=gn, like=gn)
            ed.replace(gn, out)
            ed.match(gn, note=self.options.form)
        return self.result(graph, ed)
