"""EfficientFormer V1: sizes, official names, attention layout and bias, head, pooling, export."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from edgeformer.models import get_spec
from edgeformer.models.efficientformer import Attention, Flat, Meta3D, Meta4D

torch.set_num_threads(1)

SIZES = ["l1", "l3", "l7"]
KEY_COUNTS = {"l1": 281, "l3": 457, "l7": 649}
COMPUTED_PARAMS = {"l1": 12.290e6, "l3": 31.406e6, "l7": 82.229e6}  # docs/architectures.md §1
# index of the Flat in network.6 (blocks before it are Meta4D, after it Meta3D)
FLAT_INDEX = {"l1": 3, "l3": 2, "l7": 0}


@pytest.fixture(scope="module")
def models():
    return {s: get_spec(f"efficientformer_{s}").build() for s in SIZES}


def tiny(**kw):
    torch.manual_seed(0)
    return get_spec("efficientformer_tiny").build(**kw)


@pytest.mark.parametrize("size", SIZES)
def test_param_count_matches_spec_and_published(models, size):
    spec = get_spec(f"efficientformer_{size}")
    n = sum(p.numel() for p in models[size].parameters())
    assert n == spec.params
    assert abs(n - COMPUTED_PARAMS[size]) / COMPUTED_PARAMS[size] < 5e-4
    assert abs(n - spec.published_params) / spec.published_params < 5e-3


def test_param_count_matches_spec_for_tiny():
    spec = get_spec("efficientformer_tiny")
    assert sum(p.numel() for p in tiny().parameters()) == spec.params


@pytest.mark.parametrize("size", SIZES)
def test_state_dict_uses_official_key_names(models, size):
    sd = models[size].state_dict()
    vit = f"network.6.{FLAT_INDEX[size] + 1}"  # first Meta3D
    assert len(sd) == KEY_COUNTS[size]
    for key in (
        "patch_embed.0.weight",
        "patch_embed.1.running_var",
        "patch_embed.3.bias",
        "patch_embed.4.num_batches_tracked",
        "network.0.0.layer_scale_1",
        "network.0.0.mlp.fc1.weight",
        "network.0.0.mlp.norm1.running_mean",
        "network.0.0.mlp.norm2.weight",
        "network.1.proj.weight",
        "network.5.norm.running_var",
        f"{vit}.token_mixer.qkv.weight",
        f"{vit}.token_mixer.attention_bias_idxs",
        f"{vit}.norm1.weight",
        "norm.weight",
        "head.weight",
        "dist_head.bias",
    ):
        assert key in sd, key
    assert sd["network.0.0.layer_scale_1"].shape == (sd["patch_embed.4.weight"].shape[0],)
    assert not any(k.startswith(("stem.", "stages.")) for k in sd)


@pytest.mark.parametrize("size", SIZES)
def test_last_stage_puts_flat_between_meta4d_and_meta3d(models, size):
    last = models[size].network[6]
    f = FLAT_INDEX[size]
    assert isinstance(last[f], Flat)
    assert all(isinstance(b, Meta4D) for b in list(last)[:f])
    assert all(isinstance(b, Meta3D) for b in list(last)[f + 1 :])


def test_attention_defaults_match_official_shapes(models):
    attn = models["l1"].network[6][4].token_mixer
    assert attn.qkv.weight.shape == (1536, 448)  # 8 heads × (32 + 32 + 128)
    assert attn.proj.weight.shape == (448, 1024)
    assert attn.attention_biases.shape == (8, 49)
    assert attn.attention_bias_idxs.shape == (49, 49)
    assert attn.scale == 32**-0.5
    assert "attention_bias_idxs" in dict(attn.named_buffers())
    assert "token_mixer.attention_bias_idxs" in models["l1"].network[6][4].state_dict()  # persistent


def _first_appearance_index(res: int) -> torch.Tensor:
    """The official enumeration: offsets numbered in order of first appearance."""
    points = list(itertools.product(range(res), range(res)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            offsets.setdefault(off, len(offsets))
            idxs.append(offsets[off])
    return torch.tensor(idxs).view(len(points), len(points))


@pytest.mark.parametrize("res", [7, 4])
def test_attention_bias_index_is_abs_row_offset_times_res_plus_abs_col_offset(res):
    idx = Attention(16, key_dim=4, num_heads=2, resolution=res).attention_bias_idxs
    assert torch.equal(idx, _first_appearance_index(res))
    i, j = 10 % (res * res), (res * res) - 1
    (ri, ci), (rj, cj) = divmod(i, res), divmod(j, res)
    assert idx[i, j] == abs(ri - rj) * res + abs(ci - cj)
    assert int(idx.max()) == res * res - 1


def _reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Per-head loop: each head's qkv rows are [q(kd) | k(kd) | v(d)] (head-major)."""
    kd, d, h = attn.key_dim, attn.d, attn.num_heads
    W, b = attn.qkv.weight, attn.qkv.bias
    per = 2 * kd + d
    outs = []
    for head in range(h):
        rows = slice(head * per, (head + 1) * per)
        y = x @ W[rows].T + b[rows]  # (B, N, per)
        q, k, v = y[..., :kd], y[..., kd : 2 * kd], y[..., 2 * kd :]
        bias = attn.attention_biases[head][attn.attention_bias_idxs]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(kd) + bias, dim=-1)
        outs.append(a @ v)
    return attn.proj(torch.cat(outs, dim=-1))


