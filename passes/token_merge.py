"""Token merging (ToMe, bipartite soft matching with proportional attention): a model transform.

A merge changes the token count for every later op, whose shapes the exported graph bakes into its
views, reshapes and tables, so this is not a graph rewrite: the blocks of the ``nn.Module`` the
model was exported from are wrapped (``edgeformer/token_merge.py``) and the module is exported
again.  ``model_transform`` names that function; the compiler (``plan``) puts the pass first in
the pipeline and hands the graph a hook to the module it was exported from, so ``run`` returns the
re-exported graph and the exact twin (the pipeline without approximating passes) keeps the
original export.

Reached like any pass: ``--passes +token_merge --pass-option token_merge.r=8``.  Not exact: the
approximation contract measures it (``--eval``; without data, the error against the exact twin).

Options: ``r`` (8: tokens merged per block, static, clipped to half a block's mergeable tokens),
``mode`` ("auto": ``block`` for a ViT whose head reads the CLS token, else ``attention``, which
merges before each attention and unmerges after it so N is kept at the block boundary, for
hierarchical models such as PVTv2), ``prefix_tokens`` (-1: the model's CLS/distillation tokens,
never merged).

Must not fire (``changed`` False, ``details["reason"]`` says why) when: the graph carries no
module (a ``.pt2`` export, or a graph not made by the compiler's ``plan``), the model has no list
of pre-norm attention blocks ToMe can wrap, block mode on a model without a class token or with
several stages, r = 0, or every block has too few tokens.

``details``: ``mode``, ``r``, ``prefix_tokens``, ``tokens_in``/``tokens_out`` and ``blocks`` (per
block: merged or declined with the reason, tokens in and out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgeformer.errors import UserError

from .base import Pass, PassResult, PassStats

MODES = ("auto", "block", "attention")


@dataclass
class Options:
    r: int = 8
    mode: str = "auto"
    prefix_tokens: int = -1


class TokenMerge(Pass):
    name = "token_merge"
    summary = "ToMe token merging (bipartite soft matching, proportional attention): a module transform (approximate)"
    exact = False
    Options = Options
    # "module:function" the compiler calls with (nn.Module, graph, options) -> (graph | None, details)
    model_transform: ClassVar[str] = "edgeformer.token_merge:transform"

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.mode not in MODES:
            raise UserError(
                f"option 'mode' of pass 'token_merge' is {self.options.mode!r}", f"use one of {', '.join(MODES)}"
            )
        if self.options.r < 0:
            raise UserError(f"option 'r' of pass 'token_merge' is {self.options.r}", "use r ≥ 0 (tokens per block)")

    def run(self, graph) -> PassResult:
        hook = getattr(graph, "model_transform", None)
        if hook is None:
            reason = (
                "token_merge transforms the nn.Module before export, and this graph carries none (a .pt2 "
                "export, or a graph after another pass): compile the model from its zoo name, factory or module"
            )
            return PassResult(graph, False, {"applied": False, "reason": reason}, PassStats(explain=[reason]))
        new, report = hook(graph, type(self), self.options)
        lines = [
            f"{b['block']}: "
            + ("merged" if b["status"] == "merged" else f"declined: {b['reason']}")
            + (f" ({b['tokens_in']} → {b['tokens_out']} tokens)" if "tokens_in" in b else "")
            for b in report.get("blocks", [])
        ]
        if new is None:
            return PassResult(graph, False, dict(report), PassStats(explain=lines or [report["reason"]]))
        matched = sum(b["status"] == "merged" for b in report["blocks"])
        details = {**report, "note": "applied to the nn.Module before export; the graph was exported again"}
        return PassResult(new, True, details, PassStats(matched=matched, explain=lines))
