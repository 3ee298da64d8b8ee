"""LMUFormer and Spiking LMUFormer (Liu, Datta, Jaiswal, Beerel; ICLR 2024, arXiv 2402.04882).

Two networks share one skeleton (tokenizer → one block of LMU mixer + conv FFN → per-token head →
mean over tokens), spec ``ARCHITECTURES.md`` §3:

* :class:`LMUFormer` — the non-spiking ``lmu_rnn_conv1d`` (1,621,796 parameters at 35 classes);
* :class:`SpikingLMUFormer` — the "membrane shortcut" ``slmu_rnn_ms_conv1d`` with LIF neurons whose
  time axis is the token axis (1,689,894 parameters).

Input layout is the official one: ``(B, N, C_in)`` = (batch, frames/tokens, mel bins); the model
transposes to channels-first ``(B, C, N)`` internally, like the official tokenizer does.

The Legendre Memory Unit memory (:class:`LMUMemory`) has three equivalent forms:

* ``"conv"`` (default, export friendly): ``m = causal_conv1d(u, kernel=H)`` with
  ``H[:, t] = Āᵗ B̄`` — one ``aten.conv1d`` with ``d`` output channels and kernel length ``N``;
* ``"fft"``: the official zero-padded FFT convolution (``torch.fft`` does not export to ONNX
  reliably, so it is never the default; ``fft(H)`` is recomputed, never stored as a buffer);
* ``"recurrent"``: ``m_t = Ā m_{t−1} + B̄ u_t``, also used by the streaming :meth:`step` API.

Streaming (:meth:`LMUFormer.step` / :meth:`SpikingLMUFormer.step`): the tokenizer's five k=3
convolutions each look one token ahead, so ``step`` emits the per-token logits of token
``t − 5`` after receiving frame ``t`` and :meth:`finish` flushes the last five (zero padding, as in
the parallel form). Every LIF membrane and LMU memory is carried explicitly in the state dict,
keyed by the module's qualified name; unlike the official recurrent path, the spiking memory goes
through the same ``bn_m``/``f_m`` in both forms, so spikes match the parallel form exactly.

State-dict names follow the official ones (``patch_embed.conv_layers.0.0``, ``block.0.attn.lmu.W_h``,
``block.0.mlp.fc1_conv``, ``head_bn``, ...) except the memory buffers: official ``lmu.{A,B,H}`` are
our ``lmu.memory.{A,B,H}`` (the discretised Ā, B̄ and H), and the official complex ``lmu.fft_H``
has no counterpart (it is recomputed by the ``fft`` form).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeformer.models import ModelSpec, register

PAPER = "Liu et al., LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre Memory Units, ICLR 2024, arXiv:2402.04882"  # noqa: E501

State = dict[str, object]

# ------------------------------------------------------------------------------- LMU state space


def legendre_state_space(order: int, theta: float) -> tuple[Tensor, Tensor]:
    """Continuous Legendre (Padé) state space, float64: ``θ·ṁ = A m + B u`` with θ folded in.

    ``R_i = (2i+1)/θ``; ``A_ij = R_i·(−1 if i < j else (−1)^(i−j+1))``; ``B_i = R_i·(−1)^i``.
    """
    q = torch.arange(order, dtype=torch.int64)
    r = ((2 * q + 1).to(torch.float64) / theta)[:, None]
    i, j = q[:, None], q[None, :]
    parity = torch.where((i - j + 1) % 2 == 0, 1.0, -1.0).to(torch.float64)
    a = r * torch.where(i < j, torch.full_like(parity, -1.0), parity)
    b = r * torch.where(q % 2 == 0, 1.0, -1.0).to(torch.float64)[:, None]
    return a, b


def discretize(a: Tensor, b: Tensor, dt: float = 1.0, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """Discretise ``ẋ = A x + B u``.

    ``zoh``: ``expm([[A, B], [0, 0]]·dt) = [[Ā, B̄], [0, I]]`` (equals scipy ``cont2discrete`` zoh,
    ``B̄ = A⁻¹(e^{A dt} − I) B``, without inverting A). ``euler``: ``Ā = I + A dt``, ``B̄ = B dt``.
    """
    d, k = b.shape
    if method == "euler":
        return torch.eye(d, dtype=a.dtype) + a * dt, b * dt
    if method != "zoh":
        raise ValueError(f"unknown discretisation {method!r} (zoh or euler)")
    block = torch.zeros(d + k, d + k, dtype=torch.float64)
    block[:d, :d] = a.to(torch.float64) * dt
    block[:d, d:] = b.to(torch.float64) * dt
    e = torch.linalg.matrix_exp(block)
    return e[:d, :d].clone(), e[:d, d:].clone()


def impulse_response(a_bar: Tensor, b_bar: Tensor, length: int) -> Tensor:
    """``H[:, t] = Āᵗ B̄`` for ``t < length`` (the memory's response to a unit impulse)."""
    cols = [b_bar[:, 0]]
    for _ in range(length - 1):
        cols.append(a_bar @ cols[-1])
    return torch.stack(cols, dim=1)


class LMUMemory(nn.Module):
    """The LMU's linear memory: ``m_t = Ā m_{t−1} + B̄ u_t`` driven by a scalar input ``u``.

    ``forward(u)`` maps ``u`` of shape ``(B, 1, N)`` to ``m`` of shape ``(B, d, N)``. Buffers
    ``A`` (= Ā), ``B`` (= B̄) and ``H`` are constants of ``(order, θ, seq_len)`` computed in float64;
    whenever the module's dtype or device changes they are recomputed from the float64 values, so
    ``.double()`` gives exact float64 matrices rather than upcast float32 ones.
    """

    MODES = ("conv", "fft", "recurrent")

    def __init__(self, order: int, theta: float, seq_len: int, method: str = "zoh"):
        super().__init__()
        self.order, self.theta, self.seq_len, self.method = order, float(theta), seq_len, method
        self.mode = "conv"
        self.state_key = "memory"  # set to the qualified name by the owning network
        a, b = legendre_state_space(order, theta)
        a_bar, b_bar = discretize(a, b, 1.0, method)
        self._exact = (a_bar, b_bar, impulse_response(a_bar, b_bar, seq_len))
        self.register_buffer("A", a_bar.float())
        self.register_buffer("B", b_bar.float())
        self.register_buffer("H", self._exact[2].float())

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        dtype, device = self.A.dtype, self.A.device
        for name, exact in zip(("A", "B", "H"), self._exact):
            self._buffers[name] = exact.to(device=device, dtype=dtype)
        return self

    def extra_repr(self) -> str:
        return f"order={self.order}, theta={self.theta:g}, seq_len={self.seq_len}, mode={self.mode}"

    def forward(self, u: Tensor, st: State | None = None) -> Tensor:
        if st is not None:  # streaming: continue from the carried memory
            m = self._recurrent(u, st.get(self.state_key))
            st[self.state_key] = m[..., -1]
            return m
        if self.mode == "conv":
            return self._conv(u)
        if self.mode == "fft":
            return self._fft(u)
        if self.mode == "recurrent":
            return self._recurrent(u, None)
        raise ValueError(f"unknown LMU memory mode {self.mode!r}; one of {self.MODES}")

    def _kernel(self, n: int) -> Tensor:
        if n > self.seq_len:
            raise ValueError(f"sequence of {n} tokens is longer than the memory's seq_len {self.seq_len}")
        return self.H[:, :n]

    def _conv(self, u: Tensor) -> Tensor:
        n = u.shape[-1]
        # conv1d is a cross-correlation: flipping H and left-padding N−1 makes it causal.
        weight = self._kernel(n).flip(-1).unsqueeze(1)  # (d, 1, N)
        return F.conv1d(F.pad(u, (n - 1, 0)), weight)

    def _fft(self, u: Tensor) -> Tensor:
        n = u.shape[-1]
        spec = torch.fft.rfft(u, n=2 * n) * torch.fft.rfft(self._kernel(n), n=2 * n)
        return torch.fft.irfft(spec, n=2 * n)[..., :n]

    def step(self, u_t: Tensor, m: Tensor) -> Tensor:
        """One recurrent step: ``u_t`` (B, 1), ``m`` (B, d) → ``Ā m + B̄ u_t`` (B, d)."""
        return m @ self.A.t() + u_t @ self.B.t()

    def _recurrent(self, u: Tensor, m: Tensor | None) -> Tensor:
        if m is None:
            m = u.new_zeros(u.shape[0], self.order)
        out = []
        for t in range(u.shape[-1]):
            m = self.step(u[:, :, t], m)
            out.append(m)
        return torch.stack(out, dim=-1)


def set_memory_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every :class:`LMUMemory` in ``model`` to ``conv``, ``fft`` or ``recurrent``."""
    if mode not in LMUMemory.MODES:
        raise ValueError(f"unknown LMU memory mode {mode!r}; one of {LMUMemory.MODES}")
    for m in model.modules():
        if isinstance(m, LMUMemory):
            m.mode = mode
    return model


# ----------------------------------------------------------------------------------- LIF neuron


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


# ------------------------------------------------------------------------------ non-spiking parts


class LMUCell(nn.Module):
    """``u = f_u(W_u x)``; ``m = LMU(u)``; ``h = f_h(W_h [m; x])`` on ``(B, N, C)`` tokens."""

    def __init__(self, input_size: int, hidden_size: int, memory_size: int, seq_len: int, theta: float):
        super().__init__()
        self.W_u = nn.Linear(input_size, 1)
        self.W_h = nn.Linear(memory_size + input_size, hidden_size)
        self.memory = LMUMemory(memory_size, theta, seq_len)

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        u = F.relu(self.W_u(x)).transpose(1, 2)  # (B, 1, N)
        m = self.memory(u, st).transpose(1, 2)  # (B, N, d)
        return F.relu(self.W_h(torch.cat((m, x), dim=-1)))


class LMUMixer(nn.Module):
    """Token mixer ``LMU`` of ``lmu_rnn_conv1d``: LMU cell → Conv1d 1×1 → BN, on ``(B, C, N)``."""

    def __init__(self, dim: int, memory_size: int, seq_len: int, theta: float):
        super().__init__()
        self.lmu = LMUCell(dim, dim, memory_size, seq_len, theta)
        self.proj_conv = nn.Conv1d(dim, dim, 1)
        self.proj_bn = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        h = self.lmu(x.transpose(1, 2), st).transpose(1, 2)
        return self.proj_bn(self.proj_conv(h))


class ConvFFN(nn.Module):
    """Conv1×1 → BN → GELU → Conv1×1 → BN → ReLU (``ConvFFN`` with act_type relu)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_conv = nn.Conv1d(dim, hidden, 1)
        self.fc1_bn = nn.BatchNorm1d(hidden)
        self.fc2_conv = nn.Conv1d(hidden, dim, 1)
        self.fc2_bn = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        x = F.gelu(self.fc1_bn(self.fc1_conv(x)))
        return F.relu(self.fc2_bn(self.fc2_conv(x)))


class Block(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, x: Tensor, st: State | None = None) -> Tensor:
        x = x + self.attn(x, st)
        return x + self.mlp(x, st)


class Tokenizer(nn.Module):
    """4 × [Conv1d k3 p1 (no bias) → ReLU → BN] then ``x + rpe_conv(x)``.

    Each stage is ``Sequential(conv, ReLU, Identity, BN)``: the Identity stands where the official
    code has a disabled max-pool, which keeps the official state-dict indices (0 = conv, 3 = BN).
    """

    def __init__(self, in_channels: int, dim: int, n_layers: int = 4):
        super().__init__()
        chans = [in_channels] + [dim] * n_layers
        self.conv_layers = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv1d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                    nn.ReLU(),
                    nn.Identity(),
                    nn.BatchNorm1d(chans[i + 1]),
                )
                for i in range(n_layers)
            ]
        )
        self.rpe_conv = nn.Conv1d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_layers(x)
        return x + self.rpe_conv(x)

    def stream_stages(self) -> list[_Lookahead]:
        stages = [
            _Lookahead(f"conv_layers.{i}", layer[0], post=lambda y, st, layer=layer: layer[3](F.relu(y)))
            for i, layer in enumerate(self.conv_layers)
        ]
        return [*stages, _Lookahead("rpe_conv", self.rpe_conv, residual=True)]


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


