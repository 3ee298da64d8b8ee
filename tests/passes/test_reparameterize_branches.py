"""reparameterize_branches: RepVGG / MobileOne k×k + 1×1 + identity(-BN) branches → one conv."""

from __future__ import annotations

import torch
from _helper import assert_fires, assert_not_fires, tiny_graph
from torch import nn


def conv_bn(cin, cout, k, stride=1, padding=0, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout))


class RepVGGBlock(nn.Module):
    def __init__(self, c=6, cout=None, stride=1, groups=1, n_kxk=1, identity=True):
        super().__init__()
        cout = cout or c
        self.dense = nn.ModuleList([conv_bn(c, cout, 3, stride, 1, groups) for _ in range(n_kxk)])
        self.one = conv_bn(c, cout, 1, stride, 0, groups)
        self.skip = nn.BatchNorm2d(c) if identity and c == cout and stride == 1 else None

    def forward(self, x):
        y = self.one(x)
        for b in self.dense:
            y = y + b(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return torch.relu(y)


def test_merges_repvgg_3x3_1x1_and_identity_bn_into_one_conv():
    g = tiny_graph(RepVGGBlock(), (1, 6, 7, 7))
    delta = {"aten.conv2d": -1, "aten.batch_norm": -3, "aten.add": -2}
    _, rec = assert_fires(g, "reparameterize_branches", delta, matched=1)
    assert rec.params_folded == 2


def test_merges_mobileone_depthwise_branches_with_skip_bn():
    g = tiny_graph(RepVGGBlock(groups=6, n_kxk=2), (1, 6, 6, 6))
    delta = {"aten.conv2d": -2, "aten.batch_norm": -4, "aten.add": -3}
    assert_fires(g, "reparameterize_branches", delta, matched=1)


def test_merges_strided_channel_changing_block_without_identity():
    g = tiny_graph(RepVGGBlock(c=4, cout=8, stride=2), (1, 4, 9, 9))
    assert_fires(g, "reparameterize_branches", {"aten.conv2d": -1, "aten.batch_norm": -2, "aten.add": -1})


class Residual1d(nn.Module):
    """LMUFormer tokenizer end: x + rpe_conv(x)."""

    def __init__(self):
        super().__init__()
        self.rpe = nn.Conv1d(5, 5, 3, padding=1, bias=False)

    def forward(self, x):
        return x + self.rpe(x)


def test_merges_residual_identity_into_conv1d():
    assert_fires(tiny_graph(Residual1d(), (1, 5, 9)), "reparameterize_branches", {"aten.add": -1}, matched=1)


class Broken(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1, padding=1 if mode == "shift" else 0)
        self.mode = mode

    def forward(self, x):
        if self.mode == "shift":
            return self.a(x) + self.b(x)[..., 1:-1, 1:-1]
        if self.mode == "relu":
            return self.a(x) + torch.relu(self.b(x))
        if self.mode == "input":
            return self.a(x) + self.b(x * 2)
        y = self.b(x)
        return self.a(x) + y, y


def test_does_not_fire_when_a_branch_goes_through_a_nonlinearity():
    assert_not_fires(tiny_graph(Broken("relu"), (1, 4, 5, 5)), "reparameterize_branches")


def test_does_not_fire_when_branches_read_different_inputs():
    assert_not_fires(tiny_graph(Broken("input"), (1, 4, 5, 5)), "reparameterize_branches")


def test_does_not_fire_when_a_branch_output_has_another_user():
    assert_not_fires(tiny_graph(Broken("user"), (1, 4, 5, 5)), "reparameterize_branches", "another user")


class Misaligned(nn.Module):
    """Stride 3 on 4×4: a 1×1 (pad 0) and a 3×3 (pad 2) give equal shapes but read shifted windows."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1, stride=3), nn.Conv2d(4, 4, 3, stride=3, padding=2)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_does_not_fire_when_windows_are_not_aligned():
    assert_not_fires(tiny_graph(Misaligned(), (1, 4, 4, 4)), "reparameterize_branches", "shifted window")
