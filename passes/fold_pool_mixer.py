"""Simplify the PoolFormer/EfficientFormer token mixer ``pool(y) − y`` (count_include_pad=False).

Before (PoolFormer block, ``y = GN1(x)``)::

    group_norm  = aten.group_norm(x, 1, p_norm1_weight, p_norm1_bias, 1e-05)
    avg_pool2d  = aten.avg_pool2d(group_norm, [3, 3], [1, 1], [1, 1], False, False)
    sub         = aten.sub.Tensor(avg_pool2d, group_norm)
    mul         = aten.mul.Tensor(unsqueeze_1, sub)              # layer scale ls1 (C, 1, 1)

After::

    group_norm  = aten.group_norm(x, 1, None, None, 1e-05)
    avg_pool2d  = aten.avg_pool2d(group_norm, [3, 3], [1, 1], [1, 1], False, False)
    sub         = aten.sub.Tensor(avg_pool2d, group_norm)
    mul         = aten.mul.Tensor(p_layer_scale_1_gamma, sub)     # ls1·γ, one constant

Algebra: with count_include_pad=False (or no padding) every averaging window's weights sum to 1,
so ``pool(γ ⊙ x̂ + β) − (γ ⊙ x̂ + β) = γ ⊙ (pool(x̂) − x̂)``: β cancels exactly and γ joins ls1.
Without a following per-channel multiply, one is inserted for γ (β still goes).

With ``dw_conv=True`` (off by default; docs/architectures.md EfficientFormer pitfall 6) ``c ⊙ (pool(y) − y)``
becomes ``R ⊙ dwconv(y, c·ones(k×k)) − c ⊙ y`` with ``R`` the constant reciprocal window-count
map (1/4 at corners, 1/6 on edges, 1/9 inside for 3×3): exact, but more ops than the pool; it
measured slower on both runtimes (docs/benchmarks.md), so no target pipeline turns it on.

Must not fire when: the pool counts padding (count_include_pad=True with padding), has a
divisor_override or a stride other than 1; the subtraction is not ``pool(y) − y``; the norm
output has users besides the pool and the subtraction; the norm is not a GroupNorm (per-channel
affine on axis 1); γ or β is not constant.

With ``branch_convs=True`` (ONNX Runtime's pipeline) the block ``x + c ⊙ (pool(y) − y)`` becomes
``dwconv1x1(pool(y), c) + (dwconv1x1(y, −c) + x)``: the same sum, distributed, with each per-channel
scale as a depthwise 1×1 conv.  ORT's NCHWc layout transformer keeps convs, pools and adds of
equal shapes in its blocked layout and folds an add into the conv that feeds it, but runs Sub and
a broadcast Mul in plain NCHW, so the mixer used to cost a reorder out of and back into the blocked
layout plus three elementwise passes; after it, the residual stream stays blocked and both adds
ride in the convs.  Only the ORT target turns it on (figures: docs/benchmarks.md); OpenVINO fuses
the plain form itself.

Options: ``dw_conv`` (bool, default False) rewrites pool − identity as a depthwise conv;
``branch_convs`` (bool, default False) distributes the layer scale over the two branches as
depthwise 1×1 convs.  At most one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from edgeformer.errors import UserError

from ._affine import per_channel, scaled_operand
from ._graph import Editor, arg, is_op, set_arg, shape
from .base import Pass, PassResult

aten = torch.ops.aten


def _pool_reason(pool: fx.Node) -> str | None:
    if arg(pool, "divisor_override") is not None:
        return "avg_pool2d has a divisor_override"
    if arg(pool, "count_include_pad") and any(p != 0 for p in arg(pool, "padding")):
        return "avg_pool2d counts padded zeros (count_include_pad=True): window weights do not sum to 1"
    if any(s != 1 for s in (arg(pool, "stride") or arg(pool, "kernel_size"))):
        return "avg_pool2d has a stride: pool(y) − y needs equal shapes"
    return None


def _scale_of(ed: Editor, sub: fx.Node):
    """``(mul, c)`` when the subtraction's only user multiplies it by a per-channel constant."""
    if len(sub.users) != 1:
        return None, None
    mul = next(iter(sub.users))
    found = scaled_operand(ed, mul) if is_op(mul, "aten.mul") else None
    if found is None or found[0] is not sub or shape(mul) != shape(sub):
        return None, None
    c = per_channel(found[1], shape(sub), 1)
    return (mul, c) if c is not None else (None, None)


