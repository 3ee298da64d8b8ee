""" "Only where it pays": which attention sites an attention approximation may rewrite.

One driver for every site pass (a pass whose ``Options`` has ``nodes`` and ``min_share`` and whose
class has ``predicted_speedup(site)``, e.g. ``kv_downsample``).  For each attention it matched:

1. its **share** of end-to-end time on the target: the exact twin's per-op profile from the
   runtime's own profiler (ops whose source module is the attention's module: the score and value
   products, softmax, their reshapes; not the q/k/v projections), or, where the target cannot
   run here, its share of the graph's MACs (labelled "predicted from MACs");
2. its **predicted gain** end to end: ``1 / (1 − share·(1 − 1/g))`` with ``g`` the pass's predicted
   speed-up of that attention (keys before/after for kv_downsample);
3. **declined** when the share is below ``min_share`` (default 0.10); the sites left are judged
   together: all are declined when their combined predicted gain is below the contract's
   ``min_speedup`` (the end-to-end gain is what it asks for); ``min_speedup = 0`` forces every
   matched site.

The chosen sites are rewritten (the pass's ``nodes`` option), compiled, and judged by the contract
(accuracy gate, then the end-to-end speed gate).  Afterwards each applied site gets its **measured**
speed-up (its ops' time in the exact twin's profile over the approximate artifact's) and its **own
output error**: the model's outputs with only that site rewritten, against the exact IR, on a few
samples of the contract's data.  ``manifest.approximation.sites`` lists every site.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from edgeformer import ir
from edgeformer.passes import PassManager, Pipeline, get_pass

log = logging.getLogger(__name__)

PROFILE_RUNS = 10
ERROR_SAMPLES = 8


@dataclass
class SiteDecision:
    pass_name: str
    node: str
    source: str
    applied: bool
    reason: str = ""
    share: float | None = None
    share_from: str = ""  # "profile" (the target's profiler) | "macs" (predicted)
    predicted_speedup: float | None = None  # end to end, from the share
    measured_speedup: float | None = None  # the site's ops, exact twin / approximate artifact
    cosine: float | None = None  # model outputs with only this site rewritten, vs exact
    max_abs_error: float | None = None
    details: dict = field(default_factory=dict)  # the pass's own record (key counts, …)

    def to_dict(self) -> dict:
        return asdict(self)


def site_passes(pipeline: Pipeline) -> list[str]:
    """The pipeline's passes the driver chooses sites for."""
    out = []
    for name in pipeline.names:
        cls = get_pass(name)
        fields = getattr(cls.Options, "__dataclass_fields__", {})
        if not cls.exact and "nodes" in fields and hasattr(cls, "predicted_speedup"):
            out.append(name)
    return out


def matched_sites(graph: ir.Graph, pipeline: Pipeline, name: str, data=None, data_origin: str = "") -> list[dict]:
    """Every attention the pass sees in ``graph`` (the IR after the passes before it), with its own
    verdict, from a dry run of the pass alone (``data``: what a fitting pass fits on)."""
    options = {k: v for k, v in pipeline.options.get(name, {}).items() if k != "nodes"}
    manager = PassManager(
        [name], options={name: options}, check=False, data=data, data_origin=data_origin, dry_run=True
    )
    _, (record,) = manager.run(graph)
    return list(record.details.get("sites", []))


def shares_from_profile(op_profile, field: str = "share") -> dict[str, float]:
    """Source module → summed ``field`` ("share" of end-to-end time, or "time_ms") of its ops."""
    out: dict[str, float] = defaultdict(float)
    for op in op_profile.ops:
        if op.source:
            out[op.source] += getattr(op, field)
    return dict(out)


def shares_from_macs(graph: ir.Graph) -> dict[str, float]:
    """Source module → share of the graph's MACs (the node's own module, not its children)."""
    summary = graph.summary()
    total = summary.total_macs or 1
    shares: dict[str, float] = defaultdict(float)
    for node in summary.nodes:
        if node.macs and node.source:
            shares[node.source] += node.macs / total
    return dict(shares)


