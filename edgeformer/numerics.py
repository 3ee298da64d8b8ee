"""Compare outputs with the PyTorch reference, and emulate a low precision on the CPU.

:func:`compare` is the final check of every compile.  Per output it passes when, element by element,

    |out − ref| ≤ atol + rtol·|ref| + scale_rtol·max|ref|

and the cosine is ≥ ``min_cosine`` with no NaN/inf.  ``max|ref|`` is that output's *scale*: an fp32
runtime that sums in another order differs from PyTorch by a few roundings of the values an
element is computed from, so an output of about 3e4 carries errors of ~1e-3 on every element,
those near 0 included, which no absolute ``atol`` of 1e-4 can accept and no elementwise ``rtol``
reaches (docs/measurement.md gives the rules and each shipped profile's values).

:func:`run_in_precision` runs the IR with every floating tensor rounded to fp16 after every node
(weights, inputs and activations), the check for fp16 artifacts this machine cannot run (Core ML
off macOS, an NPU): it names the first activation beyond fp16's range (±65504).
:func:`emulate` compares that run with the fp32 reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils import _pytree as pytree

from edgeformer.ir import Graph, op_name, source_path
from edgeformer.manifest import NumericsReport

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
_DTYPES = {"fp16": (torch.float16, "float16", FP16_MAX)}
EMULATED_PRECISIONS = tuple(_DTYPES)


def compare(
    reference: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float = 0.0,
    scale_rtol: float = 0.0,
    min_cosine: float = 0.999,
    names: Sequence[str] | None = None,
    method: str = "runtime",
) -> NumericsReport:
    """Pass when every output is within ``atol + rtol·|ref| + scale_rtol·max|ref|``, cosine ≥ ``min_cosine``, no NaN."""
    tolerances = {"atol": atol, "rtol": rtol, "scale_rtol": scale_rtol, "min_cosine": min_cosine, "method": method}
    if len(reference) != len(actual):
        return NumericsReport("failed", reason=f"{len(actual)} outputs, expected {len(reference)}", **tolerances)
    per_output = []
    worst, worst_cos, any_nan, ok, problems = 0.0, 1.0, False, True, []
    for i, (ref, out) in enumerate(zip(reference, actual)):
        name = names[i] if names and i < len(names) else f"output_{i}"
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            ok = False
            problems.append(f"{name}: shape {list(out.shape)} vs reference {list(ref.shape)}")
            per_output.append({"name": name, "shape_mismatch": True})
            continue
        nan = bool(not np.isfinite(out).all())
        finite_ref = np.abs(ref[np.isfinite(ref)])
        scale = float(finite_ref.max()) if finite_ref.size else 0.0
        err = np.abs(ref - out)
        bound = atol + rtol * np.abs(ref) + scale_rtol * scale
        finite_err = err[np.isfinite(err)]
        max_err = float(finite_err.max()) if finite_err.size else 0.0
        within = bool(np.all(err <= bound))  # NaN compares False: never within
        if nan:
            cos = None
        else:
            denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
            cos = float(np.dot(ref.ravel(), out.ravel()) / denom) if denom > 0 else (1.0 if max_err == 0 else 0.0)
        passed = within and not nan and cos >= min_cosine
        per_output.append(
            {
                "name": name,
                "max_abs_error": max_err,
                "scale": scale,
                "cosine": cos,
                "has_nan": nan,
                "passed": passed,
            }
        )
        if not passed:
            ok = False
            problems.append(_problem(name, err, bound, within, cos, min_cosine, (atol, rtol, scale_rtol, scale)))
        worst = max(worst, max_err if not nan else float("inf"))
        if cos is not None:
            worst_cos = min(worst_cos, cos)
        any_nan |= nan
    return NumericsReport(
        status="passed" if ok else "failed",
        max_abs_error=worst if np.isfinite(worst) else None,
        cosine=worst_cos,
        has_nan=any_nan,
        per_output=per_output,
        reason="; ".join(problems),
        **tolerances,
    )


def _problem(name: str, err: np.ndarray, bound, within: bool, cos, min_cosine: float, terms) -> str:
    """One output's failure: NaN/inf, or its worst error against its bound, and its cosine."""
    bad = int((~np.isfinite(err)).sum())
    if bad:
        return f"{name}: NaN/inf in {bad} of {err.size} values"
    at = int(np.argmax(np.ravel(err - bound))) if err.size else 0
    b = float(np.ravel(np.broadcast_to(bound, err.shape))[at]) if err.size else float(np.max(bound))
    atol, rtol, scale_rtol, scale = terms
    text = (
        f"{name}: max abs error {float(err.max()) if err.size else 0.0:.3g} {'within' if within else 'beyond'} "
        f"its bound {b:.3g} (atol {atol:g} + rtol {rtol:g}·|ref| + scale_rtol {scale_rtol:g}·max|ref| {scale:.3g})"
    )
    return text + f", cosine {cos:.6f}" + (f" below {min_cosine:g}" if cos < min_cosine else "")


# ------------------------------------------------------------------------------ fp16 emulation


