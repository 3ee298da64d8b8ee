"""densify_attention_bias: attention_biases[:, idxs] (constant gather) → a dense constant bias."""

from __future__ import annotations

import itertools

import torch
from _helper import assert_fires, assert_not_fires, tiny_graph
from torch import nn

from edgeformer.ir import export


class BiasedAttention(nn.Module):
    """EfficientFormer Attention's bias: (heads, offsets) table gathered by a (N, N) index buffer."""

    def __init__(self, heads=2, res=3, d=4):
        super().__init__()
        points = list(itertools.product(range(res), range(res)))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)))
        self.qkv = nn.Linear(d, 3 * heads * d)
        self.heads, self.d = heads, d

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, self.heads, 3 * self.d).permute(0, 2, 1, 3).split(self.d, -1)
        attn = q @ k.transpose(-2, -1) * self.d**-0.5 + self.attention_biases[:, self.attention_bias_idxs]
        return (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)


def test_replaces_bias_gather_with_dense_constant():
    new, rec = assert_fires(
        tiny_graph(BiasedAttention(), (1, 9, 4)), "densify_attention_bias", {"aten.index": -1}, matched=1
    )
    dense = [v for k, v in new.program.state_dict.items() if k.endswith("_dense")]
    assert [tuple(t.shape) for t in dense] == [(2, 9, 9)]
    assert "attention_biases" not in new.program.state_dict  # the table is gone with the gather


class ConstEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.register_buffer("pos", torch.arange(6) % 10)

    def forward(self, x):
        return x + self.table(self.pos)


def test_replaces_embedding_of_constant_positions():
    assert_fires(tiny_graph(ConstEmbedding(), (1, 6, 4)), "densify_attention_bias", {"aten.embedding": -1}, matched=1)


class InputGather(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))

    def forward(self, ids):
        return self.table[ids]


def test_does_not_fire_when_indices_depend_on_the_input():
    g = export(InputGather(), (torch.randint(0, 10, (2, 3)),))
    assert_not_fires(g, "densify_attention_bias", "depend on the input")


def test_does_not_fire_when_dense_bias_exceeds_max_numel():
    g = tiny_graph(BiasedAttention(), (1, 9, 4))
    assert_not_fires(g, "densify_attention_bias", "max_numel", max_numel=100)