# ------------------------------------------------------------------------------------ streaming


@dataclass
class _Lookahead:
    """One k=3, pad=1 convolution of the tokenizer run token by token (one token of look-ahead).

    ``pre`` maps each arriving token to the conv input (causal, e.g. BN→LIF); ``post`` maps each
    conv output; ``residual`` adds the raw middle token (``x + conv(pre(x))``).
    """

    name: str
    conv: nn.Conv1d
    pre: object = None
    post: object = None
    residual: bool = False

    def push(self, st: State, raw: Tensor | None, cin: Tensor | None = None) -> Tensor | None:
        """Feed one token ``(B, C, 1)``; ``raw=None`` feeds the right zero padding. Returns the
        output for the previous token once its right neighbour is known."""
        if raw is not None:
            cin = self.pre(raw, st) if self.pre is not None else raw
        key = f"{self.name}#window"
        window = st.get(key) or [(None, torch.zeros_like(cin))]  # left zero padding
        window = [*window, (raw, cin)]
        if len(window) < 3:
            st[key] = window
            return None
        st[key] = window[1:]
        y = F.conv1d(torch.cat([c for _, c in window], dim=-1), self.conv.weight, self.conv.bias)
        if self.residual:
            y = window[1][0] + y
        return self.post(y, st) if self.post is not None else y

    def flush(self, st: State) -> Tensor | None:
        window = st.get(f"{self.name}#window")
        if not window:
            return None
        return self.push(st, None, torch.zeros_like(window[-1][1]))


