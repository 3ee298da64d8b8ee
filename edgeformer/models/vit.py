"""Plain Vision Transformers (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021,
arXiv 2010.11929) in timm's ``VisionTransformer`` key layout, with DeiT's (Touvron et al., ICML
2021, arXiv 2012.12877) and AugReg's (Steiner et al., arXiv 2106.10270) ImageNet configurations.

A patch embedding (``Conv2d(k = s = patch)``) makes a grid of tokens; a learned CLS token is put in
front and a learned position table (CLS row first) is added; pre-norm blocks
``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (LayerNorm eps 1e-6, exact-erf GELU, qkv bias); a final
LayerNorm; the head reads the CLS token.

Key names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.0.attn.qkv``,
``blocks.0.mlp.fc1``, ``norm``, ``head``), so a timm checkpoint of these models loads strictly by
name.  Attention goes through ``F.scaled_dot_product_attention`` with timm's qkv layout
``(3, heads, head_dim)``.

Other resolutions: :meth:`VisionTransformer.set_grid` resamples the position table of the grid
part bicubically (timm's ``resample_abs_pos_embed`` method, antialiased when shrinking) and keeps
the CLS row, so a checkpoint trained at 224 runs at 384.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeformer.models import ModelSpec, register

PAPER_VIT = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021, arXiv:2010.11929"
PAPER_DEIT = "Touvron et al., Training data-efficient image transformers & distillation through attention, ICML 2021, arXiv:2012.12877"  # noqa: E501
PAPER_AUGREG = "Steiner et al., How to train your ViT? Data, Augmentation, and Regularization, arXiv:2106.10270"


class Attention(nn.Module):
    """Multi-head softmax attention over all tokens (timm's ``attn.qkv`` / ``attn.proj``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def _extra_mul_add(self, inputs, output) -> tuple[int, int]:
        """q·kᵀ, the scale and attn·v (softmax itself is not counted), as PVTv2's SRAttention."""
        (x,) = inputs
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        mul = B * h * N * N * d * 2 + B * h * N * N
        add = B * h * N * N * (d - 1) + B * h * N * (N - 1) * d
        return mul, add


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT classifier: input ``(B, in_chans, img, img)`` → logits ``(B, num_classes)`` from CLS."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size, self.patch_size, self.num_classes = img_size, patch_size, num_classes
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_weights)

    @torch.no_grad()
    def set_grid(self, height: int, width: int) -> None:
        """Run at a ``height × width`` image from now on: the position table's grid rows are
        resampled bicubically (antialiased when shrinking), the CLS row is kept."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image {height}x{width} is not a multiple of the patch size {p}")
        grid = (height // p, width // p)
        if grid == self.grid:
            return
        cls, table = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        table = table.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        shrink = grid[0] < self.grid[0] or grid[1] < self.grid[1]
        table = F.interpolate(table.float(), size=grid, mode="bicubic", antialias=shrink, align_corners=False)
        table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(cls.dtype)
        self.pos_embed = nn.Parameter(torch.cat([cls, table], dim=1))
        self.grid, self.img_size = grid, max(height, width)

    def adapt_to(self, height: int, width: int) -> str | None:
        """Run at a ``height × width`` input (:meth:`set_grid`); returns what changed (None: nothing)."""
        before = self.grid
        self.set_grid(height, width)
        if self.grid == before:
            return None
        return (
            f"position table resampled bicubically from {before[0]}x{before[1]} to {self.grid[0]}x{self.grid[1]} "
            f"patches for {height}x{width} input (the CLS row kept)"
        )

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)[:, 0])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):  # timm's lecun-normal-like patch embedding init
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


TINY_DIGITS = dict(img_size=32, patch_size=2, num_classes=10, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0)


def deit_tiny(**kw) -> VisionTransformer:
    return VisionTransformer(**{**dict(embed_dim=192, depth=12, num_heads=3), **kw})


def deit_small(**kw) -> VisionTransformer:
    return VisionTransformer(**{**dict(embed_dim=384, depth=12, num_heads=6), **kw})


def vit_small(**kw) -> VisionTransformer:
    return VisionTransformer(**{**dict(embed_dim=384, depth=12, num_heads=6), **kw})


def vit_tiny(**kw) -> VisionTransformer:
    return VisionTransformer(**{**TINY_DIGITS, **kw})


# timm's names are the official ones: DeiT and AugReg publish their weights in timm's layout.
_IMAGENET = dict(input_shapes=((1, 3, 224, 224),), num_classes=1000, checkpoint_layouts=("official",))
register(
    ModelSpec(
        name="deit_tiny",
        family="vit",
        build=deit_tiny,
        paper=PAPER_DEIT,
        description="DeiT-Tiny/16 (timm deit_tiny_patch16_224), ImageNet-1k, 224×224, 196 tokens + CLS",
        published_params=5.7e6,
        published_macs=1.3e9,
        params=5_717_416,
        macs=1_253_683_200,
        tags=("vision", "attention"),
        **_IMAGENET,
    )
)
register(
    ModelSpec(
        name="deit_small",
        family="vit",
        build=deit_small,
        paper=PAPER_DEIT,
        description="DeiT-Small/16 (timm deit_small_patch16_224), ImageNet-1k, 224×224, 196 tokens + CLS",
        published_params=22e6,
        published_macs=4.6e9,
        params=22_050_664,
        macs=4_598_882_304,
        tags=("vision", "attention"),
        **_IMAGENET,
    )
)
register(
    ModelSpec(
        name="vit_small",
        family="vit",
        build=vit_small,
        paper=f"{PAPER_VIT}; {PAPER_AUGREG}",
        description="ViT-S/16 (timm vit_small_patch16_224), ImageNet-1k, 224×224; DeiT-S's shape, AugReg weights",
        published_params=22e6,
        published_macs=4.6e9,
        params=22_050_664,
        macs=4_598_882_304,
        tags=("vision", "attention"),
        **_IMAGENET,
    )
)
register(
    ModelSpec(
        name="vit_tiny",
        family="vit",
        build=vit_tiny,
        input_shapes=((1, 3, 32, 32),),
        paper=PAPER_VIT,
        description="ViT for sklearn digits upsampled to 32×32, patch 2: 256 tokens + CLS, 10 classes",
        params=70_474,
        macs=33_381_120,
        num_classes=10,
        tags=("tiny", "vision", "attention"),
    )
)
