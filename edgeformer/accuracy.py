"""The approximation contract: what an approximate artifact must show before it ships.

An approximation is anything that does not keep fp32 outputs within 1e-5: a lower precision
(int8, fp16, bf16, Core ML weight compression) or, later, an approximating pass.  The compiler
(``compiler.compile``) builds the exact fp32 artifact of the same model beside the approximate
one and calls the pieces here:

- :func:`reference_outputs`: the exact fp32 graph of the same model run on the same data (the
  reference every figure is taken against);
- :func:`accuracy_block`: on ``--eval`` data (labels) reference and approximate top-1 with Wilson
  95 % intervals, a paired exact McNemar test (one image of the digits test set is 0.28 points, so
  a 1-2 image difference is noise), top-1 agreement, logits cosine, max/mean abs error.  Without
  labels (``--calib`` only) only the output errors and agreement, never a number called
  "accuracy".  On random weights agreement is meaningless (untrained logits are near-ties): the
  block says so instead of printing it;
- :func:`accuracy_gate`: ``max_accuracy_drop`` top-1 points with labels, else ``max_error`` on
  1 − cosine;
- :func:`sensitivity`: each quantizable layer's effect on the outputs when it alone is simulated in
  int8 (per-channel symmetric weights, per-tensor asymmetric activations, ranges from the
  calibration set) in PyTorch: the order in which the accuracy restore returns layers to float;
- :func:`speed_gate`: the approximate and the exact artifact timed on this machine in alternating
  blocks (``latency.alternate``: ORT's spinning pools corrupt call-by-call interleaving on 2 cores);
  below ``min_speedup`` the exact artifact ships.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from edgeformer import ir
from edgeformer.data import Dataset
from edgeformer.latency import LatencyStats, alternate
from edgeformer.numerics import run_in_precision
from edgeformer.targets import Runner, quantizable_layers

# ------------------------------------------------------------------------------------ statistics


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (in [0, 1]); sound at 0 or n successes."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class Top1:
    correct: int
    n: int
    rate: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, hits: np.ndarray) -> Top1:
        c, n = int(hits.sum()), int(hits.size)
        return cls(c, n, c / n if n else 0.0, wilson_interval(c, n))

    def points(self) -> str:
        lo, hi = self.ci95
        return f"{100 * self.rate:.2f} % ({self.correct}/{self.n}; 95 % CI {100 * lo:.1f}-{100 * hi:.1f})"


@dataclass
class AccuracyBlock:
    """The approximate outputs against the exact fp32 reference on the same data."""

    data: dict  # Dataset.to_dict(): name, source, role, sha256, samples, labelled, note
    samples: int
    weights: str  # the model's weights_origin: "checkpoint", "module", "pt2", "random"
    measured: str  # "runtime" (the artifact ran here), "emulated", or "not measured: why"
    cosine: float | None = None  # of all outputs, flattened
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    has_nan: bool = False
    agreement: dict | None = None  # {"count", "n", "rate"}: same top-1 as the reference
    reference_top1: Top1 | None = None  # with labels only
    approx_top1: Top1 | None = None
    accuracy_drop_points: float | None = None  # reference − approximate, in top-1 points
    mcnemar: dict | None = None  # {"b": ref right/approx wrong, "c": the reverse, "p"}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccuracyBlock:
        d = dict(d)
        for k in ("reference_top1", "approx_top1"):
            if d.get(k):
                d[k] = Top1(**{**d[k], "ci95": tuple(d[k]["ci95"])})
        return cls(**d)


RANDOM_WEIGHTS_NOTE = (
    "random weights: top-1 agreement and accuracy are not meaningful (untrained logits are near-ties); "
    "only the output errors are"
)


def _logits(outputs: list[np.ndarray]) -> np.ndarray | None:
    """The first output as (N, classes), or None when it is not a classifier's logits."""
    first = outputs[0]
    return first.reshape(first.shape[0], -1) if first.ndim >= 2 and first.shape[-1] > 1 else None