@dataclass
class StreamOutput:
    """Per-token logits ``(B, N, classes)`` and their running mean (the ``all_seq`` test mode)."""

    token_logits: Tensor
    cumulative_mean: Tensor
    spikes: dict[str, Tensor] = field(default_factory=dict)


class _LMUFormerBase(nn.Module):
    """Shared skeleton: tokenizer → blocks → head per token → mean over tokens."""

    patch_embed: nn.Module

    def _name_states(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (LIF, LMUMemory)):
                module.state_key = name

    def _tail(self, x: Tensor, st: State | None) -> Tensor:
        """Blocks and per-token head: ``(B, C, N)`` → ``(B, N, classes)``."""
        for blk in self.block:
            x = blk(x, st)
        return self.head(self._head_input(x, st).transpose(1, 2))

    def _head_input(self, x: Tensor, st: State | None) -> Tensor:
        return x

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Per-token logits ``(B, N, classes)`` for input ``(B, N, C_in)``."""
        return self._tail(self.patch_embed(x.transpose(1, 2)), None)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tokens(x).mean(dim=1)

    # -- streaming ------------------------------------------------------------------------------

    @property
    def stream_delay(self) -> int:
        """Tokens of look-ahead: output for token ``t`` is known after frame ``t + delay``."""
        return len(self.patch_embed.stream_stages())

    def init_state(self) -> State:
        """Empty stream state; every LIF membrane / LMU memory / conv window starts at zero when
        first used and is then carried under its module's qualified name."""
        return {"tokens_in": 0, "tokens_out": 0}

    def _advance(self, st: State, token: Tensor | None) -> list[Tensor]:
        carry = [] if token is None else [token]
        for stage in self.patch_embed.stream_stages():
            nxt = [y for y in (stage.push(st, c) for c in carry) if y is not None]
            if token is None:
                y = stage.flush(st)
                if y is not None:
                    nxt.append(y)
            carry = nxt
        outs = []
        for tok in carry:
            logits = self._tail(tok, st)[:, 0]  # (B, classes)
            total = logits if "logit_sum" not in st else st["logit_sum"] + logits
            st["logit_sum"] = total
            st["tokens_out"] = int(st["tokens_out"]) + 1
            outs.append(logits)
        return outs

    @torch.no_grad()
    def step(self, x_t: Tensor, state: State) -> tuple[Tensor | None, State]:
        """Feed frame ``x_t`` ``(B, C_in)``; returns the logits ``(B, classes)`` of token
        ``t − stream_delay`` (``None`` while the look-ahead fills) and the new state."""
        if self.training:
            raise RuntimeError("streaming needs eval mode (BatchNorm running statistics)")
        st = dict(state)
        st["tokens_in"] = int(st["tokens_in"]) + 1
        outs = self._advance(st, x_t.unsqueeze(-1))
        return (outs[0] if outs else None), st

    @torch.no_grad()
    def finish(self, state: State) -> tuple[Tensor, State]:
        """Flush the look-ahead: logits of the last ``stream_delay`` tokens ``(B, k, classes)``."""
        st = dict(state)
        outs = self._advance(st, None)
        return torch.stack(outs, dim=1), st

    @torch.no_grad()
    def stream(self, x: Tensor) -> StreamOutput:
        """Run ``x`` ``(B, N, C_in)`` frame by frame through :meth:`step` and :meth:`finish`."""
        st = self.init_state()
        outs = []
        for t in range(x.shape[1]):
            y, st = self.step(x[:, t], st)
            if y is not None:
                outs.append(y)
        tail, st = self.finish(st)
        logits = torch.cat([torch.stack(outs, dim=1), tail], dim=1) if outs else tail
        count = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype).view(1, -1, 1)
        return StreamOutput(logits, logits.cumsum(dim=1) / count)


