"""The pass framework: Pass, PassResult, PassStats, PassRecord and the PassManager.

A pass is a small class in its own file: a ``name``, a one-line ``summary``, typed ``Options``
with defaults, whether it is ``exact``, and ``run(graph) -> PassResult``.  The PassManager

- re-validates the IR after every pass (a valid ExportedProgram that survives a
  ``torch.export.save``/``load`` round trip);
- with ``check=True`` runs the IR before and after each pass on the example inputs and fails,
  naming the pass, when an exact pass moved an fp32 output by more than fp32 rounding at that
  output's scale, ``atol + rtol·max|ref|`` (1e-5 + 1e-6·max|ref|), either in that step or
  accumulated since the last approximating pass;
- records per pass: nodes matched, nodes removed, parameters folded, op-count changes, time;
- writes the readable IR after each pass to ``dump_dir`` and keeps the explain lines (each match,
  and why each near-miss was rejected) when ``explain=True``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from edgeformer.errors import UnknownNameError, UserError
from edgeformer.ir import Graph, op_name, run
from edgeformer.manifest import PassRecord

from ._registry import get_pass

log = logging.getLogger(__name__)

# An exact pass changes only the order of fp32 operations (W·(λx) → (λW)·x), so it may move an
# output by a few roundings of the values that output is made of: its scale, max|ref|.  fp32 rounds
# to 2^-24 ≈ 6e-8 relative; EXACT_RTOL allows 16 of those at the output's largest value (a fold at
# outputs of 1e3 moves them by 1-2 ulps, 6e-5-1.2e-4), and EXACT_ATOL keeps MEASUREMENT's 1e-5 for
# outputs of order 1.  A real bug (a scale off by 1e-3 relative) is ~1000x beyond (docs/measurement.md).
EXACT_ATOL = 1e-5
EXACT_RTOL = 1e-6


@dataclass
class PassStats:
    """What every pass reports beside its graph (an :class:`~edgeformer.passes._graph.Editor` counts it)."""

    matched: int = 0  # matches rewritten
    params_folded: int = 0  # folded tensors written (new or overwritten in place)
    explain: list[str] = field(default_factory=list)  # one line per match and per near-miss


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    details: dict = field(default_factory=dict)  # pass-specific extras only (e.g. removed_dead)
    stats: PassStats = field(default_factory=PassStats)


@dataclass
class _NoOptions:
    pass


class Pass:
    """Base class.  Subclasses set ``name``, ``summary``, ``exact`` and an ``Options`` dataclass."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    Options: ClassVar[type] = _NoOptions
    # A pass that fits constants to activations (linear_attention's feature maps, landmark_attention's
    # constants) sets this; the PassManager then hands it ``data`` (input tuples: --calib samples, else
    # the graph's example inputs) and ``data_origin`` (what they are) before ``run``.
    uses_data: ClassVar[bool] = False
    data: list[tuple[torch.Tensor, ...]] | None = None
    data_origin: str = ""
    dry_run: bool = False  # the driver's dry run (edgeformer/sites.py): report sites, fitting may be skipped

    def __init__(self, **options):
        known = {f.name: f for f in dataclasses.fields(self.Options)}
        for key in options:
            if key not in known:
                raise UnknownNameError(f"option of pass {self.name!r}", key, known)
        hints = typing.get_type_hints(self.Options)
        self.options = self.Options(**{k: _coerce(self.name, k, v, hints.get(k)) for k, v in options.items()})

    def run(self, graph: Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, graph: Graph, ed, **extra) -> PassResult:
        """The PassResult of an :class:`~edgeformer.passes._graph.Editor` session."""
        changed = ed.matched > 0 or ed.touched
        stats = PassStats(matched=ed.matched, params_folded=ed.params_folded, explain=list(ed.explain))
        return PassResult(ed.finish() if changed else graph, changed, dict(extra), stats)


def _coerce(pass_name: str, key: str, value, hint):
    """Options arrive typed from Python and as strings from profiles/CLI; check either way."""
    if hint is None or isinstance(value, hint if isinstance(hint, type) else object):
        return value
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        if hint in (int, float) and not isinstance(value, bool):
            return hint(value)
    except ValueError:
        pass
    raise UserError(f"option {key!r} of pass {pass_name!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")


class PassCheckError(UserError):
    """A pass broke the IR or changed the numbers: a bug in that pass, reported with its name."""


