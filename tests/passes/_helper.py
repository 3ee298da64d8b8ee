"""Shared helper for pass tests: apply one pass, re-validate, compare op counts and outputs.

Every test builds a tiny ``nn.Module`` from the math of the pattern (not the zoo classes: passes
match ATen, not modules), randomises the weights so that folds cannot look exact by accident
(BN statistics, norm affines and layer scales far from their 0/1/1e-5 defaults), and then

- :func:`assert_fires` applies the pass through the PassManager (``check=True``: it re-validates
  with a save/load round trip and fails above 1e-5), asserts the op-count change, and compares
  outputs with an explicit tolerance on the example inputs *and* on fresh inputs, also after a
  ``torch.export.save``/``load`` round trip of the rewritten program;
- :func:`assert_not_fires` asserts the pass leaves the graph alone and explains why.
"""

from __future__ import annotations

import io
from collections import Counter

import torch
from torch import nn

from edgeformer.ir import Graph, export, op_name
from edgeformer.passes import PassManager, PassRecord

ATOL = 1e-5  # the exact-pass tolerance of DESIGN.md, fp32, absolute


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-trivial inference statistics and scales; returns ``model`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.normal_(0.0, 0.5, generator=g)
                mod.running_var.uniform_(0.3, 2.0, generator=g)
            if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if getattr(mod, "weight", None) is not None:
                    mod.weight.uniform_(0.5, 1.5, generator=g)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.normal_(0.0, 0.5, generator=g)
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if any(k in leaf for k in ("scale", "alpha", "gamma")):
                p.uniform_(0.3, 1.2, generator=g)
            elif "attention_biases" in leaf:
                p.normal_(0.0, 1.0, generator=g)
    return model.eval()


def tiny_graph(model: nn.Module, *shapes: tuple[int, ...], seed: int = 0) -> Graph:
    """Export ``randomize(model)`` with standard-normal example inputs of ``shapes``."""
    g = torch.Generator().manual_seed(seed)
    inputs = tuple(torch.randn(*s, generator=g) for s in shapes)
    return export(randomize(model, seed), inputs)


def op_counts(graph: Graph) -> Counter:
    return Counter(op_name(n.target) for n in graph.program.graph.nodes if n.op == "call_function")


def _outputs(graph: Graph, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = graph.program.module()(*inputs)
    return [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _roundtrip(graph: Graph) -> Graph:
    buf = io.BytesIO()
    torch.export.save(graph.program, buf)
    buf.seek(0)
    return graph.replace(torch.export.load(buf))


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = ATOL) -> float:
    assert len(a) == len(b)
    diff = max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))
    assert diff <= atol, f"outputs moved by {diff:.3g} > {atol:g}"
    return diff


def run_pass(graph: Graph, name: str, **options) -> tuple[Graph, PassRecord]:
    """Apply one pass through the PassManager (check on, explain on)."""
    new, records = PassManager([name], check=True, explain=True, options={name: options} if options else None).run(
        graph
    )
    return new, records[0]


def assert_fires(
    graph: Graph, name: str, delta: dict[str, int], *, matched: int | None = None, atol: float = ATOL, **options
) -> tuple[Graph, PassRecord]:
    """The pass changes the graph by exactly ``delta`` op counts and keeps outputs within ``atol``."""
    before = op_counts(graph)
    new, rec = run_pass(graph, name, **options)
    assert rec.changed, f"{name} did not fire: {rec.details.get('explain')}"
    if matched is not None:
        assert rec.matched == matched, rec.details.get("explain")
    after = op_counts(new)
    got = {op: after[op] - before[op] for op in set(before) | set(after) if after[op] != before[op]}
    assert got == {k: v for k, v in delta.items() if v}, f"op-count change {got} != expected {delta}"
    fresh = tuple(torch.randn_like(x) * 2 for x in graph.example_inputs)
    for inputs in (graph.example_inputs, fresh):
        ref = _outputs(graph, inputs)
        assert_close(ref, _outputs(new, inputs), atol)
        assert_close(ref, _outputs(_roundtrip(new), inputs), atol)
    return new, rec


def assert_not_fires(graph: Graph, name: str, reason: str | None = None, **options) -> PassRecord:
    """The pass leaves the graph unchanged and, given ``reason``, explains the near-miss with it."""
    before = op_counts(graph)
    new, rec = run_pass(graph, name, **options)
    assert not rec.changed and rec.matched == 0, rec.details.get("explain")
    assert op_counts(new) == before
    if reason is not None:
        lines = [ln for ln in rec.details["explain"] if ln.startswith("rejected")]
        assert any(reason in ln for ln in lines), f"no rejection mentioning {reason!r} in {lines}"
    return rec
