"""fold_repbn: RepBN(x) = BN(x) + α·x (SLAB) folded into the linears reading it."""

from __future__ import annotations

import torch
from _helper import assert_fires, assert_not_fires, randomize, tiny_graph
from torch import nn

from edgeformer.ir import Graph


class RepBN(nn.Module):
    """SLAB classification/models/prepbn.py: BatchNorm1d over the channels of (B, N, C)."""

    def __init__(self, c: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x):
        return self.bn(x.transpose(1, 2)).transpose(1, 2) + self.alpha * x


class NormThenQKV(nn.Module):
    def __init__(self, c=8, split=False, residual=False, pad=False):
        super().__init__()
        self.norm = RepBN(c)
        self.qkv = nn.ModuleList([nn.Linear(c, c) for _ in range(3)]) if split else nn.Linear(c, 3 * c)
        self.split, self.residual, self.pad = split, residual, pad

    def forward(self, x):
        y = self.norm(x)
        if self.pad:
            y = nn.functional.pad(y, (0, 0, 0, 2))
        out = torch.cat([f(y) for f in self.qkv], -1) if self.split else self.qkv(y)
        return (out, y) if self.residual else out


def test_folds_repbn_into_following_qkv_linear():
    g = tiny_graph(NormThenQKV(), (2, 5, 8))
    delta = {"aten.batch_norm": -1, "aten.add": -1, "aten.mul": -1, "aten.transpose": -2}
    _, rec = assert_fires(g, "fold_repbn", delta, matched=1)
    assert rec.params_folded == 2


def test_folds_repbn_into_every_reading_linear():
    g = tiny_graph(NormThenQKV(split=True), (2, 5, 8))
    _, rec = assert_fires(
        g, "fold_repbn", {"aten.batch_norm": -1, "aten.add": -1, "aten.mul": -1, "aten.transpose": -2}, matched=1
    )
    assert rec.params_folded == 6


class PlainRepBN(nn.Module):
    """BN(x) + x on (B, C) features (α = 1, no multiply)."""

    def __init__(self):
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.bn(x) + x)


def test_folds_bn_plus_identity_when_alpha_is_implicit():
    assert_fires(tiny_graph(PlainRepBN(), (4, 6)), "fold_repbn", {"aten.batch_norm": -1, "aten.add": -1}, matched=1)


def test_does_not_fire_when_sum_is_also_an_output():
    assert_not_fires(tiny_graph(NormThenQKV(residual=True), (2, 5, 8)), "fold_repbn", "not a linear")


def test_does_not_fire_when_tokens_are_padded_after_the_norm():
    """The detection backbone pads after the norm: padded tokens must stay 0, not become the shift."""
    assert_not_fires(tiny_graph(NormThenQKV(pad=True), (2, 5, 8)), "fold_repbn", "not a linear")


def test_does_not_fire_when_bn_is_in_training_mode():
    model = randomize(NormThenQKV()).train()
    ep = torch.export.export(model, (torch.randn(2, 5, 8),), strict=False)
    assert_not_fires(Graph(ep), "fold_repbn", "training mode")
