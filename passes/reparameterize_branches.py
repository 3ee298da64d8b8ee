"""Merge summed parallel conv branches on one input (RepVGG / MobileOne) into a single conv.

Before (RepVGG block; each branch conv may carry its own eval BN)::

    conv2d       = aten.conv2d(x, p_rbr_dense_conv_weight, None, [1, 1], [1, 1])          # 3×3
    batch_norm   = aten.batch_norm(conv2d, p_rbr_dense_bn_weight, ...)
    conv2d_1     = aten.conv2d(x, p_rbr_1x1_conv_weight)                                   # 1×1
    batch_norm_1 = aten.batch_norm(conv2d_1, p_rbr_1x1_bn_weight, ...)
    add          = aten.add.Tensor(batch_norm, batch_norm_1)
    batch_norm_2 = aten.batch_norm(x, p_rbr_identity_weight, ...)                          # skip BN
    add_1        = aten.add.Tensor(add, batch_norm_2)

After::

    conv2d_2   = aten.conv2d(x, p_rbr_dense_weight_rep, p_rbr_dense_bias_rep, [1, 1], [1, 1], [1, 1], 1)

Algebra (mobileone.py ``_fuse_bn_tensor``, RepVGG): convolution is linear in its kernel, so
``Σᵢ conv(x, Wᵢ) + bᵢ = conv(x, Σᵢ pad(Wᵢ)) + Σᵢ bᵢ`` when every kernel, zero-padded to the
largest size K, reads the same window: ``pᵢ + (K − kᵢ)/2`` equal for every branch.  An identity
branch is a kernel with 1 at the centre tap of channel ``i → i mod (C/groups)``; a skip BN is that
kernel scaled by ``s = γ/√(σ²+ε)`` with bias ``β − μ·s``; a branch BN after its conv scales that
conv's rows the same way (fold_batchnorm's algebra), so this pass runs before fold_batchnorm.

Must not fire when: the branches read different inputs; strides, dilations or groups differ;
the windows are not aligned; an identity branch meets a strided or channel-changing conv; a
branch output has another user (it is needed alone); a skip BN is in training mode; a branch
goes through a nonlinearity (it is then not a leaf of the sum).

Options: none.
"""

from __future__ import annotations

import torch
from torch import fx

from ._affine import CONVS, bn_affine
from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult

aten = torch.ops.aten


def _leaves(add: fx.Node) -> list:
    out = []
    for a in add.args[:2]:
        if is_op(a, "aten.add") and len(a.users) == 1 and arg(a, "alpha") == 1:
            out += _leaves(a)
        else:
            out.append(a)
    return out


def _as_conv(ed: Editor, leaf):
    """``(conv, s, t)`` for a ``conv`` leaf or a ``BN(conv)`` leaf (eval BN, single-use conv)."""
    if is_op(leaf, *CONVS):
        return leaf, None, None
    if is_op(leaf, "aten.batch_norm") and is_op(arg(leaf, "input"), *CONVS):
        conv = arg(leaf, "input")
        affine = bn_affine(ed, leaf)
        if len(conv.users) == 1 and not isinstance(affine, str):
            return conv, *affine
    return None


