"""decompose_unmasked_sdpa: unmasked SDPA → bmm → scale → softmax → bmm (what XNNPACK delegates)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _helper import assert_fires, assert_not_fires, tiny_graph
from torch import nn

NAME = "decompose_unmasked_sdpa"
# one SDPA → 4 reshapes (q, k, v in; the result out), kᵀ, two bmm, the scale and the softmax
DELTA = {
    "aten.scaled_dot_product_attention": -1,
    "aten.reshape": 4,
    "aten.transpose": 1,
    "aten.bmm": 2,
    "aten.mul": 1,
    "aten.softmax": 1,
}


class Attention(nn.Module):
    """A ViT block's attention: qkv linear → heads → SDPA → proj, with SDPA's options exposed."""

    def __init__(self, dim=16, heads=2, kv_heads=None, **sdpa):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.d = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * self.kv_heads * self.d)
        self.proj = nn.Linear(dim, dim)
        self.sdpa = sdpa

    def forward(self, x, context=None):
        b, n, c = x.shape
        ctx = x if context is None else context
        q = self.q(x).reshape(b, n, self.heads, self.d).transpose(1, 2)
        k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, self.kv_heads, self.d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, **self.sdpa)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def test_rewrites_self_attention_with_the_default_scale():
    new, rec = assert_fires(tiny_graph(Attention(), (2, 5, 16)), NAME, DELTA, matched=1)
    assert "scale 0.353553" in rec.details["explain"][0]  # 1/sqrt(8)


def test_uses_an_explicit_scale():
    _, rec = assert_fires(tiny_graph(Attention(scale=0.3), (1, 5, 16)), NAME, DELTA, matched=1)
    assert "scale 0.3" in rec.details["explain"][0]


def test_rewrites_cross_attention_of_another_length():
    assert_fires(tiny_graph(Attention(), (1, 5, 16), (1, 7, 16)), NAME, DELTA, matched=1)


class Unbatched(nn.Module):
    """Rank-3 q/k/v (heads, tokens, dim) and a value dimension unlike the key's."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_rewrites_rank_3_inputs_with_a_different_value_dim():
    assert_fires(tiny_graph(Unbatched(), (2, 5, 4), (2, 6, 4), (2, 6, 3)), NAME, DELTA, matched=1)


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_rewrites_multihead_attention_without_weights():
    assert_fires(tiny_graph(MHA(), (1, 5, 16)), NAME, DELTA, matched=1)


def test_does_not_fire_with_a_mask():
    class Masked(Attention):
        def forward(self, x):
            b, n, c = x.shape
            q = self.q(x).reshape(b, n, self.heads, self.d).transpose(1, 2)
            k, v = self.kv(x).reshape(b, n, 2, self.heads, self.d).permute(2, 0, 3, 1, 4)
            mask = torch.ones(n, n, dtype=torch.bool).tril()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum()

    assert_not_fires(tiny_graph(Masked(), (1, 5, 16)), NAME, "has an attention mask")


def test_does_not_fire_when_causal():
    assert_not_fires(tiny_graph(Attention(is_causal=True), (1, 5, 16)), NAME, "is_causal")


def test_does_not_fire_with_dropout():
    assert_not_fires(tiny_graph(Attention(dropout_p=0.1), (1, 5, 16)), NAME, "dropout_p 0.1")


def test_does_not_fire_with_grouped_query_attention():
    g = tiny_graph(Attention(heads=4, kv_heads=2, enable_gqa=True), (1, 5, 16))
    assert_not_fires(g, NAME, "enable_gqa")


def test_does_not_fire_when_batch_dims_broadcast():
    # one key/value head shared by two query heads, without enable_gqa: SDPA broadcasts it
    assert_not_fires(tiny_graph(Unbatched(), (2, 5, 4), (1, 6, 4), (1, 6, 4)), NAME, "broadcast")
