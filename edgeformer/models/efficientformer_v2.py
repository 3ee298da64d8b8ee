"""EfficientFormerV2: S0, S1, S2, L — Li et al., "Rethinking Vision Transformers for MobileNet Size
and Speed", ICCV 2023, arXiv:2212.08059.

Written from docs/architectures.md §1 (V2 brief) and the paper.  Names follow the official repository
(snap-research/EfficientFormer, models/efficientformer_v2.py) so its checkpoints load directly.

Layout (all NCHW, BatchNorm everywhere, GELU):
- stem: conv3×3 s2 → BN → GELU → conv3×3 s2 → BN → GELU (keys ``patch_embed.{0,1,3,4}``).
- 4 stages of ``FFN`` blocks: x + ls2·(1×1 → BN → GELU → DW3×3 → BN → GELU → 1×1 → BN)(x); the
  hidden width uses a per-block expansion ratio (3 or 4, tables below).
- the last ``num_vit`` blocks of stages 2 and 3 are ``AttnFFN``: x + ls1·Attention4D(x) first.
  Attention4D: q, k, v = 1×1 conv + BN; talking heads (1×1 conv across heads) before and after
  the softmax; a relative-position bias; v_local = DW3×3 + BN on v added to the output; proj =
  GELU → 1×1 → BN.  In stage 2 it attends on a stride-2 map (DW3×3 s2 + BN) and upsamples back
  (bilinear ×2).
- downsample: conv3×3 s2 + BN; into stage 3 it adds ``Attention4DDownsample`` whose queries are
  local-global (DW3×3 s2 + 1×1 subsample, then 1×1 + BN).
- head: BN → mean over H, W → ``head`` and ``dist_head`` (averaged in eval, tuple in train).

The attention biases are gathered on every forward (no cached copy that could go stale).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from edgeformer.models import ModelSpec, register
from edgeformer.models.efficientformer import relative_bias_index

PAPER = (
    "Li et al., Rethinking Vision Transformers for MobileNet Size and Speed (EfficientFormerV2), "
    "ICCV 2023, arXiv:2212.08059"
)


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups), nn.BatchNorm2d(cout)]


class Attention4D(nn.Module):
    """Multi-head attention on a res×res map with talking heads and a local value branch.

    Channel c of q/k/v belongs to head c // per_head_dim (head-major).  With ``stride`` the
    attention runs on a stride-downsampled map and the result is upsampled back.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4,
        resolution: int = 7,
        stride: int | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        nh_kd = key_dim * num_heads
        if stride is not None:
            self.resolution = math.ceil(resolution / stride)
            self.stride_conv = nn.Sequential(*_conv_bn(dim, dim, 3, stride, groups=dim))
            self.upsample = nn.Upsample(scale_factor=stride, mode="bilinear")
        else:
            self.resolution = resolution
            self.stride_conv = None
            self.upsample = None
        self.N = self.resolution**2
        self.q = nn.Sequential(*_conv_bn(dim, nh_kd))
        self.k = nn.Sequential(*_conv_bn(dim, nh_kd))
        self.v = nn.Sequential(*_conv_bn(dim, self.dh))
        self.v_local = nn.Sequential(*_conv_bn(self.dh, self.dh, 3, groups=self.dh))
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = nn.Sequential(nn.GELU(), *_conv_bn(self.dh, dim))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.register_buffer("attention_bias_idxs", relative_bias_index(self.resolution))

    def attention_bias(self) -> torch.Tensor:
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        h, n, r = self.num_heads, self.N, self.resolution
        q = self.q(x).reshape(B, h, self.key_dim, n).transpose(2, 3)  # (B, h, N, kd)
        k = self.k(x).reshape(B, h, self.key_dim, n)  # (B, h, kd, N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, h, self.d, n).transpose(2, 3)  # (B, h, N, d)
        attn = (q @ k) * self.scale + self.attention_bias()
        attn = self.talking_head1(attn).softmax(dim=-1)
        attn = self.talking_head2(attn)
        out = (attn @ v).transpose(2, 3).reshape(B, self.dh, r, r) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(out)


