"""Graph rewrites on the IR, one pass per file, registered explicitly here."""

from __future__ import annotations

from edgeformer.errors import UnknownNameError, UserError

from .base import Pass, PassCheckError, PassManager, PassRecord, PassResult
from .densify_attention_bias import DensifyAttentionBias
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fold_layer_scale import FoldLayerScale
from .fold_norm_affine import FoldNormAffine
from .fold_pool_mixer import FoldPoolMixer
from .fold_repbn import FoldRepBN
from .lower_group_norm import LowerGroupNorm
from .merge_parallel_heads import MergeParallelHeads
from .reparameterize_branches import ReparameterizeBranches

_PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Add a pass class; a duplicate name is a bug and raises."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _PASSES:
        raise ValueError(f"pass {cls.name!r} registered twice ({_PASSES[cls.name].__name__}, {cls.__name__})")
    _PASSES[cls.name] = cls
    return cls


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
):
    register(_cls)

# --- pipelines ------------------------------------------------------------------------------------
# Named, ordered lists of pass names.  Ordering constraints:
PIPELINES: dict[str, list[str]] = {
    "exact": [
        # Gathers on constant tables first, while fold_constants (below) would refuse them for
        # growing the tensor: the dense bias is a deliberate size-for-speed trade.
        "densify_attention_bias",
        # Before fold_batchnorm: a branch's BN is folded here, with its branch; fold_batchnorm
        # would otherwise leave x + conv(x) branches whose BN precedes the merged conv.
        # (LMUFormer: x + rpe_conv(x) after the tokenizer's last BN becomes one conv, so that BN
        # can then fold into it.)
        "reparameterize_branches",
        # Before fold_layer_scale: it looks for a bare conv/linear producing the scaled value, which
        # is only true once that layer's BN is folded away (EfficientFormer ls2 ⊙ BN(fc2(·))).
        "fold_batchnorm",
        # Independent of the others; before fold_layer_scale so a scale after the following
        # linear sees the final weights (folds commute, this keeps one rounding per weight).
        "fold_repbn",
        # Before fold_norm_affine: the pool mixer consumes GroupNorm-1's affine (β cancels, γ joins
        # the layer scale); fold_norm_affine would reject that norm (a pool is not a linear).
        # Before fold_layer_scale: it turns ls1 and γ into one multiply, not a producer fold.
        "fold_pool_mixer",
        # After fold_batchnorm: EfficientFormer's ls2 multiplies BN(fc2(...)).
        "fold_layer_scale",
        # Before fold_norm_affine: the final norm then feeds one head instead of two.
        "merge_parallel_heads",
        "fold_norm_affine",
        # After fold_pool_mixer and fold_norm_affine: only affine-free GroupNorms are rewritten.
        "lower_group_norm",
        # Last: folds the constant chains the others leave (views of merged scales) and removes
        # dead nodes and unused parameters.
        "fold_constants",
    ],
}
# Each target's default pipeline (a dict, not an if-chain).
TARGET_PIPELINES: dict[str, str] = {
    "onnxruntime": "exact",
    "openvino": "exact",
    "tvm": "exact",
    "coreml": "exact",
    "executorch": "exact",
}


# Per-target pass options, chosen by measurement (benchmarks/passes.py; figures in the pass
# docstrings): ORT runs GroupNorm(1, C) fastest as a reshaped InstanceNormalization, OpenVINO as one
# LayerNorm (MVN).  fold_pool_mixer's branch_convs form is ORT's: with the mixer as two depthwise
# 1x1 convs its NCHWc layout engine keeps the residual stream blocked and folds the adds into the
# convs.  Over the plain export, 2 threads: PoolFormer-S12 x1.057 -> x1.075, EfficientFormer-L1
# x1.02 -> x1.063 (x1.080 and x1.142 with ORT's threads sleeping between ops: fewer ops count more
# there).  On the host-ort artifact the ORT target then runs the norms on its blocked tensors
# (targets/_ort_blocked.py), which removes the last 48 reorders of PoolFormer-S12.  OpenVINO
# fuses the plain form itself.  The dw_conv form stays off everywhere: it
# measured slower or equal on both runtimes (more ops than the pool it replaces).
TARGET_OPTIONS: dict[str, dict[str, dict]] = {
    "onnxruntime": {"fold_pool_mixer": {"branch_convs": True}, "lower_group_norm": {"form": "instance_norm"}},
    "openvino": {"lower_group_norm": {"form": "layer_norm"}},
}


def default_options(target_name: str, pipeline: list[str] | None = None) -> dict[str, dict]:
    """The target's pass options (for ``PassManager(options=...)``), limited to ``pipeline``."""
    opts = TARGET_OPTIONS.get(target_name, {})
    return {k: dict(v) for k, v in opts.items() if pipeline is None or k in pipeline}


def pass_names() -> list[str]:
    return list(_PASSES)


def get_pass(name: str) -> type[Pass]:
    try:
        return _PASSES[name]
    except KeyError:
        raise UnknownNameError("pass", name, _PASSES) from None


def describe_passes() -> list[tuple[str, str, bool]]:
    """``(name, one-line summary, exact)`` for every registered pass, for ``edgeformer passes``."""
    return [(name, cls.summary, cls.exact) for name, cls in _PASSES.items()]


def default_pipeline(target_name: str) -> list[str]:
    """The default pipeline of a target; an unknown target gets the exact pipeline."""
    return list(PIPELINES[TARGET_PIPELINES.get(target_name, "exact")])


def resolve_pipeline(base: list[str], add=(), drop=(), edits: str | None = None) -> list[str]:
    """Apply profile add/drop lists, then CLI edits like ``+name,-name``.

    ``+name`` appends a pass that is not already there (at its place in the exact pipeline when it
    belongs to it, so ordering constraints hold); ``-name`` removes it; a bare name means ``+``.
    """
    names = list(base)
    ops = [("+", n) for n in add] + [("-", n) for n in drop]
    for tok in (edits or "").split(","):
        tok = tok.strip()
        if not tok:
            continue
        sign, n = (tok[0], tok[1:].strip()) if tok[0] in "+-" else ("+", tok)
        if not n:
            raise UserError(f"empty pass name in --passes {edits!r}", "write +name or -name, comma separated")
        ops.append((sign, n))
    for sign, n in ops:
        get_pass(n)  # validates the name
        if sign == "+" and n not in names:
            names.insert(_slot(names, n), n)
        elif sign == "-" and n in names:
            names.remove(n)
    return names


def _slot(names: list[str], new: str) -> int:
    """Where ``new`` goes: after the last pass that precedes it in the exact pipeline, else the end."""
    order = PIPELINES["exact"]
    if new not in order:
        return len(names)
    k = order.index(new)
    earlier = [i for i, n in enumerate(names) if n in order[:k]]
    if earlier:
        return earlier[-1] + 1
    later = [i for i, n in enumerate(names) if n in order[k + 1 :]]
    return later[0] if later else len(names)


__all__ = [
    "PIPELINES",
    "TARGET_OPTIONS",
    "TARGET_PIPELINES",
    "Pass",
    "PassCheckError",
    "PassManager",
    "PassRecord",
    "PassResult",
    "default_options",
    "default_pipeline",
    "describe_passes",
    "get_pass",
    "pass_names",
    "register",
    "resolve_pipeline",
]