def decide(
    name: str, sites: Sequence[dict], shares: dict[str, float], share_from: str, min_share: float, min_speedup: float
) -> list[SiteDecision]:
    """Per site: declined below ``min_share``; then the sites left are judged together, since the
    end-to-end gain is what ``min_speedup`` asks of: declined all when their combined predicted gain
    ``1 / (1 − Σ shareᵢ·(1 − 1/gᵢ))`` is below it.  ``min_speedup = 0`` forces every matched site."""
    cls = get_pass(name)
    out, saved = [], 0.0
    for s in sites:
        d = SiteDecision(name, s["node"], s.get("source", ""), False, details=s)
        out.append(d)
        if not s.get("applied"):
            d.reason = s.get("reason", "not matched")
            continue
        share = shares.get(d.source)
        g = cls.predicted_speedup(s)
        if share is not None:
            d.share, d.share_from = round(share, 4), share_from
            d.predicted_speedup = round(1.0 / max(1e-9, 1.0 - share * (1.0 - 1.0 / g)), 4)
        if min_speedup <= 0:
            d.applied, d.reason = True, "forced (min_speedup = 0)"
        elif share is None:
            d.reason = f"no time measured for its module {d.source or '(unknown)'}: its share is unknown"
        elif share < min_share:
            d.reason = f"its share of end-to-end time is {share:.1%} < min_share {min_share:.0%}"
        else:
            d.applied = True
            saved += share * (1.0 - 1.0 / g)
    if min_speedup > 0 and any(d.applied for d in out):
        together = 1.0 / max(1e-9, 1.0 - saved)
        chosen = [d for d in out if d.applied]
        for d in chosen:
            if together < min_speedup:
                d.applied = False
                d.reason = (
                    f"the {len(chosen)} sites above min_share together predict {together:.3f}x end to end "
                    f"< min_speedup {min_speedup:g}x"
                )
            else:
                d.reason = f"share {d.share:.1%}; with the other chosen sites predicted {together:.3f}x end to end"
    return out


def with_nodes(pipeline: Pipeline, decisions: Sequence[SiteDecision]) -> Pipeline:
    """``pipeline`` with each site pass told its chosen nodes; a pass with none chosen is dropped."""
    chosen: dict[str, list[str]] = defaultdict(list)
    for d in decisions:
        if d.applied:
            chosen[d.pass_name].append(d.node)
    names = tuple(n for n in pipeline.names if n in chosen or n not in {d.pass_name for d in decisions})
    options = {k: dict(v) for k, v in pipeline.options.items() if k in names}
    for name, nodes in chosen.items():
        options[name] = {**options.get(name, {}), "nodes": ",".join(nodes)}
    return Pipeline(names, options)


def site_errors(
    graph: ir.Graph,
    pipeline: Pipeline,
    decisions: Sequence[SiteDecision],
    samples: Sequence[Sequence[np.ndarray]],
    data=None,
    data_origin: str = "",
) -> None:
    """Each applied site's own output error: the pipeline with only that site rewritten, run in
    PyTorch on ``samples``, against the exact IR (``graph``, before passes)."""
    ref_module = graph.program.module()
    inputs = [[torch.from_numpy(np.asarray(a)).to(t.dtype) for a, t in zip(s, graph.example_inputs)] for s in samples]
    with torch.no_grad():
        ref = [_flat(ref_module(*x)) for x in inputs]
    for d in decisions:
        if not d.applied:
            continue
        one = Pipeline(
            pipeline.names,
            {**pipeline.options, d.pass_name: {**pipeline.options.get(d.pass_name, {}), "nodes": d.node}},
        )
        new, _ = one.manager(check=False, data=data, data_origin=data_origin).run(graph)
        module = new.program.module()
        with torch.no_grad():
            got = [_flat(module(*x)) for x in inputs]
        a, b = torch.cat(ref), torch.cat(got)
        d.cosine = round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 6)
        d.max_abs_error = float((a - b).abs().max())


def _flat(out) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return torch.cat([t.double().flatten() for t in leaves])


def measured_speedups(decisions: Sequence[SiteDecision], exact_profile, approx_profile) -> None:
    before, after = shares_from_profile(exact_profile, "time_ms"), shares_from_profile(approx_profile, "time_ms")
    for d in decisions:
        if d.applied and before.get(d.source) and after.get(d.source):
            d.measured_speedup = round(before[d.source] / after[d.source], 3)
