"""Approximate attention by average-pooling its keys and values over their token grid (s×s windows).

Before (a ViT block, 1 CLS + 16×16 patch tokens)::

    sdpa = aten.scaled_dot_product_attention(q, k, v)              # k, v: (1, 3, 257, 16)

After (``stride`` 2)::

    k_cls  = aten.slice(k, -2, 0, 1)                               # extra tokens stay as they are
    k_grid = aten.slice(k, -2, 1, 257) → transpose → reshape (-1, 16, 16, 16)
    k_pool = aten.avg_pool2d(k_grid, [2, 2], [2, 2]) → reshape → transpose    # (1, 3, 64, 16)
    k'     = aten.cat([k_cls, k_pool], -2)                         # (1, 3, 65, 16)
    … v' likewise …
    sdpa'  = aten.scaled_dot_product_attention(q, k', v', log_counts)

Algebra: a window of s² similar keys contributes ``Σ exp(q·kⱼ)·vⱼ ≈ s²·exp(q·k̄)·v̄`` to the softmax
sums, so pooled keys get ``log(count)`` added to their scores (``proportional``, ToMe's
proportional attention) and the extra tokens, which stand for one token each, keep 0; without
extra tokens and with full windows that is a constant and is left out.  The scores shrink from
N×M to N×(e + ⌈H/s⌉·⌈W/s⌉): the attention products cost about 1/s² as much, the projections the
same.  An additive bias over the keys (EfficientFormer's attention biases, a float mask) is
averaged over the same windows.  For PVTv2 this raises the spatial-reduction ratio by s.

The query side is untouched, so the output keeps every token.  Error: not exact; the contract
measures it (``--calib``/``--eval``), and the pass is in no default pipeline (``--passes
+kv_downsample``).

Must not fire when: the mask is boolean or causal (which keys are masked would be averaged away),
dropout, grouped-query heads, no unique conv grid holds the keys (:func:`_attention.token_grid`),
the grid is smaller than the stride, or more than one batch dimension is dynamic.

Options: ``stride`` (2), ``proportional`` (True), ``min_keys`` (0: attention with fewer keys is
left alone), ``nodes`` ("": every attention that qualifies; else a comma-separated list of the
attention node names to rewrite, which the compiler's "only where it pays" driver sets),
``min_share`` (0.10: the driver, ``edgeformer/sites.py``, declines an attention whose share of
end-to-end time on the target is below it).

``details["sites"]`` lists every attention: node, source module, applied or the reason not, and the
key counts before and after.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeformer.ir import source_path

from ._attention import Site, conv_grids, find_attention, token_grid
from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult

aten = torch.ops.aten


@dataclass
class Options:
    stride: int = 2
    proportional: bool = True
    min_keys: int = 0
    nodes: str = ""  # comma-separated attention node names to rewrite ("": every one that qualifies)
    min_share: float = 0.10  # the compiler's driver declines a site below this share of end-to-end time


def _shared_kv(site: Site, keys: int):
    """``(parent, dim, ik, iv)`` when k and v are two slots of one tensor along a batch axis
    (``select(parent, dim, i)``, or items of one ``unbind``), so one pooling serves both."""
    k, v = site.k, site.v

    def slot(node):
        if is_op(node, "aten.select"):
            return node.args[0], node.args[1], node.args[2]
        if node.op == "call_function" and node.target is operator.getitem and is_op(node.args[0], "aten.unbind"):
            unbind = node.args[0]
            return unbind.args[0], arg(unbind, "dim"), node.args[1]
        return None

    a, b = slot(k), slot(v)
    if a is None or b is None or a[0] is not b[0]:
        return None
    parent, dim = a[0], a[1]
    ps = shape(parent)
    if not ps or dim != b[1] or ps[-2] != keys:
        return None
    dim %= len(ps)
    if dim >= len(ps) - 2 or ps[dim] < 0:
        return None
    return parent, dim, a[2] % ps[dim], b[2] % ps[dim]


def window_counts(h: int, w: int, s: int) -> torch.Tensor:
    """Tokens in each s×s window of an h×w grid (edge windows hold fewer), flattened row-major."""
    rows = torch.tensor([min(s, h - i * s) for i in range(math.ceil(h / s))], dtype=torch.float32)
    cols = torch.tensor([min(s, w - j * s) for j in range(math.ceil(w / s))], dtype=torch.float32)
    return (rows[:, None] * cols[None, :]).reshape(-1)


class KvDownsample(Pass):
    name = "kv_downsample"
    summary = "Average-pool attention keys/values over their token grid in s×s windows (approximate)"
    exact = False
    Options = Options

    def run(self, graph) -> PassResult:
        o = self.options
        ed = Editor(graph)
        grids = conv_grids(ed.graph)
        wanted = {n.strip() for n in o.nodes.split(",") if n.strip()}
        details = {"sites": []}
        for site in find_attention(ed.graph):
            entry = {"node": site.node.name, "source": source_path(site.node) or ""}
            reason = site.reason or self._grid_reason(site, grids)
            if isinstance(reason, str) or (wanted and site.node.name not in wanted):
                reason = reason if isinstance(reason, str) else "not chosen (nodes option)"
                ed.reject(site.node, reason)
                details["sites"].append({**entry, "applied": False, "reason": reason})
                continue
            extra, h, w = reason
            keys = site.keys
            new_keys = extra + math.ceil(h / o.stride) * math.ceil(w / o.stride)
            self._rewrite(ed, site, extra, h, w)
            note = f"{keys} keys = {extra} + {h}x{w} → {new_keys} (stride {o.stride})"
            ed.match(site.node, note=note)
            details["sites"].append({**entry, "applied": True, "keys": keys, "new_keys": new_keys})
        return self.result(graph, ed, **details)

    @staticmethod
    def predicted_speedup(site: dict) -> float:
        """The attention products' predicted speed-up at one applied site: keys before / after."""
        return site["keys"] / site["new_keys"]

    def _grid_reason(self, site: Site, grids) -> tuple[int, int, int] | str:
        o = self.options
        if o.stride < 2:
            return f"stride {o.stride} < 2 pools nothing"
        keys = site.keys
        if keys is None:
            return "the key count is unknown"
        if keys < o.min_keys:
            return f"{keys} keys < min_keys {o.min_keys}"
        found = token_grid(keys, grids)
        if isinstance(found, str):
            return found
        _, h, w = found
        if h < o.stride or w < o.stride:
            return f"the {h}x{w} key grid is smaller than the stride {o.stride}"
        batch = shape(site.k)[:-2]
        if sum(d < 0 for d in batch) > 1:
            return "more than one batch dimension is dynamic"
        if site.bias is not None:
            bs = shape(site.bias)
            if not bs or bs[-1] not in (1, keys):
                return f"the score bias {bs} does not broadcast over the keys"
        return found

    def _rewrite(self, ed: Editor, site: Site, extra: int, h: int, w: int) -> None:
        o, node = self.options, site.node
        s, keys = o.stride, site.keys
        ceil = h % s != 0 or w % s != 0
        hp, wp = math.ceil(h / s), math.ceil(w / s)

        def call(target, *args, **kwargs):
            return ed.call(target, args, kwargs, before=node, like=node)

        def pool_tokens(t):
            """(*b, keys, d) → (*b, extra + hp·wp, d)."""
            dims = shape(t)
            batch, d = list(dims[:-2]), dims[-1]
            grid = call(aten.slice.Tensor, t, -2, extra, keys) if extra else t
            grid = call(aten.reshape.default, call(aten.transpose.int, grid, -1, -2), [-1, d, h, w])
            pooled = call(aten.avg_pool2d.default, grid, [s, s], [s, s], [0, 0], ceil, False)
            pooled = call(aten.transpose.int, call(aten.reshape.default, pooled, [*batch, d, hp * wp]), -1, -2)
            if not extra:
                return pooled
            return call(aten.cat.default, [call(aten.slice.Tensor, t, -2, 0, extra), pooled], -2)

        shared = _shared_kv(site, keys)
        if site.k is site.v:  # one tensor serves as both: pool it once
            k2 = v2 = pool_tokens(site.k)
        elif shared is not None:  # k, v = kv[0], kv[1] (PVTv2) or qkv.unbind()[1:] (ViT): pool kv once
            parent, dim, ik, iv = shared
            lo, hi = min(ik, iv), max(ik, iv) + 1
            sub = parent if (lo, hi) == (0, shape(parent)[dim]) else call(aten.slice.Tensor, parent, dim, lo, hi)
            pooled = pool_tokens(sub)
            k2, v2 = call(aten.select.int, pooled, dim, ik - lo), call(aten.select.int, pooled, dim, iv - lo)
        else:
            k2, v2 = pool_tokens(site.k), pool_tokens(site.v)
        bias = self._pooled_bias(ed, site, extra, h, w, call)
        counts = window_counts(h, w, s)
        if o.proportional and (extra or not bool((counts == counts[0]).all())):
            logc = torch.cat([torch.zeros(extra), counts.log()]).reshape(1, -1)  # (1, keys): SDPA wants 2-D+
            logc_node = ed.add_param(f"{node.name}_kv_log_counts", logc)
            bias = logc_node if bias is None else call(aten.add.Tensor, bias, logc_node)
        if site.form == "sdpa":
            kwargs = {"scale": site.scale} if site.scale is not None else {}
            new = call(aten.scaled_dot_product_attention.default, site.q, k2, v2, bias, 0.0, False, **kwargs)
        else:
            scores = call(site.scores.target, site.q, call(aten.transpose.int, k2, -1, -2))
            if site.scale != 1.0:
                scores = call(aten.mul.Tensor, scores, site.scale)
            if bias is not None:
                scores = call(aten.add.Tensor, scores, bias)
            probs = call(aten.softmax.int, scores, -1)
            new = call(node.target, probs, v2)
        ed.replace(node, new)
        if site.form == "sdpa":
            ed.graph.erase_node(node)  # dead, but dead-code removal keeps SDPA (dropout makes it "impure")

    def _pooled_bias(self, ed: Editor, site: Site, extra: int, h: int, w: int, call):
        """The score bias averaged over the key windows (None without a bias)."""
        bias = site.bias
        if bias is None or shape(bias)[-1] == 1:
            return bias
        s, keys = self.options.stride, site.keys
        ceil = h % s != 0 or w % s != 0
        value = ed.const(bias)
        if value is not None:  # a constant table (EfficientFormer's densified biases): pool it here
            lead = value.shape[:-1]
            grid = value[..., extra:].reshape(-1, 1, h, w)
            pooled = F.avg_pool2d(grid, s, s, 0, ceil, False).reshape(*lead, -1)
            out = torch.cat([value[..., :extra], pooled], -1) if extra else pooled
            return ed.add_param(f"{bias.name}_kv_pooled", out.contiguous())
        dims = shape(bias)
        grid = call(aten.slice.Tensor, bias, -1, extra, keys) if extra else bias
        grid = call(aten.reshape.default, grid, [-1, 1, h, w])
        pooled = call(aten.avg_pool2d.default, grid, [s, s], [s, s], [0, 0], ceil, False)
        pooled = call(aten.reshape.default, pooled, [*dims[:-1], -1])
        if not extra:
            return pooled
        return call(aten.cat.default, [call(aten.slice.Tensor, bias, -1, 0, extra), pooled], -1)
