"""Finding attention in the ATen graph, and the token grid its keys lie on, for the attention
approximations (``kv_downsample``, …).

Two forms are matched:

* ``aten.scaled_dot_product_attention(q, k, v[, attn_mask][, scale])`` (``F.scaled_dot_product_attention``,
  ``nn.MultiheadAttention``'s fast path, timm/ViT, PVTv2);
* the explicit form ``matmul|bmm(q, kᵀ) → [mul|div by a number] → [add bias] → softmax(-1) →
  matmul|bmm(·, v)`` (EfficientFormer, hand-written attention, and ``decompose_unmasked_sdpa``'s
  output on ExecuTorch).

A :class:`Site` names q, k and v as ``(…, tokens, features)`` tensors (``kᵀ``'s transpose looked
through), the additive bias on the scores if any, and why a pass may not rewrite it (a causal or
boolean mask, dropout, shapes it cannot read).

Token grid: the keys of a vision model lie on a grid that a conv made, with extra tokens (CLS,
distillation) in front.  :func:`token_grid` looks for 4-D conv outputs whose ``H·W`` equals the key
count minus 0, 1 or 2 extra tokens; exactly one such grid must exist, else no grid is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from edgeformer.ir import warnings_hidden

from ._graph import arg, is_op, shape, strip_permutes

_MATMULS = ("aten.matmul", "aten.bmm")


@dataclass
class Site:
    """One attention: ``out = softmax(q·kᵀ·scale + bias) · v``."""

    node: fx.Node  # the SDPA node, or the explicit form's second matmul (the output)
    form: str  # "sdpa" | "explicit"
    q: fx.Node
    k: fx.Node  # (…, keys, features), not transposed
    v: fx.Node
    scale: float | None  # None: SDPA's default 1/√E
    bias: fx.Node | None = None  # additive float bias/mask on the scores
    scores: fx.Node | None = None  # explicit form: the q·kᵀ matmul
    add: fx.Node | None = None  # explicit form: the bias add
    softmax: fx.Node | None = None  # explicit form
    reason: str | None = None  # why it must not be rewritten (None: it may)

    @property
    def keys(self) -> int | None:
        s = shape(self.k)
        return s[-2] if s and s[-2] > 0 else None


def find_attention(graph: fx.Graph) -> list[Site]:
    sites = []
    for node in graph.nodes:
        if is_op(node, "aten.scaled_dot_product_attention"):
            sites.append(_sdpa_site(node))
        elif is_op(node, "aten.softmax", "aten._softmax") and (site := _explicit_site(node)) is not None:
            sites.append(site)
    return sites


def _sdpa_site(node: fx.Node) -> Site:
    q, k, v = arg(node, "query"), arg(node, "key"), arg(node, "value")
    scale = arg(node, "scale")
    mask = arg(node, "attn_mask")
    site = Site(node, "sdpa", q, k, v, float(scale) if scale is not None else None, bias=mask)
    if arg(node, "is_causal"):
        site.reason = "is_causal=True (a causal mask over the keys)"
    elif arg(node, "dropout_p"):
        site.reason = "dropout_p > 0 (not an inference graph)"
    elif arg(node, "enable_gqa"):
        site.reason = "enable_gqa=True repeats key/value heads"
    elif mask is not None and mask.meta["val"].dtype == torch.bool:
        site.reason = "a boolean attention mask (which keys are masked would be averaged away)"
    return _check_shapes(site)


def _explicit_site(softmax: fx.Node) -> Site | None:
    dim = arg(softmax, "dim")
    rank = len(shape(softmax) or ())
    if rank < 2 or dim % rank != rank - 1 or len(softmax.users) != 1:
        return None
    (out,) = softmax.users
    if not is_op(out, *_MATMULS) or out.args[0] is not softmax:
        return None
    x, bias, add, scale = softmax.args[0], None, None, 1.0
    if is_op(x, "aten.add") and isinstance(x.args[1], fx.Node):
        add, bias, x = x, x.args[1], x.args[0]
    if is_op(x, "aten.mul", "aten.div") and isinstance(x.args[1], (int, float)):
        scale = float(x.args[1]) if is_op(x, "aten.mul") else 1.0 / float(x.args[1])
        x = x.args[0]
    if not is_op(x, *_MATMULS) or len(x.users) != 1:
        return None
    q, kt = x.args[0], x.args[1]
    k, perm = strip_permutes(kt)
    if perm[-2:] != [len(perm) - 1, len(perm) - 2] or perm[:-2] != list(range(len(perm) - 2)):
        return None  # not kᵀ over the last two axes
    site = Site(out, "explicit", q, k, out.args[1], scale, bias=bias, scores=x, add=add, softmax=softmax)
    if add is not None and len(add.users) != 1:
        site.reason = "the biased scores have other users"
    return _check_shapes(site)


def _check_shapes(site: Site) -> Site:
    if site.reason:
        return site
    qs, ks, vs = (shape(t) for t in (site.q, site.k, site.v))
    if not (qs and ks and vs) or min(len(qs), len(ks), len(vs)) < 2:
        site.reason = "q, k or v has no known shape"
    elif any(d < 0 for d in (*qs[-2:], *ks[-2:], *vs[-2:])):
        site.reason = "the token or feature dimensions are dynamic"
    elif ks[-2] != vs[-2] or qs[-1] != ks[-1]:
        site.reason = "q, k and v shapes do not agree"
    elif any(t.meta["val"].dtype != torch.float32 for t in (site.q, site.k, site.v)):
        site.reason = "q, k or v is not fp32"
    return site


def conv_grids(graph: fx.Graph) -> set[tuple[int, int]]:
    """``(H, W)`` of every 4-D conv output in the graph."""
    grids = set()
    for node in graph.nodes:
        if is_op(node, "aten.conv2d", "aten.convolution") and (s := shape(node)) and len(s) == 4 and min(s[2:]) > 0:
            grids.add((s[2], s[3]))
    return grids


def token_grid(tokens: int, grids: set[tuple[int, int]]) -> tuple[int, int, int] | str:
    """``(extra, H, W)`` when exactly one conv grid has ``H·W = tokens − extra`` (extra ∈ 0..2, in
    front), else the reason no grid is claimed."""
    found = {(e, h, w) for (h, w) in grids for e in (0, 1, 2) if h * w == tokens - e}
    if not found:
        return f"no conv output grid has {tokens} tokens (or {tokens - 1}, {tokens - 2} after CLS/distillation)"
    if len(found) > 1:
        opts = ", ".join(f"{h}x{w}+{e}" for e, h, w in sorted(found))
        return f"{tokens} keys fit several conv grids ({opts}): ambiguous"
    return next(iter(found))


def capture(graph, names: set[str], samples) -> dict[str, list[torch.Tensor]]:
    """The values of the nodes ``names`` (fx node names of ``graph.program``) on each input tuple of
    ``samples``: ``{name: [value per sample]}``, for the passes that fit constants to activations."""
    with warnings_hidden():
        module = graph.program.module()
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    class _Capture(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in seen and isinstance(out, torch.Tensor):
                seen[n.name].append(out.detach().clone())
            return out

    interp = _Capture(module)
    with warnings_hidden(), torch.no_grad():
        for sample in samples:
            interp.run(*sample)
    return seen
