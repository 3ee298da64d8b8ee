"""PVTv2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", CVMJ 2022,
arXiv 2106.13797), spec docs/architectures.md §7; the host network of EcoFormer's headline result.

Four stages of [overlapping patch embedding (Conv2d + LayerNorm) → blocks → LayerNorm]; a block is
``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` with spatial-reduction attention (keys/values from
a ``Conv2d(k=s=sr) + LayerNorm`` reduced map when ``sr > 1``) and a Mix-FFN
(fc1 → depthwise 3×3 → GELU → fc2). Head: mean over the last stage's tokens → Linear.

Module names follow the official code (``patch_embed1``, ``block1.0.attn.q``, ``norm1``, ...) so
official checkpoints load by name. LayerNorm eps: 1e-6 in blocks and stage norms (the official
``partial(nn.LayerNorm, eps=1e-6)``); the patch-embedding and spatial-reduction norms are built
with ``nn.LayerNorm``'s default 1e-5 in the official code, and so here.

The attention of each stage is pluggable: ``attn_layers[i]`` is ``None`` (spatial-reduction softmax
attention) or a callable ``(dim, num_heads, sr_ratio, qkv_bias) -> nn.Module`` whose module takes
``(x, H, W)``; EcoFormer uses this to swap its binarized attention into stages 1-3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from edgeformer.models import ModelSpec, register

PAPER = "Wang et al., PVT v2: Improved Baselines with Pyramid Vision Transformer, CVMJ 2022, arXiv:2106.13797"

AttnBuilder = Callable[[int, int, int, bool], nn.Module]


class SRAttention(nn.Module):
    """Softmax attention with spatially reduced keys/values (``sr_ratio`` > 1)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        kv = self.kv(x).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # scale = head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def _extra_mul_add(self, inputs, output) -> tuple[int, int]:
        """Multiplies/additions outside child modules: q·kᵀ, the scale, attn·v (softmax's exp and
        normalisation are not counted, like the Linear/Conv counts exclude activations)."""
        x, H, W = inputs
        B, N, C = x.shape
        M = N // (self.sr_ratio**2) if self.sr_ratio > 1 else N
        d, h = C // self.num_heads, self.num_heads
        mul = B * h * N * M * d * 2 + B * h * N * M
        add = B * h * N * M * (d - 1) + B * h * N * (M - 1) * d
        return mul, add


class DWConv(nn.Module):
    """Depthwise 3×3 conv on the token map (official name ``dwconv.dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        B, N, C = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), H, W)))


class Block(nn.Module):
    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


def softmax_attention(dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool) -> nn.Module:
    return SRAttention(dim, num_heads, sr_ratio, qkv_bias)


class PyramidVisionTransformerV2(nn.Module):
    """PVTv2 classifier: input ``(B, in_chans, img, img)`` → logits ``(B, num_classes)``."""

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        attn_layers: Sequence[AttnBuilder | None] | None = None,
    ):
        super().__init__()
        stages = len(embed_dims)
        if not all(len(s) == stages for s in (depths, num_heads, mlp_ratios, sr_ratios)):
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios and sr_ratios need one entry per stage")
        attn_layers = list(attn_layers) if attn_layers is not None else [None] * stages
        self.img_size, self.num_classes = img_size, num_classes
        self.embed_dims, self.depths, self.num_heads = list(embed_dims), list(depths), list(num_heads)
        self.sr_ratios, self.num_stages = list(sr_ratios), stages
        for i in range(stages):
            build = attn_layers[i] or softmax_attention
            first = i == 0
            embed = OverlapPatchEmbed(
                in_chans if first else embed_dims[i - 1], embed_dims[i], 7 if first else 3, 4 if first else 2
            )
            blocks = nn.ModuleList(
                Block(embed_dims[i], build(embed_dims[i], num_heads[i], sr_ratios[i], qkv_bias), mlp_ratios[i])
                for _ in range(depths[i])
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        for i in range(1, self.num_stages + 1):
            x, H, W = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i}")(x)
            if i != self.num_stages:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2)
        return x.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


B0 = dict(
    embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
    sr_ratios=(8, 4, 2, 1),
)  # fmt: skip
# A 4-stage model for 32×32 digits: token maps 8×8 → 4×4 → 2×2 → 1×1.
TINY = dict(
    img_size=32, num_classes=10, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
    mlp_ratios=(4, 4, 4, 4), sr_ratios=(2, 1, 1, 1),
)  # fmt: skip


def pvt_v2_b0(**kw) -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(**{**B0, **kw})


def pvt_v2_tiny(**kw) -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(**{**TINY, **kw})


register(
    ModelSpec(
        name="pvt_v2_b0",
        family="pvt_v2",
        build=pvt_v2_b0,
        input_shapes=((1, 3, 224, 224),),
        paper=PAPER,
        description="PVTv2-B0, ImageNet-1k, 224×224",
        published_params=3.7e6,
        published_macs=0.6e9,
        params=3_666_760,
        macs=566_065_664,
        num_classes=1000,
        tags=("vision", "attention"),
    )
)
register(
    ModelSpec(
        name="pvt_v2_tiny",
        family="pvt_v2",
        build=pvt_v2_tiny,
        input_shapes=((1, 3, 32, 32),),
        paper=PAPER,
        description="PVTv2 for sklearn digits upsampled to 32×32 (gray repeated to 3 channels), 10 classes",
        params=151_594,
        macs=967_936,
        num_classes=10,
        tags=("tiny", "vision", "attention"),
    )
)
