"""merge_parallel_heads: (head(z) + dist_head(z)) / 2 → one linear."""

from __future__ import annotations

from _helper import assert_fires, assert_not_fires, tiny_graph
from torch import nn


class Heads(nn.Module):
    def __init__(self, n=2, how="div", same_input=True, expose=False):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(8, 5) for _ in range(n)])
        self.how, self.same_input, self.expose = how, same_input, expose

    def forward(self, z):
        outs = [h(z if self.same_input or i == 0 else z * 2) for i, h in enumerate(self.heads)]
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        total = total / len(outs) if self.how == "div" else total * 0.5 if self.how == "mul" else total
        return (total, outs[0]) if self.expose else total


def test_merges_distillation_heads_averaged_at_eval():
    g = tiny_graph(Heads(), (1, 8))
    assert_fires(g, "merge_parallel_heads", {"aten.linear": -1, "aten.add": -1, "aten.div": -1}, matched=1)


def test_merges_heads_scaled_by_a_multiply():
    g = tiny_graph(Heads(how="mul"), (3, 8))
    assert_fires(g, "merge_parallel_heads", {"aten.linear": -1, "aten.add": -1, "aten.mul": -1}, matched=1)


def test_merges_a_sum_of_three_heads_on_tokens():
    g = tiny_graph(Heads(n=3, how="sum"), (2, 4, 8))
    assert_fires(g, "merge_parallel_heads", {"aten.linear": -2, "aten.add": -2}, matched=1)


def test_does_not_fire_when_heads_read_different_inputs():
    assert_not_fires(tiny_graph(Heads(same_input=False), (1, 8)), "merge_parallel_heads", "different inputs")


def test_does_not_fire_when_a_head_output_is_also_returned():
    assert_not_fires(tiny_graph(Heads(expose=True), (1, 8)), "merge_parallel_heads", "another user")
