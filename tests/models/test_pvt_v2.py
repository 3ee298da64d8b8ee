"""PVTv2: parameter count, spatial-reduction attention, pluggable attention, export."""

from __future__ import annotations

import pytest
import torch

from edgeformer import ir
from edgeformer.models import build_model, get_spec
from edgeformer.models.pvt_v2 import PyramidVisionTransformerV2, SRAttention, pvt_v2_b0

# many small ops: one torch thread (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_pvt_v2_b0_has_3_666_760_parameters_for_1000_classes():
    assert sum(p.numel() for p in pvt_v2_b0().parameters()) == 3_666_760


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_tiny"])
def test_registered_param_count_equals_the_built_model(name):
    spec = get_spec(name)
    assert spec.params == sum(p.numel() for p in build_model(name).parameters())


def test_pvt_v2_tiny_classifies_32x32_images_into_10_classes():
    spec = get_spec("pvt_v2_tiny")
    assert spec.input_shapes == ((1, 3, 32, 32),) and "tiny" in spec.tags
    assert build_model("pvt_v2_tiny")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_state_dict_uses_the_official_key_names():
    keys = set(pvt_v2_b0().state_dict())
    for key in (
        "patch_embed1.proj.weight", "patch_embed1.norm.weight", "block1.0.attn.q.weight", "block1.0.attn.kv.bias",
        "block1.0.attn.sr.weight", "block1.0.attn.norm.weight", "block1.1.mlp.dwconv.dwconv.weight",
        "block4.1.mlp.fc2.weight", "norm4.weight", "head.weight",
    ):  # fmt: skip
        assert key in keys, key
    assert "block4.0.attn.sr.weight" not in keys  # sr ratio 1 in stage 4


def test_spatial_reduction_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    attn = SRAttention(dim=16, num_heads=2, sr_ratio=2).eval()
    x = torch.randn(2, 64, 16)
    B, N, C, h = 2, 64, 16, 2
    q = attn.q(x).reshape(B, N, h, C // h).transpose(1, 2)
    reduced = attn.norm(attn.sr(x.transpose(1, 2).reshape(B, C, 8, 8)).flatten(2).transpose(1, 2))
    assert reduced.shape == (2, 16, 16)  # 8×8 tokens → 4×4 keys/values
    k, v = attn.kv(reduced).reshape(B, 16, 2, h, C // h).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) * (C // h) ** -0.5, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x, 8, 8), expected, atol=1e-5, rtol=0)


def test_attention_builder_hook_chooses_the_attention_of_each_stage():
    calls = []

    class Marker(torch.nn.Module):
        def forward(self, x, H, W):
            return torch.zeros_like(x)

    def marker(dim, heads, sr, qkv_bias):
        calls.append((dim, heads, sr, qkv_bias))
        return Marker()

    model = PyramidVisionTransformerV2(
        img_size=32, num_classes=10, embed_dims=(8, 16), depths=(1, 2), num_heads=(1, 2), mlp_ratios=(2, 2),
        sr_ratios=(2, 1), attn_layers=[None, marker],
    )  # fmt: skip
    assert calls == [(16, 2, 1, True), (16, 2, 1, True)]
    assert isinstance(model.block1[0].attn, SRAttention)
    assert all(isinstance(b.attn, Marker) for b in model.block2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_mismatched_stage_lists_are_rejected():
    with pytest.raises(ValueError, match="one entry per stage"):
        PyramidVisionTransformerV2(
            embed_dims=(8, 16), depths=(1,), num_heads=(1, 2), mlp_ratios=(2, 2), sr_ratios=(1, 1)
        )


def test_block_norms_use_eps_1e_6():
    model = build_model("pvt_v2_tiny")
    assert model.block1[0].norm1.eps == 1e-6 and model.norm4.eps == 1e-6


def test_torch_export_of_pvt_v2_tiny_matches_eager_within_1e_5():
    spec = get_spec("pvt_v2_tiny")
    model = build_model("pvt_v2_tiny")
    graph = ir.export(model, spec.example_inputs())
    x = torch.randn(2, 3, 32, 32)[:1]
    torch.testing.assert_close(graph.run([x])[0], model(x), atol=1e-5, rtol=0)
    assert "aten.scaled_dot_product_attention" in graph.summary().histogram
    assert graph.summary().total_macs == spec.macs


def test_pvt_v2_b0_macs_match_the_registry_and_the_published_0_6_gflops():
    spec = get_spec("pvt_v2_b0")
    assert ir.export(spec.build(), spec.example_inputs()).summary().total_macs == spec.macs
    assert abs(spec.macs - spec.published_macs) / spec.published_macs < 0.06
