"""LMUFormer / Spiking LMUFormer: LMU memory maths, parameter counts, LIF dynamics, streaming."""

from __future__ import annotations

import pytest
import torch

from edgeformer import ir
from edgeformer.models import build_model, get_spec
from edgeformer.models.lmuformer import (
    LIF,
    LMUFormer,
    LMUMemory,
    SpikingLMUFormer,
    discretize,
    impulse_response,
    legendre_state_space,
    record_spikes,
    set_memory_mode,
)

TINY = dict(in_channels=8, dim=32, seq_len=12, num_classes=10)


# many small ops: one torch thread (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BN: running stats from data, random affine (γ ∈ [0.8, 1.6], β ∈ [0, 1]), so
    BN outputs straddle the LIF thresholds."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 0.8 + 0.8)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen))
            m.momentum = None  # cumulative average: one batch sets the running stats
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def make(cls, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = {**TINY, **kw}
    model = cls(**cfg)
    x = torch.randn(3, cfg["seq_len"], cfg["in_channels"], generator=torch.Generator().manual_seed(seed))
    calibrate_bn(model, x)
    return model.to(dtype), x.to(dtype)


# --------------------------------------------------------------------------------- LMU memory


def test_legendre_a_b_match_the_closed_form_when_order_is_small():
    d, theta = 5, 3.0
    a, b = legendre_state_space(d, theta)
    for i in range(d):
        r = (2 * i + 1) / theta
        assert b[i, 0] == pytest.approx(r * (-1) ** i)
        for j in range(d):
            expected = r * (-1.0 if i < j else (-1.0) ** (i - j + 1))
            assert a[i, j] == pytest.approx(expected)
    assert torch.equal(torch.diagonal(a), -torch.tensor([(2 * i + 1) / theta for i in range(d)], dtype=a.dtype))


def test_zoh_discretisation_matches_scipy_cont2discrete():
    signal = pytest.importorskip("scipy.signal")
    import numpy as np

    a, b = legendre_state_space(12, 7.0)
    ad, bd, *_ = signal.cont2discrete((a.numpy(), b.numpy(), np.ones((1, 12)), np.zeros((1,))), dt=1.0, method="zoh")
    a_bar, b_bar = discretize(a, b)
    np.testing.assert_allclose(a_bar.numpy(), ad, atol=1e-12)
    np.testing.assert_allclose(b_bar.numpy(), bd, atol=1e-12)


def test_zoh_satisfies_b_bar_equals_a_inverse_expm_minus_identity_b():
    a, b = legendre_state_space(6, 4.0)
    a_bar, b_bar = discretize(a, b)
    torch.testing.assert_close(a_bar, torch.linalg.matrix_exp(a))
    torch.testing.assert_close(b_bar, torch.linalg.solve(a, (a_bar - torch.eye(6, dtype=a.dtype)) @ b))


def test_euler_discretisation_is_identity_plus_a():
    a, b = legendre_state_space(4, 2.0)
    a_bar, b_bar = discretize(a, b, method="euler")
    torch.testing.assert_close(a_bar, torch.eye(4, dtype=a.dtype) + a)
    torch.testing.assert_close(b_bar, b)


def test_impulse_response_columns_are_powers_of_a_bar_times_b_bar():
    a, b = legendre_state_space(6, 5.0)
    a_bar, b_bar = discretize(a, b)
    h = impulse_response(a_bar, b_bar, 7)
    for t in range(7):
        torch.testing.assert_close(h[:, t : t + 1], torch.linalg.matrix_power(a_bar, t) @ b_bar)


@pytest.mark.parametrize("order", [256, 512])
def test_memory_conv_fft_and_recurrent_forms_agree_within_1e_5(order):
    mem = LMUMemory(order, theta=128, seq_len=128)
    u = torch.relu(torch.randn(2, 1, 128, generator=torch.Generator().manual_seed(0)))
    outs = {}
    for mode in LMUMemory.MODES:
        mem.mode = mode
        outs[mode] = mem(u)
    assert outs["conv"].abs().max() > 0.1  # a non-trivial signal
    for mode in ("fft", "recurrent"):
        torch.testing.assert_close(outs[mode], outs["conv"], atol=1e-5, rtol=0)


def test_memory_step_by_step_equals_the_parallel_convolution():
    mem = LMUMemory(32, theta=16, seq_len=16)
    u = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(2, 32)
    for t in range(16):
        m = mem.step(u[:, :, t], m)
        torch.testing.assert_close(m, mem(u)[..., t], atol=1e-5, rtol=0)


def test_memory_state_dict_holds_real_a_b_h_and_no_fft_buffer():
    sd = LMUMemory(16, theta=8, seq_len=8).state_dict()
    assert set(sd) == {"A", "B", "H"}
    assert not any(t.is_complex() for t in sd.values())


def test_memory_buffers_are_recomputed_in_float64_when_cast_to_double():
    mem = LMUMemory(64, theta=32, seq_len=32).double()
    a, b = legendre_state_space(64, 32)
    a_bar, b_bar = discretize(a, b)
    assert mem.A.dtype == torch.float64
    assert torch.equal(mem.A, a_bar) and torch.equal(mem.B, b_bar)  # not float32-rounded values


def test_memory_rejects_sequences_longer_than_its_seq_len():
    with pytest.raises(ValueError, match="longer than"):
        LMUMemory(8, theta=4, seq_len=4)(torch.zeros(1, 1, 5))


def test_set_memory_mode_switches_every_memory_and_keeps_outputs():
    model, x = make(LMUFormer)
    ref = model(x)
    for mode in ("fft", "recurrent"):
        set_memory_mode(model, mode)
        assert all(m.mode == mode for m in model.modules() if isinstance(m, LMUMemory))
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------- parameters


def test_lmuformer_has_1_621_796_parameters():
    assert sum(p.numel() for p in LMUFormer().parameters()) == 1_621_796


def test_spiking_lmuformer_has_1_689_894_parameters():
    assert sum(p.numel() for p in SpikingLMUFormer().parameters()) == 1_689_894


@pytest.mark.parametrize("name", ["lmuformer", "spiking_lmuformer", "lmuformer_tiny", "spiking_lmuformer_tiny"])
def test_registered_param_count_equals_the_built_model(name):
    spec = get_spec(name)
    model = build_model(name)
    assert spec.params == sum(p.numel() for p in model.parameters())
    out = model(*spec.example_inputs())
    assert out.shape == (1, spec.num_classes)


def test_official_input_layout_is_frames_by_mel_bins():
    model = LMUFormer(in_channels=16, dim=32, seq_len=24, num_classes=5).eval()
    assert model(torch.randn(2, 24, 16)).shape == (2, 5)  # (B, N frames, C mel bins)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 16, 24))


# --------------------------------------------------------------------------------------- LIF


def test_lif_spikes_every_second_token_for_constant_input_1_5_when_tau_is_2():
    lif = LIF(tau=2.0, v_threshold=1.0).eval()
    st: dict = {}
    spikes = lif(torch.full((1, 1, 6), 1.5), st)
    # v: 0.75, 1.125 → spike → 0, 0.75, 1.125 → spike, ...
    assert spikes.flatten().tolist() == [0, 1, 0, 1, 0, 1]
    assert st["lif"].item() == 0.0  # hard reset after the last spike
    st2: dict = {}
    lif(torch.full((1, 1, 5), 1.5), st2)
    assert st2["lif"].item() == 0.75


def test_lif_spikes_when_membrane_equals_threshold():
    assert LIF(v_threshold=1.0).eval()(torch.full((1, 1, 1), 2.0)).item() == 1.0  # v = 1.0 ≥ 1.0


def test_lif_with_threshold_0_5_spikes_every_token_for_input_1_5():
    assert LIF(v_threshold=0.5).eval()(torch.full((1, 1, 4), 1.5)).flatten().tolist() == [1, 1, 1, 1]


def test_lif_surrogate_gradient_is_the_alpha_4_sigmoid_derivative_when_training():
    lif = LIF().train()
    x = torch.tensor([[[0.8]]], requires_grad=True)
    lif(x).sum().backward()
    v = 0.4  # v = x / τ
    sg = torch.sigmoid(torch.tensor(4.0 * (v - 1.0)))
    assert x.grad.item() == pytest.approx((4.0 * sg * (1 - sg) / 2.0).item(), rel=1e-6)  # ∂v/∂x = 1/τ


# ----------------------------------------------------------------------------------- streaming


def test_spiking_step_form_reproduces_parallel_spikes_bit_for_bit():
    model, x = make(SpikingLMUFormer, dtype=torch.float64)
    spikes, handles = record_spikes(model)
    ref = model.forward_tokens(x)
    parallel = {k: v[0] for k, v in spikes.items()}
    for v in spikes.values():
        v.clear()
    out = model.stream(x)
    for h in handles:
        h.remove()
    assert len(parallel) == 11  # 4 tokenizer + prev + u, m, h + 2 FFN + head
    for name, ref_spikes in parallel.items():
        assert torch.equal(torch.cat(spikes[name], dim=-1), ref_spikes), name
        rate = ref_spikes.mean().item()
        assert 0.01 < rate < 0.9, (name, rate)  # thresholds really crossed, not saturated
    torch.testing.assert_close(out.token_logits, ref, atol=1e-12, rtol=0)


def test_spiking_stream_output_matches_parallel_within_1e_5_in_float32():
    model, x = make(SpikingLMUFormer)
    out = model.stream(x)
    torch.testing.assert_close(out.token_logits, model.forward_tokens(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cumulative_mean[:, -1], model(x), atol=1e-5, rtol=0)


def test_lmuformer_stream_matches_parallel_within_1e_5():
    model, x = make(LMUFormer, seq_len=32, dim=64)
    out = model.stream(x)
    torch.testing.assert_close(out.token_logits, model.forward_tokens(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cumulative_mean[:, -1], model(x), atol=1e-5, rtol=0)
    running = model.forward_tokens(x).cumsum(1) / torch.arange(1, 33).view(1, -1, 1)
    torch.testing.assert_close(out.cumulative_mean, running, atol=1e-5, rtol=0)


def test_step_emits_token_t_minus_5_and_carries_named_states():
    model, x = make(SpikingLMUFormer)
    assert model.stream_delay == 5
    st = model.init_state()
    emitted = []
    for t in range(x.shape[1]):
        y, st = model.step(x[:, t], st)
        emitted.append(y is not None)
    assert emitted == [False] * 5 + [True] * (x.shape[1] - 5)
    tail, st = model.finish(st)
    assert tail.shape == (3, 5, 10) and st["tokens_out"] == x.shape[1]
    assert "block.0.attn.lmu.memory" in st and st["block.0.attn.lmu.memory"].shape == (3, 64)
    assert st["block.0.attn.lmu.f_m"].shape == (3, 64)  # membrane of the LIF on m (pitfall 4)
    assert st["head_lif"].shape == (3, 32)


def test_step_refuses_training_mode():
    model, x = make(LMUFormer)
    with pytest.raises(RuntimeError, match="eval"):
        model.train().step(x[:, 0], model.init_state())


# -------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", ["lmuformer_tiny", "spiking_lmuformer_tiny"])
def test_torch_export_of_tiny_model_matches_eager_within_1e_5(name):
    spec = get_spec(name)
    model = build_model(name)
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2
    calibrate_bn(model, torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(4)))
    graph = ir.export(model, spec.example_inputs())
    torch.testing.assert_close(graph.run([x])[0], model(x), atol=1e-5, rtol=0)
    summary = graph.summary()
    ops = {n.op for n in summary.nodes}
    assert "aten.conv1d" in ops and not any("fft" in op for op in ops)  # export-friendly memory
    assert summary.total_macs == spec.macs
