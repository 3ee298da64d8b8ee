"""LMUFormer and Spiking LMUFormer (Liu, Datta, Jaiswal, Beerel; ICLR 2024, arXiv 2402.04882).

Two networks share one skeleton (tokenizer → one block of LMU mixer + conv FFN → per-token head →
mean over tokens), spec docs/architectures.md §3:

* :class:`LMUFormer` — the non-spiking ``lmu_rnn_conv1d`` (1,621,796 parameters at 35 classes);
* :class:`SpikingLMUFormer` — the "membrane shortcut" ``slmu_rnn_ms_conv1d`` with LIF neurons whose
  time axis is the token axis (1,689,894 parameters).

Input layout is the official one: ``(B, N, C_in)`` = (batch, frames/tokens, mel bins); the model
transposes to channels-first ``(B, C, N)`` internally, like the official tokenizer does.

Modules:

* :mod:`.memory` — the Legendre Memory Unit memory (:class:`LMUMemory`) and its three equivalent
  forms ``"conv"`` (default, export friendly), ``"fft"`` and ``"recurrent"``;
* :mod:`.spiking` — the LIF neuron and the spiking tokenizer, LMU cell, mixer and FFN;
* :mod:`.model` — the non-spiking blocks, both networks and their zoo entries (registered when this
  package is imported);
* :mod:`.streaming` — :meth:`LMUFormer.step` / :meth:`SpikingLMUFormer.step`: the tokenizer's five
  k=3 convolutions each look one token ahead, so ``step`` emits the per-token logits of token
  ``t − 5`` after receiving frame ``t`` and ``finish`` flushes the last five (zero padding, as in
  the parallel form). Every LIF membrane and LMU memory is carried explicitly in the state dict,
  keyed by the module's qualified name; unlike the official recurrent path, the spiking memory goes
  through the same ``bn_m``/``f_m`` in both forms, so spikes match the parallel form exactly.

State-dict names follow the official ones (``patch_embed.conv_layers.0.0``, ``block.0.attn.lmu.W_h``,
``block.0.mlp.fc1_conv``, ``head_bn``, ...) except the memory buffers: official ``lmu.{A,B,H}`` are
our ``lmu.memory.{A,B,H}`` (the discretised Ā, B̄ and H), and the official complex ``lmu.fft_H``
has no counterpart (it is recomputed by the ``fft`` form).
"""

from __future__ import annotations

from .memory import LMUMemory, discretize, impulse_response, legendre_state_space, set_memory_mode
from .model import PAPER as PAPER
from .model import Block as Block
from .model import ConvFFN as ConvFFN
from .model import LMUCell as LMUCell
from .model import LMUFormer, SpikingLMUFormer
from .model import LMUMixer as LMUMixer
from .model import Tokenizer as Tokenizer
from .spiking import LIF, record_spikes
from .spiking import SpikingConvFFN as SpikingConvFFN
from .spiking import SpikingLMUCell as SpikingLMUCell
from .spiking import SpikingLMUMixer as SpikingLMUMixer
from .spiking import SpikingTokenizer as SpikingTokenizer
from .streaming import State as State
from .streaming import StreamOutput as StreamOutput

# ``import *`` exports what the former single module did; the ``X as X`` names above are the rest of its
# public names, re-exported for ``from edgeformer.models.lmuformer import X``.
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
