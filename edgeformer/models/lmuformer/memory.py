"""The Legendre Memory Unit memory: state-space maths and :class:`LMUMemory`.

:class:`LMUMemory` has three equivalent forms:

* ``"conv"`` (default, export friendly): ``m = causal_conv1d(u, kernel=H)`` with
  ``H[:, t] = Āᵗ B̄`` — one ``aten.conv1d`` with ``d`` output channels and kernel length ``N``;
* ``"fft"``: the official zero-padded FFT convolution (``torch.fft`` does not export to ONNX
  reliably, so it is never the default; ``fft(H)`` is recomputed, never stored as a buffer);
* ``"recurrent"``: ``m_t = Ā m_{t−1} + B̄ u_t``, also used by the streaming ``step`` API.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .streaming import State


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
            st[self.state_key] = m[..., m.shape[-1] - 1]  # a positive index: TVM 0.27 shifts m[..., -1] by one
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
