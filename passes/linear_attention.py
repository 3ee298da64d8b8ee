"""Replace softmax attention by linear attention: ``φ(q)(φ(k)ᵀv) / (φ(q)·Σφ(k))`` (approximate).

Before (a ViT block)::

    sdpa = aten.scaled_dot_product_attention(q, k, v)          # (1, 3, 257, 16): N² scores per head

After (``order`` linear, chosen per node by cost)::

    fq, fk = φ(q·√scale), φ(k·√scale)                          # (…, N, f) feature maps
    kv     = aten.matmul(fkᵀ, v)                               # (…, f, e): d·f per key
    num    = aten.matmul(fq, kv)                               # (…, N, e)
    den    = aten.matmul(fq, aten.sum(fk, -2, keepdim)ᵀ)       # (…, N, 1)
    out    = num / (den + eps)

Feature maps (``feature_map``):

* ``relu``: ``relu(x)`` (SLAB's kernel).  Degree-1 homogeneous, so the scale drops out.
* ``elu1``: ``elu(x) + 1`` (Katharopoulos et al. 2020).
* ``hedgehog``: ``[softmax(xW + b), softmax(−(xW + b))]`` over features (Hedgehog, Zhang et al.
  ICLR 2024: spiky, monotone weights), one ``W ∈ R^{d×d}, b`` per head, initialised to the
  identity and **fitted per node** on cached activations (``fit_steps`` Adam steps): the linear
  attention's output is regressed by MSE onto the softmax attention's output for the same q, k, v
  (attention transfer, LoLCATs' step 1: a local regression, nothing else in the network moves).
  The activations come from ``--calib`` (``Pass.uses_data``), else from the example inputs, which
  are random and fit worse; ``details`` says which.

Evaluation order, per node (SLAB's rule): the linear order costs ``N·f·e + M·f·e`` multiplies, the
quadratic order ``(φ(q)·φ(k)ᵀ)·v`` costs ``N·M·(f + e)``; the cheaper is emitted (``order`` auto),
so short sequences keep the quadratic form, which is still softmax-free.

Recovery (``recover_steps`` > 0): after every chosen node is rewritten, the whole rewritten model
is distilled against the model before this pass on the same inputs, logits to logits (KL at
temperature ``recover_temperature``; Adam at a cosine-decayed ``recover_lr`` on seeded minibatches
of ``recover_batch`` input tuples, vmapped since the exported graph's batch is static), with every
floating parameter trainable; the trained values are
written back into the program.  The record gives the steps, samples and seconds.  Without recovery
linear attention rarely matches softmax on a trained model (Hedgehog's analysis); the contract's
accuracy block says by how much.

Must not fire on: a causal or boolean mask, dropout, grouped-query heads (:mod:`._attention`); an
additive score bias (relative-position tables, EfficientFormer's attention biases: a kernel cannot
carry them) unless ``drop_bias``; fewer keys than ``min_keys``.

Options: ``feature_map`` ("relu"), ``fit_steps`` (200, hedgehog), ``fit_lr`` (0.01), ``fit_samples``
(32: input tuples whose activations the fit sees), ``order``
("auto" | "linear" | "quadratic"), ``eps`` (1e-6), ``drop_bias`` (False), ``recover_steps`` (0),
``recover_lr`` (1e-3), ``recover_batch`` (32), ``recover_temperature`` (2.0), ``min_keys`` (0),
``nodes`` and ``min_share`` (the driver's, as for ``kv_downsample``).

``details["sites"]``: node, source, applied or why not, N, M, features, the order, and for fitted
maps the per-node relative output error before and after the fit on the fitting data.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeformer.errors import UserError
from edgeformer.ir import Graph, source_path, warnings_hidden

from ._attention import Site, capture, find_attention
from ._graph import Editor, shape
from .base import Pass, PassResult

aten = torch.ops.aten

FEATURE_MAPS = ("relu", "elu1", "hedgehog")
ORDERS = ("auto", "linear", "quadratic")


@dataclass
class Options:
    feature_map: str = "relu"
    fit_steps: int = 200
    fit_lr: float = 0.01
    fit_samples: int = 32
    order: str = "auto"
    eps: float = 1e-6
    drop_bias: bool = False
    recover_steps: int = 0
    recover_lr: float = 1e-3
    recover_batch: int = 32
    recover_temperature: float = 2.0
    min_keys: int = 0
    nodes: str = ""
    min_share: float = 0.10


def _features(fmap: str, d: int) -> int:
    return 2 * d if fmap == "hedgehog" else d


def phi(fmap: str, x: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
    """The feature map in PyTorch (fitting and tests); the graph gets the same ops."""
    if fmap == "relu":
        return F.relu(x)
    if fmap == "elu1":
        return F.elu(x) + 1.0
    z = x @ w + b
    return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], -1)


def linear_attention(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    kv = fk.transpose(-1, -2) @ v
    den = fq @ fk.sum(-2, keepdim=True).transpose(-1, -2)
    return (fq @ kv) / (den + eps)


def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


class LinearAttention(Pass):
    name = "linear_attention"
    summary = "Replace softmax attention by kernel (linear) attention, φ(q)(φ(k)ᵀv)/(φ(q)·Σφ(k)) (approximate)"
    exact = False
    uses_data = True
    Options = Options

    def run(self, graph: Graph) -> PassResult:
        o = self.options
        if o.feature_map not in FEATURE_MAPS:
            raise UserError(
                f"linear_attention.feature_map {o.feature_map!r} is not one of {', '.join(FEATURE_MAPS)}",
                "set --pass-option linear_attention.feature_map=relu|elu1|hedgehog",
            )
        if o.order not in ORDERS:
            raise UserError(
                f"linear_attention.order {o.order!r} is not one of {', '.join(ORDERS)}",
                "set --pass-option linear_attention.order=auto|linear|quadratic",
            )
        ed = Editor(graph)
        wanted = {n.strip() for n in o.nodes.split(",") if n.strip()}
        details: dict = {"sites": [], "feature_map": o.feature_map}
        chosen: list[tuple[Site, dict]] = []
        for site in find_attention(ed.graph):
            entry = {"node": site.node.name, "source": source_path(site.node) or ""}
            reason = site.reason or self._reason(site)
            if reason is None and wanted and site.node.name not in wanted:
                reason = "not chosen (nodes option)"
            if reason is not None:
                ed.reject(site.node, reason)
                details["sites"].append({**entry, "applied": False, "reason": reason})
                continue
            qs, ks, vs = shape(site.q), shape(site.k), shape(site.v)
            entry.update(applied=True, queries=qs[-2], keys=ks[-2], dim=qs[-1], value_dim=vs[-1])
            entry["features"] = _features(o.feature_map, qs[-1])
            entry["order"] = self._order(entry)
            details["sites"].append(entry)
            chosen.append((site, entry))
        fitted = {}
        if chosen and o.feature_map == "hedgehog":
            fitted = self._fit(graph, chosen, details)
        for site, entry in chosen:
            self._rewrite(ed, site, entry, fitted.get(site.node.name))
            ed.match(site.node, note=f"{o.feature_map} map, {entry['order']} order, {entry['keys']} keys")
        result = self.result(graph, ed, **details)
        if chosen and o.recover_steps > 0 and not self.dry_run:
            result.graph = self._recover(graph, result.graph, details)
            result.details["recovery"] = details["recovery"]
        return result

    @staticmethod
    def predicted_speedup(site: dict) -> float:
        """The attention products' predicted speed-up at one applied site: MACs of softmax attention
        (``N·M·(d + e)``) over the emitted order's."""
        n, m, d, e, f = site["queries"], site["keys"], site["dim"], site["value_dim"], site["features"]
        cost = n * f * e + m * f * e + n * f if site["order"] == "linear" else n * m * (f + e)
        return n * m * (d + e) / max(1, cost)

    def _reason(self, site: Site) -> str | None:
        o = self.options
        keys = site.keys
        if keys is None:
            return "the key count is unknown"
        if keys < o.min_keys:
            return f"{keys} keys < min_keys {o.min_keys}"
        if site.bias is not None and not o.drop_bias:
            return (
                "an additive score bias (position table or float mask): a kernel cannot carry it "
                "(drop_bias=True drops it)"
            )
        if o.feature_map == "hedgehog" and len(shape(site.q)) > 4:
            return "more than one head axis"
        return None

    def _order(self, entry: dict) -> str:
        if self.options.order != "auto":
            return self.options.order
        n, m, e, f = entry["queries"], entry["keys"], entry["value_dim"], entry["features"]
        return "linear" if n * f * e + m * f * e < n * m * (f + e) else "quadratic"

    # ------------------------------------------------------------------------------ fitting

    def _fit(self, graph: Graph, chosen, details) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per node ``(W, b)`` of the hedgehog map, fitted on activations of ``self.data``."""
        o = self.options
        names = {n.name for site, _ in chosen for n in (site.q, site.k, site.v)}
        details["fit_data"] = self.data_origin
        if self.dry_run:  # the driver only asks which sites match
            return {}
        t0 = time.perf_counter()
        data = (self.data or [tuple(graph.example_inputs)])[: max(1, o.fit_samples)]
        acts = capture(graph, names, data)
        out = {}
        for site, entry in chosen:
            q, k, v = (torch.cat(acts[n.name], 0).float() for n in (site.q, site.k, site.v))
            scale = site.scale if site.scale is not None else 1.0 / math.sqrt(q.shape[-1])
            target = _sdpa(q, k, v, scale)
            root = math.sqrt(scale)
            heads = q.shape[-3] if q.dim() >= 3 else 1
            d = q.shape[-1]
            w = torch.eye(d).repeat(heads, 1, 1) if q.dim() >= 3 else torch.eye(d)
            b = torch.zeros(w.shape[:-2] + (1, d))
            w, b = w.requires_grad_(), b.requires_grad_()
            opt = torch.optim.Adam([w, b], lr=o.fit_lr)

            def err(w=w, b=b, q=q, k=k, v=v, target=target, root=root):
                y = linear_attention(phi("hedgehog", q * root, w, b), phi("hedgehog", k * root, w, b), v, o.eps)
                return (y - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)

            with torch.no_grad():
                before = float(err()) ** 0.5
            with torch.enable_grad():
                for _ in range(o.fit_steps):
                    opt.zero_grad()
                    loss = err()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                after = float(err()) ** 0.5
            entry["fit_rel_error"] = {"identity_init": round(before, 5), "fitted": round(after, 5)}
            out[site.node.name] = (w.detach(), b.detach())
        details["fit_time_s"] = round(time.perf_counter() - t0, 3)
        return out

    # ------------------------------------------------------------------------------ rewrite

    def _rewrite(self, ed: Editor, site: Site, entry: dict, wb) -> None:
        o, node = self.options, site.node

        def call(target, *args, **kwargs):
            return ed.call(target, args, kwargs, before=node, like=node)

        d = shape(site.q)[-1]
        scale = site.scale if site.scale is not None else 1.0 / math.sqrt(d)
        if o.feature_map == "hedgehog" and wb is None:  # not fitted (the driver's dry run): identity
            heads = shape(site.q)[-3] if len(shape(site.q)) >= 3 else 1
            wb = (torch.eye(d).repeat(heads, 1, 1), torch.zeros(heads, 1, d))
        params = None
        if wb is not None:
            params = (ed.add_param(f"{node.name}_hedgehog_w", wb[0]), ed.add_param(f"{node.name}_hedgehog_b", wb[1]))

        def feature(x):
            if o.feature_map == "relu":
                return call(aten.relu.default, x)  # homogeneous: the scale drops out of the ratio
            x = call(aten.mul.Tensor, x, math.sqrt(scale))
            if o.feature_map == "elu1":
                return call(aten.add.Tensor, call(aten.elu.default, x), 1.0)
            z = call(aten.add.Tensor, call(aten.matmul.default, x, params[0]), params[1])
            pos = call(aten.softmax.int, z, -1)
            neg = call(aten.softmax.int, call(aten.neg.default, z), -1)
            return call(aten.cat.default, [pos, neg], -1)

        fq = feature(site.q)
        fk = fq if site.k is site.q else feature(site.k)
        fkt = call(aten.transpose.int, fk, -1, -2)
        if entry["order"] == "linear":
            kv = call(aten.matmul.default, fkt, site.v)  # (…, f, e)
            num = call(aten.matmul.default, fq, kv)
            ksum = call(aten.sum.dim_IntList, fkt, [-1], True)  # (…, f, 1)
            den = call(aten.matmul.default, fq, ksum)  # (…, N, 1)
        else:
            a = call(aten.matmul.default, fq, fkt)  # (…, N, M)
            num = call(aten.matmul.default, a, site.v)
            den = call(aten.sum.dim_IntList, a, [-1], True)
        new = call(aten.div.Tensor, num, call(aten.add.Tensor, den, o.eps))
        ed.replace(node, new)
        if site.form == "sdpa":
            ed.graph.erase_node(node)

    # ------------------------------------------------------------------------------ recovery

    def _recover(self, teacher: Graph, student: Graph, details) -> Graph:
        """Distil the rewritten model's outputs onto the model before this pass: ``recover_steps``
        Adam steps (cosine-decayed ``recover_lr``) on seeded minibatches of ``recover_batch`` input
        tuples of ``self.data``, batched with ``torch.func.vmap`` since the exported graph's batch
        is static."""
        o = self.options
        data = self.data or [tuple(teacher.example_inputs)]
        t0 = time.perf_counter()
        with warnings_hidden():  # the unlifted module shares the program's tensors: train a copy
            t_mod, s_mod = teacher.program.module(), copy.deepcopy(student.program.module())
        stacked = [torch.stack([x[j] for x in data]) for j in range(len(data[0]))]
        with torch.no_grad(), warnings_hidden():
            targets = _batched(t_mod, stacked, 64)
        params = [p for p in s_mod.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=o.recover_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, o.recover_steps))
        gen = torch.Generator().manual_seed(0)
        batch = max(1, min(o.recover_batch, len(data)))
        first = last = None
        with torch.enable_grad(), warnings_hidden():
            for _ in range(o.recover_steps):
                idx = torch.randperm(len(data), generator=gen)[:batch]
                outs = _leaves(torch.func.vmap(s_mod)(*(x[idx] for x in stacked)))
                loss = sum(
                    _distill(y.flatten(0, 1), t[idx].flatten(0, 1), o.recover_temperature)
                    for y, t in zip(outs, targets)
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                last = float(loss.detach())
                first = last if first is None else first
        trained = dict(s_mod.named_parameters())
        ep = student.program
        for key, value in list(ep.state_dict.items()):
            if key in trained and isinstance(value, torch.Tensor) and value.is_floating_point():
                ep.state_dict[key] = torch.nn.Parameter(trained[key].detach().clone(), requires_grad=False)
        details["recovery"] = {
            "steps": o.recover_steps,
            "batch": batch,
            "samples": len(data),
            "data": self.data_origin,
            "seconds": round(time.perf_counter() - t0, 2),
            "loss_first": first,
            "loss_last": last,
            "parameters": sum(p.numel() for p in params),
        }
        return student


def _batched(module, stacked: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """``module``'s outputs over the stacked input tuples (vmapped, ``size`` at a time), one
    tensor per output with the samples in front."""
    chunks = [
        _leaves(torch.func.vmap(module)(*(x[i : i + size] for x in stacked))) for i in range(0, len(stacked[0]), size)
    ]
    return [torch.cat(parts) for parts in zip(*chunks)]


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _distill(y: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    """KL between softened class distributions for logits (2-D, > 1 class), else MSE."""
    if y.dim() == 2 and y.shape[-1] > 1:
        return (
            F.kl_div(F.log_softmax(y / temp, -1), F.log_softmax(t / temp, -1), log_target=True, reduction="batchmean")
            * temp**2
        )
    return F.mse_loss(y, t)
