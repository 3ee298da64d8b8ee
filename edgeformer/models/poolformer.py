"""PoolFormer: S12, S24, S36, M36, M48 — Yu et al., "MetaFormer Is Actually What You Need for
Vision", CVPR 2022, arXiv:2111.11418.

Written from docs/architectures.md §2.  Names follow the official repository (sail-sg/poolformer):
``patch_embed.proj``, ``network.{0,2,4,6}.{b}.{norm1,norm2,mlp.fc1,mlp.fc2,layer_scale_1/2}``,
``network.{1,3,5}.proj``, ``norm``, ``head``.

Block (NCHW): x + ls1·(pool(GN1(x)) − GN1(x)); x + ls2·fc2(GELU(fc1(GN2(x)))) with GN =
GroupNorm(1, C) (statistics over C, H, W per sample), pool = AvgPool 3×3 s1 p1 with
count_include_pad=False, fc = 1×1 conv.  Patch embed: conv 7×7 s4 p2; downsample: conv 3×3 s2
p1, neither normalised.  Head: GN on the map → mean over H, W → Linear.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgeformer.models import ModelSpec, register
from edgeformer.models.efficientformer import Pooling

PAPER = "Yu et al., MetaFormer Is Actually What You Need for Vision (PoolFormer), CVPR 2022, arXiv:2111.11418"


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group: normalises over (C, H, W), per-channel affine."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(1, num_channels, eps=eps)


class PatchEmbed(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PoolFormerBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4, pool_size: int = 3, layer_scale_init: float = 1e-5):
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = Pooling(pool_size)
        self.norm2 = GroupNorm1(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1.reshape(-1, 1, 1) * self.token_mixer(self.norm1(x))
        return x + self.layer_scale_2.reshape(-1, 1, 1) * self.mlp(self.norm2(x))


class PoolFormer(nn.Module):
    """PoolFormer; ``in_patch`` = (kernel, stride, padding) of the patch embedding (7, 4, 2)."""

    def __init__(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4,
        pool_size: int = 3,
        layer_scale_init: float = 1e-5,
        in_patch: tuple[int, int, int] = (7, 4, 2),
    ):
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError("widths and depths must describe the same stages")
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(in_chans, widths[0], *in_patch)
        network: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            network.append(
                nn.Sequential(*(PoolFormerBlock(dim, mlp_ratio, pool_size, layer_scale_init) for _ in range(depth)))
            )
            if i < len(widths) - 1:
                network.append(PatchEmbed(dim, widths[i + 1], 3, 2, 1))
        self.network = nn.ModuleList(network)
        self.norm = GroupNorm1(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x).mean([-2, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ the zoo

_S = (64, 128, 320, 512)
_M = (96, 192, 384, 768)
CONFIGS: dict[str, dict] = {
    "s12": dict(widths=_S, depths=(2, 2, 6, 2), layer_scale_init=1e-5),
    "s24": dict(widths=_S, depths=(4, 4, 12, 4), layer_scale_init=1e-5),
    "s36": dict(widths=_S, depths=(6, 6, 18, 6), layer_scale_init=1e-6),
    "m36": dict(widths=_M, depths=(6, 6, 18, 6), layer_scale_init=1e-6),
    "m48": dict(widths=_M, depths=(8, 8, 24, 8), layer_scale_init=1e-6),
    # 32×32 input, 10 classes: a 3×3 stride-2 patch embed gives 16/8/4/2 stage grids.
    "tiny": dict(widths=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_classes=10, in_patch=(3, 2, 1)),
}


def build(name: str, **kwargs) -> PoolFormer:
    """Build ``poolformer_<size>`` with random weights; kwargs override the config."""
    model = PoolFormer(**{**CONFIGS[name], **kwargs})
    model.zoo_name = f"poolformer_{name}"
    return model


_PUBLISHED = {  # README: params, MACs (fvcore)
    "s12": (12e6, 1.8e9),
    "s24": (21e6, 3.4e9),
    "s36": (31e6, 5.0e9),
    "m36": (56e6, 8.8e9),
    "m48": (73e6, 11.6e9),
}
_PARAMS = {  # exact counts of this implementation, checked by the tests
    "s12": 11_915_176,
    "s24": 21_388_968,
    "s36": 30_862_760,
    "m36": 56_172_520,
    "m48": 73_473_448,
    "tiny": 129_610,
}
# MACs from edgeformer.ir's summary at input_shapes (conv/linear); S12 and tiny are re-measured
# by the tests, the rest were measured once.
_MACS = {
    "s12": 1_812_267_008,
    "s24": 3_392_208_896,
    "s36": 4_972_150_784,
    "m36": 8_758_788_096,
    "m48": 11_533_320_192,
    "tiny": 2_507_392,
}

for _size in ("s12", "s24", "s36", "m36", "m48"):
    register(
        ModelSpec(
            name=f"poolformer_{_size}",
            family="poolformer",
            build=partial(build, _size),
            input_shapes=((1, 3, 224, 224),),
            paper=PAPER,
            description=f"PoolFormer-{_size.upper()}: GroupNorm + average-pool token mixer",
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
        name="poolformer_tiny",
        family="poolformer",
        build=partial(build, "tiny"),
        input_shapes=((1, 3, 32, 32),),
        paper=PAPER,
        description="PoolFormer test config: widths 16-64, 3x3/2 patch embed, 10 classes",
        params=_PARAMS["tiny"],
        macs=_MACS["tiny"],
        num_classes=10,
        checkpoint_layouts=("official", "timm"),
        tags=("vision", "tiny"),
    )
)
