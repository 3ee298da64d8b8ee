"""Pipelines: the named pass orders, their edits, and ``Pipeline`` (pass names plus each pass's options).

A target owns one (``Target.pipeline``), as ExecuTorch's backends own their pass lists; a profile
and the CLI edit it (:meth:`Pipeline.edited`), and ``compile``, ``tune``, ``rewrite`` and the
benchmarks all run the edited value, so they rewrite the same graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgeformer.errors import UserError

from ._registry import get_pass
from .base import PassManager

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


@dataclass(frozen=True)
class Pipeline:
    names: tuple[str, ...]
    # pass name -> options for that pass (only passes in ``names``)
    options: Mapping[str, Mapping] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "options", {k: dict(v) for k, v in self.options.items()})

    def edited(self, add: Iterable[str] = (), drop: Iterable[str] = (), edits: str | None = None) -> Pipeline:
        """This pipeline after a profile's ``add``/``drop`` lists and CLI edits (``+a,-b``)."""
        names = resolve_pipeline(list(self.names), list(add), list(drop), edits)
        return Pipeline(tuple(names), {k: v for k, v in self.options.items() if k in names})

    def manager(self, **kwargs):
        """A :class:`~edgeformer.passes.PassManager` that runs this pipeline."""
        return PassManager(list(self.names), options={k: dict(v) for k, v in self.options.items()}, **kwargs)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "options": {k: dict(v) for k, v in sorted(self.options.items())}}
