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
