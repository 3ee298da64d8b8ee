"""fold_pool_mixer: pool(γx̂+β) − (γx̂+β) = γ(pool(x̂) − x̂); optional exact depthwise-conv form."""

from __future__ import annotations

import torch
from _helper import assert_fires, assert_not_fires, tiny_graph
from torch import nn


class PoolBlock(nn.Module):
    """PoolFormer token mixer x + ls1 ⊙ (pool(GN(x)) − GN(x)); options break it for near-misses."""

    def __init__(self, d=6, norm=True, scale=True, include_pad=False, stride=1, extra_user=False):
        super().__init__()
        self.norm = nn.GroupNorm(1, d) if norm else nn.Identity()
        self.pool = nn.AvgPool2d(3, stride, 1, count_include_pad=include_pad)
        self.layer_scale_1 = nn.Parameter(torch.ones(d)) if scale else None
        self.extra_user = extra_user

    def forward(self, x):
        y = self.norm(x)
        mix = self.pool(y) - y
        if self.layer_scale_1 is not None:
            mix = self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * mix
        return x + mix + (y if self.extra_user else 0)


def _gn_args(graph):
    return [n.args[2:4] for n in graph.program.graph.nodes if "group_norm" in str(n.target)]


def test_cancels_beta_and_merges_gamma_into_layer_scale():
    g = tiny_graph(PoolBlock(), (1, 6, 5, 5))
    new, rec = assert_fires(g, "fold_pool_mixer", {"aten.unsqueeze": -2}, matched=1)
    assert _gn_args(new) == [(None, None)]
    merged = [k for k in new.program.state_dict if k.endswith("_scale")]
    assert len(merged) == 1 and tuple(new.program.state_dict[merged[0]].shape) == (6, 1, 1)


def test_inserts_one_gamma_multiply_when_no_layer_scale_follows():
    new, _ = assert_fires(tiny_graph(PoolBlock(scale=False), (1, 6, 5, 5)), "fold_pool_mixer", {"aten.mul": 1})
    assert _gn_args(new) == [(None, None)]


def test_rewrites_pool_minus_identity_as_exact_depthwise_conv_when_asked():
    """EfficientFormer Meta4D (no norm): borders need the reciprocal-count map, checked on 4×4 and 7×5."""
    for shape in ((1, 6, 4, 4), (1, 6, 7, 5)):
        g = tiny_graph(PoolBlock(norm=False), shape)
        delta = {"aten.avg_pool2d": -1, "aten.conv2d": 1, "aten.mul": 1, "aten.unsqueeze": -2}
        new, _ = assert_fires(g, "fold_pool_mixer", delta, matched=1, dw_conv=True)
        recip = next(v for k, v in new.program.state_dict.items() if k.endswith("recip_count"))
        assert recip[0, 0, 0, 0] == 0.25 and recip[0, 0, 0, 1] == 1 / 6 and recip[0, 0, 1, 1] == 1 / 9


def test_does_not_rewrite_to_conv_by_default():
    assert_not_fires(tiny_graph(PoolBlock(norm=False), (1, 6, 5, 5)), "fold_pool_mixer")


def test_does_not_fire_when_pool_counts_padding():
    g = tiny_graph(PoolBlock(include_pad=True), (1, 6, 5, 5))
    assert_not_fires(g, "fold_pool_mixer", "count_include_pad")


def test_does_not_fire_when_norm_output_has_another_user():
    g = tiny_graph(PoolBlock(extra_user=True), (1, 6, 5, 5))
    assert_not_fires(g, "fold_pool_mixer", "users besides")


class StridedPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.pool = nn.GroupNorm(1, 4), nn.AvgPool2d(3, 2, 1, count_include_pad=False)

    def forward(self, x):
        y = self.norm(x)
        return self.pool(y) - y[..., ::2, ::2]


def test_does_not_fire_when_pool_is_not_pool_minus_its_input():
    assert_not_fires(tiny_graph(StridedPool(), (1, 4, 6, 6)), "fold_pool_mixer", "pool(y) − y")
