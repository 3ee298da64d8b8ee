"""Approximate softmax attention by Nyström's method over m landmarks (Nyströmformer), O(N·m).

Before (a ViT block, 1 CLS + 64×64 patch tokens)::

    sdpa = aten.scaled_dot_product_attention(q, k, v)              # q, k, v: (1, 3, 4097, 64)

After (m = 64 landmarks: 8×8 windows of the 64×64 grid, plus the CLS token as its own landmark)::

    q_l, k_l = cat([q_cls, avg_pool2d(q_grid, 8)]), cat([k_cls, avg_pool2d(k_grid, 8)])  # (1, 3, 65, 64)
    bv   = aten.scaled_dot_product_attention(q_l, k, v)            # softmax(q̃·kᵀ·s)·v        (65, 64)
    a    = softmax(q_l · k_lᵀ · s)                                  # the landmark kernel     (65, 65)
    z    = pinv(a)                                                 # 6 Newton–Schulz steps, fp32 matmuls
    grid = aten.scaled_dot_product_attention(q_grid, k_l, z · bv)  # softmax(q·k̃ᵀ·s)·(z·bv)
    cls  = aten.scaled_dot_product_attention(q_cls, k, v)          # the extra tokens' rows stay exact
    out  = cat([cls, grid], -2)                                    # (1, 3, 4097, 64)

Algebra (Xiong et al., AAAI 2021): with landmarks q̃, k̃ (means of m groups of queries and keys),
``softmax(q·kᵀ·s) ≈ softmax(q·k̃ᵀ·s) · pinv(softmax(q̃·k̃ᵀ·s)) · softmax(q̃·kᵀ·s)``; multiplied out
right to left it costs about ``2·N·m·d`` twice plus ``m³`` for the pseudo-inverse instead of
``2·N²·d``.  The Moore–Penrose pseudo-inverse is Nyströmformer's iteration,
``Z₀ = aᵀ / ‖a‖₁`` (‖a‖∞ = 1 for a softmax matrix), ``Zₖ₊₁ = ¼·Zₖ(13I − aZₖ(15I − aZₖ(7I − aZₖ)))``,
``pinv_iters`` times, emitted as plain matmul/sub/mul/sum/amax in fp32 (no linalg op, so every
target exports it).  In the explicit form (matmul → softmax → matmul, e.g. after
``decompose_unmasked_sdpa``) the three attentions are emitted explicitly too.

Landmarks: when the tokens lie on a conv grid (:func:`_attention.token_grid`) the landmarks are
``avg_pool2d`` means over ⌈h/gh⌉×⌈w/gw⌉ windows of that grid (edge windows over what they hold),
gh×gw ≈ m, so each landmark stands for a compact patch of the image; otherwise they are
Nyströmformer's segment means over m contiguous runs of the token axis (N divisible by m).  Extra
tokens in front of the grid (CLS, distillation) are never averaged: each is its own landmark, and
their query rows are computed exactly (``softmax(q_cls·kᵀ·s)·v``, O(N·d)).

Constants tuned on calibration data: the landmark count.  ``landmarks`` 0 (default) tries the
candidates 16, 32, 64, 128 that fit the grid (or divide N), leave at most N/4 landmarks and
predict fewer MACs than exact attention,
captures q, k, v of the site on up to ``calib_samples`` input tuples of ``self.data`` (--calib, else
the example inputs), and keeps the smallest m whose relative output error ‖ŷ−y‖/‖y‖ against exact
softmax attention is ≤ ``max_error``, else the smallest within 10 % of the best error (more
landmarks cost m³ in the pseudo-inverse: they must buy a real gain).  On the driver's dry run the
provisional count is the candidate nearest 64, untuned.  A fixed ``landmarks`` skips the choice but
still measures its error.

Error: not exact; the contract measures it (``--calib``/``--eval``), and the pass is in no default
pipeline (``--passes +landmark_attention``).

Must not fire when: the mask is boolean or causal, a float mask or additive score bias (Nyström
cannot carry it), dropout, grouped-query heads, queries and keys of different token counts (one
landmark set must pair them), the tokens fit neither a grid nor m segments, fewer keys than
``min_keys``, more than one dynamic batch dimension, or a predicted speed-up ≤ 1.

Options: ``landmarks`` (0: tuned), ``method`` ("nystrom"; the only one built), ``pinv_iters`` (6),
``max_error`` (0.05), ``calib_samples`` (16), ``min_keys`` (256), ``nodes`` ("": every attention
that qualifies; else the comma-separated attention node names to rewrite, which the compiler's
"only where it pays" driver sets), ``min_share`` (0.10: the driver, ``edgeformer/sites.py``,
declines an attention whose share of end-to-end time on the target is below it).

``details["sites"]`` lists every attention: node, source module, applied or the reason not; applied
ones with queries/keys/features, the landmarks (total, with the extra tokens), their layout, the
relative error measured per candidate and for the chosen count, and what it was measured on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edgeformer.ir import source_path

from ._attention import Site, capture, conv_grids, find_attention, token_grid
from ._graph import Editor, shape
from .base import Pass, PassResult

aten = torch.ops.aten

CANDIDATES = (16, 32, 64, 128)
PROVISIONAL = 64
SLACK = 1.1  # auto: more landmarks only for a real gain, a tenth less error than the fewer


@dataclass
class Options:
    landmarks: int = 0  # 0: chosen among CANDIDATES on the calibration data
    method: str = "nystrom"
    pinv_iters: int = 6
    max_error: float = 0.05  # auto: the smallest landmark count whose relative error is at most this
    calib_samples: int = 16
    min_keys: int = 256
    nodes: str = ""  # comma-separated attention node names to rewrite ("": every one that qualifies)
    min_share: float = 0.10  # the compiler's driver declines a site below this share of end-to-end time


@dataclass(frozen=True)
class Layout:
    """How the tokens are grouped into landmarks: ``extra`` tokens in front, each its own landmark,
    then a ``gh×gw`` grid of ``sh×sw`` windows over an ``h×w`` token grid, or (``h`` = 0) ``m``
    contiguous segments."""

    extra: int
    m: int  # pooled landmarks (without the extra tokens)
    h: int = 0
    w: int = 0
    sh: int = 0
    sw: int = 0

    @property
    def landmarks(self) -> int:
        return self.extra + self.m

    def describe(self) -> str:
        if self.h:
            gh, gw = math.ceil(self.h / self.sh), math.ceil(self.w / self.sw)
            grid = f"{gh}x{gw} windows of {self.sh}x{self.sw} over the {self.h}x{self.w} grid"
        else:
            grid = f"{self.m} segments"
        return grid + (f" + {self.extra} extra token(s)" if self.extra else "")


def grid_layout(extra: int, h: int, w: int, m: int) -> Layout:
    """About ``m`` landmark windows of sh×sw tokens over an h×w grid: the window whose landmark
    count is nearest ``m`` (by ratio), squarer windows preferred (a quarter as much)."""

    def cost(sh: int, sw: int) -> float:
        count = math.ceil(h / sh) * math.ceil(w / sw)
        return abs(math.log(count / m)) + 0.25 * abs(math.log(sh / sw))

    sh, sw = min(((a, b) for a in range(1, h + 1) for b in range(1, w + 1)), key=lambda ab: cost(*ab))
    return Layout(extra, math.ceil(h / sh) * math.ceil(w / sw), h, w, sh, sw)


def nystrom_macs(queries: int, keys: int, d: int, dv: int, landmarks: int, extra: int, iters: int) -> float:
    """Multiply-accumulates of the Nyström attention products (the pooling is not counted)."""
    n, m = queries - extra, landmarks
    return (
        extra * keys * (d + dv)  # the extra tokens' exact rows
        + m * keys * (d + dv)  # softmax(q̃·kᵀ)·v
        + m * m * (d + dv)  # the landmark kernel and z·bv
        + iters * 4 * m**3  # the pseudo-inverse
        + n * m * (d + dv)  # softmax(q·k̃ᵀ)·(z·bv)
    )


def nystrom(op, q, k, v, *, scale: float, layout: Layout, iters: int, eyes, explicit: bool):
    """The approximation written once over ``op(target, *args, **kwargs)``: eager with
    ``op = lambda f, *a, **kw: f(*a, **kw)`` and tensors, or graph nodes with :meth:`Editor.call`.
    ``eyes``: 7·I, 15·I, 13·I of the landmark count."""
    qs = shape(q) if not isinstance(q, torch.Tensor) else tuple(q.shape)
    batch, n, d = list(qs[:-2]), qs[-2], qs[-1]
    e = layout.extra

    def attend(a, b, c):
        if not explicit:
            return op(aten.scaled_dot_product_attention.default, a, b, c, None, 0.0, False, scale=scale)
        return op(aten.matmul.default, op(aten.softmax.int, scores(a, b), -1), c)

    def scores(a, b):
        return op(aten.mul.Tensor, op(aten.matmul.default, a, op(aten.transpose.int, b, -1, -2)), scale)

    def pool(t):
        """(*b, n, d) → (*b, extra + m, d)."""
        grid = op(aten.slice.Tensor, t, -2, e, n) if e else t
        if layout.h:
            h, w, sh, sw = layout.h, layout.w, layout.sh, layout.sw
            ceil = h % sh != 0 or w % sw != 0
            g = op(aten.reshape.default, op(aten.transpose.int, grid, -1, -2), [-1, d, h, w])
            g = op(aten.avg_pool2d.default, g, [sh, sw], [sh, sw], [0, 0], ceil, False)
            pooled = op(aten.transpose.int, op(aten.reshape.default, g, [*batch, d, layout.m]), -1, -2)
        else:
            seg = op(aten.reshape.default, grid, [*batch, layout.m, (n - e) // layout.m, d])
            pooled = op(aten.mean.dim, seg, [-2])
        return op(aten.cat.default, [op(aten.slice.Tensor, t, -2, 0, e), pooled], -2) if e else pooled

    ql = pool(q)
    kl = ql if k is q else pool(k)  # one tensor as queries and keys: pooled once
    bv = attend(ql, k, v)  # softmax(q̃·kᵀ·s)·v: (*b, L, dv)
    a = op(aten.softmax.int, scores(ql, kl), -1)  # (*b, L, L), rows sum to 1
    norm1 = op(aten.amax.default, op(aten.sum.dim_IntList, a, [-2], True), [-1], True)  # ‖a‖₁: max column sum
    z = op(aten.div.Tensor, op(aten.transpose.int, a, -1, -2), norm1)
    i7, i15, i13 = eyes
    for _ in range(iters):
        az = op(aten.matmul.default, a, z)
        t = op(aten.matmul.default, az, op(aten.sub.Tensor, i7, az))
        t = op(aten.matmul.default, az, op(aten.sub.Tensor, i15, t))
        z = op(aten.matmul.default, op(aten.mul.Tensor, z, 0.25), op(aten.sub.Tensor, i13, t))
    zbv = op(aten.matmul.default, z, bv)
    qg = op(aten.slice.Tensor, q, -2, e, n) if e else q
    out = attend(qg, kl, zbv)
    if e:
        out = op(aten.cat.default, [attend(op(aten.slice.Tensor, q, -2, 0, e), k, v), out], -2)
    return out


def _eager(target, *args, **kwargs):
    return target(*args, **kwargs)


def _eyes(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    eye = torch.eye(m, dtype=torch.float32)
    return 7 * eye, 15 * eye, 13 * eye


def relative_error(q, k, v, scale: float, layout: Layout, iters: int) -> tuple[float, float]:
    """``(Σ‖ŷ−y‖², Σ‖y‖²)`` of the approximation against exact softmax attention, on tensors."""
    with torch.no_grad():
        y = aten.scaled_dot_product_attention.default(q, k, v, None, 0.0, False, scale=scale)
        got = nystrom(_eager, q, k, v, scale=scale, layout=layout, iters=iters, eyes=_eyes(layout.landmarks),
                      explicit=False)  # fmt: skip
        return float((got.double() - y.double()).pow(2).sum()), float(y.double().pow(2).sum())


class LandmarkAttention(Pass):
    name = "landmark_attention"
    summary = "Nyström attention over m landmark means with an fp32 iterative pseudo-inverse (approximate)"
    exact = False
    uses_data = True
    Options = Options

    def run(self, graph) -> PassResult:
        o = self.options
        ed = Editor(graph)
        grids = conv_grids(ed.graph)
        wanted = {n.strip() for n in o.nodes.split(",") if n.strip()}
        details = {"sites": [], "data": self.data_origin}
        todo = []
        for site in find_attention(ed.graph):
            entry = {"node": site.node.name, "source": source_path(site.node) or ""}
            found = site.reason or self._layouts(site, grids)
            if isinstance(found, str) or (wanted and site.node.name not in wanted):
                reason = found if isinstance(found, str) else "not chosen (nodes option)"
                ed.reject(site.node, reason)
                details["sites"].append({**entry, "applied": False, "reason": reason})
                continue
            todo.append((site, entry, found))
        tuned = self._tune(graph, ed, todo)
        for site, entry, _ in todo:
            layout, errors = tuned[site.node.name]
            qs, vs = shape(site.q), shape(site.v)
            info = {
                "queries": qs[-2], "keys": site.keys, "features": qs[-1], "value_features": vs[-1],
                "landmarks": layout.landmarks, "extra": layout.extra, "pinv_iters": o.pinv_iters,
                "layout": layout.describe(),
            }  # fmt: skip
            if errors is not None:
                info["error"] = errors[layout.m]
                info["errors"] = {str(m): round(err, 6) for m, err in errors.items()}
                info["measured_on"] = self.data_origin
            else:
                info["error"] = None
                info["measured_on"] = "not measured (the driver's dry run)"
            if self.predicted_speedup(info) <= 1.0:
                reason = f"{layout.landmarks} landmarks predict no gain over {site.keys} keys"
                ed.reject(site.node, reason)
                details["sites"].append({**entry, "applied": False, "reason": reason})
                continue
            self._rewrite(ed, site, layout)
            err = "" if info["error"] is None else f", relative error {info['error']:.4f}"
            ed.match(site.node, note=f"{site.keys} keys → {info['layout']}{err}")
            details["sites"].append({**entry, "applied": True, **info})
        return self.result(graph, ed, **details)

    @staticmethod
    def predicted_speedup(site: dict) -> float:
        """The attention products' predicted speed-up at one applied site: exact MACs over Nyström's."""
        n, keys, d, dv = site["queries"], site["keys"], site["features"], site["value_features"]
        macs = nystrom_macs(n, keys, d, dv, site["landmarks"], site["extra"], site["pinv_iters"])
        return n * keys * (d + dv) / macs

    def _layouts(self, site: Site, grids) -> list[Layout] | str:
        """The landmark layouts to choose from (one when ``landmarks`` is fixed), or why none."""
        o = self.options
        if o.method != "nystrom":
            return f"method {o.method!r} is not built (only 'nystrom')"
        if site.bias is not None:
            return "an additive score bias or float mask: Nyström cannot carry it"
        keys, queries = site.keys, shape(site.q)[-2]
        if keys is None:
            return "the key count is unknown"
        if keys < o.min_keys:
            return f"{keys} keys < min_keys {o.min_keys}"
        if queries != keys:
            return f"{queries} queries and {keys} keys: one landmark set must pair them"
        if sum(d < 0 for d in shape(site.k)[:-2]) > 1 or sum(d < 0 for d in shape(site.q)[:-2]) > 1:
            return "more than one batch dimension is dynamic"
        if o.pinv_iters < 1:
            return f"pinv_iters {o.pinv_iters} < 1"
        wanted = [o.landmarks] if o.landmarks > 0 else list(CANDIDATES)
        found = token_grid(keys, grids)
        out: dict[int, Layout] = {}
        for m in wanted:
            if isinstance(found, str):
                if keys % m == 0 and m < keys:
                    out.setdefault(m, Layout(0, m))
            else:
                lay = grid_layout(*found, m)
                if lay.m < found[1] * found[2]:
                    out.setdefault(lay.m, lay)
        if o.landmarks <= 0:  # auto: only the counts that can pay
            d, dv = shape(site.q)[-1], shape(site.v)[-1]
            exact = queries * keys * (d + dv)
            out = {
                m: lay
                for m, lay in out.items()
                if 4 * lay.landmarks <= keys
                and nystrom_macs(queries, keys, d, dv, lay.landmarks, lay.extra, o.pinv_iters) < exact
            }
        if not out:
            if isinstance(found, str):
                return f"{keys} tokens divide into none of {wanted} landmark segments, and {found}"
            return f"no landmark count of {wanted} fits the {found[1]}x{found[2]} grid under {keys} // 4 and pays"
        return list(out.values())

    def _tune(self, graph, ed: Editor, todo) -> dict[str, tuple[Layout, dict[int, float] | None]]:
        """Per site: the chosen layout and the relative error of each candidate (None: not measured)."""
        o = self.options
        out = {}
        if self.dry_run:
            for site, _, layouts in todo:
                out[site.node.name] = (min(layouts, key=lambda lay: abs(lay.m - PROVISIONAL)), None)
            return out
        original = {new: old for old, new in ed._renamed.items()}
        names = {original.get(t.name, t.name) for site, _, _ in todo for t in (site.q, site.k, site.v)}
        samples = (self.data or [tuple(graph.example_inputs)])[: max(1, o.calib_samples)]
        acts = capture(graph, names, samples) if todo else {}
        for site, _, layouts in todo:
            q, k, v = (acts[original.get(t.name, t.name)] for t in (site.q, site.k, site.v))
            scale = site.scale if site.scale is not None else shape(site.q)[-1] ** -0.5
            errors = {}
            for lay in layouts:
                num = den = 0.0
                for qi, ki, vi in zip(q, k, v):
                    a, b = relative_error(qi, ki, vi, scale, lay, o.pinv_iters)
                    num, den = num + a, den + b
                errors[lay.m] = math.sqrt(num / den) if den > 0 else 0.0
            bound = max(o.max_error, SLACK * min(errors.values()))
            out[site.node.name] = (
                min((lay for lay in layouts if errors[lay.m] <= bound), key=lambda lay: lay.m),
                errors,
            )
        return out

    def _rewrite(self, ed: Editor, site: Site, layout: Layout) -> None:
        o, node = self.options, site.node
        scale = site.scale if site.scale is not None else shape(site.q)[-1] ** -0.5

        def call(target, *args, **kwargs):
            return ed.call(target, args, kwargs, before=node, like=node)

        eyes = [ed.add_param(f"{node.name}_nystrom_eye{c}", t) for c, t in zip((7, 15, 13), _eyes(layout.landmarks))]
        new = nystrom(call, site.q, site.k, site.v, scale=scale, layout=layout, iters=o.pinv_iters, eyes=eyes,
                      explicit=site.form == "explicit")  # fmt: skip
        ed.replace(node, new)
        if site.form == "sdpa":
            ed.graph.erase_node(node)  # dead, but dead-code removal keeps SDPA (dropout makes it "impure")
