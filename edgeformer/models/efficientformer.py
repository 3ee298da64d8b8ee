"""EfficientFormer (V1): L1, L3, L7 — Li et al., "EfficientFormer: Vision Transformers at
MobileNet Speed", NeurIPS 2022, arXiv:2206.01191.

Written from docs/architectures.md §1 and the paper.  Module and parameter names
follow the official repository (snap-research/EfficientFormer) so its checkpoints load as they
are:
``patch_embed.{0,1,3,4}``, ``network.{0..6}``, ``layer_scale_1/2``, ``token_mixer.qkv``,
``dist_head`` …  (timm names are handled by :mod:`edgeformer.checkpoints`).

Layout: stem (conv-BN-ReLU ×2, /4) → 4 stages of Meta4D blocks (pool mixer + conv MLP, NCHW)
joined by stride-2 ``Embedding`` convs; the last ``num_vit`` blocks of the last stage are Meta3D
(pre-LN multi-head attention + linear MLP on tokens) after one ``Flat``.  Head: LN → mean over
tokens → ``head`` and ``dist_head``, averaged in eval mode, a tuple in train mode.

Export notes: the attention bias is gathered from ``attention_biases`` on every forward.  The
official code caches that gather in a plain attribute at ``.eval()`` time, which goes stale when
weights are loaded afterwards (docs/architectures.md pitfall 1); gathering costs one small index op
and exports as a Gather on the (heads, res²) table, which passes may fold into a constant.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from edgeformer.models import ModelSpec, register

PAPER = "Li et al., EfficientFormer: Vision Transformers at MobileNet Speed, NeurIPS 2022, arXiv:2206.01191"


def relative_bias_index(q_res: int, k_res: int | None = None, q_step: int = 1) -> torch.Tensor:
    """(q_res², k_res²) index into a per-head bias table of k_res² relative offsets.

    Query (qr, qc) sits at (q_step·qr, q_step·qc) on the key grid; the offset (|Δr|, |Δc|) maps
    to |Δr|·k_res + |Δc|.  This equals the official first-appearance enumeration of offsets
    (itertools.product order) because query (0, 0) already meets every offset, in that order.
    """
    k_res = q_res if k_res is None else k_res
    if q_step * (q_res - 1) > k_res - 1:
        raise ValueError(f"query grid {q_res} with step {q_step} overruns key grid {k_res}")
    q = torch.arange(q_res) * q_step
    k = torch.arange(k_res)
    d = (q[:, None] - k[None, :]).abs()  # (q_res, k_res) per axis
    idx = d[:, None, :, None] * k_res + d[None, :, None, :]  # (qr, qc, kr, kc)
    return idx.reshape(q_res * q_res, k_res * k_res)


def _scale(ls: torch.Tensor) -> torch.Tensor:
    """Per-channel layer scale (C,) → (C, 1, 1) for NCHW maps."""
    return ls.reshape(-1, 1, 1)


class Pooling(nn.Module):
    """pool(x) − x; count_include_pad=False so every window averages only real pixels."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class Mlp(nn.Module):
    """1×1 conv → BN → GELU → 1×1 conv → BN (Meta4D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


class LinearMlp(nn.Module):
    """Linear → GELU → Linear (Meta3D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention with a learned relative-position bias over a res×res token grid.

    ``qkv`` is head-major: its output reshapes to (B, N, heads, 2·key_dim + d) and each head's
    slice is [q | k | v] — not the ViT (3, heads, d) layout.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4,
        resolution: int = 7,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.resolution = resolution
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", relative_bias_index(resolution))

    @torch.no_grad()
    def set_resolution(self, resolution: int) -> None:
        """Attend over a ``resolution``² grid from now on: the (heads, res, res) table of offsets is
        resampled bicubically to the new side (antialiased when shrinking; the method timm uses to
        resize LeViT's table) and the index is rebuilt."""
        r = self.resolution
        if resolution == r:
            return
        table = self.attention_biases.reshape(1, self.num_heads, r, r).float()
        table = F.interpolate(
            table, size=(resolution, resolution), mode="bicubic", antialias=resolution < r, align_corners=False
        )
        self.attention_biases = nn.Parameter(table.reshape(self.num_heads, resolution * resolution))
        self.attention_bias_idxs = relative_bias_index(resolution).to(self.attention_bias_idxs.device)
        self.resolution = resolution

    def attention_bias(self) -> torch.Tensor:
        """(heads, N, N) additive bias, gathered from the current table (never cached)."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_bias()
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.dh)
        return self.proj(x)


class Meta4D(nn.Module):
    """x + ls1·(pool(x) − x); x + ls2·Mlp(x)  (NCHW, no pre-norm)."""

    def __init__(self, dim: int, mlp_ratio: float = 4, pool_size: int = 3, layer_scale_init: float = 1e-5):
        super().__init__()
        self.token_mixer = Pooling(pool_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _scale(self.layer_scale_1) * self.token_mixer(x)
        return x + _scale(self.layer_scale_2) * self.mlp(x)


class Flat(nn.Module):
    """(B, C, H, W) → (B, HW, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class Meta3D(nn.Module):
    """x + ls1·Attention(LN(x)); x + ls2·LinearMlp(LN(x))  (tokens, pre-LN)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4,
        layer_scale_init: float = 1e-5,
        **attn_kwargs,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, **attn_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LinearMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2 * self.mlp(self.norm2(x))


class Embedding(nn.Module):
    """Downsample between stages: conv3×3 (stride 2 by default) → BN."""

    def __init__(self, in_dim: int, out_dim: int, stride: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def stem(in_chans: int, out_dim: int, strides: tuple[int, int] = (2, 2)) -> nn.Sequential:
    """conv3×3 → BN → ReLU → conv3×3 → BN → ReLU (keys 0, 1, 3, 4)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_dim // 2, 3, stride=strides[0], padding=1),
        nn.BatchNorm2d(out_dim // 2),
        nn.ReLU(),
        nn.Conv2d(out_dim // 2, out_dim, 3, stride=strides[1], padding=1),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(),
    )


class EfficientFormer(nn.Module):
    """EfficientFormer V1.

    ``resolution`` is the side of the last stage's token grid (7 at 224×224 input); the attention
    bias table is built for it, so the model runs at the matching input size until
    :meth:`adapt_to` resamples the tables for another.
    ``stem_strides`` and ``down_strides`` exist for small test/training configs; the published
    models use (2, 2) and (2, 2, 2).
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_vit: int,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4,
        pool_size: int = 3,
        layer_scale_init: float = 1e-5,
        distillation: bool = True,
        resolution: int = 7,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4,
        stem_strides: tuple[int, int] = (2, 2),
        down_strides: tuple[int, ...] = (2, 2, 2),
    ):
        super().__init__()
        if len(widths) != len(depths) or len(down_strides) != len(widths) - 1:
            raise ValueError("widths, depths and down_strides (one fewer) must describe the same stages")
        if not 1 <= num_vit <= depths[-1]:
            raise ValueError(f"num_vit={num_vit} must be in 1..{depths[-1]} (the last stage depth)")
        self.num_classes = num_classes
        self.distillation = distillation
        self.resolution = resolution
        self.stride = math.prod(stem_strides) * math.prod(down_strides)  # input pixels per last-stage token
        self.patch_embed = stem(in_chans, widths[0], stem_strides)
        attn = dict(key_dim=key_dim, num_heads=num_heads, attn_ratio=attn_ratio, resolution=resolution)
        network: list[nn.Module] = []
        last = len(widths) - 1
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            blocks: list[nn.Module] = []
            n_4d = depth - num_vit if i == last else depth
            for _ in range(n_4d):
                blocks.append(Meta4D(dim, mlp_ratio, pool_size, layer_scale_init))
            if i == last:
                blocks.append(Flat())
                for _ in range(num_vit):
                    blocks.append(Meta3D(dim, mlp_ratio, layer_scale_init, **attn))
            network.append(nn.Sequential(*blocks))
            if i < last:
                network.append(Embedding(dim, widths[i + 1], down_strides[i]))
        self.network = nn.ModuleList(network)
        self.norm = nn.LayerNorm(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        self.dist_head = nn.Linear(widths[-1], num_classes) if distillation else None
        self.apply(_init_weights)

    def adapt_to(self, height: int, width: int) -> str | None:
        """Run at a ``height × width`` input: every attention-bias table is resampled to the new
        last-stage grid (:meth:`Attention.set_resolution`); returns what changed (None: nothing)."""
        s = self.stride
        if height != width or height % s:
            raise ValueError(f"EfficientFormer needs a square input whose side is a multiple of {s}")
        before, after = self.resolution, height // s
        if after == before:
            return None
        for m in self.modules():
            if isinstance(m, Attention):
                m.set_resolution(after)
        self.resolution = after
        return (
            f"attention-bias tables resampled bicubically from a {before}x{before} to a {after}x{after} token grid "
            f"for {height}x{width} input"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, C) after the final norm."""
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x).mean(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z = self.forward_features(x)
        if self.dist_head is None:
            return self.head(z)
        out, dist = self.head(z), self.dist_head(z)
        if self.training:
            return out, dist
        return (out + dist) / 2


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ the zoo

CONFIGS: dict[str, dict] = {
    "l1": dict(widths=(48, 96, 224, 448), depths=(3, 2, 6, 4), num_vit=1),
    "l3": dict(widths=(64, 128, 320, 512), depths=(4, 4, 12, 6), num_vit=4),
    "l7": dict(widths=(96, 192, 384, 768), depths=(6, 6, 18, 8), num_vit=8),
    # 32×32 input, 10 classes: full-resolution stem and stride-2 downsamples → 4×4 tokens.
    "tiny": dict(
        widths=(16, 32, 48, 64),
        depths=(1, 1, 2, 2),
        num_vit=1,
        num_classes=10,
        resolution=4,
        key_dim=16,
        num_heads=4,
        attn_ratio=2,
        stem_strides=(1, 1),
    ),
}


def build(name: str, **kwargs) -> EfficientFormer:
    """Build ``efficientformer_<size>`` with random weights; kwargs override the config."""
    model = EfficientFormer(**{**CONFIGS[name], **kwargs})
    model.zoo_name = f"efficientformer_{name}"
    return model


_PUBLISHED = {  # (params, MACs) from the timm model cards / README
    "l1": (12.3e6, 1.3e9),
    "l3": (31.4e6, 3.9e9),
    "l7": (82.2e6, 10.2e9),
}
# Exact parameter counts of this implementation (incl. dist_head), checked by the tests.
_PARAMS = {"l1": 12_289_928, "l3": 31_406_000, "l7": 82_229_328, "tiny": 191_220}
# MACs from edgeformer.ir's summary at input_shapes (conv/linear/matmul); L1 and tiny are
# re-measured by the tests, L3/L7 were measured once (their exports are slow).
_MACS = {"l1": 1_291_284_736, "l3": 3_906_573_312, "l7": 10_119_325_696, "tiny": 11_953_408}

for _size in ("l1", "l3", "l7"):
    register(
        ModelSpec(
            name=f"efficientformer_{_size}",
            family="efficientformer",
            build=partial(build, _size),
            input_shapes=((1, 3, 224, 224),),
            paper=PAPER,
            description=f"EfficientFormer-{_size.upper()}: Meta4D pool blocks + Meta3D attention, distilled head",
            published_params=_PUBLISHED[_size][0],
            published_macs=_PUBLISHED[_size][1],
            params=_PARAMS[_size],
            macs=_MACS[_size],
            num_classes=1000,
            checkpoint_layouts=("official", "timm"),
            tags=("vision", "imagenet"),
        )
    )

register(
    ModelSpec(
        name="efficientformer_tiny",
        family="efficientformer",
        build=partial(build, "tiny"),
        input_shapes=((1, 3, 32, 32),),
        paper=PAPER,
        description="EfficientFormer V1 test config: widths 16-64, 1 Meta3D on a 4x4 grid, 10 classes",
        params=_PARAMS["tiny"],
        macs=_MACS["tiny"],
        num_classes=10,
        checkpoint_layouts=("official", "timm"),
        tags=("vision", "tiny"),
    )
)