def accuracy_block(
    data: Dataset, reference: list[np.ndarray], approx: list[np.ndarray], *, weights: str, measured: str = "runtime"
) -> AccuracyBlock:
    """Compare ``approx`` with ``reference`` (per output, N samples stacked) on ``data``."""
    ref_flat = np.concatenate([r.reshape(-1).astype(np.float64) for r in reference])
    out_flat = np.concatenate([a.reshape(-1).astype(np.float64) for a in approx])
    finite = bool(np.isfinite(out_flat).all())
    err = np.abs(out_flat - ref_flat) if finite else np.array([np.inf])
    denom = float(np.linalg.norm(ref_flat) * np.linalg.norm(out_flat))
    cos = float(ref_flat @ out_flat / denom) if finite and denom > 0 else None
    block = AccuracyBlock(
        data=data.to_dict(),
        samples=len(data),
        weights=weights,
        measured=measured,
        cosine=cos,
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        has_nan=not finite,
    )
    ref_logits, out_logits = _logits(reference), _logits(approx)
    if ref_logits is None:
        block.notes.append("the first output is not (N, classes) logits: no top-1 figures")
        return block
    if weights == "random":
        block.notes.append(RANDOM_WEIGHTS_NOTE)
        return block
    ref_top, out_top = ref_logits.argmax(1), out_logits.argmax(1)
    same = ref_top == out_top
    block.agreement = {"count": int(same.sum()), "n": int(same.size), "rate": float(same.mean())}
    if data.labels is None:
        block.notes.append(f"{data.name}: no labels, so no accuracy; agreement is with the exact model")
        return block
    labels = np.asarray(data.labels)
    ref_hit, out_hit = ref_top == labels, out_top == labels
    block.reference_top1, block.approx_top1 = Top1.of(ref_hit), Top1.of(out_hit)
    block.accuracy_drop_points = 100 * (block.reference_top1.rate - block.approx_top1.rate)
    b, c = int((ref_hit & ~out_hit).sum()), int((~ref_hit & out_hit).sum())
    block.mcnemar = {"b": b, "c": c, "p": mcnemar_exact(b, c)}
    return block


# -------------------------------------------------------------------------------------- the gates


@dataclass
class Gate:
    name: str  # "accuracy" | "error" | "speed"
    metric: str  # what was compared, in words
    value: float | None
    limit: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_gate(block: AccuracyBlock, *, max_accuracy_drop: float, max_error: float) -> Gate:
    """Top-1 drop in points with labels (and trained weights), else 1 − cosine of the outputs."""
    if block.has_nan:
        return Gate("error", "NaN/inf in the approximate outputs", None, 0.0, False, "the outputs are not finite")
    if block.accuracy_drop_points is not None:
        drop = block.accuracy_drop_points
        ok = drop <= max_accuracy_drop + 1e-9
        detail = (
            f"top-1 {block.approx_top1.points()} vs exact {block.reference_top1.points()}, "
            f"McNemar p = {block.mcnemar['p']:.3g}"
        )
        return Gate("accuracy", "top-1 drop (points)", drop, max_accuracy_drop, ok, detail)
    err = 1.0 - (block.cosine if block.cosine is not None else -1.0)
    return Gate("error", "1 - cosine of the outputs", err, max_error, err <= max_error, f"cosine {block.cosine}")


@dataclass
class SpeedGate:
    measured: bool
    exact_median_ms: float | None = None
    approx_median_ms: float | None = None
    exact_p90_ms: float | None = None
    approx_p90_ms: float | None = None
    speedup: float | None = None  # exact / approximate median
    min_speedup: float = 1.1
    passed: bool = True
    forced: bool = False
    method: str = ""  # how the two were timed
    note: str = ""
    # the runtime's own default float precisions (OpenVINO bf16), timed in the same run: precision ->
    # {median_ms, p90_ms, approx_speedup (its median / the approximation's)}; informative, not a gate
    runtime_defaults: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def speed_gate(
    exact: Runner,
    approx: Runner,
    inputs: Sequence[np.ndarray],
    *,
    min_speedup: float,
    min_runs: int = 40,
    min_seconds: float = 1.0,
    blocks: int = 8,
    others: Mapping[str, Runner] | None = None,
) -> SpeedGate:
    """Time both artifacts on this machine in alternating blocks; pass at ``min_speedup``.

    ``others`` (name -> runner, e.g. OpenVINO's bf16 default) are timed in the same blocks and
    reported in ``runtime_defaults``; they do not decide the gate."""
    inputs = list(inputs)
    others = dict(others or {})
    candidates = {"exact": lambda: exact.run(inputs), "approx": lambda: approx.run(inputs)}
    for name, runner in others.items():
        candidates[f"other:{name}"] = lambda r=runner: r.run(inputs)
    samples = alternate(candidates, min_runs=min_runs, min_seconds=min_seconds, blocks=blocks)
    e, a = LatencyStats.from_samples(samples["exact"]), LatencyStats.from_samples(samples["approx"])
    speedup = e.median_ms / a.median_ms if a.median_ms > 0 else float("inf")
    defaults = {}
    for name in others:
        o = LatencyStats.from_samples(samples[f"other:{name}"])
        defaults[name] = {
            "median_ms": round(o.median_ms, 4),
            "p90_ms": round(o.p90_ms, 4),
            "approx_speedup": round(o.median_ms / a.median_ms, 3) if a.median_ms > 0 else None,
        }
    return SpeedGate(
        measured=True,
        exact_median_ms=round(e.median_ms, 4),
        approx_median_ms=round(a.median_ms, 4),
        exact_p90_ms=round(e.p90_ms, 4),
        approx_p90_ms=round(a.p90_ms, 4),
        speedup=round(speedup, 3),
        min_speedup=min_speedup,
        passed=speedup >= min_speedup,
        method=f"alternating blocks ({blocks}+ per side, one untimed call each), this machine",
        runtime_defaults=defaults,
    )


