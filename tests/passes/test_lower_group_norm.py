"""lower_group_norm: affine-free GroupNorm(1, C) → LayerNorm over (C, H, W)."""

from __future__ import annotations

from _helper import assert_fires, assert_not_fires, run_pass, tiny_graph
from torch import nn


class GNConv(nn.Module):
    def __init__(self, groups=1, affine=False):
        super().__init__()
        self.norm = nn.GroupNorm(groups, 6, affine=affine)
        self.fc = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.fc(self.norm(x))


def test_rewrites_affine_free_single_group_norm_as_layer_norm():
    g = tiny_graph(GNConv(), (1, 6, 5, 4))
    new, _ = assert_fires(g, "lower_group_norm", {"aten.group_norm": -1, "aten.layer_norm": 1}, matched=1)
    ln = next(n for n in new.program.graph.nodes if "layer_norm" in str(n.target))
    assert list(ln.args[1]) == [6, 5, 4]


def test_rewrites_as_reshaped_instance_norm_when_asked():
    g = tiny_graph(GNConv(), (2, 6, 5, 4))
    delta = {"aten.group_norm": -1, "aten.instance_norm": 1, "aten.reshape": 2}
    assert_fires(g, "lower_group_norm", delta, matched=1, form="instance_norm")


def test_rewrites_poolformer_norm_once_its_affine_is_folded():
    g, _ = run_pass(tiny_graph(GNConv(affine=True), (1, 6, 5, 4)), "fold_norm_affine")
    assert_fires(g, "lower_group_norm", {"aten.group_norm": -1, "aten.layer_norm": 1}, matched=1)


def test_does_not_fire_while_the_norm_has_an_affine():
    assert_not_fires(tiny_graph(GNConv(affine=True), (1, 6, 5, 4)), "lower_group_norm", "still has an affine")


def test_does_not_fire_with_several_groups():
    assert_not_fires(tiny_graph(GNConv(groups=3), (1, 6, 5, 4)), "lower_group_norm", "per group")