class LGQuery(nn.Module):
    """Local-global query for the downsampling attention: DW3×3 s2 + 1×1 s2 subsample → 1×1 → BN."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Sequential(nn.Conv2d(in_dim, in_dim, 3, stride=2, padding=1, groups=in_dim))
        self.proj = nn.Sequential(*_conv_bn(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + self.pool(x))


class Attention4DDownsample(nn.Module):
    """Stride-2 attention: queries on the ceil(res/2) grid, keys/values on the res grid."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        key_dim: int = 16,
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
        self.resolution2 = math.ceil(resolution / 2)
        self.N = resolution**2
        self.N2 = self.resolution2**2
        nh_kd = key_dim * num_heads
        self.q = LGQuery(dim, nh_kd)
        self.k = nn.Sequential(*_conv_bn(dim, nh_kd))
        self.v = nn.Sequential(*_conv_bn(dim, self.dh))
        self.v_local = nn.Sequential(*_conv_bn(self.dh, self.dh, 3, 2, groups=self.dh))
        self.proj = nn.Sequential(nn.GELU(), *_conv_bn(self.dh, out_dim))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        step = math.ceil(resolution / self.resolution2)
        self.register_buffer("attention_bias_idxs", relative_bias_index(self.resolution2, resolution, step))

    def attention_bias(self) -> torch.Tensor:
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h = self.num_heads
        q = self.q(x).reshape(B, h, self.key_dim, self.N2).transpose(2, 3)
        k = self.k(x).reshape(B, h, self.key_dim, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, h, self.d, self.N).transpose(2, 3)
        attn = ((q @ k) * self.scale + self.attention_bias()).softmax(dim=-1)
        r2 = self.resolution2
        out = (attn @ v).transpose(2, 3).reshape(B, self.dh, r2, r2) + v_local
        return self.proj(out)


