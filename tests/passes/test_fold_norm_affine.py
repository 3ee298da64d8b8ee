"""fold_norm_affine: LayerNorm/GroupNorm γ, β → the following linear / unpadded conv."""

from __future__ import annotations

from _helper import assert_fires, assert_not_fires, tiny_graph
from torch import nn


def _norm_affine_args(graph):
    return [(n.args[2:4]) for n in graph.program.graph.nodes if "norm" in str(n.target) and n.op == "call_function"]


class NormThen(nn.Module):
    def __init__(self, norm: nn.Module, layer: nn.Module, pool_dims=None, residual: bool = False):
        super().__init__()
        self.norm, self.layer, self.pool_dims, self.residual = norm, layer, pool_dims, residual

    def forward(self, x):
        y = self.norm(x)
        out = self.layer(y.mean(self.pool_dims) if self.pool_dims is not None else y)
        return out + y if self.residual else out


def test_folds_groupnorm_affine_into_following_1x1_conv():
    """PoolFormer norm2 → mlp.fc1."""
    g = tiny_graph(NormThen(nn.GroupNorm(1, 6), nn.Conv2d(6, 12, 1)), (1, 6, 5, 5))
    new, rec = assert_fires(g, "fold_norm_affine", {}, matched=1)  # the ONNX Mul/Add go, not an ATen op
    assert _norm_affine_args(new) == [(None, None)] and rec.params_folded == 2


def test_folds_layernorm_affine_into_following_linear():
    """EfficientFormer Meta3D norm2 → mlp.fc1."""
    g = tiny_graph(NormThen(nn.LayerNorm(8), nn.Linear(8, 16)), (1, 5, 8))
    new, _ = assert_fires(g, "fold_norm_affine", {}, matched=1)
    assert _norm_affine_args(new) == [(None, None)]


def test_folds_final_layernorm_through_token_mean_into_head():
    """EfficientFormer: LN(tokens) → mean over tokens → head."""
    g = tiny_graph(NormThen(nn.LayerNorm(8), nn.Linear(8, 10), pool_dims=-2), (1, 5, 8))
    assert_fires(g, "fold_norm_affine", {}, matched=1)


def test_folds_final_groupnorm_through_spatial_mean_into_head():
    """PoolFormer: GN(1, C) on the map → mean over H, W → head."""
    g = tiny_graph(NormThen(nn.GroupNorm(1, 6), nn.Linear(6, 10), pool_dims=(-2, -1)), (1, 6, 4, 4))
    assert_fires(g, "fold_norm_affine", {}, matched=1)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.head, self.dist = nn.LayerNorm(8), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        z = self.norm(x).mean(-2)
        return self.head(z), self.dist(z)


def test_folds_norm_affine_into_every_reading_head():
    assert_fires(tiny_graph(TwoHeads(), (1, 5, 8)), "fold_norm_affine", {}, matched=1)


def test_does_not_fire_when_norm_output_also_feeds_a_residual_add():
    g = tiny_graph(NormThen(nn.LayerNorm(8), nn.Linear(8, 8), residual=True), (1, 5, 8))
    assert_not_fires(g, "fold_norm_affine", "not a linear or conv")


def test_does_not_fire_when_following_conv_is_padded():
    g = tiny_graph(NormThen(nn.GroupNorm(2, 6), nn.Conv2d(6, 6, 3, padding=1)), (1, 6, 5, 5))
    assert_not_fires(g, "fold_norm_affine", "not exact at borders")


def test_does_not_fire_when_layernorm_normalises_two_axes():
    g = tiny_graph(NormThen(nn.LayerNorm([5, 8]), nn.Linear(8, 8)), (1, 5, 8))
    assert_not_fires(g, "fold_norm_affine", "more than one axis")


def test_does_not_fire_when_mean_reduces_the_channel_axis():
    g = tiny_graph(NormThen(nn.LayerNorm(8), nn.Linear(5, 3), pool_dims=-1), (1, 4, 5, 8))
    g2 = tiny_graph(NormThen(nn.LayerNorm(8), nn.Linear(8, 3), pool_dims=-1), (1, 5, 8, 8))
    for graph in (g, g2):
        assert_not_fires(graph, "fold_norm_affine", "channel axis")
