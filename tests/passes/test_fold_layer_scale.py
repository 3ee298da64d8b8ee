"""fold_layer_scale: per-channel scale ⊙ conv/linear output → scaled weights."""

from __future__ import annotations

import torch
from _helper import assert_fires, assert_not_fires, run_pass, tiny_graph
from torch import nn


class Meta4DMlp(nn.Module):
    """EfficientFormer Meta4D MLP branch: x + ls2 ⊙ BN(fc2(GELU(BN(fc1(x)))))."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.fc1, self.norm1 = nn.Conv2d(d, 2 * d, 1), nn.BatchNorm2d(2 * d)
        self.fc2, self.norm2 = nn.Conv2d(2 * d, d, 1), nn.BatchNorm2d(d)
        self.layer_scale_2 = nn.Parameter(torch.ones(d))

    def forward(self, x):
        y = self.norm2(self.fc2(nn.functional.gelu(self.norm1(self.fc1(x)))))
        return x + self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * y


def test_folds_layer_scale_into_conv_after_batchnorm_fold():
    g, _ = run_pass(tiny_graph(Meta4DMlp(), (1, 6, 5, 5)), "fold_batchnorm")
    new, rec = assert_fires(g, "fold_layer_scale", {"aten.mul": -1, "aten.unsqueeze": -2}, matched=1)
    assert rec.params_folded == 2


def test_hints_fold_batchnorm_when_bn_is_still_there():
    assert_not_fires(tiny_graph(Meta4DMlp(), (1, 6, 5, 5)), "fold_layer_scale", "run fold_batchnorm first")


class TokenScale(nn.Module):
    """Meta3D / ViT: x + ls ⊙ proj(h) on tokens (B, N, C); ls as (C,) and, optionally, scalar."""

    def __init__(self, scalar: bool = False):
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)
        self.gamma = nn.Parameter(torch.ones(()) if scalar else torch.ones(8))

    def forward(self, x):
        return x + self.proj(torch.relu(x)) * self.gamma


def test_folds_layer_scale_into_linear_on_tokens():
    assert_fires(tiny_graph(TokenScale(), (1, 5, 8)), "fold_layer_scale", {"aten.mul": -1}, matched=1)


def test_folds_scalar_scale_into_linear():
    assert_fires(tiny_graph(TokenScale(scalar=True), (1, 5, 8)), "fold_layer_scale", {"aten.mul": -1}, matched=1)


class PoolScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.ls = nn.Parameter(torch.ones(4, 1, 1))

    def forward(self, x):
        return x + self.ls * (self.pool(x) - x)


def test_does_not_fire_when_scaled_value_is_a_pool_mixer():
    assert_not_fires(tiny_graph(PoolScale(), (1, 4, 5, 5)), "fold_layer_scale", "not a conv/linear output")


class SharedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.ls = nn.Parameter(torch.ones(4, 1, 1))

    def forward(self, x):
        y = self.conv(x)
        return self.ls * y + y


def test_does_not_fire_when_conv_output_has_a_second_user():
    assert_not_fires(tiny_graph(SharedOutput(), (1, 4, 5, 5)), "fold_layer_scale", "second user")


class SpatialScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.scale = nn.Parameter(torch.ones(1, 1, 5, 5))

    def forward(self, x):
        return self.conv(x) * self.scale


def test_does_not_fire_when_scale_varies_along_a_spatial_axis():
    assert_not_fires(tiny_graph(SpatialScale(), (1, 4, 5, 5)), "fold_layer_scale", "not per output channel")