class Mlp(nn.Module):
    """1×1 → BN → GELU → DW3×3 → BN → GELU → 1×1 → BN."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


class FFN(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float = 1e-5):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale_2 * self.mlp(x)


class AttnFFN(nn.Module):
    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        resolution: int,
        stride: int | None,
        layer_scale_init: float = 1e-5,
        **attn_kwargs,
    ):
        super().__init__()
        self.token_mixer = Attention4D(dim, resolution=resolution, stride=stride, **attn_kwargs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.token_mixer(x)
        return x + self.layer_scale_2 * self.mlp(x)


class Embedding(nn.Module):
    """Downsample: conv3×3 s2 → BN, plus (``asub``) a stride-2 attention branch."""

    def __init__(self, in_dim: int, out_dim: int, asub: bool = False, resolution: int = 14):
        super().__init__()
        self.asub = asub
        if asub:
            self.attn = Attention4DDownsample(in_dim, out_dim, resolution=resolution)
            self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(out_dim)
        else:
            self.proj = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
            self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asub:
            return self.attn(x) + self.bn(self.conv(x))
        return self.norm(self.proj(x))


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2.

    ``resolution`` is the input image side (224): stage i works on ceil(resolution / (s·2^i))
    with s the product of ``stem_strides``; attention biases are sized for it.
    ``e_ratios[i][j]`` is the MLP expansion of block j in stage i.
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_vit: int,
        e_ratios: tuple[tuple[float, ...], ...],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        resolution: int = 224,
        layer_scale_init: float = 1e-5,
        distillation: bool = True,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4,
        stem_strides: tuple[int, int] = (2, 2),
    ):
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError("EfficientFormerV2 has exactly 4 stages")
        if [len(r) for r in e_ratios] != list(depths):
            raise ValueError("e_ratios must give one expansion ratio per block")
        self.num_classes = num_classes
        self.distillation = distillation
        self.patch_embed = nn.Sequential(
            *_conv_bn(in_chans, widths[0] // 2, 3, stem_strides[0]),
            nn.GELU(),
            *_conv_bn(widths[0] // 2, widths[0], 3, stem_strides[1]),
            nn.GELU(),
        )
        first = stem_strides[0] * stem_strides[1]
        attn = dict(key_dim=key_dim, num_heads=num_heads, attn_ratio=attn_ratio)
        network: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(widths, depths)):
            res = math.ceil(resolution / (first * 2**i))
            blocks: list[nn.Module] = []
            for j in range(depth):
                ratio = e_ratios[i][j]
                if i >= 2 and j >= depth - num_vit:
                    stride = 2 if i == 2 else None
                    blocks.append(AttnFFN(dim, ratio, res, stride, layer_scale_init, **attn))
                else:
                    blocks.append(FFN(dim, ratio, layer_scale_init))
            network.append(nn.Sequential(*blocks))
            if i < 3:
                network.append(Embedding(dim, widths[i + 1], asub=i >= 2, resolution=res))
        self.network = nn.ModuleList(network)
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        self.dist_head = nn.Linear(widths[-1], num_classes) if distillation else None
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x).flatten(2).mean(-1)

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

# Per-block MLP expansion ratios (paper / official repo tables).
E_RATIOS = {
    "s0": ((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4)),
    "s1": ((4, 4, 4), (4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
    "s2": (
        (4, 4, 4, 4),
        (4, 4, 4, 4),
        (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
        (4, 4, 3, 3, 3, 3, 4, 4),
    ),
    "l": (
        (4, 4, 4, 4, 4),
        (4, 4, 4, 4, 4),
        (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
        (4, 4, 4, 3, 3, 3, 3, 4, 4, 4),
    ),
}

CONFIGS: dict[str, dict] = {
    "s0": dict(widths=(32, 48, 96, 176), depths=(2, 2, 6, 4), num_vit=2, e_ratios=E_RATIOS["s0"]),
    "s1": dict(widths=(32, 48, 120, 224), depths=(3, 3, 9, 6), num_vit=2, e_ratios=E_RATIOS["s1"]),
    "s2": dict(widths=(32, 64, 144, 288), depths=(4, 4, 12, 8), num_vit=4, e_ratios=E_RATIOS["s2"]),
    "l": dict(widths=(40, 80, 192, 384), depths=(5, 5, 15, 10), num_vit=6, e_ratios=E_RATIOS["l"]),
    # 32×32 input, 10 classes: a stride-1 stem keeps stage grids at 32/16/8/4, so the stage-2
    # attention runs on 4×4 (after its stride 2) and stage 3 on 4×4.
    "tiny": dict(
        widths=(16, 24, 32, 48),
        depths=(1, 1, 2, 2),
        num_vit=1,
        e_ratios=((4,), (4,), (4, 4), (4, 4)),
        num_classes=10,
        resolution=32,
        key_dim=16,
        num_heads=4,
        attn_ratio=2,
        stem_strides=(1, 1),
    ),
}


def authors_param_count(model: nn.Module, example: torch.Tensor) -> int:
    """Parameters as the EfficientFormer authors count them for their README (their toolbox.py).

    Their profiler hooks the layers that run in one forward pass and adds, per call: a Conv2d's
    weight plus ``in_channels / groups`` (its stand-in for the bias, counted whether or not the
    conv has one), a Linear's weight and bias, a LayerNorm's weight and bias.  BatchNorm, layer
    scales and attention biases are left out ("fused at inference"); the distillation head is in.
    On V2 this gives 3,534,553 / 6,092,480 / 12,551,405 / 26,068,650 for S0 / S1 / S2 / L: the
    README's 3.5 / 6.1 / 12.6 / 26.1M, while ``sum(p.numel())`` gives 3.60 / 6.19 / 12.71 / 26.32M
    (timm's cards).  The official source labels S0's table "# 3.5m" and S2's "# 12m".
    """
    counted: list[int] = []

    def hook(module, _inputs, _output) -> None:
        if isinstance(module, nn.Conv2d):
            counted.append(module.weight.numel() + module.weight.shape[1])
        elif isinstance(module, (nn.Linear, nn.LayerNorm)):
            counted.append(module.weight.numel() + (module.bias.numel() if module.bias is not None else 0))

    kinds = (nn.Conv2d, nn.Linear, nn.LayerNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return sum(counted)


def build(name: str, **kwargs) -> EfficientFormerV2:
    """Build ``efficientformer_v2_<size>`` with random weights; kwargs override the config."""
    model = EfficientFormerV2(**{**CONFIGS[name], **kwargs})
    model.zoo_name = f"efficientformer_v2_{name}"
    return model


_PUBLISHED = {  # README: params, MACs
    "s0": (3.5e6, 0.40e9),
    "s1": (6.1e6, 0.65e9),
    "s2": (12.6e6, 1.25e9),
    "l": (26.1e6, 2.56e9),
}
# Exact counts of this implementation (incl. dist_head), checked by the tests.  They equal the
# official/timm models (timm cards: 3.6M, 6.2M, 12.7M, 26.3M).  The README's figures are not
# ``sum(p.numel())`` but the authors' profiler count (see :func:`authors_param_count`).
_PARAMS = {"s0": 3_600_256, "s1": 6_185_560, "s2": 12_710_112, "l": 26_322_288, "tiny": 194_540}
# MACs from edgeformer.ir's summary at input_shapes (conv/linear/matmul; bilinear upsample not
# counted); tiny is re-measured by the tests, the rest were measured once.
_MACS = {
    "s0": 395_892_544,
    "s1": 651_969_640,
    "s2": 1_246_863_952,
    "l": 2_552_546_880,
    "tiny": 12_226_496,
}

for _size in ("s0", "s1", "s2", "l"):
    register(
        ModelSpec(
            name=f"efficientformer_v2_{_size}",
            family="efficientformer_v2",
            build=partial(build, _size),
            input_shapes=((1, 3, 224, 224),),
            paper=PAPER,
            description=f"EfficientFormerV2-{_size.upper()}: FFN + Attention4D, BN everywhere, distilled head",
            published_params=_PUBLISHED[_size][0],
            published_macs=_PUBLISHED[_size][1],
            params=_PARAMS[_size],
            macs=_MACS[_size],
            num_classes=1000,
            checkpoint_layouts=("official",),
            tags=("vision", "imagenet"),
        )
    )

register(
    ModelSpec(
        name="efficientformer_v2_tiny",
        family="efficientformer_v2",
        build=partial(build, "tiny"),
        input_shapes=((1, 3, 32, 32),),
        paper=PAPER,
        description="EfficientFormerV2 test config: widths 16-48, attention on 4x4 grids, 10 classes",
        params=_PARAMS["tiny"],
        macs=_MACS["tiny"],
        num_classes=10,
        checkpoint_layouts=("official",),
        tags=("vision", "tiny"),
    )
)
