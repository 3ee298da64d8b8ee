"""Per-channel affine maps folded into linear layers: the algebra several passes share.

Two directions (docs/architectures.md section 0):

- *into a producer* (BN after conv/linear, layer scale): ``s ⊙ (W x + b) + t`` is
  ``(diag(s) W) x + (s ⊙ b + t)``;
- *into consumers* (BN before a 1×1 conv/linear, LayerNorm/GroupNorm affine, RepBN): a consumer of
  ``s ⊙ x + t`` computes ``W (s ⊙ x + t) + b = (W diag(s)) x + (W t + b)`` (for a k×k conv the
  bias term sums ``W·t`` over the kernel too).  This is exact only when every element the
  consumer reads went through the affine, i.e. the consumer adds no zero padding.

It also holds the constant affines passes recognise: an eval BatchNorm (:func:`bn_affine`, used by
fold_batchnorm, fold_repbn and reparameterize_branches) and a multiply by a constant
(:func:`scaled_operand`, used by fold_layer_scale and fold_pool_mixer).

All weight arithmetic is done in float64 and cast back, so a fold adds one rounding, not three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from edgeformer.ir import op_name

from ._graph import Editor, arg, is_op, set_arg, shape

CONVS = ("aten.conv1d", "aten.conv2d")
MAPS = ("aten.conv1d", "aten.conv2d", "aten.linear")


def channel_axis(node: fx.Node) -> int | None:
    """The axis of ``node``'s output that holds a conv/linear layer's output channels."""
    if is_op(node, *CONVS):
        return 1
    if is_op(node, "aten.linear"):
        s = shape(node)
        return len(s) - 1 if s else None
    return None


def per_channel(value: torch.Tensor, out_shape: tuple[int, ...], axis: int) -> torch.Tensor | None:
    """``value`` as a (C,) vector when it broadcasts along ``axis`` of ``out_shape`` only."""
    if value.dim() > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - value.dim()) + tuple(value.shape)
    c = out_shape[axis]
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, c):
        return None
    return value.reshape(-1).expand(c).clone() if value.numel() == 1 else value.reshape(c)


def bn_affine(ed: Editor, bn: fx.Node) -> tuple[torch.Tensor, torch.Tensor] | str:
    """``(s, t)`` with ``BN(x) = s·x + t`` per channel, or the reason it is not a constant affine."""
    if arg(bn, "training"):
        return "batch_norm runs in training mode (batch statistics)"
    mean, var = ed.const(arg(bn, "running_mean")), ed.const(arg(bn, "running_var"))
    if mean is None or var is None:
        return "batch_norm has no running statistics"
    w_node, b_node = arg(bn, "weight"), arg(bn, "bias")
    gamma = ed.const(w_node) if w_node is not None else torch.ones_like(mean)
    beta = ed.const(b_node) if b_node is not None else torch.zeros_like(mean)
    if gamma is None or beta is None:
        return "batch_norm weight or bias is not constant"
    return bn_scale_shift(gamma, beta, mean, var, float(arg(bn, "eps")))


def bn_scale_shift(gamma, beta, mean, var, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``BN(x) = s·x + t``: ``s = γ / √(σ² + ε)``, ``t = β − μ·s``."""
    s = gamma.double() / torch.sqrt(var.double() + eps)
    return s, beta.double() - mean.double() * s


def scaled_operand(ed: Editor, mul: fx.Node) -> tuple[fx.Node, torch.Tensor] | None:
    """``(value, scale)`` when ``mul`` multiplies a non-constant node by a constant."""
    a, b = mul.args[0], mul.args[1]
    for x, s in ((a, b), (b, a)):
        if isinstance(x, fx.Node) and ed.const(x) is None:
            if isinstance(s, (int, float)) and not isinstance(s, bool):
                return x, torch.tensor(float(s), dtype=torch.float64)
            value = ed.const(s)
            if value is not None and value.is_floating_point():
                return x, value
    return None


def fold_into_producer(
    ed: Editor, producer: fx.Node, scale: torch.Tensor | None, shift: torch.Tensor | None = None
) -> None:
    """Make ``producer`` (conv/linear) compute ``scale ⊙ out + shift`` per output channel."""
    w = ed.const(arg(producer, "weight")).double()
    b_node = arg(producer, "bias")
    b = ed.const(b_node).double() if b_node is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    s = scale.double() if scale is not None else torch.ones_like(b)
    t = shift.double() if shift is not None else torch.zeros_like(b)
    w_new = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    b_new = s * b + t
    hint = layer_name(ed, producer)
    if scale is not None:
        ed.tensor_arg(producer, "weight", w_new, hint + ".weight")
    if b_node is not None or bool(t.abs().max() > 0):
        ed.tensor_arg(producer, "bias", b_new, hint + ".bias")


def padded(conv: fx.Node) -> bool:
    """``conv`` reads zero padding (a kernel wider than 1 with padding, or any 1x1 padding)."""
    pad = arg(conv, "padding")
    wide = any(k != 1 for k in shape(arg(conv, "weight"))[2:])
    return (pad == "same" and wide) if isinstance(pad, str) else any(p != 0 for p in pad)


