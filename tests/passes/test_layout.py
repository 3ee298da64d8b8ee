"""The pass framework's internal contracts: module layout, counting in the Editor, typed stats."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from _helper import tiny_graph
from torch import nn

import edgeformer.passes as passes
from edgeformer.ir import source_path
from edgeformer.passes import Pass, PassManager, PassResult, PassStats, _registry
from edgeformer.passes._graph import Editor, arg, is_op, set_arg

PASS_DIR = Path(passes.__file__).parent
SHARED = {"_affine", "_attention", "_graph", "base"}  # modules every pass may import
ALLOWED_EDGEFORMER = {"edgeformer.ir", "edgeformer.errors"}


def _pass_files() -> list[Path]:
    """``passes/<pass>.py``: everything but the package, ``base`` and ``_``-prefixed helpers."""
    return sorted(p for p in PASS_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "base")


def _helper_files() -> list[Path]:
    return sorted(p for p in PASS_DIR.glob("*.py") if p.stem != "__init__" and p not in _pass_files())


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``; relative ones as ``.name``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = "." + (node.module or "")
                # ``from . import fold_batchnorm`` names the module in the alias
                names = [f".{a.name}" for a in node.names] if node.module is None else [base]
                out += [(node.lineno, n) for n in names]
            else:
                out.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def test_the_pass_directory_holds_every_registered_pass():
    stems = {p.stem for p in _pass_files()}
    modules = {passes.get_pass(n).__module__.rsplit(".", 1)[-1] for n in passes.pass_names()}
    assert modules <= stems and len(stems) >= 10


def _pass_module(mod: str, pass_stems: set[str]) -> str | None:
    """The pass file ``mod`` names (``.fold_batchnorm``, ``edgeformer.passes.fold_batchnorm``)."""
    parts = mod.lstrip(".").split(".") if mod.startswith(".") else mod.split(".")[2:3]
    if mod.startswith(".") or mod.startswith("edgeformer.passes."):
        return parts[0] if parts and parts[0] in pass_stems else None
    return None


def test_no_pass_file_imports_another_pass_file():
    pass_stems = {p.stem for p in _pass_files()}
    bad = []
    for path in _pass_files():
        for line, mod in _imports(path):
            if mod.startswith("."):
                ok = mod[1:].split(".")[0] in SHARED
            elif mod.split(".")[0] == "edgeformer":
                ok = mod in ALLOWED_EDGEFORMER
            else:
                ok = True  # torch, stdlib
            if not ok:
                bad.append(f"{path.name}:{line} imports {mod}")
    for path in _helper_files():  # the shared modules import no pass either
        bad += [f"{path.name}:{line} imports {mod}" for line, mod in _imports(path) if _pass_module(mod, pass_stems)]
    allowed = "._affine, ._attention, ._graph, .base, edgeformer.ir, edgeformer.errors"
    assert not bad, f"pass files import only {allowed}:\n" + "\n".join(bad)


class Linear2(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def _graph():
    return tiny_graph(Linear2(), (2, 4))


class ReaddWeights(Pass):
    """Rebinds each linear's weight and bias to new (equal) parameters via ``add_param``."""

    name = "readd_weights"
    summary = "test only"

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for n in [n for n in ed.graph.nodes if is_op(n, "aten.linear")]:
            for name in ("weight", "bias"):
                set_arg(n, name, ed.add_param(f"fc.{name}_copy", ed.const(arg(n, name)).clone()))
            ed.match(n)
        return self.result(graph, ed)


class OverwriteBias(Pass):
    """Overwrites each linear's bias in place via ``tensor_arg`` (same value)."""

    name = "overwrite_bias"
    summary = "test only"

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for n in [n for n in ed.graph.nodes if is_op(n, "aten.linear")]:
            ed.tensor_arg(n, "bias", ed.const(arg(n, "bias")).clone(), "bias")
            ed.match(n)
        return self.result(graph, ed)


def test_add_param_counts_folded_parameters_without_the_pass_counting(monkeypatch):
    result = ReaddWeights().run(_graph())
    assert result.stats == PassStats(matched=1, params_folded=2, explain=["matched linear (fc)"])
    assert result.details == {}  # no magic keys: details carries pass extras only

    monkeypatch.setitem(_registry._PASSES, ReaddWeights.name, ReaddWeights)
    new, [rec] = PassManager([ReaddWeights.name]).run(_graph())
    assert (rec.matched, rec.params_folded, rec.details) == (1, 2, {})
    assert {"fc.weight_copy", "fc.bias_copy"} <= set(new.program.state_dict)


def test_tensor_arg_counts_one_per_rebound_argument_in_place_or_new():
    result = OverwriteBias().run(_graph())
    assert result.stats.params_folded == 1  # overwritten in place: same state-dict key
    assert "fc.bias" in result.graph.program.state_dict


def test_manager_reads_typed_stats_and_keeps_pass_extras(monkeypatch):
    class WithExtras(ReaddWeights):
        name = "with_extras"

        def run(self, graph) -> PassResult:
            res = super().run(graph)
            return PassResult(res.graph, res.changed, {"note": "kept"}, res.stats)

    monkeypatch.setitem(_registry._PASSES, WithExtras.name, WithExtras)
    _, [rec] = PassManager([WithExtras.name], explain=True).run(_graph())
    d = rec.to_dict()
    assert (d["matched"], d["params_folded"]) == (1, 2)
    assert d["details"] == {"note": "kept", "explain": ["matched linear (fc)"]}


def test_source_path_is_the_dotted_module_path_or_empty():
    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = nn.Sequential(nn.Sequential(nn.Identity(), nn.Linear(4, 4)))

        def forward(self, x):
            return self.network(x)

    g = tiny_graph(Nested(), (2, 4))
    nodes = list(g.program.graph.nodes)
    linear = next(n for n in nodes if is_op(n, "aten.linear"))
    assert source_path(linear) == "network.0.1"
    assert source_path(next(n for n in nodes if n.op == "placeholder")) == ""
    assert source_path(torch.zeros(1)) == ""  # not a node