class LMUFormer(_LMUFormerBase):
    """``lmu_rnn_conv1d``: Tokenizer → Block(LMU mixer, ConvFFN) → Linear per token → mean.

    Input ``(B, N, C_in)`` (frames × mel bins, the official layout); output ``(B, classes)``.
    """

    def __init__(
        self,
        in_channels: int = 128,
        dim: int = 256,
        seq_len: int = 128,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        num_classes: int = 35,
        memory_size: int | None = None,
        theta: float | None = None,
    ):
        super().__init__()
        memory_size = memory_size or dim
        theta = theta or seq_len
        self.seq_len = seq_len
        self.patch_embed = Tokenizer(in_channels, dim)
        hidden = int(dim * mlp_ratio)
        self.block = nn.ModuleList(
            Block(LMUMixer(dim, memory_size, seq_len, theta), ConvFFN(dim, hidden)) for _ in range(depth)
        )
        self.head = nn.Linear(dim, num_classes)
        self._name_states()


class SpikingLMUFormer(_LMUFormerBase):
    """``slmu_rnn_ms_conv1d``: spiking tokenizer → Block(SLMUMs, ConvFFNMs) → BN → LIF → Linear
    per token → mean. Memory size ``2·dim``; every LIF runs over the token axis."""

    def __init__(
        self,
        in_channels: int = 128,
        dim: int = 256,
        seq_len: int = 128,
        depth: int = 1,
        mlp_ratio: float = 4.0,
        num_classes: int = 35,
        memory_size: int | None = None,
        theta: float | None = None,
    ):
        super().__init__()
        memory_size = memory_size or 2 * dim
        theta = theta or seq_len
        self.seq_len = seq_len
        self.patch_embed = SpikingTokenizer(in_channels, dim)
        hidden = int(dim * mlp_ratio)
        self.block = nn.ModuleList(
            Block(SpikingLMUMixer(dim, memory_size, seq_len, theta), SpikingConvFFN(dim, hidden)) for _ in range(depth)
        )
        self.head_bn = nn.BatchNorm1d(dim)
        self.head_lif = LIF()
        self.head = nn.Linear(dim, num_classes)
        self._name_states()

    def _head_input(self, x: Tensor, st: State | None) -> Tensor:
        return self.head_lif(self.head_bn(x), st)


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


