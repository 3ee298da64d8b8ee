"""EcoFormer binarized attention (Liu et al., NeurIPS 2022, arXiv 2209.09004), spec §4.

Queries and keys share one projection (``to_qk``), are L2-normalised per head and hashed to
``b``-bit codes ``h ∈ {−1, +1}^b`` by a kernelized supervised hash (:class:`KernelSH`):

    k_j(x) = exp(−‖x − a_j‖² / 2σ) − mvec_j,   σ = mean over tokens and anchors of ‖x − a_j‖²
    h(x)   = sign(k(x)·Aᵀ)            (sign(0) := +1, so codes are always ±1; the official
                                        ``torch.sign`` would give a 0 code there)

Attention then costs O(N) and its products with ``h`` are additions/subtractions
(:func:`hamming_linear_attention`, in at least fp32):

    out_n = (h_nᵀ Σ_m h_m v_mᵀ + β v_n) / (h_nᵀ Σ_m h_m + N β),   β = b + 1

The ``β v_n`` (own token) against ``N β`` (all tokens) mismatch is the official code's and is
kept; :func:`hamming_quadratic_attention` is the explicit O(N²) reference with the same quirk.

Hash learning is explicit: :func:`fit_hash` (one hash from sample tokens) or :func:`fit_hashes`
(every EcoFormer attention in a model, in forward order, the way the official first forward does
it). The ``trained`` buffer records it in the state dict; forward NEVER re-learns (the official
``is_trained`` Python flag re-learned on the first forward after loading a checkpoint).

Cost: :func:`edgeformer.models.cost.count_mul_add` reports multiplies and additions separately and
the energy ``3.7 pJ·mul + 0.9 pJ·add`` (EcoFormer's ``get_energy.py`` model); the attention's own
products and hashing enter through :meth:`EcoFormerAttention._extra_mul_add`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeformer.models import ModelSpec, register
from edgeformer.models.pvt_v2 import B0, TINY, PyramidVisionTransformerV2

log = logging.getLogger(__name__)

PAPER = "Liu et al., EcoFormer: Energy-Saving Attention with Linear Complexity, NeurIPS 2022, arXiv:2209.09004"


# ------------------------------------------------------------------------------------- hashing


def binarize(y: Tensor) -> Tensor:
    """``sign(y)`` in {−1, +1} with sign(0) = +1. While training (grad enabled) the backward is
    straight-through, zero where ``|y| ≥ 1`` (EcoFormer's BinaryQuantizer)."""
    codes = torch.where(y >= 0, 1.0, -1.0).to(y.dtype)
    if y.requires_grad and torch.is_grad_enabled():
        passthrough = y * (y.abs() < 1).to(y.dtype)  # d/dy = 1 inside (−1, 1), 0 outside
        return codes.detach() + passthrough - passthrough.detach()
    return codes


def square_dist(x: Tensor, anchors: Tensor) -> Tensor:
    """``‖x_n − a_j‖²`` for ``x`` (B, H, N, d) and anchors (1, H, m, d) → (B, H, N, m)."""
    d2 = x.pow(2).sum(-1, keepdim=True) + anchors.pow(2).sum(-1).unsqueeze(-2) - 2 * x @ anchors.transpose(-1, -2)
    return d2.clamp_min(0.0)


class KernelSH(nn.Module):
    """Kernel-based supervised hashing with ``m`` anchors per head and ``nbits`` hash functions.

    Buffers (all in the state dict): ``A`` (heads, nbits, m), ``mvec`` (1, heads, 1, m),
    ``anchor`` (1, heads, m, head_dim), ``trained`` (bool). Untrained, ``A`` is Gaussian and the
    anchors are random unit vectors: a random kernel hash.
    """

    def __init__(self, num_heads: int, head_dim: int, nbits: int = 16, num_anchors: int = 25):
        super().__init__()
        self.num_heads, self.head_dim, self.nbits, self.m = num_heads, head_dim, nbits, num_anchors
        self.register_buffer("A", torch.randn(num_heads, nbits, num_anchors))
        self.register_buffer("mvec", torch.zeros(1, num_heads, 1, num_anchors))
        self.register_buffer("anchor", F.normalize(torch.randn(1, num_heads, num_anchors, head_dim), dim=-1))
        self.register_buffer("trained", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, nbits={self.nbits}, anchors={self.m}"

    def kernel(self, x: Tensor) -> Tensor:
        """Centred RBF features ``k(x) − mvec`` (B, H, N, m); σ adapts to each (batch, head)."""
        d2 = square_dist(x, self.anchor)
        sigma = d2.mean(dim=(-2, -1), keepdim=True)
        return torch.exp(-d2 / (2 * sigma)) - self.mvec

    def forward(self, x: Tensor) -> Tensor:
        """L2-normalised ``x`` (B, H, N, head_dim) → codes (B, H, N, nbits) in {−1, +1}."""
        return binarize(self.kernel(x) @ self.A.transpose(-1, -2))


def similarity_targets(x: Tensor, topk: int = 10) -> Tensor:
    """KSH targets ``S`` ∈ {−1, 0, +1}^{N×N} from normalised tokens: +1 for each row's ``topk``
    largest ``x·xᵀ`` entries, −1 for its ``topk`` smallest (written second, as officially).
    ``topk`` is capped at N/2 so the two sets stay disjoint on tiny token maps."""
    sim = x @ x.transpose(-1, -2)
    k = max(1, min(topk, sim.shape[-1] // 2))  # tiny maps: keep the two sets disjoint
    s = torch.zeros_like(sim)
    s.scatter_(-1, sim.topk(k, dim=-1).indices, 1.0)
    s.scatter_(-1, sim.topk(k, dim=-1, largest=False).indices, -1.0)
    return s


def ksh_objective(codes: Tensor, s: Tensor) -> Tensor:
    """KSH reconstruction loss ``‖H Hᵀ − b·S‖²_F / N²`` averaged over (batch, head); lower is better."""
    n, b = codes.shape[-2], codes.shape[-1]
    return ((codes @ codes.transpose(-1, -2) - b * s) ** 2).sum(dim=(-2, -1)).mean() / n**2


def _bit_loss(y: Tensor, s: Tensor, nbits: int) -> Tensor:
    """Per-head KSH bit loss ``−yᵀ S y / (N·nbits)``, averaged over the batch → (H,)."""
    n = y.shape[-1]
    ysy = (y * (s @ y.unsqueeze(-1)).squeeze(-1)).sum(-1)  # (B, H)
    return -(ysy / (n * nbits)).mean(0)


@dataclass
class HashFitReport:
    """What :func:`fit_hash` did: per bit, which heads accepted the optimised hash function."""

    accepted: list[list[bool]] = field(default_factory=list)  # [bit][head]
    objective_before: float = 0.0
    objective_after: float = 0.0

    @property
    def accepted_bits(self) -> int:
        return sum(any(b) for b in self.accepted)


def fit_hash(
    hash_: KernelSH,
    x: Tensor,
    *,
    topk: int = 10,
    iters: int = 100,
    lr: float = 5e-4,
    momentum: float = 0.9,
    generator: torch.Generator | None = None,
) -> HashFitReport:
    """Fit ``A``, ``mvec`` and the anchors of ``hash_`` to normalised tokens ``x`` (B, H, N, d).

    Anchors are ``m`` random tokens of the first sample (pooled over the batch when N < m). Each
    bit ``r`` is optimised on the residual targets with the sign relaxed to ``2σ(y) − 1`` (SGD,
    Nesterov momentum), kept per head only if its binary loss beats the previous function's, then
    ``S ← S − y yᵀ``. Acceptance is per head (the official code decides for all heads at once).
    """
    x = x.detach().float()
    B, H, N, d = x.shape
    m = hash_.m
    with torch.no_grad():
        if N >= m:
            idx = torch.randperm(N, generator=generator)[:m]
            anchor = x[0, :, idx]
        else:
            pool = x.transpose(0, 1).reshape(H, B * N, d)
            anchor = pool[:, torch.randperm(B * N, generator=generator)[:m]]
        hash_.anchor.copy_(anchor.unsqueeze(0))
        hash_.mvec.zero_()
        raw = hash_.kernel(x)
        hash_.mvec.copy_(raw.mean(dim=(0, 2), keepdim=True))
        kk = raw - hash_.mvec
        s0 = similarity_targets(x, topk)
        before = float(ksh_objective(binarize(kk @ hash_.A.float().transpose(-1, -2)), s0))
        s = s0 * hash_.nbits
    report = HashFitReport(objective_before=before)
    for r in range(hash_.nbits):
        a_prev = hash_.A[:, r, :].detach().float().clone()
        a = a_prev.clone().requires_grad_(True)
        opt = torch.optim.SGD([a], lr=lr, momentum=momentum, nesterov=True)
        with torch.enable_grad():
            for _ in range(iters):
                y = 2 * torch.sigmoid(torch.einsum("bhnm,hm->bhn", kk, a)) - 1
                loss = _bit_loss(y, s, hash_.nbits).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            if not torch.isfinite(a).all():
                raise FloatingPointError("hash learning diverged (non-finite hash weights)")
            y_prev = binarize(torch.einsum("bhnm,hm->bhn", kk, a_prev))
            y_new = binarize(torch.einsum("bhnm,hm->bhn", kk, a.detach()))
            better = _bit_loss(y_new, s, hash_.nbits) < _bit_loss(y_prev, s, hash_.nbits)  # (H,)
            hash_.A[:, r, :] = torch.where(better[:, None], a.detach(), a_prev).to(hash_.A.dtype)
            y = torch.where(better[None, :, None], y_new, y_prev)
            s = s - y.unsqueeze(-1) * y.unsqueeze(-2)
        report.accepted.append(better.tolist())
    with torch.no_grad():
        report.objective_after = float(ksh_objective(hash_(x), s0))
        hash_.trained.fill_(True)
    return report


# ----------------------------------------------------------------------------------- attention


def hamming_linear_attention(q: Tensor, k: Tensor, v: Tensor, nbits: int) -> Tensor:
    """O(N) form: ``(q (kᵀ v) + β v) / (q·Σk + N β)`` with ``β = nbits + 1``, in ≥ fp32.

    ``q``, ``k``: codes (B, H, N, nbits); ``v``: (B, H, N, d) → (B, H, N, d) in ``v``'s dtype.
    """
    dtype = torch.promote_types(v.dtype, torch.float32)
    q, k, vv = q.to(dtype), k.to(dtype), v.to(dtype)
    beta, n = nbits + 1, k.shape[-2]
    denom = q @ k.sum(dim=-2).unsqueeze(-1) + n * beta  # (B, H, N, 1)
    out = (q @ (k.transpose(-1, -2) @ vv) + beta * vv) / denom
    return out.to(v.dtype)


def hamming_quadratic_attention(q: Tensor, k: Tensor, v: Tensor, nbits: int) -> Tensor:
    """Explicit reference: affinities ``G = q kᵀ`` (Hamming similarity), numerator ``(G + βI) v``,
    denominator ``Σ_m (G_nm + β)``; equal to :func:`hamming_linear_attention` up to rounding."""
    dtype = torch.promote_types(v.dtype, torch.float32)
    q, k, vv = q.to(dtype), k.to(dtype), v.to(dtype)
    beta = nbits + 1
    g = q @ k.transpose(-1, -2)
    eye = torch.eye(g.shape[-1], dtype=dtype)
    return (((g + beta * eye) @ vv) / (g + beta).sum(-1, keepdim=True)).to(v.dtype)


@dataclass
class _FitRequest:
    kwargs: dict
    reports: dict[str, HashFitReport]
    name: str = ""


class EcoFormerAttention(nn.Module):
    """``to_qk`` (shared Q/K), ``to_v``, per-head :class:`KernelSH`, Hamming linear attention,
    ``proj``. Same ``(x, H, W)`` interface as PVTv2's attention; no spatial reduction (the
    attention is already linear in N).

    ``mode = "softmax"`` runs the same weights as shared-QK softmax attention
    (``softmax(qk·qkᵀ/√d)·v``, the official ``msa_share_qk`` warm-up before hashing);
    the default ``"hash"`` is EcoFormer. :func:`set_attention_mode` switches a whole model.
    """

    MODES = ("hash", "softmax")

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, nbits: int = 16, num_anchors: int = 25):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_qk = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.hash = KernelSH(num_heads, dim // num_heads, nbits, num_anchors)
        self.proj = nn.Linear(dim, dim)
        self.mode = "hash"
        self._fit: _FitRequest | None = None

    def forward(self, x: Tensor, H: int | None = None, W: int | None = None) -> Tensor:
        B, N, C = x.shape
        h = self.num_heads
        qk = self.to_qk(x).reshape(B, N, h, C // h).transpose(1, 2)
        v = self.to_v(x).reshape(B, N, h, C // h).transpose(1, 2)
        if self.mode == "softmax":
            out = F.scaled_dot_product_attention(qk, qk, v)
            return self.proj(out.transpose(1, 2).reshape(B, N, C))
        qk = F.normalize(qk, dim=-1)
        if self._fit is not None:  # only inside fit_hashes(): explicit, never on a plain forward
            self._fit.reports[self._fit.name] = fit_hash(self.hash, qk, **self._fit.kwargs)
            self._fit = None
        codes = self.hash(qk)
        out = hamming_linear_attention(codes, codes, v, self.hash.nbits)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def _extra_mul_add(self, inputs, output) -> tuple[int, int]:
        """Operations outside the Linear children, as this implementation computes them (the hook
        :func:`edgeformer.models.cost.count_mul_add` calls for modules that define it).

        Real multiplies: the L2 norm (square, divide), the kernel (x·aᵀ, ‖x‖², 1/2σ scaling), the
        hash projection k·Aᵀ, β·v and the final division. Everything multiplied by a ±1 code is an
        addition. exp is not counted (like activations elsewhere).
        """
        x = inputs[0]
        B, N, C = x.shape
        H, d, m, b = self.num_heads, C // self.num_heads, self.hash.m, self.hash.nbits
        T = B * H  # (batch, head) pairs
        if self.mode == "softmax":  # q·kᵀ, scale, attn·v
            return 2 * T * N * N * d + T * N * N, T * N * N * (d - 1) + T * N * (N - 1) * d
        mul = add = 0
        mul += T * N * d * 2 + T * N  # ‖x‖² squares, the division by the norm, sqrt
        add += T * N * (d - 1)
        mul += T * N * m * d + T * N * d + T * m * d + T * N * m  # x·aᵀ, ‖x‖², ‖a‖², 2·x·a
        add += T * N * m * (d - 1) + T * N * (d - 1) + T * m * (d - 1) + 2 * T * N * m
        add += T * (N * m - 1)  # σ = mean of distances
        mul += T * N * m + T  # −d²/(2σ)
        add += T * N * m  # − mvec
        mul += T * N * m * b  # k·Aᵀ
        add += T * N * (m - 1) * b
        add += T * (N - 1) * b  # Σ_m h_m
        add += T * N * (b - 1) + T * N  # h_n·Σh + Nβ
        add += T * b * (N - 1) * d  # Σ_m h_m v_mᵀ (sign flips + accumulation)
        add += T * N * (b - 1) * d + T * N * d  # h_nᵀ·context + β v_n
        mul += T * N * d + T * N * d  # β v_n, division
        return mul, add


def set_attention_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every :class:`EcoFormerAttention` in ``model`` to ``"hash"`` or ``"softmax"``."""
    if mode not in EcoFormerAttention.MODES:
        raise ValueError(f"unknown EcoFormer attention mode {mode!r}; one of {EcoFormerAttention.MODES}")
    for m in model.modules():
        if isinstance(m, EcoFormerAttention):
            m.mode = mode
    return model


def _eco_builder(nbits: int, num_anchors: int) -> Callable[[int, int, int, bool], nn.Module]:
    def build(dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool) -> nn.Module:
        return EcoFormerAttention(dim, num_heads, qkv_bias=qkv_bias, nbits=nbits, num_anchors=num_anchors)

    return build


def ecoformer_pvt_v2(config: dict, nbits: int = 16, num_anchors: int = 25, **kw) -> PyramidVisionTransformerV2:
    """PVTv2 with EcoFormer attention in every stage but the last (softmax there, as officially)."""
    stages = len(config["embed_dims"])
    eco = _eco_builder(nbits, num_anchors)
    return PyramidVisionTransformerV2(**{**config, **kw}, attn_layers=[eco] * (stages - 1) + [None])


def ecoformer_pvt_v2_b0(**kw) -> PyramidVisionTransformerV2:
    return ecoformer_pvt_v2(B0, **kw)


def ecoformer_pvt_v2_tiny(**kw) -> PyramidVisionTransformerV2:
    # 8 anchors: stage-2 maps of the 32×32 model have only 16 tokens.
    return ecoformer_pvt_v2(TINY, **{"num_anchors": 8, **kw})


@torch.no_grad()
def fit_hashes(model: nn.Module, x: Tensor, **fit_kwargs) -> dict[str, HashFitReport]:
    """Learn the hash of every :class:`EcoFormerAttention` in ``model`` from one batch ``x``, in
    forward order (each layer sees inputs produced by the already-fitted layers before it)."""
    reports: dict[str, HashFitReport] = {}
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, EcoFormerAttention)]
    for name, mod in mods:
        mod._fit = _FitRequest(dict(fit_kwargs), reports, name)
    try:
        model(x)
    finally:
        for _, mod in mods:
            mod._fit = None
    return reports


def hashes_trained(model: nn.Module) -> bool:
    """True when every EcoFormer hash in ``model`` has been fitted (the ``trained`` buffers)."""
    return all(bool(m.trained) for m in model.modules() if isinstance(m, KernelSH))


# ------------------------------------------------------------------------------------- registry

register(
    ModelSpec(
        name="ecoformer_pvt_v2_b0",
        family="ecoformer",
        build=ecoformer_pvt_v2_b0,
        input_shapes=((1, 3, 224, 224),),
        paper=PAPER,
        description="PVTv2-B0 with EcoFormer binarized attention in stages 1-3 (16 bits, 25 anchors); hashes "
        "untrained until fit_hashes()",
        params=3_136_328,
        macs=549_858_816,
        num_classes=1000,
        tags=("vision", "attention", "linear-attention", "binarized"),
    )
)
register(
    ModelSpec(
        name="ecoformer_pvt_v2_tiny",
        family="ecoformer",
        build=ecoformer_pvt_v2_tiny,
        input_shapes=((1, 3, 32, 32),),
        paper=PAPER,
        description="pvt_v2_tiny with EcoFormer attention in stages 1-3 (16 bits, 8 anchors), digits 32×32",
        params=146_842,
        macs=968_128,
        num_classes=10,
        tags=("tiny", "vision", "attention", "linear-attention", "binarized"),
    )
)
