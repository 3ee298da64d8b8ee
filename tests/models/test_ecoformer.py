"""EcoFormer: binarization, Hamming linear attention, KSH hash learning, PVTv2 host, cost model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeformer import ir
from edgeformer.models import build_model, get_spec
from edgeformer.models.cost import count_mul_add
from edgeformer.models.ecoformer import (
    EcoFormerAttention,
    KernelSH,
    binarize,
    ecoformer_pvt_v2_b0,
    fit_hash,
    fit_hashes,
    hamming_linear_attention,
    hamming_quadratic_attention,
    hashes_trained,
    ksh_objective,
    set_attention_mode,
    similarity_targets,
)
from edgeformer.models.pvt_v2 import SRAttention, pvt_v2_b0

# many small ops: one torch thread (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def clustered_tokens(batch=8, heads=2, n=64, d=16, clusters=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(heads, clusters, d, generator=gen), dim=-1)
    labels = torch.randint(0, clusters, (batch, heads, n), generator=gen)
    x = centers[torch.arange(heads).view(1, -1, 1), labels] + 0.3 * torch.randn(batch, heads, n, d, generator=gen)
    return F.normalize(x, dim=-1)


def random_codes(*shape, seed=0):
    return torch.where(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) > 0, 1.0, -1.0)


# ------------------------------------------------------------------------------------- hashing


def test_binarize_gives_plus_minus_one_and_maps_zero_to_plus_one():
    assert binarize(torch.tensor([-2.0, -0.1, 0.0, 0.3])).tolist() == [-1.0, -1.0, 1.0, 1.0]


def test_binarize_gradient_is_straight_through_and_zero_where_abs_y_is_at_least_1():
    y = torch.tensor([-1.5, -0.5, 0.2, 1.0, 3.0], requires_grad=True)
    binarize(y).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_kernel_uses_rbf_with_sigma_the_mean_squared_distance_per_batch_and_head():
    torch.manual_seed(0)
    h = KernelSH(num_heads=2, head_dim=4, nbits=3, num_anchors=5)
    h.mvec.normal_()
    x = F.normalize(torch.randn(3, 2, 7, 4), dim=-1)
    d2 = ((x.unsqueeze(-2) - h.anchor.unsqueeze(2)) ** 2).sum(-1)  # (3, 2, 7, 5)
    sigma = d2.mean(dim=(-2, -1), keepdim=True)
    expected = torch.exp(-d2 / (2 * sigma)) - h.mvec
    torch.testing.assert_close(h.kernel(x), expected, atol=1e-6, rtol=0)
    codes = h(x)
    assert codes.shape == (3, 2, 7, 3) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(codes, torch.where(expected @ h.A.transpose(-1, -2) >= 0, 1.0, -1.0))


def test_similarity_targets_mark_topk_largest_plus_one_and_topk_smallest_minus_one():
    x = clustered_tokens(batch=1, heads=1, n=30)
    s = similarity_targets(x, topk=4)
    assert ((s == 1).sum(-1) == 4).all() and ((s == -1).sum(-1) == 4).all()
    sim = x @ x.transpose(-1, -2)
    assert (s[0, 0].diagonal() == 1).all()  # a token is its own nearest neighbour
    assert sim[s == 1].min() > sim[s == -1].max()


def test_learned_hash_beats_random_hash_on_the_ksh_objective():
    x = clustered_tokens(batch=4)
    s0 = similarity_targets(x)
    torch.manual_seed(0)
    random_hash = KernelSH(num_heads=2, head_dim=16, nbits=8, num_anchors=25)
    untrained = ksh_objective(random_hash(x), s0).item()
    torch.manual_seed(0)
    learned = KernelSH(num_heads=2, head_dim=16, nbits=8, num_anchors=25)
    report = fit_hash(learned, x, generator=torch.Generator().manual_seed(0))
    after = ksh_objective(learned(x), s0).item()
    assert after == pytest.approx(report.objective_after)
    assert report.accepted_bits > 0
    assert after < report.objective_before  # same anchors/mvec, random A → optimised A
    assert after < 0.5 * untrained  # fully random kernel hash
    assert bool(learned.trained)


def test_hash_bit_is_kept_unchanged_when_optimisation_does_not_improve_it():
    x = clustered_tokens(batch=2, heads=1, n=32)
    torch.manual_seed(0)
    h = KernelSH(num_heads=1, head_dim=16, nbits=4, num_anchors=8)
    a0 = h.A.clone()
    report = fit_hash(h, x, iters=0, generator=torch.Generator().manual_seed(0))
    assert report.accepted_bits == 0 and torch.equal(h.A, a0)


def test_fit_takes_anchors_from_the_first_sample_and_mvec_as_mean_kernel():
    x = clustered_tokens(batch=3, heads=2, n=40)
    h = KernelSH(num_heads=2, head_dim=16, nbits=2, num_anchors=10)
    fit_hash(h, x, iters=2, generator=torch.Generator().manual_seed(0))
    first = x[0].unsqueeze(2)  # (H, N, 1, d)
    matches = (first == h.anchor[0].unsqueeze(1)).all(-1).any(1)  # each anchor is a token of sample 0
    assert matches.all()
    mvec = h.mvec.clone()
    h.mvec.zero_()
    torch.testing.assert_close(mvec, h.kernel(x).mean(dim=(0, 2), keepdim=True))


# ----------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("nbits", [4, 16])
def test_linear_attention_equals_the_explicit_quadratic_form(nbits):
    q = random_codes(2, 3, 50, nbits)
    k = random_codes(2, 3, 50, nbits, seed=1)
    v = torch.randn(2, 3, 50, 8)
    torch.testing.assert_close(
        hamming_linear_attention(q, k, v, nbits), hamming_quadratic_attention(q, k, v, nbits), atol=1e-5, rtol=0
    )


def test_linear_attention_follows_the_official_formula_token_by_token():
    q = random_codes(1, 1, 6, 4)
    v = torch.randn(1, 1, 6, 3)
    out = hamming_linear_attention(q, q, v, 4)
    b = 5
    for n in range(6):
        num = sum((q[0, 0, n] @ q[0, 0, m]) * v[0, 0, m] for m in range(6)) + b * v[0, 0, n]
        den = sum(q[0, 0, n] @ q[0, 0, m] for m in range(6)) + 6 * b
        torch.testing.assert_close(out[0, 0, n], num / den, atol=1e-6, rtol=0)


def test_linear_attention_computes_in_fp32_when_inputs_are_bfloat16():
    q = random_codes(1, 2, 40, 16)
    v = torch.randn(1, 2, 40, 8)
    out = hamming_linear_attention(q.bfloat16(), q.bfloat16(), v.bfloat16(), 16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, hamming_linear_attention(q, q, v.bfloat16().float(), 16).bfloat16(), atol=0, rtol=0)


def test_softmax_mode_is_shared_qk_softmax_attention():
    torch.manual_seed(0)
    attn = EcoFormerAttention(dim=8, num_heads=2)
    set_attention_mode(attn, "softmax")
    x = torch.randn(1, 5, 8)
    qk = attn.to_qk(x).reshape(1, 5, 2, 4).transpose(1, 2)
    v = attn.to_v(x).reshape(1, 5, 2, 4).transpose(1, 2)
    expected = torch.softmax(qk @ qk.transpose(-1, -2) / 2.0, -1) @ v
    torch.testing.assert_close(attn(x), attn.proj(expected.transpose(1, 2).reshape(1, 5, 8)), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ hash life cycle


def test_forward_never_relearns_an_untrained_hash():
    model = build_model("ecoformer_pvt_v2_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 3, 32, 32))
    model.train()(torch.randn(2, 3, 32, 32))
    after = model.state_dict()
    assert not hashes_trained(model)
    assert all(torch.equal(before[k], after[k]) for k in before if ".hash." in k)


def test_trained_hash_survives_a_state_dict_round_trip_without_relearning():
    model = build_model("ecoformer_pvt_v2_tiny")
    x = torch.randn(8, 3, 32, 32)
    reports = fit_hashes(model, x, iters=5, generator=torch.Generator().manual_seed(0))
    assert set(reports) == {"block1.0.attn", "block2.0.attn", "block3.0.attn"}
    sd = model.state_dict()
    assert sd["block1.0.attn.hash.trained"].item() is True
    assert {"block1.0.attn.hash.A", "block1.0.attn.hash.mvec", "block1.0.attn.hash.anchor"} <= set(sd)
    fresh = build_model("ecoformer_pvt_v2_tiny")
    fresh.load_state_dict(sd)
    assert hashes_trained(fresh)
    torch.testing.assert_close(fresh(x), model(x))
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in sd.items())


# ----------------------------------------------------------------------------- the host network


def test_ecoformer_pvt_v2_b0_uses_ecoformer_in_stages_1_to_3_and_softmax_in_stage_4():
    model = ecoformer_pvt_v2_b0()
    for stage in (1, 2, 3):
        assert all(isinstance(b.attn, EcoFormerAttention) for b in getattr(model, f"block{stage}"))
    assert all(isinstance(b.attn, SRAttention) for b in model.block4)
    assert model.block1[0].attn.hash.nbits == 16 and model.block1[0].attn.hash.m == 25


@pytest.mark.parametrize("name", ["ecoformer_pvt_v2_b0", "ecoformer_pvt_v2_tiny"])
def test_registered_param_count_equals_the_built_model(name):
    assert get_spec(name).params == sum(p.numel() for p in build_model(name).parameters())


def test_torch_export_of_ecoformer_tiny_matches_eager_within_1e_5():
    model = build_model("ecoformer_pvt_v2_tiny")
    fit_hashes(model, torch.randn(8, 3, 32, 32), iters=3, generator=torch.Generator().manual_seed(0))
    spec = get_spec("ecoformer_pvt_v2_tiny")
    graph = ir.export(model, spec.example_inputs())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(graph.run([x])[0], model(x), atol=1e-5, rtol=0)
    assert graph.summary().total_macs == spec.macs


# ------------------------------------------------------------------------------------ the cost


def test_count_mul_add_of_linear_and_conv_layers_matches_hand_count():
    lin = torch.nn.Linear(3, 2)
    r = count_mul_add(lin, torch.randn(1, 4, 3))
    assert (r.mul, r.add) == (4 * 3 * 2, 4 * 2 * 2 + 4 * 2)  # 24 products; 2 adds + bias per output
    r = count_mul_add(torch.nn.Linear(3, 2, bias=False), torch.randn(1, 4, 3))
    assert (r.mul, r.add) == (24, 16)
    r = count_mul_add(torch.nn.Conv2d(2, 4, 3, padding=1, groups=2), torch.randn(1, 2, 4, 4))
    assert (r.mul, r.add) == (64 * 9, 64 * 9)  # 64 outputs × 9 products, 8 adds + bias
    assert r.energy_pj == pytest.approx(3.7 * 576 + 0.9 * 576)


def test_count_mul_add_counts_any_model_and_its_extra_mul_add_hooks():
    class Scale(torch.nn.Module):  # not an EcoFormer module: only the _extra_mul_add protocol
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(2, 3, 3, padding=1, bias=False)

        def forward(self, x):
            return self.conv(x) * 2.0

        def _extra_mul_add(self, inputs, output):
            return output.numel(), 0

    model = torch.nn.Sequential(Scale(), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 1))
    r = count_mul_add(model, torch.randn(1, 2, 4))
    assert r.by_module == {"0": (12, 0), "0.conv": (12 * 6, 12 * 5), "3": (12, 11 + 1)}
    assert (r.mul, r.add) == (12 + 72 + 12, 60 + 12)
    assert r.format() == f"mul 0.000 B, add 0.000 B, energy {r.energy_pj / 1e9:.3f} B pJ"
    assert all(not m._forward_hooks for m in model.modules())  # the hooks are removed again


def test_count_mul_add_removes_its_hooks_when_the_forward_raises():
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError):
        count_mul_add(lin, torch.randn(1, 4, 5))
    assert not lin._forward_hooks


def test_count_mul_add_of_ecoformer_attention_matches_hand_count():
    # N=4 tokens, C=d=2, one head, m=2 anchors, b=2 bits.
    attn = EcoFormerAttention(dim=2, num_heads=1, nbits=2, num_anchors=2)
    r = count_mul_add(attn, torch.randn(1, 4, 2))
    linears = 3 * 16  # to_qk, to_v, proj: 4×2×2 products and 4×2×(1 + bias) adds each
    norm = (16 + 4, 4)  # squares + divisions + sqrt | sums
    kernel = (16 + 8 + 4 + 8, 8 + 4 + 2 + 16)  # x·aᵀ, ‖x‖², ‖a‖², 2x·a | sums and the two combines
    sigma = (8 + 1, 7 + 8)  # scale −d²/2σ | mean, − mvec
    project = (16, 8)  # k·Aᵀ: 4 tokens × 2 anchors × 2 bits
    aggregate = (8 + 8, 6 + 8 + 12 + 16)  # β·v, divide | Σh, denominator, context, numerator
    parts = [norm, kernel, sigma, project, aggregate]
    assert r.mul == linears + sum(p[0] for p in parts) == 145
    assert r.add == linears + sum(p[1] for p in parts) == 147
    assert r.energy_pj == pytest.approx(3.7 * 145 + 0.9 * 147)


def test_count_mul_add_of_softmax_attention_matches_hand_count():
    attn = SRAttention(dim=2, num_heads=1, sr_ratio=1)
    r = count_mul_add(attn, torch.randn(1, 4, 2), 2, 2)
    # q 16/16, kv 32/32, proj 16/16; q·kᵀ 32 mul 16 add, scale 16 mul, attn·v 32 mul 24 add
    assert (r.mul, r.add) == (16 + 32 + 16 + 80, 16 + 32 + 16 + 40)


def test_ecoformer_pvt_v2_b0_needs_fewer_multiplies_and_less_energy_than_softmax():
    x = torch.randn(1, 3, 224, 224)
    eco = count_mul_add(ecoformer_pvt_v2_b0().eval(), x)
    soft = count_mul_add(pvt_v2_b0().eval(), x)
    assert eco.mul < soft.mul and eco.energy_pj < soft.energy_pj
    assert round(eco.mul / 1e9, 2) == 0.54  # paper: 0.54 B mul / 0.56 B add / 2.5 B pJ
    assert round(eco.energy_pj / 1e9, 1) == 2.5