# ------------------------------------------------------------------------------------- registry

_TINY = dict(in_channels=8, dim=64, seq_len=8, num_classes=10)


register(
    ModelSpec(
        name="lmuformer",
        family="lmuformer",
        build=lambda **kw: LMUFormer(**kw),
        input_shapes=((1, 128, 128),),
        paper=PAPER,
        description="LMUFormer (lmu_rnn_conv1d), Speech Commands V2: input (B, 128 frames, 128 mel bins)",
        published_params=1.62e6,
        params=1_621_796,
        macs=210_894_848,
        num_classes=35,
        tags=("sequence", "audio", "recurrent"),
    )
)
register(
    ModelSpec(
        name="spiking_lmuformer",
        family="lmuformer",
        build=lambda **kw: SpikingLMUFormer(**kw),
        input_shapes=((1, 128, 128),),
        paper=PAPER,
        description="Spiking LMUFormer (slmu_rnn_ms_conv1d), LIF over tokens: input (B, 128 frames, 128 mel)",
        published_params=1.69e6,
        params=1_689_894,
        macs=223_477_760,
        num_classes=35,
        tags=("sequence", "audio", "recurrent", "spiking"),
    )
)
register(
    ModelSpec(
        name="lmuformer_tiny",
        family="lmuformer",
        build=lambda **kw: LMUFormer(**{**_TINY, **kw}),
        input_shapes=((1, 8, 8),),
        paper=PAPER,
        description="LMUFormer for sklearn digits: 8 rows as tokens × 8 pixels as channels, 10 classes",
        params=98_187,
        macs=775_680,
        num_classes=10,
        tags=("tiny", "sequence", "recurrent"),
    )
)
register(
    ModelSpec(
        name="spiking_lmuformer_tiny",
        family="lmuformer",
        build=lambda **kw: SpikingLMUFormer(**{**_TINY, **kw}),
        input_shapes=((1, 8, 8),),
        paper=PAPER,
        description="Spiking LMUFormer for sklearn digits: 8 rows as tokens × 8 pixels, 10 classes",
        params=102_925,
        macs=812_544,
        num_classes=10,
        tags=("tiny", "sequence", "recurrent", "spiking"),
    )
)

__all__ = [
    "LIF",
    "LMUFormer",
    "LMUMemory",
    "SpikingLMUFormer",
    "discretize",
    "impulse_response",
    "legendre_state_space",
    "record_spikes",
    "set_memory_mode",
]
