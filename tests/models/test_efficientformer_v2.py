"""EfficientFormerV2: sizes, official names, Attention4D (talking heads, stride 2), downsampling
attention, head, export."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from edgeformer.models import get_spec
from edgeformer.models.efficientformer_v2 import (
    FFN,
    Attention4D,
    Attention4DDownsample,
    AttnFFN,
)

torch.set_num_threads(1)

SIZES = ["s0", "s1", "s2", "l"]
# timm model cards (timm loads the official weights, so the architecture is identical)
TIMM_PARAMS = {"s0": 3.6e6, "s1": 6.2e6, "s2": 12.7e6, "l": 26.3e6}
NUM_VIT = {"s0": 2, "s1": 2, "s2": 4, "l": 6}


@pytest.fixture(scope="module")
def models():
    return {s: get_spec(f"efficientformer_v2_{s}").build() for s in SIZES}


def tiny(**kw):
    torch.manual_seed(0)
    return get_spec("efficientformer_v2_tiny").build(**kw)


@pytest.mark.parametrize("size", SIZES)
def test_param_count_matches_spec_and_published(models, size):
    spec = get_spec(f"efficientformer_v2_{size}")
    n = sum(p.numel() for p in models[size].parameters())
    assert n == spec.params
    assert abs(n - TIMM_PARAMS[size]) / TIMM_PARAMS[size] < 5e-3
    # The README figures (3.5/6.1/12.6/26.1M) sit 0.9-2.9% below sum(numel): they are the
    # authors' profiler count, checked in the next test.
    assert abs(n - spec.published_params) / spec.published_params < 0.03


# The authors' toolbox.py count (conv/linear/LN weights + their bias rule; no BN, layer scale or
# attention bias), the one their README quotes.
AUTHORS_PARAMS = {"s0": 3_534_553, "s1": 6_092_480, "s2": 12_551_405, "l": 26_068_650}


@pytest.mark.parametrize("size", SIZES)
def test_authors_param_count_is_within_1_percent_of_published(models, size):
    from edgeformer.models.efficientformer_v2 import authors_param_count

    n = authors_param_count(models[size], torch.randn(1, 3, 224, 224))
    assert n == AUTHORS_PARAMS[size]
    published = get_spec(f"efficientformer_v2_{size}").published_params
    assert abs(n - published) / published < 0.01


def test_authors_param_count_leaves_out_batchnorm_and_layer_scales_but_counts_dist_head():
    from edgeformer.models.efficientformer_v2 import authors_param_count

    model = tiny()
    n = authors_param_count(model, torch.randn(1, 3, 32, 32))
    bn = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert n < sum(p.numel() for p in model.parameters()) - bn  # no BN, layer scales, biases tables
    head = model.dist_head.weight.numel() + model.dist_head.bias.numel()
    assert authors_param_count(tiny(distillation=False), torch.randn(1, 3, 32, 32)) == n - head


def test_param_count_matches_spec_for_tiny():
    assert sum(p.numel() for p in tiny().parameters()) == get_spec("efficientformer_v2_tiny").params


@pytest.mark.parametrize("size", SIZES)
def test_last_num_vit_blocks_of_stages_2_and_3_are_attention(models, size):
    net = models[size].network
    for stage in (net[4], net[6]):
        kinds = [type(b) for b in stage]
        n = NUM_VIT[size]
        assert kinds[-n:] == [AttnFFN] * n and set(kinds[:-n]) == {FFN}
    assert all(isinstance(b, FFN) for b in (*net[0], *net[2]))
    assert net[4][-1].token_mixer.stride_conv is not None  # stage 2 attends at stride 2
    assert net[6][-1].token_mixer.stride_conv is None


def test_state_dict_uses_official_key_names(models):
    sd = models["s0"].state_dict()
    for key in (
        "patch_embed.0.weight",
        "patch_embed.4.running_var",
        "network.0.0.mlp.fc1.weight",
        "network.0.0.mlp.mid.weight",
        "network.0.0.mlp.mid_norm.running_mean",
        "network.0.0.mlp.norm2.weight",
        "network.0.0.layer_scale_2",
        "network.1.proj.weight",
        "network.1.norm.weight",
        "network.4.5.token_mixer.stride_conv.0.weight",
        "network.4.5.token_mixer.q.1.running_mean",
        "network.4.5.token_mixer.v_local.0.weight",
        "network.4.5.token_mixer.talking_head1.weight",
        "network.4.5.token_mixer.talking_head2.bias",
        "network.4.5.token_mixer.proj.1.weight",
        "network.4.5.token_mixer.proj.2.running_var",
        "network.4.5.token_mixer.attention_bias_idxs",
        "network.4.5.layer_scale_1",
        "network.5.attn.q.local.0.weight",
        "network.5.attn.q.proj.1.weight",
        "network.5.attn.k.0.weight",
        "network.5.attn.attention_biases",
        "network.5.conv.weight",
        "network.5.bn.running_mean",
        "norm.running_mean",  # final norm is BatchNorm
        "dist_head.weight",
    ):
        assert key in sd, key
    assert "network.0.0.layer_scale_1" not in sd  # FFN blocks have only the MLP scale
    assert sd["network.0.0.layer_scale_2"].shape == (32, 1, 1)
    assert len(sd) == 573


def test_attention_resolutions_at_224(models):
    net = models["s0"].network
    assert net[4][-1].token_mixer.attention_biases.shape == (8, 49)  # 14×14 at stride 2 → 7×7
    assert net[6][-1].token_mixer.attention_biases.shape == (8, 49)
    down = net[5].attn
    assert down.attention_biases.shape == (8, 196) and down.attention_bias_idxs.shape == (49, 196)


def _official_downsample_index(res: int) -> torch.Tensor:
    """First-appearance numbering of (|step·q − k|) offsets, queries on the ceil(res/2) grid."""
    res2 = math.ceil(res / 2)
    step = math.ceil(res / res2)
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in itertools.product(range(res2), range(res2)):
        for p2 in itertools.product(range(res), range(res)):
            off = (abs(p1[0] * step - p2[0]), abs(p1[1] * step - p2[1]))
            offsets.setdefault(off, len(offsets))
            idxs.append(offsets[off])
    return torch.tensor(idxs).view(res2 * res2, res * res)


@pytest.mark.parametrize("res", [14, 7, 8])
def test_downsample_attention_bias_index_matches_offset_enumeration(res):
    attn = Attention4DDownsample(8, 16, key_dim=4, num_heads=2, resolution=res)
    assert torch.equal(attn.attention_bias_idxs, _official_downsample_index(res))
    assert attn.attention_biases.shape[1] == int(attn.attention_bias_idxs.max()) + 1


def _reference_attention4d(m: Attention4D, x: torch.Tensor) -> torch.Tensor:
    """Explicit einsums: talking heads mix the head axis before and after the softmax."""
    if m.stride_conv is not None:
        x = m.stride_conv(x)
    B, h, kd, d, N = x.shape[0], m.num_heads, m.key_dim, m.d, m.N
    q = m.q(x).reshape(B, h, kd, N)
    k = m.k(x).reshape(B, h, kd, N)
    v_map = m.v(x)
    v = v_map.reshape(B, h, d, N)
    logits = torch.einsum("bhcn,bhcm->bhnm", q, k) / math.sqrt(kd)
    logits = logits + m.attention_biases[:, m.attention_bias_idxs]
    W1, b1 = m.talking_head1.weight[:, :, 0, 0], m.talking_head1.bias
    W2, b2 = m.talking_head2.weight[:, :, 0, 0], m.talking_head2.bias
    logits = torch.einsum("gh,bhnm->bgnm", W1, logits) + b1[:, None, None]
    probs = torch.einsum("gh,bhnm->bgnm", W2, logits.softmax(-1)) + b2[:, None, None]
    out = torch.einsum("bhnm,bhcm->bhcn", probs, v).reshape(B, h * d, m.resolution, m.resolution)
    out = out + m.v_local(v_map)
    if m.upsample is not None:
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=False)
    return m.proj(out)


@pytest.mark.parametrize("stride", [None, 2])
def test_attention4d_matches_talking_heads_reference(stride):
    torch.manual_seed(0)
    m = Attention4D(12, key_dim=4, num_heads=3, attn_ratio=2, resolution=6, stride=stride).eval()
    with torch.no_grad():
        m.attention_biases.normal_()
        m.talking_head1.weight.normal_()
        m.talking_head2.weight.normal_()
        x = torch.randn(2, 12, 6, 6)
        out = m(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, _reference_attention4d(m, x), atol=1e-5, rtol=1e-5)


def test_lgquery_adds_strided_depthwise_conv_and_subsample():
    torch.manual_seed(0)
    q = Attention4DDownsample(4, 8, key_dim=2, num_heads=2, resolution=6).q.eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = q.proj(q.local(x) + x[:, :, ::2, ::2])
        torch.testing.assert_close(q(x), expected)


def test_eval_output_is_mean_of_head_and_dist_head():
    model = tiny().eval()
    with torch.no_grad():
        model.dist_head.weight.normal_()
        x = torch.randn(2, 3, 32, 32)
        z = model.forward_features(x)
        out = model(x)
        torch.testing.assert_close(out, (model.head(z) + model.dist_head(z)) / 2)
        assert not torch.allclose(out, model.head(z))


def test_train_mode_returns_head_and_dist_head_tuple():
    out = tiny().train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, 10)


def test_torch_export_of_tiny_matches_eager():
    model = tiny(layer_scale_init=1.0).eval()
    x = get_spec("efficientformer_v2_tiny").example_inputs()[0]
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=0)


def test_tiny_macs_match_spec():
    ir = pytest.importorskip("edgeformer.ir")
    spec = get_spec("efficientformer_v2_tiny")
    assert ir.export(spec.build(), spec.example_inputs()).summary().total_macs == spec.macs


@pytest.mark.parametrize("size", SIZES)
def test_recorded_macs_are_within_5_percent_of_published(size):
    spec = get_spec(f"efficientformer_v2_{size}")
    assert abs(spec.macs - spec.published_macs) / spec.published_macs < 0.05


@pytest.mark.parametrize("name", [f"efficientformer_v2_{s}" for s in (*SIZES, "tiny")])
def test_registry_entry_is_complete(name):
    spec = get_spec(name)
    assert spec.family == "efficientformer_v2"
    assert "arXiv:2212.08059" in spec.paper
    assert spec.params and spec.macs and spec.num_classes
    assert "official" in spec.checkpoint_layouts
