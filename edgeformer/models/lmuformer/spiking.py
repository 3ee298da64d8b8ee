"""The spiking parts of Spiking LMUFormer (``slmu_rnn_ms_conv1d``): the LIF neuron (time axis =
token axis), the spiking tokenizer, LMU cell, mixer and FFN, and :func:`record_spikes`."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor, nn

from .memory import LMUMemory
from .streaming import State, _Lookahead

# ----------------------------------------------------------------------------------- LIF neuron

_LOOPS = [False]  # set by lif_loops(): export the inference recurrence as one scan


@contextlib.contextmanager
def lif_loops(enabled: bool = True):
    """Within the block, a LIF in inference runs its recurrence as ``torch.scan`` (one graph node
    that exports to ONNX ``Scan``) instead of a Python loop that ``torch.export`` unrolls into ~6
    nodes per token.  Same ops per step, so the spikes are the same bit for bit."""
    before = _LOOPS[0]
    _LOOPS[0] = enabled
    try:
        yield
    finally:
        _LOOPS[0] = before


@functools.cache
def _lif_step(tau: float, v_threshold: float):
    """One inference step of :class:`LIF` (the scan body): ``(v, x_t) → (v', s_t)``; the constants
    are closed over (a ``partial`` would make them symbolic floats, which scan refuses)."""

    def step(v: Tensor, x_t: Tensor):
        v = v + (x_t - v) / tau
        s = v >= v_threshold
        return torch.where(s, 0.0, v), s.to(x_t.dtype)

    return step


class _SigmoidSpike(torch.autograd.Function):
    """Heaviside forward, sigmoid surrogate backward: ``g'(x) = α·σ(αx)·(1 − σ(αx))``."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return grad * ctx.alpha * sg * (1 - sg), None


class LIF(nn.Module):
    """Multi-step LIF neuron over the LAST axis (the token axis): spikingjelly ``MultiStepLIFNode``
    with ``decay_input=True``, hard reset to 0 and ``detach_reset=True``.

    ``v_t = v_{t−1} + (x_t − v_{t−1})/τ``; ``s_t = Θ(v_t − V_th)`` (spike when ``v_t ≥ V_th``);
    ``v_t ← (1 − s_t)·v_t``. The loop over the static token count unrolls under ``torch.export``;
    the comparison exports as Greater/Cast. Training uses the sigmoid surrogate (α = 4).
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 4.0):
        super().__init__()
        self.tau, self.v_threshold, self.alpha = tau, v_threshold, alpha
        self.state_key = "lif"  # set to the qualified name by the owning network

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, v_threshold={self.v_threshold:g}"

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        v = None if st is None else st.get(self.state_key)
        if v is None:
            v = torch.zeros_like(x[..., 0])
        spikes = []
        if self.training and torch.is_grad_enabled():
            for x_t in x.unbind(-1):
                v = v + (x_t - v) / self.tau
                s = _SigmoidSpike.apply(v - self.v_threshold, self.alpha)
                v = v * (1.0 - s.detach())  # detach_reset
                spikes.append(s)
            out = torch.stack(spikes, dim=-1)
        elif _LOOPS[0] and st is None and torch.compiler.is_exporting():  # one scan (lif_loops)
            from torch._higher_order_ops.scan import scan

            d = x.dim()
            step = _lif_step(float(self.tau), float(self.v_threshold))
            v, ys = scan(step, v, x.permute(d - 1, *range(d - 1)), dim=0)  # permute: TVM lacks movedim
            out = ys.permute(*range(1, d), 0)
        else:  # inference: ~6 exported graph nodes per token (select, sub, div, add, ge, where)
            for x_t in x.unbind(-1):
                v = v + (x_t - v) / self.tau
                s = v >= self.v_threshold
                v = torch.where(s, 0.0, v)
                spikes.append(s)
            out = torch.stack(spikes, dim=-1).to(x.dtype)
        if st is not None:
            st[self.state_key] = v
        return out


def record_spikes(model: nn.Module) -> tuple[dict[str, list[Tensor]], list]:
    """Forward hooks that append every LIF's output spikes to ``spikes[qualified name]``.

    Returns ``(spikes, handles)``; remove the handles when done.
    """
    spikes: dict[str, list[Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, LIF):

            def hook(mod, args, out, name=name):
                spikes.setdefault(name, []).append(out.detach())

            handles.append(module.register_forward_hook(hook))
    return spikes, handles


# --------------------------------------------------------------------------------- spiking parts


class SpikingTokenizer(nn.Module):
    """``Conv1d4EBMs``: 3 × [conv → BN → LIF], conv3, then ``x + rpe_conv(LIF(BN(x)))``."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj_conv = nn.Conv1d(in_channels, dim, 3, padding=1, bias=False)
        self.proj_bn = nn.BatchNorm1d(dim)
        self.proj_lif = LIF()
        for i in (1, 2, 3):
            setattr(self, f"proj_conv{i}", nn.Conv1d(dim, dim, 3, padding=1, bias=False))
            setattr(self, f"proj_bn{i}", nn.BatchNorm1d(dim))
            setattr(self, f"proj_lif{i}", LIF())
        self.rpe_conv = nn.Conv1d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_lif(self.proj_bn(self.proj_conv(x)))
        x = self.proj_lif1(self.proj_bn1(self.proj_conv1(x)))
        x = self.proj_lif2(self.proj_bn2(self.proj_conv2(x)))
        x = self.proj_conv3(x)
        return x + self.rpe_conv(self.proj_lif3(self.proj_bn3(x)))

    def stream_stages(self) -> list[_Lookahead]:
        def post(bn, lif):
            return lambda y, st: lif(bn(y), st)

        return [
            _Lookahead("proj_conv", self.proj_conv, post=post(self.proj_bn, self.proj_lif)),
            _Lookahead("proj_conv1", self.proj_conv1, post=post(self.proj_bn1, self.proj_lif1)),
            _Lookahead("proj_conv2", self.proj_conv2, post=post(self.proj_bn2, self.proj_lif2)),
            _Lookahead("proj_conv3", self.proj_conv3),
            _Lookahead("rpe_conv", self.rpe_conv, pre=post(self.proj_bn3, self.proj_lif3), residual=True),
        ]


class SpikingLMUCell(nn.Module):
    """``u = LIF(BN(W_u x))``; ``m = LIF(BN(LMU(u)))``; ``h = LIF(BN(W_h [m; x]))``."""

    def __init__(self, input_size: int, hidden_size: int, memory_size: int, seq_len: int, theta: float):
        super().__init__()
        self.W_u = nn.Linear(input_size, 1)
        self.bn_u = nn.BatchNorm1d(1)
        self.f_u = LIF()
        self.memory = LMUMemory(memory_size, theta, seq_len)
        self.bn_m = nn.BatchNorm1d(memory_size)
        self.f_m = LIF()
        self.W_h = nn.Linear(memory_size + input_size, hidden_size)
        self.bn_h = nn.BatchNorm1d(hidden_size)
        self.f_h = LIF()

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        """``x``: spikes ``(B, N, C)`` → hidden spikes ``(B, hidden, N)``."""
        u = self.f_u(self.bn_u(self.W_u(x).transpose(1, 2)), st)  # (B, 1, N)
        m = self.f_m(self.bn_m(self.memory(u, st)), st)  # (B, d, N)
        h = self.W_h(torch.cat((m.transpose(1, 2), x), dim=-1))
        return self.f_h(self.bn_h(h.transpose(1, 2)), st)


class SpikingLMUMixer(nn.Module):
    """``SLMUMs``: BN → LIF(V_th 0.5) → spiking LMU cell → Conv1d 1×1 → BN."""

    def __init__(self, dim: int, memory_size: int, seq_len: int, theta: float):
        super().__init__()
        self.prev_bn = nn.BatchNorm1d(dim)
        self.prev_lif = LIF(v_threshold=0.5)
        self.lmu = SpikingLMUCell(dim, dim, memory_size, seq_len, theta)
        self.proj_conv = nn.Conv1d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        s = self.prev_lif(self.prev_bn(x), st)
        return self.proj_bn(self.proj_conv(self.lmu(s.transpose(1, 2), st)))


class SpikingConvFFN(nn.Module):
    """``ConvFFNMs``: BN → LIF → Conv1×1 → BN → LIF → Conv1×1."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_bn = nn.BatchNorm1d(dim)
        self.fc1_lif = LIF()
        self.fc1_conv = nn.Conv1d(dim, hidden, 1)
        self.fc2_bn = nn.BatchNorm1d(hidden)
        self.fc2_lif = LIF()
        self.fc2_conv = nn.Conv1d(hidden, dim, 1)

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        x = self.fc1_conv(self.fc1_lif(self.fc1_bn(x), st))
        return self.fc2_conv(self.fc2_lif(self.fc2_bn(x), st))