def test_qkv_layout_is_head_major_interleaved():
    torch.manual_seed(0)
    attn = Attention(24, key_dim=4, num_heads=3, attn_ratio=2, resolution=3)
    with torch.no_grad():
        attn.attention_biases.normal_()
        attn.qkv.bias.normal_()
    x = torch.randn(2, 9, 24)
    got = attn(x)
    torch.testing.assert_close(got, _reference_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_eval_output_is_mean_of_head_and_dist_head():
    model = tiny().eval()
    with torch.no_grad():
        model.dist_head.weight.normal_()
        x = torch.randn(2, 3, 32, 32)
        z = model.forward_features(x)
        head, dist = model.head(z), model.dist_head(z)
        out = model(x)
    torch.testing.assert_close(out, (head + dist) / 2)
    assert not torch.allclose(out, head)


def test_train_mode_returns_head_and_dist_head_tuple():
    model = tiny().train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (2, 10)
    assert not torch.allclose(out[0], out[1])


def test_pooling_mixer_excludes_padding_at_borders():
    block = tiny().network[0][0]
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    y = block.token_mixer(x)[0, 0]
    assert y[0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4 - 0)  # corner: 4 real pixels
    assert y[0, 1] == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6 - 1)  # edge: 6
    assert y[1, 1] == pytest.approx(sum(range(9)) / 9 - 4)  # centre: 9


def test_meta4d_adds_scaled_pool_minus_x_then_scaled_mlp():
    block = tiny().network[0][0].eval()
    with torch.no_grad():
        block.layer_scale_1.normal_()
        block.layer_scale_2.normal_()
        x = torch.randn(1, 16, 6, 6)
        pool = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        y = x + block.layer_scale_1.view(-1, 1, 1) * (pool - x)
        expected = y + block.layer_scale_2.view(-1, 1, 1) * block.mlp(y)
        torch.testing.assert_close(block(x), expected)


def test_attention_bias_is_read_from_current_table_after_eval():
    model = tiny(layer_scale_init=1.0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if isinstance(m, Attention):
                m.attention_biases.normal_(std=5.0)
        after = model(x)
    assert not torch.allclose(before, after)


def test_tiny_attention_runs_on_4x4_grid():
    model = tiny()
    attn = model.network[6][2].token_mixer
    assert attn.attention_biases.shape == (4, 16)
    shapes = []
    model.network[6][1].register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 16, 64)]


def test_torch_export_of_tiny_matches_eager():
    model = tiny().eval()
    x = get_spec("efficientformer_tiny").example_inputs()[0]
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=0)


def test_l1_macs_at_224_match_published_and_spec():
    ir = pytest.importorskip("edgeformer.ir")
    spec = get_spec("efficientformer_l1")
    macs = ir.export(spec.build(), spec.example_inputs()).summary().total_macs
    assert abs(macs - 1.3e9) / 1.3e9 < 0.05
    assert macs == spec.macs


def test_tiny_macs_match_spec():
    ir = pytest.importorskip("edgeformer.ir")
    spec = get_spec("efficientformer_tiny")
    assert ir.export(spec.build(), spec.example_inputs()).summary().total_macs == spec.macs


@pytest.mark.parametrize("name", [f"efficientformer_{s}" for s in (*SIZES, "tiny")])
def test_registry_entry_is_complete(name):
    spec = get_spec(name)
    assert spec.family == "efficientformer"
    assert "arXiv:2206.01191" in spec.paper
    assert spec.checkpoint_layouts == ("official", "timm")
    assert spec.params and spec.macs and spec.num_classes
    expected = (1, 3, 32, 32) if name.endswith("tiny") else (1, 3, 224, 224)
    assert spec.input_shapes == (expected,)
    if not name.endswith("tiny"):
        assert spec.num_classes == 1000 and spec.published_params and spec.published_macs
