"""fold_batchnorm: BN after conv1d/2d (grouped, depthwise, bias-free) or linear; BN before a conv/linear."""

from __future__ import annotations

import torch
from _helper import assert_fires, assert_not_fires, randomize, tiny_graph
from torch import nn

from edgeformer.ir import Graph


class ConvBN(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_folds_bn_into_preceding_conv2d_with_bias():
    g = tiny_graph(ConvBN(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)), (1, 3, 9, 9))
    _, rec = assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)
    assert rec.params_folded == 2 and "into the layer before" in rec.details["explain"][0]


def test_folds_bn_into_preceding_depthwise_conv_when_conv_has_no_bias():
    g = tiny_graph(ConvBN(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6)), (1, 6, 7, 7))
    new, _ = assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)
    conv = next(n for n in new.program.graph.nodes if n.name == "conv2d")
    assert conv.args[2] is not None  # the BN shift became a new bias parameter


def test_folds_bn_into_preceding_grouped_conv1d():
    g = tiny_graph(ConvBN(nn.Conv1d(8, 12, 3, padding=1, groups=4), nn.BatchNorm1d(12)), (2, 8, 10))
    assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)


def test_folds_bn1d_into_preceding_linear():
    g = tiny_graph(ConvBN(nn.Linear(5, 7), nn.BatchNorm1d(7)), (3, 5))
    assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)


class TokenLinearBN(nn.Module):
    """Linear on tokens (B, N, C) then BatchNorm1d over channels via transposes."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(x).transpose(1, 2)).transpose(1, 2)


def test_folds_bn_into_linear_when_tokens_are_transposed():
    g = tiny_graph(TokenLinearBN(), (1, 5, 6))
    assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)


class PreBN(nn.Module):
    """LMUFormer tokenizer shape: conv → ReLU → BN → next layer."""

    def __init__(self, nxt: nn.Module, conv1d: bool = True):
        super().__init__()
        c = 6
        self.conv = nn.Conv1d(4, c, 3, padding=1, bias=False) if conv1d else nn.Linear(4, c)
        self.bn = nn.BatchNorm1d(c)
        self.nxt = nxt

    def forward(self, x):
        return self.nxt(self.bn(torch.relu(self.conv(x))))


def test_folds_bn_into_following_1x1_conv_when_relu_precedes():
    g = tiny_graph(PreBN(nn.Conv1d(6, 5, 1)), (1, 4, 12))
    _, rec = assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)
    assert "into the layer(s) after" in rec.details["explain"][-1]


def test_folds_bn_into_following_linear_when_relu_precedes():
    g = tiny_graph(PreBN(nn.Linear(6, 3), conv1d=False), (4, 4))
    assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)


def test_folds_bn_into_following_unpadded_kxk_conv():
    g = tiny_graph(PreBN(nn.Conv1d(6, 5, 3, padding=0)), (1, 4, 12))
    assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1}, matched=1)


def test_folds_bn_before_padded_conv_as_exact_border_bias_map():
    g = tiny_graph(PreBN(nn.Conv1d(6, 5, 3, padding=1)), (1, 4, 12))
    new, rec = assert_fires(g, "fold_batchnorm", {"aten.batch_norm": -1, "aten.add": 1}, matched=1)
    maps = [k for k in new.program.state_dict if k.endswith("bias_map")]
    assert len(maps) == 1 and tuple(new.program.state_dict[maps[0]].shape) == (1, 5, 12)
    # the map really varies at the borders: a plain bias could not be exact
    m = new.program.state_dict[maps[0]][0]
    assert float((m[:, 0] - m[:, 5]).abs().max()) > 1e-3


def test_does_not_fire_when_bn_precedes_padded_conv_without_border_bias_map():
    g = tiny_graph(PreBN(nn.Conv1d(6, 5, 3, padding=1)), (1, 4, 12))
    assert_not_fires(g, "fold_batchnorm", "not exact at borders", border_bias_map=False)


class SecondUser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(self.bn(y)) + y


def test_does_not_fire_when_conv_output_has_a_second_user():
    g = tiny_graph(SecondUser(), (1, 4, 5, 5))
    assert_not_fires(g, "fold_batchnorm", "conv output has a second user")


def test_does_not_fire_when_bn_sits_between_nonlinearities():
    m = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.GELU())
    g = tiny_graph(m, (1, 4, 5, 5))
    assert_not_fires(g, "fold_batchnorm", "not a linear or conv")


def test_does_not_fire_when_bn_is_in_training_mode():
    model = randomize(ConvBN(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))).train()
    ep = torch.export.export(model, (torch.randn(2, 3, 5, 5),), strict=False)
    assert_not_fires(Graph(ep), "fold_batchnorm", "training mode")
