"""Streaming (token-by-token) inference for the LMUFormer networks.

The tokenizer's k=3 convolutions each look one token ahead, so :meth:`StreamingMixin.step` emits
the per-token logits of token ``t − stream_delay`` after receiving frame ``t`` and
:meth:`StreamingMixin.finish` flushes the rest (zero padding, as in the parallel form). Every LIF
membrane and LMU memory is carried explicitly in the state dict, keyed by the module's qualified
name; every convolution window (:class:`_Lookahead`) under ``"<stage>#window"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = dict[str, object]


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


class StreamingMixin:
    """``step`` / ``finish`` / ``stream`` for an ``nn.Module`` that provides

    * ``patch_embed.stream_stages()``: the tokenizer as a list of :class:`_Lookahead` stages, and
    * ``_tail(x, st)``: everything after the tokenizer, ``(B, C, N)`` → ``(B, N, classes)``,
      carrying its recurrent state in ``st``.
    """

    patch_embed: nn.Module
    training: bool

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

    def step_model(self, batch: int = 1) -> StepModel:
        """One step with explicit tensor state, for export (``edgeformer compile --streaming``)."""
        return StepModel(self, batch)

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


# ------------------------------------------------------------------------- the exportable step


def io_name(key: str) -> str:
    """A state key (a qualified module name, ``stage#window``) as a tensor name every runtime keeps:
    letters, digits and ``_`` only."""
    return "".join(c if c.isalnum() else "_" for c in key)


class StepModel(nn.Module):
    """One step of a :class:`StreamingMixin` network with every state tensor an explicit input and
    output: what ``edgeformer compile --streaming`` exports.

    ``forward(frame, flush, *state)`` → ``{"logits": …, "next_<key>": …}`` (and, for a spiking
    network, ``"spikes_<lif>"``: each LIF's spikes at this step).  ``frame`` is ``(B, C_in)``;
    ``flush`` is ``(1,)``: 0 for a frame, 1 to flush the look-ahead at the end of a stream (the frame
    is then ignored; :attr:`delay` flush steps emit the last tokens, zero padded as in the parallel
    form).  ``logits`` is the mean of the per-token logits emitted so far: after ``T`` frames and
    ``delay`` flushes it equals the parallel model on those ``T`` frames; before the flushes it
    covers the first ``T − delay`` tokens.

    The state (:attr:`states`, ``(key, shape)`` in input order, all float32 and zero at the start):
    ``steps`` and ``flushes`` (counters capped at :attr:`delay`), every tokenizer convolution's last
    two inputs (``<stage>#window``), the raw middle token of a residual stage (``<stage>#raw``),
    every LIF membrane and LMU memory under its qualified name, and ``logit_sum`` and
    ``logit_count`` of the mean-pooled classifier.  The two counters give each stage's "a real
    token" mask; tokens outside the stream are zeros (the parallel form's padding), and only the
    recurrent states (LIF, LMU, the sum) are written through a ``where`` on the mask, so the graph is
    static: the same ops every step.
    """

    def __init__(self, net: nn.Module, batch: int = 1):
        super().__init__()
        if not hasattr(net, "patch_embed") or not hasattr(net.patch_embed, "stream_stages"):
            raise TypeError(f"{type(net).__name__} has no streaming stages (patch_embed.stream_stages)")
        self.net = net.eval()
        self.batch = batch
        self.delay = len(net.patch_embed.stream_stages())
        self.in_channels = net.patch_embed.stream_stages()[0].conv.in_channels
        self.lifs = [(n, m) for n, m in net.named_modules() if type(m).__name__ == "LIF"]
        self.record_gates = False  # set to fill last_gates: LIF name -> whether its step counted
        self.last_gates: dict[str, Tensor] = {}
        self._gate: Tensor | None = None
        with torch.no_grad():
            st: dict[str, Tensor] = {}
            self._step(torch.zeros(batch, self.in_channels), torch.zeros(1), st)
        self.states = [(k, tuple(v.shape)) for k, v in st.items()]

    def frame_shape(self) -> tuple[int, int]:
        return (self.batch, self.in_channels)

    @property
    def spiking(self) -> bool:
        return bool(self.lifs)

    def initial_state(self) -> list[Tensor]:
        return [torch.zeros(s) for _, s in self.states]

    def example_inputs(self, frames: int = 0, seed: int = 0) -> tuple[Tensor, ...]:
        """A frame, flush 0 and the state after ``frames`` seeded random frames (0: the initial
        state; past :attr:`delay` frames every state is live, which is what a check should see)."""
        g = torch.Generator().manual_seed(seed)
        state = self.initial_state()
        with torch.no_grad():
            for _ in range(frames):
                out = self(torch.randn(self.batch, self.in_channels, generator=g), torch.zeros(1), *state)
                state = [out[f"next_{io_name(k)}"] for k, _ in self.states]
        return (torch.randn(self.batch, self.in_channels, generator=g), torch.zeros(1), *state)

    def input_names(self) -> list[str]:
        return ["frame", "flush", *(f"state_{io_name(k)}" for k, _ in self.states)]

    def forward(self, frame: Tensor, flush: Tensor, *state: Tensor) -> dict[str, Tensor]:
        st = {k: v for (k, _), v in zip(self.states, state)}
        spikes: dict[str, Tensor] = {}
        gates: dict[str, Tensor] = {}

        def hook(_m, _a, out, n):
            spikes[n] = out
            if self.record_gates:
                gates[n] = self._gate

        handles = [m.register_forward_hook(lambda m_, a, out, n=n: hook(m_, a, out, n)) for n, m in self.lifs]
        try:
            logits = self._step(frame, flush, st)
        finally:
            for h in handles:
                h.remove()
        self.last_gates = gates
        out = {"logits": logits}
        out.update({f"next_{io_name(k)}": st[k] for k, _ in self.states})
        out.update({f"spikes_{io_name(n)}": spikes[n].reshape(spikes[n].shape[0], -1) for n, _ in self.lifs})
        return out

    def _step(self, frame: Tensor, flush: Tensor, st: dict[str, Tensor]) -> Tensor:
        def get(key, like):
            if key not in st:
                st[key] = torch.zeros_like(like)
            return st[key]

        def gated(fn, mask, x):
            """``fn(x, st)`` whose state writes land only where ``mask``."""
            local = dict(st)
            if self.record_gates:
                self._gate = mask
            y = fn(x, local)
            for k, v in local.items():
                if k not in st:
                    st[k] = torch.where(mask, v, torch.zeros_like(v))
                elif v is not st[k]:  # only the states fn wrote
                    st[k] = torch.where(mask, v, st[k])
            return y

        # Every stage shifts one token per step; a token outside the stream (before the first frame,
        # after the last) is zero, which is the parallel form's zero padding at both ends.  Stage s
        # emits token τ−1−s at step τ: a real one once τ ≥ s+1 and, when flushing, while fewer than
        # s+1 flush steps came before.  Two capped counters give every stage's mask at once.
        one = torch.ones(1)
        flushing = flush.reshape(1) > 0.5
        steps, flushes = get("steps", one), get("flushes", one)
        depth = float(self.delay)
        cut = torch.arange(self.delay, dtype=one.dtype) + 0.5
        emits = (steps > cut) & ((flushes < cut) | ~flushing)  # (delay,): stage s has a real token
        st["steps"] = torch.clamp(steps + 1, max=depth)
        st["flushes"] = torch.where(flushing, torch.clamp(flushes + 1, max=depth), flushes)
        real = ~flushing
        token = torch.where(flushing, torch.zeros_like(frame), frame).unsqueeze(-1)
        for s_idx, stage in enumerate(self.net.patch_embed.stream_stages()):
            name = stage.name
            emit = emits[s_idx : s_idx + 1]
            cin = token
            if stage.pre is not None:
                cin = gated(stage.pre, real, token)
                cin = torch.where(real, cin, torch.zeros_like(cin))
            window = get(f"{name}#window", torch.cat([cin, cin], dim=-1))
            full = torch.cat([window, cin], dim=-1)
            st[f"{name}#window"] = full[..., 1:]
            y = F.conv1d(full, stage.conv.weight, stage.conv.bias)
            if stage.residual:
                y = get(f"{name}#raw", token) + y
                st[f"{name}#raw"] = token
            if stage.post is not None:
                y = gated(stage.post, emit, y)
            real, token = emit, torch.where(emit, y, torch.zeros_like(y))
        token_logits = gated(lambda x, s: self.net._tail(x, s)[:, 0], real, token)
        total = get("logit_sum", token_logits) + torch.where(real, token_logits, torch.zeros_like(token_logits))
        count = get("logit_count", one) + real.to(one.dtype)
        st["logit_sum"], st["logit_count"] = total, count
        return total / torch.clamp(count, min=1.0)