def _abs_diffs(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    """Per output, max |a − b| (inf where only one side is NaN/inf, or the shapes differ)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return [float("inf")] * max(len(a), 1)
    out = []
    for x, y in zip(a, b):
        if not x.numel():
            out.append(0.0)
            continue
        x, y = x.double(), y.double()
        same = (x == y) | (torch.isnan(x) & torch.isnan(y))  # equal infinities and NaNs moved nothing
        d = torch.where(same, torch.zeros_like(x), (x - y).abs().nan_to_num(nan=float("inf")))
        out.append(float(d.max()))
    return out


def _max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(_abs_diffs(a, b), default=0.0)


def _scales(ref: list[torch.Tensor]) -> list[float]:
    """Per output, max |ref| over its finite values: the scale fp32 rounding is relative to."""
    out = []
    for t in ref:
        finite = t.double().abs()[torch.isfinite(t)] if t.numel() else t.double()
        out.append(float(finite.max()) if finite.numel() else 0.0)
    return out


def _histogram(graph: Graph) -> Counter:
    return Counter(op_name(n.target) for n in graph.program.graph.nodes if n.op == "call_function")


def revalidate(graph: Graph) -> Graph:
    """Validate and round-trip the program through ``torch.export.save``/``load``."""
    graph.program.validate()
    buf = io.BytesIO()
    torch.export.save(graph.program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    if len(loaded.graph_signature.input_specs) != len(graph.program.graph_signature.input_specs):
        raise ValueError("the loaded program has a different signature")
    return graph


class PassManager:
    def __init__(
        self,
        names: list[str],
        *,
        check: bool = True,
        atol: float = EXACT_ATOL,
        rtol: float = EXACT_RTOL,
        dump_dir: str | Path | None = None,
        explain: bool = False,
        options: dict[str, dict] | None = None,
        data: Sequence[Sequence[torch.Tensor]] | None = None,
        data_origin: str = "",
        dry_run: bool = False,
    ):
        options = dict(options or {})
        for n in options:
            if n not in names:
                get_pass(n)  # an unknown name raises with suggestions
                raise UserError(
                    f"options given for pass {n!r}, which is not in the pipeline", f"add it with --passes +{n}"
                )
        self.passes = [get_pass(n)(**options.get(n, {})) for n in names]
        self.check = check
        self.atol = atol
        self.rtol = rtol
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.explain = explain
        self.data = [tuple(x) for x in data] if data else None
        self.data_origin = data_origin
        self.dry_run = dry_run

    def run(self, graph: Graph) -> tuple[Graph, list[PassRecord]]:
        records = []
        inputs = graph.example_inputs if self.check else ()
        prev_out = run(graph, inputs) if self.check else None
        ref_out = prev_out  # outputs since the last approximating pass: exact drift must stay in bounds
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-input.txt").write_text(graph.summary().format() + "\n")
        hist = _histogram(graph)
        for i, p in enumerate(self.passes, 1):
            t0 = time.perf_counter()
            if p.uses_data:
                p.data = self.data or [tuple(graph.example_inputs)]
                p.data_origin = (self.data_origin or "calibration data") if self.data else "the example inputs (random)"
                p.dry_run = self.dry_run
            try:
                result = p.run(graph)
            except UserError:
                raise
            except Exception as err:
                raise PassCheckError(
                    f"pass '{p.name}' failed: {type(err).__name__}: {err}",
                    f"drop it with --passes -{p.name} and report the bug",
                ) from err
            elapsed = time.perf_counter() - t0
            new = result.graph
            if result.changed:
                try:
                    revalidate(new)
                except Exception as err:
                    raise PassCheckError(
                        f"pass '{p.name}' produced an invalid program ({type(err).__name__}: {err})",
                        f"drop it with --passes -{p.name} and report the bug",
                    ) from err
            new_hist = _histogram(new)
            delta = {
                op: new_hist[op] - hist[op] for op in sorted(set(hist) | set(new_hist)) if new_hist[op] != hist[op]
            }
            stats = result.stats
            explain = list(stats.explain)
            rec = PassRecord(
                name=p.name,
                exact=p.exact,
                changed=result.changed,
                matched=int(stats.matched),
                nodes_removed=sum(hist.values()) - sum(new_hist.values()),
                params_folded=int(stats.params_folded),
                time_s=round(elapsed, 4),
                op_delta=delta,
                details=dict(result.details),
            )
            if self.explain:
                rec.details["explain"] = explain
            for line in explain:
                log.debug("%s: %s", p.name, line)
            if self.check and result.changed:
                after_out = run(new, inputs)
                rec.max_abs_diff = _max_abs_diff(prev_out, after_out)
                if p.exact:
                    self._check_exact(p.name, prev_out, ref_out, after_out)
                prev_out = after_out
                if not p.exact:
                    ref_out = after_out
            if self.dump_dir:
                text = new.summary().format()
                if self.explain and explain:
                    text += "\n# explain\n" + "\n".join(explain)
                (self.dump_dir / f"{i:02d}-{p.name}.txt").write_text(text + "\n")
            log.info(
                "pass %s: changed=%s matched=%d removed=%d folded=%d %.3fs",
                p.name,
                rec.changed,
                rec.matched,
                rec.nodes_removed,
                rec.params_folded,
                rec.time_s,
            )
            records.append(rec)
            graph, hist = new, new_hist
        return graph, records

    def _check_exact(self, name: str, prev_out, ref_out, after_out) -> None:
        """Fail naming the pass when an output moved beyond ``atol + rtol·max|ref|``, in this step
        or accumulated since the last approximating pass."""
        for before, accumulated in ((prev_out, False), (ref_out, True)):
            for i, (diff, scale) in enumerate(zip(_abs_diffs(before, after_out), _scales(before))):
                bound = self.atol + self.rtol * scale
                if diff > bound:
                    what = " (accumulated since the last approximating pass)" if accumulated else ""
                    output = f" output {i}" if len(after_out) > 1 else ""
                    raise PassCheckError(
                        f"exact pass '{name}' moved fp32 outputs by {diff:.3g}{what}, more than fp32 rounding "
                        f"at that scale: {self.atol:g} + {self.rtol:g}·max|ref|{output} {scale:.3g} = {bound:.3g}",
                        f"this is a bug in the pass; drop it with --passes -{name} and report it",
                    )