def _merge(ed: Editor, add: fx.Node):
    """``(x, conv_args, weight, bias, convs)`` for the merged conv, or a reason string."""
    leaves = _leaves(add)
    branches = {leaf: _as_conv(ed, leaf) for leaf in leaves}
    convs = [b[0] for b in branches.values() if b is not None]
    if not convs:
        return "no conv branch"
    x, first = arg(convs[0], "input"), convs[0]
    stride, dilation, groups = list(arg(first, "stride")), list(arg(first, "dilation")), arg(first, "groups")
    w0 = ed.const(arg(first, "weight"))
    if w0 is None:
        return f"{first.name} weight is not constant"
    cout, cin_g, rank = w0.shape[0], w0.shape[1], w0.dim() - 2
    big = [max(shape(arg(c, "weight"))[2 + d] for c in convs) for d in range(rank)]
    pad, identity = None, False
    weight = torch.zeros(cout, cin_g, *big, dtype=torch.float64)
    bias = torch.zeros(cout, dtype=torch.float64)
    for leaf, branch in branches.items():
        if leaf is not x and (not isinstance(leaf, fx.Node) or len(leaf.users) != 1):
            return f"branch {getattr(leaf, 'name', leaf)} has another user"
        if branch is not None:
            conv, s, t = branch
            if arg(conv, "input") is not x:
                return f"{conv.name} reads another input"
            if (
                list(arg(conv, "stride")) != stride
                or list(arg(conv, "dilation")) != dilation
                or arg(conv, "groups") != groups
                or any(d != 1 for d in dilation)
            ):
                return f"{conv.name} differs in stride, dilation or groups"
            w, p = ed.const(arg(conv, "weight")), arg(conv, "padding")
            if w is None or isinstance(p, str) or w.shape[:2] != (cout, cin_g):
                return f"{conv.name} has a non-constant weight, string padding or other channels"
            off = [big[d] - w.shape[2 + d] for d in range(rank)]
            if any(o % 2 for o in off):
                return f"{conv.name}'s window cannot be centred in the {big} kernel"
            this_pad = [p[d] + off[d] // 2 for d in range(rank)]
            if pad is not None and this_pad != pad:
                return f"{conv.name} reads a shifted window (padding {list(p)})"
            pad = this_pad
            b = ed.const(arg(conv, "bias")).double() if arg(conv, "bias") is not None else torch.zeros(cout)
            w, b = w.double(), b.double()
            if s is not None:
                w, b = w * s.reshape(-1, *([1] * (w.dim() - 1))), s * b + t
            window = tuple(slice(o // 2, o // 2 + w.shape[2 + d]) for d, o in enumerate(off))
            weight[(slice(None), slice(None), *window)] += w
            bias += b
            continue
        if leaf is x:
            s, t = torch.ones(cout, dtype=torch.float64), torch.zeros(cout, dtype=torch.float64)
        elif is_op(leaf, "aten.batch_norm") and arg(leaf, "input") is x:
            affine = bn_affine(ed, leaf)
            if isinstance(affine, str):
                return affine
            s, t = affine
        else:
            return f"branch {getattr(leaf, 'name', leaf)} is not a conv, a skip BN or the input"
        if shape(x)[1] != cout or any(v != 1 for v in stride) or shape(x) != shape(add):
            return "an identity branch meets a strided or channel-changing conv"
        centre = [k // 2 for k in big]
        for o in range(cout):
            weight[(o, o % cin_g, *centre)] += s[o]
        bias += t
        identity = True
    if identity and pad != [k // 2 for k in big]:
        return "an identity branch needs the conv window centred on it (padding k//2)"
    return (x, None, None, stride, pad, dilation, groups), weight.to(w0.dtype), bias.to(w0.dtype), convs


class ReparameterizeBranches(Pass):
    name = "reparameterize_branches"
    summary = "Merge summed k x k / 1x1 / identity(-BN) conv branches (RepVGG, MobileOne) into one conv"
    exact = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for add in [n for n in ed.graph.nodes if is_op(n, "aten.add")]:
            users = list(add.users)
            if arg(add, "alpha") != 1 or (
                len(users) == 1 and is_op(users[0], "aten.add") and arg(users[0], "alpha") == 1
            ):
                continue  # an inner add: the root of the tree is tried instead
            self._try(ed, add)
        return self.result(graph, ed)

    def _try(self, ed: Editor, add: fx.Node) -> None:
        """Merge the tree at ``add``; when that fails, try its sub-trees (e.g. x + (conv + conv))."""
        merged = _merge(ed, add)
        if isinstance(merged, str):
            leaves = _leaves(add)
            ins = [arg(n, "input") for n in leaves if is_op(n, *CONVS, "aten.batch_norm")]
            if len(ins) != len(set(ins)) or set(ins) & set(leaves):
                ed.reject(add, merged)  # a near miss: branches share an input; else just a residual
            for a in add.args[:2]:
                if is_op(a, "aten.add") and len(a.users) == 1 and arg(a, "alpha") == 1:
                    self._try(ed, a)
            return
        args, weight, bias, convs = merged
        target = ed.specs[convs[0].args[1].name].target if convs[0].args[1].name in ed.specs else "conv.weight"
        prefix = target.rsplit(".", 1)[0]
        wp = ed.add_param(f"{prefix}.rep.weight", weight)
        bp = ed.add_param(f"{prefix}.rep.bias", bias)
        conv_op = convs[0].target
        conv = ed.call(conv_op, (args[0], wp, bp, *args[3:]), before=add, like=convs[0])
        ed.replace(add, conv)
        ed.match(*convs, add)
