"""The non-spiking blocks, the shared skeleton, :class:`LMUFormer`, :class:`SpikingLMUFormer` and
their zoo entries."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ModelSpec, register
from .memory import LMUMemory
from .spiking import LIF, SpikingConvFFN, SpikingLMUMixer, SpikingTokenizer
from .streaming import State, StreamingMixin, _Lookahead

PAPER = "Liu et al., LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre Memory Units, ICLR 2024, arXiv:2402.04882"  # noqa: E501

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


# ------------------------------------------------------------------------------------- networks


class _LMUFormerBase(StreamingMixin, nn.Module):
    """Shared skeleton: tokenizer → blocks → head per token → mean over tokens.

    A variant names its parts: ``_tokenizer(in_channels, dim)``, ``_mixer(dim, memory_size,
    seq_len, theta)``, ``_ffn(dim, hidden)``, and the default memory size ``_memory_per_dim · dim``;
    it may add layers in front of the head (:meth:`_init_head_input` / :meth:`_head_input`).
    Streaming (``step`` / ``finish`` / ``stream``) comes from :class:`StreamingMixin`.
    """

    _tokenizer: Callable[[int, int], nn.Module]
    _mixer: Callable[[int, int, int, float], nn.Module]
    _ffn: Callable[[int, int], nn.Module]
    _memory_per_dim: int = 1

    patch_embed: nn.Module

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
        memory_size = memory_size or self._memory_per_dim * dim
        theta = theta or seq_len
        self.seq_len = seq_len
        self.patch_embed = self._tokenizer(in_channels, dim)
        hidden = int(dim * mlp_ratio)
        self.block = nn.ModuleList(
            Block(self._mixer(dim, memory_size, seq_len, theta), self._ffn(dim, hidden)) for _ in range(depth)
        )
        self._init_head_input(dim)
        self.head = nn.Linear(dim, num_classes)
        self._name_states()

    def _name_states(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (LIF, LMUMemory)):
                module.state_key = name

    def _tail(self, x: Tensor, st: State | None) -> Tensor:
        """Blocks and per-token head: ``(B, C, N)`` → ``(B, N, classes)``."""
        for blk in self.block:
            x = blk(x, st)
        return self.head(self._head_input(x, st).transpose(1, 2))

    def _init_head_input(self, dim: int) -> None:
        """Layers between the last block and the head (created before the head)."""

    def _head_input(self, x: Tensor, st: State | None) -> Tensor:
        return x

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Per-token logits ``(B, N, classes)`` for input ``(B, N, C_in)``."""
        return self._tail(self.patch_embed(x.transpose(1, 2)), None)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_tokens(x).mean(dim=1)


class LMUFormer(_LMUFormerBase):
    """``lmu_rnn_conv1d``: Tokenizer → Block(LMU mixer, ConvFFN) → Linear per token → mean.

    Input ``(B, N, C_in)`` (frames × mel bins, the official layout); output ``(B, classes)``.
    Memory size ``dim`` unless given.
    """

    _tokenizer, _mixer, _ffn, _memory_per_dim = Tokenizer, LMUMixer, ConvFFN, 1


class SpikingLMUFormer(_LMUFormerBase):
    """``slmu_rnn_ms_conv1d``: spiking tokenizer → Block(SLMUMs, ConvFFNMs) → BN → LIF → Linear
    per token → mean. Memory size ``2·dim``; every LIF runs over the token axis."""

    _tokenizer, _mixer, _ffn, _memory_per_dim = SpikingTokenizer, SpikingLMUMixer, SpikingConvFFN, 2

    def _init_head_input(self, dim: int) -> None:
        self.head_bn = nn.BatchNorm1d(dim)
        self.head_lif = LIF()

    def _head_input(self, x: Tensor, st: State | None) -> Tensor:
        return self.head_lif(self.head_bn(x), st)


# ------------------------------------------------------------------------------------- registry

_TINY = dict(in_channels=8, dim=64, seq_len=8, num_classes=10)


def _register(
    name: str,
    cls: type[_LMUFormerBase],
    *,
    tiny: bool,
    description: str,
    params: int,
    macs: int,
    published_params: float | None = None,
) -> None:
    """Register one variant: the paper's Speech Commands V2 model (the class defaults: 128 frames ×
    128 mel bins, 35 classes) or, with ``tiny``, the :data:`_TINY` sklearn-digits model."""
    config = _TINY if tiny else {}
    tags = ("tiny", "sequence", "recurrent") if tiny else ("sequence", "audio", "recurrent")
    register(
        ModelSpec(
            name=name,
            family="lmuformer",
            build=lambda **kw: cls(**{**config, **kw}),
            input_shapes=((1, 8, 8),) if tiny else ((1, 128, 128),),
            paper=PAPER,
            description=description,
            published_params=published_params,
            params=params,
            macs=macs,
            num_classes=10 if tiny else 35,
            tags=tags + (("spiking",) if issubclass(cls, SpikingLMUFormer) else ()),
        )
    )


_register(
    "lmuformer",
    LMUFormer,
    tiny=False,
    description="LMUFormer (lmu_rnn_conv1d), Speech Commands V2: input (B, 128 frames, 128 mel bins)",
    published_params=1.62e6,
    params=1_621_796,
    macs=210_894_848,
)
_register(
    "spiking_lmuformer",
    SpikingLMUFormer,
    tiny=False,
    description="Spiking LMUFormer (slmu_rnn_ms_conv1d), LIF over tokens: input (B, 128 frames, 128 mel)",
    published_params=1.69e6,
    params=1_689_894,
    macs=223_477_760,
)
_register(
    "lmuformer_tiny",
    LMUFormer,
    tiny=True,
    description="LMUFormer for sklearn digits: 8 rows as tokens × 8 pixels as channels, 10 classes",
    params=98_187,
    macs=775_680,
)
_register(
    "spiking_lmuformer_tiny",
    SpikingLMUFormer,
    tiny=True,
    description="Spiking LMUFormer for sklearn digits: 8 rows as tokens × 8 pixels, 10 classes",
    params=102_925,
    macs=812_544,
)
