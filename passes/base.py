"""The pass framework: Pass, PassResult, PassRecord and the PassManager.

A pass is a small class in its own file: a ``name``, typed ``Options`` with defaults, whether it is
``exact``, and ``run(graph) -> PassResult``.  The PassManager re-validates the IR after every pass
and, with ``check=True``, fails naming the pass when an exact pass moved fp32 outputs by more than
``atol`` (1e-5).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from edgeformer.errors import UserError
from edgeformer.ir import Graph, run

log = logging.getLogger(__name__)

EXACT_ATOL = 1e-5


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    details: dict = field(default_factory=dict)  # matched, removed, params_folded, explain, ...


@dataclass
class PassRecord:
    """What the manifest records per pass."""

    name: str
    exact: bool
    changed: bool
    matched: int = 0
    nodes_removed: int = 0
    params_folded: int = 0
    time_s: float = 0.0
    max_abs_diff: float | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Pass:
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    exact: ClassVar[bool] = True

    @dataclass
    class Options:
        pass

    def __init__(self, **options):
        self.options = self.Options(**options)

    def run(self, graph: Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError


class PassCheckError(UserError):
    """An exact pass changed the numbers: a bug in that pass, reported with its name."""


def _max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((float((x.double() - y.double()).abs().max()) if x.numel() else 0.0) for x, y in zip(a, b))


class PassManager:
    def __init__(self, names: list[str], *, check: bool = True, atol: float = EXACT_ATOL,
                 dump_dir: str | Path | None = None, explain: bool = False,
                 options: dict[str, dict] | None = None):
        from edgeformer.passes import get_pass

        self.passes = [get_pass(n)(**(options or {}).get(n, {})) for n in names]
        self.check = check
        self.atol = atol
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.explain = explain

    def run(self, graph: Graph) -> tuple[Graph, list[PassRecord]]:
        records = []
        inputs = graph.example_inputs
        before_out = run(graph, inputs) if self.check else None
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-input.txt").write_text(graph.summary().format())
        for i, p in enumerate(self.passes, 1):
            t0 = time.perf_counter()
            n_before = sum(1 for n in graph.program.graph.nodes if n.op == "call_function")
            result = p.run(graph)
            new = result.graph
            new.program.graph_module.graph.lint()
            elapsed = time.perf_counter() - t0
            n_after = sum(1 for n in new.program.graph.nodes if n.op == "call_function")
            rec = PassRecord(
                name=p.name, exact=p.exact, changed=result.changed,
                matched=int(result.details.get("matched", 0)),
                nodes_removed=n_before - n_after,
                params_folded=int(result.details.get("params_folded", 0)),
                time_s=round(elapsed, 4),
                details={k: v for k, v in result.details.items() if k not in ("matched", "params_folded")},
            )
            if self.check and result.changed:
                after_out = run(new, inputs)
                rec.max_abs_diff = _max_abs_diff(before_out, after_out)
                if p.exact and rec.max_abs_diff > self.atol:
                    raise PassCheckError(
                        f"exact pass '{p.name}' moved fp32 outputs by {rec.max_abs_diff:.3g} (> {self.atol:g})",
                        f"this is a bug in the pass; drop it with --passes -{p.name} and report it",
                    )
                before_out = after_out if not p.exact else before_out
            if self.dump_dir:
                (self.dump_dir / f"{i:02d}-{p.name}.txt").write_text(new.summary().format())
            log.info("pass %s: changed=%s matched=%d removed=%d", p.name, rec.changed, rec.matched, rec.nodes_removed)
            records.append(rec)
            graph = new
        return graph, records
