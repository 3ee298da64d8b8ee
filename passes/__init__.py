"""Graph rewrites on the IR, one pass per file, registered explicitly here.

A target owns the pipeline it runs (``Target.pipeline``, a :class:`Pipeline`); the named pass orders
it starts from are in ``_pipeline.PIPELINES``.
"""

from __future__ import annotations

from edgeformer.manifest import PassRecord

from ._affine import bn_scale_shift
from ._pipeline import PIPELINES, Pipeline, resolve_pipeline
from ._registry import describe_passes, get_pass, pass_names, register
from .base import Pass, PassCheckError, PassManager, PassResult, PassStats
from .binary_attention import BinaryAttention
from .decompose_unmasked_sdpa import DecomposeUnmaskedSdpa
from .densify_attention_bias import DensifyAttentionBias
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fold_layer_scale import FoldLayerScale
from .fold_norm_affine import FoldNormAffine
from .fold_pool_mixer import FoldPoolMixer
from .fold_repbn import FoldRepBN
from .kv_downsample import KvDownsample
from .landmark_attention import LandmarkAttention
from .linear_attention import LinearAttention
from .lower_group_norm import LowerGroupNorm
from .merge_parallel_heads import MergeParallelHeads
from .reparameterize_branches import ReparameterizeBranches
from .token_merge import TokenMerge

# --- explicit registration (one line per pass file) ----------------------------------------------
for _cls in (
    FoldConstants,
    DensifyAttentionBias,
    ReparameterizeBranches,
    FoldBatchNorm,
    FoldRepBN,
    FoldPoolMixer,
    FoldLayerScale,
    MergeParallelHeads,
    FoldNormAffine,
    LowerGroupNorm,
    DecomposeUnmaskedSdpa,
    KvDownsample,
    BinaryAttention,
    LandmarkAttention,
    LinearAttention,
    TokenMerge,
):
    register(_cls)

__all__ = [
    "bn_scale_shift",
    "PIPELINES",
    "Pass",
    "PassCheckError",
    "PassManager",
    "PassRecord",
    "PassResult",
    "PassStats",
    "Pipeline",
    "describe_passes",
    "get_pass",
    "pass_names",
    "register",
    "resolve_pipeline",
]