# ------------------------------------------------------------------------------ reference and runs


def run_dataset(run: Callable[[list[np.ndarray]], list[np.ndarray]], data: Dataset, batch: int) -> list[np.ndarray]:
    """``run`` over ``data`` in the model's batch size; outputs stacked per output (padding dropped)."""
    per_output: list[list[np.ndarray]] = []
    for arrays, real in data.batches(batch):
        outs = run(arrays)
        if not per_output:
            per_output = [[] for _ in outs]
        for acc, o in zip(per_output, outs):
            acc.append(np.asarray(o)[:real])
    return [np.concatenate(acc) for acc in per_output]


def reference_outputs(graph: ir.Graph, data: Dataset, batch: int) -> list[np.ndarray]:
    """The exact fp32 graph on ``data`` (in PyTorch)."""

    call = ir.runner(graph)

    def run(arrays):
        return [t.detach().numpy() for t in call([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])]

    return run_dataset(run, data, batch)


def emulated_outputs(graph: ir.Graph, data: Dataset, batch: int, precision: str) -> list[np.ndarray]:
    """``graph`` on ``data`` with every tensor rounded to ``precision`` after every op (numerics.py):
    the figures for an fp16 artifact whose runtime is not on this machine."""

    module = graph.program.module()

    def run(arrays):
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        return run_in_precision(graph, tensors, precision, module=module).outputs

    return run_dataset(run, data, batch)


# ------------------------------------------------------------------------------------ sensitivity


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (axis 0), as every target's quantizer does it."""
    if w.ndim < 2:
        return w
    amax = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
    scale = (amax / 127).reshape(-1, *([1] * (w.ndim - 1)))
    return (w / scale).round().clamp(-127, 127) * scale


def _fake_quant_act(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric uint8 per tensor over the calibrated [lo, hi] (which includes 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


class _Sim(torch.fx.Interpreter):
    """Runs the IR recording the input ranges of quantizable layers, or with one layer fake-quantized."""

    def __init__(self, module, layers: set[str]):
        super().__init__(module)
        self.layers = layers
        self.ranges: dict[str, list[tuple[float, float]]] = {}
        self.quantize: str | None = None

    def run_node(self, n):
        if n.name not in self.layers:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        args = list(args)
        tensors = [i for i, a in enumerate(args[:2]) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if self.quantize is None:  # calibrate: running min/max of each tensor input
            seen = self.ranges.setdefault(n.name, [(math.inf, -math.inf)] * len(tensors))
            for j, i in enumerate(tensors):
                lo, hi = seen[j]
                seen[j] = (min(lo, float(args[i].min())), max(hi, float(args[i].max())))
        elif n.name == self.quantize:
            for j, i in enumerate(tensors):
                if i == 1 and n.args[1].op == "get_attr":  # a weight (matmul's second operand is not)
                    args[i] = _fake_quant_weight(args[i])
                else:
                    args[i] = _fake_quant_act(args[i], *self.ranges[n.name][j])
        return getattr(self, n.op)(n.target, tuple(args), kwargs)


def sensitivity(
    graph: ir.Graph, samples: Sequence[Sequence[np.ndarray]], max_samples: int = 32
) -> list[tuple[str, float]]:
    """Quantizable layers, most sensitive first: mean 1 − cosine of the outputs when that layer
    alone runs in simulated int8 (calibrated on ``samples``), in PyTorch."""
    layers = quantizable_layers(graph)
    if not layers:
        return []
    sim = _Sim(graph.program.module(), set(layers))
    inputs = [[torch.from_numpy(np.ascontiguousarray(a)) for a in s] for s in list(samples)[:max_samples]]
    with torch.no_grad():
        refs = [[o.detach().reshape(-1).double() for o in _flat(sim.run(*x))] for x in inputs]
        scores = []
        for layer in layers:
            sim.quantize = layer
            total = 0.0
            for x, ref in zip(inputs, refs):
                out = [o.detach().reshape(-1).double() for o in _flat(sim.run(*x))]
                r, o = torch.cat(ref), torch.cat(out)
                total += float(1 - torch.nn.functional.cosine_similarity(r, o, dim=0))
            scores.append((layer, total / len(inputs)))
        sim.quantize = None
    return sorted(scores, key=lambda s: -s[1])


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