def consumer_reason(node: fx.Node, user: fx.Node, axis: int, border_map: bool = False) -> str | None:
    """Why ``user`` cannot absorb a per-channel affine on ``axis`` of ``node``; None when it can."""
    if not is_op(user, *MAPS):
        return f"its output feeds {user.name} ({_op(user)}), not a linear or conv"
    if arg(user, "input") is not node:
        return f"it is not the input of {user.name}"
    if is_op(user, "aten.linear"):
        return None if axis == len(shape(node)) - 1 else f"{user.name} reads another axis"
    if axis != 1:
        return f"{user.name} reads another axis"
    if padded(user) and not border_map:
        k = "x".join(map(str, shape(arg(user, "weight"))[2:]))
        return f"{user.name} is a {k} conv with zero padding (padded zeros skip the affine: not exact at borders)"
    return None


def trace_consumers(node: fx.Node, axis: int, border_map: bool = False) -> tuple[list[fx.Node], str | None]:
    """The linear/conv layers that read ``node`` (through spatial means, flattens, transposes).

    Returns ``(consumers, None)`` when every path from ``node`` ends in such a layer, reading the
    affine's channel axis, else ``([], reason)``.  Padded convs qualify only with ``border_map``.
    """
    found: list[fx.Node] = []
    todo = [(node, axis)]
    while todo:
        cur, ax = todo.pop()
        rank = len(shape(cur) or ())
        if not cur.users:
            return [], f"{cur.name} has no users"
        for user in cur.users:
            if is_op(user, "aten.mean") and arg(user, "self") is cur:
                dims = [d % rank for d in (arg(user, "dim") or range(rank))]
                if ax in dims:
                    return [], f"{user.name} averages over the channel axis"
                shift = 0 if arg(user, "keepdim") else sum(1 for d in dims if d < ax)
                todo.append((user, ax - shift))
            elif is_op(user, "aten.flatten") and arg(user, "self") is cur:
                start, stop = arg(user, "start_dim") % rank, arg(user, "end_dim") % rank
                if start <= ax <= stop and start != stop:
                    return [], f"{user.name} flattens the channel axis"
                todo.append((user, ax if ax < start else ax - (stop - start)))
            elif is_op(user, "aten.transpose") and arg(user, "self") is cur:
                d0, d1 = arg(user, "dim0") % rank, arg(user, "dim1") % rank
                todo.append((user, d1 if ax == d0 else d0 if ax == d1 else ax))
            elif is_op(user, "aten.permute") and arg(user, "self") is cur:
                todo.append((user, [d % rank for d in arg(user, "dims")].index(ax)))
            else:
                reason = consumer_reason(cur, user, ax, border_map)
                if reason:
                    return [], reason
                found.append(user)
    return found, None


def _in_channel_index(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``idx[o, j]``: the input channel that weight ``w[o, j]`` reads (grouped convs included)."""
    cout, cin_g = w.shape[0], w.shape[1]
    group = torch.arange(cout) // (cout // groups)
    return group[:, None] * cin_g + torch.arange(cin_g)[None, :]


def fold_into_consumer(ed: Editor, consumer: fx.Node, scale: torch.Tensor | None, shift: torch.Tensor | None) -> None:
    """Make ``consumer`` (linear/conv) compute ``W (scale ⊙ x + shift) + b`` from ``x``.

    For a padded conv the shift term varies near the borders (padded taps see 0, not ``shift``),
    so it becomes a constant bias map added after the conv: ``conv(shift ⊙ 1, W)`` + b.
    """
    w = ed.const(arg(consumer, "weight")).double()
    b_node = arg(consumer, "bias")
    b = ed.const(b_node).double() if b_node is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    hint = layer_name(ed, consumer)
    groups = arg(consumer, "groups") if is_op(consumer, *CONVS) else 1
    idx = _in_channel_index(w, groups)
    tap = (...,) + (None,) * (w.dim() - 2)
    if scale is not None:
        ed.tensor_arg(consumer, "weight", w * scale.double()[idx][tap], hint + ".weight")
    if shift is None:
        return
    if is_op(consumer, *CONVS) and padded(consumer):
        x_shape = shape(arg(consumer, "input"))
        field = shift.double().reshape(1, -1, *([1] * (len(x_shape) - 2))).expand(1, *x_shape[1:])
        conv = F.conv1d if is_op(consumer, "aten.conv1d") else F.conv2d
        bias_map = conv(
            field, w, b, arg(consumer, "stride"), arg(consumer, "padding"), arg(consumer, "dilation"), groups
        )
        if b_node is not None:
            set_arg(consumer, "bias", None)
        dtype = consumer.meta["val"].dtype
        param = ed.add_param(hint + ".bias_map", bias_map.to(dtype))
        add = ed.call(torch.ops.aten.add.Tensor, (consumer, param), before=consumer.next, like=consumer)
        consumer.replace_all_uses_with(add, delete_user_cb=lambda u: u is not add)
        return
    ed.tensor_arg(consumer, "bias", b + (w * shift.double()[idx][tap]).flatten(1).sum(1), hint + ".bias")


def layer_name(ed: Editor, node: fx.Node) -> str:
    """State-dict prefix of ``node``'s layer (``network.0.0.mlp.fc1``) for naming new tensors."""
    w = arg(node, "weight")
    target = ed.specs[w.name].target if isinstance(w, fx.Node) and w.name in ed.specs else None
    if target and target.endswith(".weight"):
        return target[: -len(".weight")]
    return target or node.name


def _op(node: fx.Node) -> str:
    return op_name(node.target) if node.op == "call_function" else node.op