class FoldPoolMixer(Pass):
    name = "fold_pool_mixer"
    summary = "Pool mixer: cancel GroupNorm beta in pool(y)-y, merge gamma with the layer scale"
    exact = True

    @dataclass
    class Options:
        dw_conv: bool = False
        branch_convs: bool = False

    def run(self, graph) -> PassResult:
        if self.options.dw_conv and self.options.branch_convs:
            raise UserError("fold_pool_mixer: dw_conv and branch_convs are two forms of one rewrite; pick one")
        ed = Editor(graph)
        for pool in [n for n in ed.graph.nodes if is_op(n, "aten.avg_pool2d")]:
            y = arg(pool, "self")
            subs = [u for u in pool.users if is_op(u, "aten.sub") and u.args[:2] == (pool, y)]
            if len(pool.users) != 1 or not subs or arg(subs[0], "alpha") != 1:
                ed.reject(pool, "its output is not used only as pool(y) − y")
                continue
            reason = _pool_reason(pool)
            if reason:
                ed.reject(pool, reason)
                continue
            sub = subs[0]
            mul, c = _scale_of(ed, sub)
            folded = self._fold_norm(ed, pool, sub, y, mul, c)
            if folded is not None:
                mul, c = folded
            if self.options.dw_conv:
                self._to_dw_conv(ed, pool, sub, y, mul, c)
            elif self.options.branch_convs:
                self._to_branch_convs(ed, pool, sub, y, mul, c)
            elif folded is None:
                continue
            ed.match(pool, sub, *([mul] if mul is not None else []))
        return self.result(graph, ed)

    def _fold_norm(self, ed, pool, sub, y, mul, c):
        """Drop GN's affine; return the (mul, scale) now carrying γ, or None when not foldable."""
        if not is_op(y, "aten.group_norm") or arg(y, "weight") is None and arg(y, "bias") is None:
            return None
        if set(y.users) != {pool, sub}:
            ed.reject(y, "the norm output has users besides pool(y) − y")
            return None
        w_node = arg(y, "weight")
        gamma = ed.const(w_node) if w_node is not None else torch.ones(shape(y)[1])
        if gamma is None or (arg(y, "bias") is not None and ed.const(arg(y, "bias")) is None):
            ed.reject(y, "the norm's affine is not constant")
            return None
        scale = gamma.double() * (c.double() if c is not None else 1.0)
        value = scale.to(gamma.dtype).reshape(-1, 1, 1)
        hint = ed.specs[w_node.name].target if w_node is not None and w_node.name in ed.specs else "gamma"
        param = ed.add_param(hint + "_scale", value)
        if mul is None:
            mul = ed.call(aten.mul.Tensor, (sub, param), before=next(iter(sub.users)), like=sub)
            sub.replace_all_uses_with(mul, delete_user_cb=lambda u: u is not mul)
        else:
            mul.args = (param, sub)
        set_arg(y, "weight", None)
        set_arg(y, "bias", None)
        return mul, scale

    def _to_dw_conv(self, ed, pool, sub, y, mul, c):
        """``c ⊙ (pool(y) − y)`` → ``R ⊙ dwconv(y, c·ones) − c ⊙ y``."""
        n, ch, h, w = shape(y)
        k = arg(pool, "kernel_size")
        k = list(k) * 2 if len(k) == 1 else list(k)
        pad = list(arg(pool, "padding")) * (2 if len(arg(pool, "padding")) == 1 else 1)
        ones = torch.ones(1, 1, h, w, dtype=torch.float64)
        count = F.conv2d(ones, torch.ones(1, 1, *k, dtype=torch.float64), padding=pad)
        if arg(pool, "count_include_pad") and any(pad):
            count = torch.full_like(count, float(k[0] * k[1]))
        dtype = y.meta["val"].dtype
        c = c.double() if c is not None else torch.ones(ch, dtype=torch.float64)
        kernel = ed.add_param("pool_dw_conv.weight", (c.reshape(ch, 1, 1, 1) * torch.ones(ch, 1, *k)).to(dtype))
        recip = ed.add_param("pool_dw_conv.recip_count", (1.0 / count).to(dtype))
        cvec = ed.add_param("pool_dw_conv.scale", c.reshape(ch, 1, 1).to(dtype))
        anchor = mul if mul is not None else sub
        conv = ed.call(aten.conv2d.default, (y, kernel, None, [1, 1], pad, [1, 1], ch), before=anchor, like=pool)
        avg = ed.call(aten.mul.Tensor, (conv, recip), before=anchor, like=pool)
        ident = ed.call(aten.mul.Tensor, (y, cvec), before=anchor, like=sub)
        out = ed.call(aten.sub.Tensor, (avg, ident), before=anchor, like=sub)
        ed.replace(anchor, out)

    def _to_branch_convs(self, ed, pool, sub, y, mul, c):
        """``x + c ⊙ (pool(y) − y)`` → ``dw1x1(pool(y), c) + (dw1x1(y, −c) + x)``."""
        ch = shape(y)[1]
        dtype = y.meta["val"].dtype
        c = c.double() if c is not None else torch.ones(ch, dtype=torch.float64)
        w_pos = ed.add_param("pool_branch.scale", c.reshape(ch, 1, 1, 1).to(dtype))
        w_neg = ed.add_param("pool_branch.neg_scale", (-c).reshape(ch, 1, 1, 1).to(dtype))
        anchor = mul if mul is not None else sub
        users = list(anchor.users)
        residual = users[0] if len(users) == 1 and is_op(users[0], "aten.add") else None
        if residual is not None:
            others = [a for a in residual.args[:2] if a is not anchor]
            if arg(residual, "alpha") != 1 or len(others) != 1 or shape(others[0]) != shape(anchor):
                residual = None
        conv = (aten.conv2d.default, [1, 1], [0, 0], [1, 1], ch)
        at = residual if residual is not None else anchor
        neg = ed.call(conv[0], (y, w_neg, None, *conv[1:]), before=at, like=sub)
        if residual is not None:
            neg = ed.call(aten.add.Tensor, (neg, others[0]), before=at, like=residual)
        pos = ed.call(conv[0], (pool, w_pos, None, *conv[1:]), before=at, like=pool)
        out = ed.call(aten.add.Tensor, (pos, neg), before=at, like=at)
        ed.replace(at, out)
