"""PoolFormer: sizes, official names, GroupNorm(1, C), pool − x, block and head algebra, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeformer.models import get_spec

torch.set_num_threads(1)

SIZES = ["s12", "s24", "s36", "m36", "m48"]
COMPUTED_PARAMS = {"s12": 11.915e6, "s24": 21.389e6, "s36": 30.863e6, "m36": 56.173e6, "m48": 73.473e6}
LAYER_SCALE_INIT = {"s12": 1e-5, "s24": 1e-5, "s36": 1e-6, "m36": 1e-6, "m48": 1e-6}


@pytest.fixture(scope="module")
def models():
    return {s: get_spec(f"poolformer_{s}").build() for s in SIZES}


def tiny(**kw):
    torch.manual_seed(0)
    return get_spec("poolformer_tiny").build(**kw)


@pytest.mark.parametrize("size", SIZES)
def test_param_count_matches_spec_and_published(models, size):
    spec = get_spec(f"poolformer_{size}")
    n = sum(p.numel() for p in models[size].parameters())
    assert n == spec.params
    assert abs(n - COMPUTED_PARAMS[size]) / COMPUTED_PARAMS[size] < 5e-4
    assert abs(n - spec.published_params) <= 0.5e6  # the README rounds to whole millions


def test_param_count_matches_spec_for_tiny():
    assert sum(p.numel() for p in tiny().parameters()) == get_spec("poolformer_tiny").params


@pytest.mark.parametrize("size", SIZES)
def test_layer_scale_init_follows_size(models, size):
    ls = models[size].network[0][0].layer_scale_1
    assert torch.all(ls == LAYER_SCALE_INIT[size])


def test_state_dict_uses_official_key_names(models):
    sd = models["s12"].state_dict()
    assert len(sd) == 132
    for key in (
        "patch_embed.proj.weight",
        "network.0.0.norm1.weight",
        "network.0.1.norm2.bias",
        "network.0.0.mlp.fc1.weight",
        "network.6.1.mlp.fc2.bias",
        "network.2.1.layer_scale_1",
        "network.4.5.layer_scale_2",
        "network.1.proj.weight",
        "network.5.proj.bias",
        "norm.weight",
        "head.weight",
    ):
        assert key in sd, key
    assert sd["patch_embed.proj.weight"].shape == (64, 3, 7, 7)
    assert sd["network.0.0.mlp.fc1.weight"].shape == (256, 64, 1, 1)
    assert not any("running_mean" in k for k in sd)  # no BatchNorm anywhere


def test_group_norm_normalises_over_channels_and_space_per_sample():
    norm = tiny().network[0][0].norm1
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        x = torch.randn(2, 16, 5, 5) * 3 + 1
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        expected = (x - mu) / torch.sqrt(var + 1e-5) * norm.weight.view(-1, 1, 1) + norm.bias.view(-1, 1, 1)
        torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_pooling_mixer_excludes_padding_at_borders():
    mixer = tiny().network[0][0].token_mixer
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = mixer(x)[0, 0]
    assert y[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4 - 0)  # corner averages 4 pixels
    assert y[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6 - 1)  # edge averages 6
    assert y[1, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9 - 5)


def test_block_adds_scaled_pool_of_norm_then_scaled_mlp_of_norm():
    block = tiny().network[0][0]
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
        x = torch.randn(1, 16, 6, 6)
        n1 = F.group_norm(x, 1, block.norm1.weight, block.norm1.bias)
        y = x + block.layer_scale_1.view(-1, 1, 1) * (F.avg_pool2d(n1, 3, 1, 1, count_include_pad=False) - n1)
        n2 = F.group_norm(y, 1, block.norm2.weight, block.norm2.bias)
        hidden = F.gelu(F.conv2d(n2, block.mlp.fc1.weight, block.mlp.fc1.bias))
        expected = y + block.layer_scale_2.view(-1, 1, 1) * F.conv2d(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_head_normalises_the_map_before_pooling():
    model = tiny().eval()
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
        x = torch.randn(2, 3, 32, 32)
        feats = model.patch_embed(x)
        for stage in model.network:
            feats = stage(feats)
        assert feats.shape[-2:] == (2, 2)
        pooled = F.group_norm(feats, 1, model.norm.weight, model.norm.bias).mean((-2, -1))
        torch.testing.assert_close(model(x), model.head(pooled), atol=1e-6, rtol=1e-5)
        # timm's order (pool, then normalise) is a different function
        timm_order = F.layer_norm(feats.mean((-2, -1)), (feats.shape[1],), model.norm.weight, model.norm.bias)
        assert not torch.allclose(model(x), model.head(timm_order), atol=1e-4)


def test_torch_export_of_tiny_matches_eager():
    model = tiny(layer_scale_init=1.0).eval()
    x = get_spec("poolformer_tiny").example_inputs()[0]
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=0)


def test_s12_macs_at_224_match_published_and_spec():
    ir = pytest.importorskip("edgeformer.ir")
    spec = get_spec("poolformer_s12")
    macs = ir.export(spec.build(), spec.example_inputs()).summary().total_macs
    assert abs(macs - 1.8e9) / 1.8e9 < 0.05
    assert macs == spec.macs


def test_tiny_macs_match_spec():
    ir = pytest.importorskip("edgeformer.ir")
    spec = get_spec("poolformer_tiny")
    assert ir.export(spec.build(), spec.example_inputs()).summary().total_macs == spec.macs


@pytest.mark.parametrize("size", SIZES)
def test_recorded_macs_are_within_5_percent_of_published(size):
    spec = get_spec(f"poolformer_{size}")
    assert abs(spec.macs - spec.published_macs) / spec.published_macs < 0.05


@pytest.mark.parametrize("name", [f"poolformer_{s}" for s in (*SIZES, "tiny")])
def test_registry_entry_is_complete(name):
    spec = get_spec(name)
    assert spec.family == "poolformer"
    assert "arXiv:2111.11418" in spec.paper
    assert spec.checkpoint_layouts == ("official", "timm")
    assert spec.params and spec.macs and spec.num_classes
