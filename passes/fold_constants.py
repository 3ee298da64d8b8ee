"""Evaluate sub-graphs that depend only on weights, and remove dead nodes and unused weights.

Before::

    unsqueeze   = aten.unsqueeze(p_layer_scale_1, -1)
    unsqueeze_1 = aten.unsqueeze(unsqueeze, -1)
    mul         = aten.mul.Tensor(unsqueeze_1, sub)

After::

    mul         = aten.mul.Tensor(p_layer_scale_1_const, sub)      # (C, 1, 1) parameter

Algebra: a pure op whose inputs are all parameters, buffers or constants has a constant value;
only the outermost such node (the one read by input-dependent code) is materialised.  Then every
pure node without users goes, and so does every parameter/buffer/constant no node reads (BN
``num_batches_tracked``, tables replaced by dense copies, weights left behind by folds).

Must not fire when: the op is impure (in-place buffer updates, asserts, random ops); the result
is bigger than its constant inputs and bigger than ``max_growth_numel`` (an ``expand`` or a
gather would bloat the weights: see densify_attention_bias).

Options: ``max_growth_numel`` (int, default 4096) is the largest result allowed to grow.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._graph import Editor
from .base import Pass, PassResult


class FoldConstants(Pass):
    name = "fold_constants"
    summary = "Constant-fold weight-only sub-graphs; remove dead nodes and unused parameters"
    exact = True

    @dataclass
    class Options:
        max_growth_numel: int = 4096

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        nodes = [n for n in ed.graph.nodes if n.op == "call_function"]
        for node in nodes:
            if not node.all_input_nodes:
                continue  # factory ops (arange, zeros): their consumers fold, not they
            value = ed.const(node)
            if value is None:
                continue
            if all(ed.const(u) is not None for u in node.users if u.op != "output") and any(
                u.op != "output" for u in node.users
            ):
                continue  # an inner node of a constant chain: its consumer gets folded instead
            roots = _roots(node)
            size_in = sum(ed.const(a).numel() for a in roots)
            if value.numel() > max(size_in, self.options.max_growth_numel):
                ed.reject(node, f"folding would grow {size_in:,} constant elements to {value.numel():,}")
                continue
            hint = ed.specs[roots[0].name].target if roots and roots[0].name in ed.specs else node.name
            param = ed.add_param(f"{hint}_const", value.clone())
            ed.replace(node, param)
            ed.match(node)
        removed = ed.dead_code(everything=True)
        ed.touched = removed > 0
        return self.result(graph, ed, removed_dead=removed)


def _roots(node) -> list:
    """The parameter/buffer/constant placeholders ``node`` is computed from."""
    seen, todo, out = set(), [node], []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            out.append(n)
        todo.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(node.graph.nodes) if n.op == "placeholder"}
    return sorted(out, key=order.__getitem__)
