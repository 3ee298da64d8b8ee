"""fold_pool_mixer: pool(γx̂+β) − (γx̂+β) = γ(pool(x̂) − x̂); optional exact depthwise-conv and branch-conv forms."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from _helper import assert_fires, assert_not_fires, run_pass, tiny_graph
from torch import nn

from edgeformer.errors import UserError


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


def _conv_weights(graph):
    return sorted((k, v) for k, v in graph.program.state_dict.items() if k.startswith("pool_branch") and v.dim() == 4)


def test_distributes_the_layer_scale_over_two_branch_convs_when_asked():
    """x + c ⊙ (pool(y) − y) → dw1x1(pool(y), c) + (dw1x1(y, −c) + x), with c = ls1·γ."""
    block = PoolBlock()
    g = tiny_graph(block, (1, 6, 7, 5))
    delta = {"aten.sub": -1, "aten.mul": -1, "aten.unsqueeze": -2, "aten.conv2d": 2, "aten.add": 1}
    new, _ = assert_fires(g, "fold_pool_mixer", delta, matched=1, branch_convs=True)
    assert _gn_args(new) == [(None, None)]
    (_, neg), (_, pos) = _conv_weights(new)  # "neg_scale" sorts before "scale"
    c = (block.layer_scale_1 * block.norm.weight).detach()
    torch.testing.assert_close(pos.reshape(-1), c, rtol=1e-6, atol=0)
    torch.testing.assert_close(neg.reshape(-1), -c, rtol=1e-6, atol=0)


def test_branch_convs_without_a_norm_and_without_a_residual_add():
    """EfficientFormer's Meta4D mixer (no norm); a mixer whose output is not added to anything."""

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
            self.layer_scale_1 = nn.Parameter(torch.ones(6))

        def forward(self, x):
            return torch.relu(self.layer_scale_1.view(-1, 1, 1) * (self.pool(x) - x))

    delta = {"aten.sub": -1, "aten.mul": -1, "aten.view": -1, "aten.conv2d": 2, "aten.add": 1}
    assert_fires(tiny_graph(Bare(), (1, 6, 4, 4)), "fold_pool_mixer", delta, matched=1, branch_convs=True)
    g = tiny_graph(PoolBlock(norm=False), (1, 6, 5, 5))
    delta = {"aten.sub": -1, "aten.mul": -1, "aten.unsqueeze": -2, "aten.conv2d": 2, "aten.add": 1}
    assert_fires(g, "fold_pool_mixer", delta, matched=1, branch_convs=True)


def test_dw_conv_and_branch_convs_are_exclusive():
    with pytest.raises(UserError, match="pick one"):
        run_pass(tiny_graph(PoolBlock(), (1, 6, 5, 5)), "fold_pool_mixer", dw_conv=True, branch_convs=True)


def test_branch_convs_let_onnx_runtime_keep_the_mixer_in_its_blocked_layout(tmp_path):
    """Why ORT's pipeline turns it on: in ORT's optimized graph no Sub/Mul/Add is left (both adds ride
    in NCHWc convs) and no reorder sits between the pool and the residual stream."""
    import onnx
    import onnxruntime as ort

    from edgeformer.targets.onnxruntime import export_onnx

    def optimized(graph, name):
        export_onnx(graph, tmp_path / f"{name}.onnx")
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(tmp_path / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)

    class Stream(nn.Module):  # conv → mixer → conv: the residual stream between two NCHWc convs
        def __init__(self, d=16):
            super().__init__()
            self.inp, self.mix, self.out = nn.Conv2d(d, d, 1), PoolBlock(d, norm=False), nn.Conv2d(d, d, 1)

        def forward(self, x):
            return self.out(self.mix(self.inp(x)))

    g = tiny_graph(Stream(), (1, 16, 8, 8))
    plain, _ = run_pass(g, "fold_pool_mixer")
    branched, _ = run_pass(g, "fold_pool_mixer", branch_convs=True)
    before, after = optimized(plain, "plain"), optimized(branched, "branched")
    assert before["Sub"] == 1 and before["ReorderOutput"] + before["ReorderInput"] > 2  # the old cost
    assert after["Sub"] == after["Mul"] == after["Add"] == 0
    assert after["ReorderOutput"] == after["ReorderInput"] == 1  # only at the model's input and output