@dataclass
class PrecisionRun:
    """The IR run in a low precision: its outputs, and what went wrong on the way."""

    precision: str
    outputs: list[np.ndarray]
    overflow: str = ""  # the first node whose values left the precision's range, and by how much
    upcast_ops: list[str] = field(default_factory=list)  # no CPU kernel in that dtype: ran in fp32, rounded


class _Rounding(torch.fx.Interpreter):
    """Rounds every floating tensor a node produces to ``dtype`` (weights included, via get_attr)."""

    def __init__(self, module, precision: str):
        super().__init__(module)
        self.precision = precision
        self.dtype, self.dtype_name, self.max = _DTYPES[precision]
        self.overflow = ""
        self.upcast: set[str] = set()

    def _round(self, x):
        return x.to(self.dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    def _fp32(self, n, args, kwargs):
        up = pytree.tree_map(
            lambda x: x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, (args, kwargs)
        )
        return getattr(self, n.op)(n.target, *up)

    def run_node(self, n):
        try:
            out = super().run_node(n)
        except (RuntimeError, NotImplementedError):
            if n.op != "call_function":
                raise
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = self._fp32(n, args, kwargs)  # no CPU kernel in this dtype: fp32, then rounded below
            self.upcast.add(op_name(n.target))
        out = pytree.tree_map(self._round, out)
        if not self.overflow:
            self._check(n, out)
        return out

    def _check(self, n, out) -> None:
        """Name ``n`` when its rounded output is not finite although its inputs are and fp32's is."""
        leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not leaves or all(bool(torch.isfinite(t).all()) for t in leaves):
            return
        args, kwargs = self.fetch_args_kwargs_from_env(n) if n.op != "get_attr" else ((), {})
        ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in ins):
            return  # inherited from an earlier node, already named (or an input that is not finite)
        if n.op == "get_attr":
            ref = self.fetch_attr(n.target)
        elif n.op == "call_function":
            ref = self._fp32(n, args, kwargs)
        else:
            return
        ref_leaves = [t.double() for t in pytree.tree_leaves(ref) if isinstance(t, torch.Tensor)]
        if not ref_leaves or not all(bool(torch.isfinite(t).all()) for t in ref_leaves):
            return  # not finite in fp32 either (a -inf mask): not this precision's doing
        peak = max(float(t.abs().max()) for t in ref_leaves if t.numel())
        src = source_path(n)
        what = "a weight" if n.op == "get_attr" else op_name(n.target)
        where = f"{n.name} ({what}{', in ' + src if src else ''})"
        if peak > self.max:
            self.overflow = f"{where} reaches |x| = {peak:.3g}, beyond {self.precision}'s ±{self.max:g}"
        else:  # an intermediate inside the op (a sum, a variance) left the range
            self.overflow = f"{where} is not finite in {self.precision}: a value inside it exceeds ±{self.max:g}"


def run_in_precision(graph: Graph, inputs: Sequence[torch.Tensor], precision: str, module=None) -> PrecisionRun:
    """Run ``graph`` on ``inputs`` with every floating tensor rounded to ``precision`` after every node
    (``module``: ``graph.program.module()`` made once, for many calls)."""
    interp = _Rounding(module if module is not None else graph.program.module(), precision)
    with torch.no_grad():
        out = interp.run(*[interp._round(t) for t in inputs])
    flat = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return PrecisionRun(precision, [t.detach().numpy() for t in flat], interp.overflow, sorted(interp.upcast))


def emulate(
    graph: Graph,
    reference: Sequence[np.ndarray],
    precision: str,
    *,
    atol: float,
    rtol: float = 0.0,
    scale_rtol: float = 0.0,
    min_cosine: float = 0.999,
    names: Sequence[str] | None = None,
    inputs: Sequence[torch.Tensor] | None = None,
    context: str = "",
) -> NumericsReport:
    """Check ``graph`` run in ``precision`` on the CPU against the fp32 ``reference`` (on ``inputs``,
    default its example inputs; ``context``: why the artifact could not run here, quoted in the reason)."""
    run = run_in_precision(graph, graph.example_inputs if inputs is None else inputs, precision)
    report = compare(
        reference,
        run.outputs,
        atol=atol,
        rtol=rtol,
        scale_rtol=scale_rtol,
        min_cosine=min_cosine,
        names=names,
        method="emulated",
    )
    dtype_name = _DTYPES[precision][1]
    problems = [f"{precision} overflow at {run.overflow}"] if run.overflow else []
    if report.status == "failed":
        problems.append(report.reason)
    notes = []
    if run.upcast_ops:
        notes.append(f"{', '.join(run.upcast_ops)} ran in fp32 and was rounded ({dtype_name} has no CPU kernel)")
    if context:
        notes.append(f"the artifact itself did not run: {context}")
    if problems:
        report.status = "failed"
        report.reason = f"{precision} emulated on the CPU: " + "; ".join(problems + notes)
    else:
        report.reason = (
            f"{precision} emulated on the CPU: the rewritten IR, every tensor rounded to {dtype_name} after every op, "
            f"is within tolerance of fp32 (max abs error {report.max_abs_error:.3g}); " + "; ".join(notes)
        ).rstrip("; ")
    return report
