"""fold_constants: weight-only sub-graphs become constants; dead nodes and unused weights go."""

from __future__ import annotations

import torch
from _helper import assert_fires, assert_not_fires, run_pass, tiny_graph
from torch import nn


class ScaleChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_scale = nn.Parameter(torch.ones(4))
        self.offset = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        s = (self.layer_scale * 2 + self.offset).unsqueeze(-1).unsqueeze(-1)
        return x * s


def test_folds_weight_only_chain_into_one_constant():
    new, rec = assert_fires(
        tiny_graph(ScaleChain(), (1, 4, 3, 3)),
        "fold_constants",
        {"aten.mul": -1, "aten.add": -1, "aten.unsqueeze": -2},
        matched=1,
    )
    assert set(new.program.state_dict) == {"layer_scale_const"}
    assert tuple(new.program.state_dict["layer_scale_const"].shape) == (4, 1, 1)


def test_removes_unused_buffers_and_dead_nodes():
    g = tiny_graph(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), (1, 3, 4, 4))
    folded, _ = run_pass(g, "fold_batchnorm")
    assert "1.num_batches_tracked" in folded.program.state_dict  # left for fold_constants
    new, rec = run_pass(folded, "fold_constants")
    assert rec.changed and rec.details["removed_dead"] >= 1
    assert set(new.program.state_dict) == {"0.weight", "0.bias"}


class Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(4, 1, 1))

    def forward(self, x):
        return x + self.p.expand(1, 4, 64, 64)


def test_does_not_fire_when_folding_would_grow_the_weights():
    assert_not_fires(tiny_graph(Broadcast(), (1, 4, 64, 64)), "fold_constants", "grow")


class Noise(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x + torch.rand_like(self.p) * 0


def test_does_not_fold_random_ops():
    g = tiny_graph(Noise(), (1, 4))
    _, rec = run_pass(g, "fold_constants")
    assert rec.matched == 0
