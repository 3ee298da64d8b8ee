"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023,
arXiv 2210.09461) as a module transform applied before export.

A merge changes the token count for every later op (shapes, views and reshapes baked into the
exported graph), so it is not a graph rewrite: :func:`apply` wraps the blocks of an ``nn.Module``
and the model is exported again (the pass ``token_merge``, ``--passes +token_merge``, calls
:func:`transform` on the module the compiler exported).

Bipartite soft matching, once per block (``facebookresearch/ToMe: tome/merge.py``):

- the first ``prefix`` tokens (CLS, distillation) are never merged;
- the other tokens are split alternately into A (even) and B (odd);
- similarity is the cosine of the attention keys, averaged over heads (attention-only mode: of the
  block's normalised input, as ToMeSD);
- each A token picks its most similar B token, and the r best edges merge A into B;
- merging is a size-weighted average, ``scatter_add(x·s) / scatter_add(s)`` (``Tensor.scatter_add``
  only: ONNX has no scatter mean), with the sizes ``s`` tracked through the network;
- proportional attention: ``log s`` is added to the scores over the keys (an additive float
  ``attn_mask`` of ``F.scaled_dot_product_attention``), as if each merged key appeared s times.

r is static per block (clipped to half the mergeable tokens), so every shape stays static: the
graph holds ``sort``, ``gather``, ``scatter_add``, ``max`` and slices, which every target exports.

Modes:

- ``block`` (plain ViTs, timm's ``ToMeBlock``): ``x = x + attn(norm1(x)); x = merge(x);
  x = x + mlp(norm2(x))``.  The token count drops by r per block; the head reads the CLS token, so
  no unmerge is needed.  Needs a model whose head reads its prefix tokens (a ``cls_token``).
- ``attention`` (hierarchical blocks, PVTv2; ToMeSD): the block's normalised input is merged
  before the attention and its output unmerged (gathered back) after it, so the block boundary
  keeps N for the Mix-FFN's depthwise conv and the next patch embedding.  With spatial reduction
  (PVTv2's ``sr_ratio`` > 1) the keys/values still come from the full token grid; only the
  queries are merged.
- ``auto``: ``block`` for a ViT with a CLS token, else ``attention`` where the blocks allow it.

A model without recognisable blocks is declined with the reason (the report says so); nothing
is changed then.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeformer import ir

MODES = ("auto", "block", "attention")
_VIT_ATTN_CHILDREN = {"qkv", "proj", "q_norm", "k_norm", "attn_drop", "proj_drop", "norm"}
_BLOCK_EXTRA = {"ls1", "ls2", "drop_path", "drop_path1", "drop_path2"}
_PASSIVE = (nn.Identity, nn.Dropout)


# ------------------------------------------------------------------------------- matching / merging


@dataclass
class Matching:
    """One bipartite soft matching: which A tokens stay, which merge into which B token."""

    prefix: int
    unm_idx: Tensor  # (B, tA - r, 1): A tokens kept
    src_idx: Tensor  # (B, r, 1): A tokens merged away
    dst_idx: Tensor  # (B, r, 1): the B token each of them merges into
    tokens: int  # N before the merge

    def merge(self, x: Tensor) -> Tensor:
        """Sum-merge ``x`` (B, N, C) → (B, N − r, C): [prefix, kept A, B (+ merged A)]."""
        p = self.prefix
        head, rest = x[:, :p], x[:, p:]
        a, b = rest[:, ::2], rest[:, 1::2]
        B, _, C = x.shape
        unm = a.gather(1, self.unm_idx.expand(B, self.unm_idx.shape[1], C))
        src = a.gather(1, self.src_idx.expand(B, self.src_idx.shape[1], C))
        dst = b.scatter_add(1, self.dst_idx.expand(B, self.dst_idx.shape[1], C), src)
        return torch.cat([head, unm, dst], dim=1)

    def merge_wavg(self, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
        """Size-weighted average merge of ``x`` and the merged sizes (B, N − r, 1)."""
        if size is None:
            size = torch.ones_like(x[..., :1])
        x = self.merge(x * size)
        size = self.merge(size)
        return x / size, size

    def unmerge(self, y: Tensor) -> Tensor:
        """(B, N − r, C) → (B, N, C): every token gets the row it was merged into (gathers only)."""
        p = self.prefix
        B, M, C = y.shape
        kept = self.unm_idx.shape[1]
        t_a = kept + self.src_idx.shape[1]
        t_b = self.tokens - p - t_a
        dev = y.device
        # Index of each A token in the merged sequence: kept ones at p + rank, merged ones at their B's row.
        # unm_idx and src_idx partition A, so a scatter_add into zeros writes each slot once.
        pos_a = torch.zeros(B, t_a, dtype=torch.long, device=dev)
        rank = torch.arange(kept, device=dev).add(p).expand(B, kept)
        pos_a = pos_a.scatter_add(1, self.unm_idx[..., 0], rank)
        pos_a = pos_a.scatter_add(1, self.src_idx[..., 0], self.dst_idx[..., 0] + (p + kept))
        pos_b = torch.arange(t_b, device=dev).add(p + kept).expand(B, t_b)
        pos = torch.stack([pos_a[:, :t_b], pos_b], dim=-1).reshape(B, 2 * t_b)
        if t_a > t_b:
            pos = torch.cat([pos, pos_a[:, t_b:]], dim=1)
        rest = y.gather(1, pos[..., None].expand(B, pos.shape[1], C))
        return torch.cat([y[:, :p], rest], dim=1)


def bipartite_soft_matching(metric: Tensor, r: int, prefix: int = 0) -> Matching:
    """ToMe's matching on ``metric`` (B, N, d): A = even, B = odd tokens after the ``prefix``;
    the r A tokens with the most similar B partner (cosine) merge into it."""
    B, N, _ = metric.shape
    m = metric[:, prefix:]
    m = m / m.norm(dim=-1, keepdim=True)
    a, b = m[:, ::2], m[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)
    return Matching(prefix, unm_idx, src_idx, dst_idx, N)


def mergeable(tokens: int, prefix: int, r: int) -> int:
    """r clipped to what a block of ``tokens`` can merge: at most half the non-prefix tokens."""
    return max(0, min(r, (tokens - prefix) // 2))


# ---------------------------------------------------------------------------------------- wrappers


class _State:
    """What the blocks of one model share during a forward: the token sizes (block mode) and,
    while :func:`apply` measures, the token counts per block."""

    def __init__(self):
        self.size: Tensor | None = None
        self.record: list | None = None


def _vit_attention(attn: nn.Module, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """timm's ``Attention`` (fused qkv, layout (3, heads, head_dim)) with proportional attention;
    returns the projected output and the keys averaged over heads (ToMe's metric)."""
    B, N, C = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = _opt(attn, "q_norm", q), _opt(attn, "k_norm", k)
    mask = None if size is None else size.log().reshape(B, 1, 1, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=getattr(attn, "scale", None))
    out = out.transpose(1, 2).reshape(B, N, C)
    out = _opt(attn, "norm", out)
    return attn.proj(out), k.mean(1)


def _sr_attention(attn: nn.Module, xm: Tensor, size: Tensor | None, full: Tensor, grid) -> Tensor:
    """PVTv2's ``SRAttention`` on merged queries ``xm``: keys/values from the full token grid
    (``full``, spatially reduced) when ``sr_ratio`` > 1, else from the merged tokens with
    proportional attention."""
    B, M, C = xm.shape
    h = attn.num_heads
    q = attn.q(xm).reshape(B, M, h, C // h).transpose(1, 2)
    mask = None
    if attn.sr_ratio > 1:
        H, W = grid
        kx = attn.sr(full.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        kx = attn.norm(kx)
    else:
        kx = xm
        mask = None if size is None else size.log().reshape(B, 1, 1, M)
    kv = attn.kv(kx).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
    return attn.proj(out.transpose(1, 2).reshape(B, M, C))


def _opt(module: nn.Module, name: str, x: Tensor) -> Tensor:
    sub = getattr(module, name, None)
    return x if sub is None else sub(x)


class TokenMergeBlock(nn.Module):
    """A pre-norm ViT block with ToMe between the attention residual and the MLP.

    Holds the original block's submodules by reference (``norm1``, ``attn``, ``norm2``, ``mlp`` and
    timm's ``ls1``/``ls2``/``drop_path*`` when present), so parameter names are unchanged."""

    def __init__(self, block: nn.Module, r: int, prefix: int, state: _State, first: bool, last: bool):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.r, self.prefix, self.first, self.last = r, prefix, first, last
        self._state = state

    def forward(self, x: Tensor) -> Tensor:
        st = self._state
        if self.first:
            st.size = None
        size = st.size
        n_in = x.shape[1]
        y, metric = _vit_attention(self.attn, self.norm1(x), size)
        x = x + self._drop(1, _opt(self, "ls1", y))
        r = mergeable(n_in, self.prefix, self.r)
        if r:
            x, size = bipartite_soft_matching(metric, r, self.prefix).merge_wavg(x, size)
        x = x + self._drop(2, _opt(self, "ls2", self.mlp(self.norm2(x))))
        st.size = None if self.last else size
        if st.record is not None:
            st.record.append((n_in, x.shape[1], r))
        return x

    def _drop(self, i: int, x: Tensor) -> Tensor:
        return _opt(self, f"drop_path{i}", _opt(self, "drop_path", x))


class TokenMergeAttentionBlock(nn.Module):
    """A pre-norm block whose attention runs on merged tokens, unmerged after it (ToMeSD), so the
    block's output keeps N.  ``kind`` is "vit" (fused qkv) or "sr" (PVTv2, ``forward(x, H, W)``)."""

    def __init__(self, block: nn.Module, r: int, prefix: int, kind: str, state: _State):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.r, self.prefix, self.kind = r, prefix, kind
        self._state = state

    def forward(self, x: Tensor, *grid) -> Tensor:
        xn = self.norm1(x)
        n = xn.shape[1]
        r = mergeable(n, self.prefix, self.r)
        if not r:
            y = self.attn(xn, *grid)
        else:
            match = bipartite_soft_matching(xn, r, self.prefix)
            xm, size = match.merge_wavg(xn, None)
            if self.kind == "sr":
                y = _sr_attention(self.attn, xm, size, xn, grid)
            else:
                y = _vit_attention(self.attn, xm, size)[0]
            y = match.unmerge(y)
        x = x + _opt(self, "drop_path1", _opt(self, "drop_path", _opt(self, "ls1", y)))
        out = self.mlp(self.norm2(x), *grid)
        x = x + _opt(self, "drop_path2", _opt(self, "drop_path", _opt(self, "ls2", out)))
        if self._state.record is not None:
            self._state.record.append((n, x.shape[1], r))
        return x


# ------------------------------------------------------------------------------------- recognition


def _linear(m, name: str) -> nn.Linear | None:
    sub = getattr(m, name, None)
    return sub if isinstance(sub, nn.Linear) else None


def _passive_extras(block: nn.Module, allowed: set[str]) -> str | None:
    for name, child in block.named_children():
        if name in allowed:
            continue
        if name in _BLOCK_EXTRA:
            if isinstance(child, _PASSIVE) or type(child).__name__ in ("LayerScale", "DropPath"):
                continue
            return f"{name} is a {type(child).__name__}, not a layer scale or drop path"
        return f"it has a child {name!r} ({type(child).__name__}) the pre-norm x + attn, x + mlp form does not use"
    return None


def block_kind(block: nn.Module) -> tuple[str | None, str]:
    """``("vit" | "sr", "")`` for a block ToMe can wrap, else ``(None, reason)``."""
    if isinstance(block, (TokenMergeBlock, TokenMergeAttentionBlock)):
        return None, "already token-merged"
    missing = [n for n in ("norm1", "attn", "norm2", "mlp") if not isinstance(getattr(block, n, None), nn.Module)]
    if missing:
        return None, f"not a pre-norm attention block (no {', '.join(missing)})"
    attn = block.attn
    if not isinstance(getattr(attn, "num_heads", None), int):
        return None, f"its attention ({type(attn).__name__}) has no num_heads"
    params = [p for p in inspect.signature(block.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    qkv = _linear(attn, "qkv")
    if qkv is not None and _linear(attn, "proj") is not None:
        if qkv.out_features != 3 * qkv.in_features:
            return None, f"its qkv Linear maps {qkv.in_features} to {qkv.out_features}, not 3×{qkv.in_features}"
        extra = {n for n, _ in attn.named_children()} - _VIT_ATTN_CHILDREN
        if extra:
            return None, f"its attention has parts ToMe's attention would skip: {', '.join(sorted(extra))}"
        for n in ("q_norm", "k_norm", "attn_drop", "proj_drop", "norm"):
            sub = getattr(attn, n, None)
            if n in ("attn_drop", "proj_drop") and sub is not None and not isinstance(sub, _PASSIVE):
                return None, f"its attention's {n} is a {type(sub).__name__}"
        reason = _passive_extras(block, {"norm1", "attn", "norm2", "mlp"})
        if reason:
            return None, reason
        if len(params) not in (1, 3):
            return None, f"its forward takes {len(params)} arguments"
        return "vit", ""
    if all(_linear(attn, n) is not None for n in ("q", "kv", "proj")) and isinstance(
        getattr(attn, "sr_ratio", None), int
    ):
        if attn.sr_ratio > 1 and not (isinstance(getattr(attn, "sr", None), nn.Conv2d) and hasattr(attn, "norm")):
            return None, "its spatial reduction is not a Conv2d + norm"
        extra = {n for n, _ in attn.named_children()} - {"q", "kv", "proj", "sr", "norm"}
        if extra:
            return None, f"its attention has parts the rewritten attention would skip: {', '.join(sorted(extra))}"
        reason = _passive_extras(block, {"norm1", "attn", "norm2", "mlp"})
        if reason:
            return None, reason
        return "sr", ""
    return None, (
        f"its attention ({type(attn).__name__}) is neither softmax attention with a fused qkv Linear "
        "nor PVTv2's spatial-reduction attention (q, kv, proj)"
    )


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList | nn.Sequential]]:
    """Every ModuleList/Sequential whose children all have norm1/attn/norm2/mlp, by name."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod):
            if all(isinstance(getattr(c, "attn", None), nn.Module) for c in mod):
                out.append((name, mod))
    return out


def _prefix_tokens(model: nn.Module, given: int) -> int:
    if given >= 0:
        return given
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    return sum(isinstance(getattr(model, a, None), torch.Tensor) for a in ("cls_token", "dist_token", "reg_token"))


# ------------------------------------------------------------------------------------------- apply


def apply(
    model: nn.Module,
    r: int = 8,
    mode: str = "auto",
    *,
    prefix_tokens: int = -1,
    example_inputs: tuple[Tensor, ...] | None = None,
) -> tuple[nn.Module, dict]:
    """Wrap ``model``'s blocks in place for token merging; returns ``(model, report)``.

    ``r``: tokens merged per block (static; clipped per block to half its mergeable tokens).
    ``mode``: "auto", "block" or "attention" (module docstring).  ``prefix_tokens``: tokens never
    merged (-1: the model's ``num_prefix_tokens``, else one per ``cls_token``/``dist_token``).
    ``example_inputs``: run once to count the tokens in and out of every block (the report).

    The report: ``applied`` (bool), ``reason`` (why not, or ""), ``mode`` (the one used), ``r``,
    ``prefix_tokens``, ``blocks`` (per block: ``block`` name, ``status`` "merged"/"declined",
    ``reason``, ``tokens_in``, ``tokens_out``, ``r`` and in attention mode ``attention_tokens``), and
    ``tokens_in`` (into the first block) / ``tokens_out`` (out of the last).
    """
    if mode not in MODES:
        raise ValueError(f"token_merge mode {mode!r} is not one of {', '.join(MODES)}")
    if r < 0:
        raise ValueError(f"token_merge r must be ≥ 0, got {r}")
    report: dict = {"applied": False, "reason": "", "mode": mode, "r": r, "blocks": []}

    def decline(reason: str) -> tuple[nn.Module, dict]:
        report["reason"] = reason
        return model, report

    lists = _block_lists(model)
    if not lists:
        what = type(model).__name__
        return decline(f"{what} has no list of attention blocks (norm1, attn, norm2, mlp): nothing to merge")
    kinds = {}
    for lname, blocks in lists:
        for i, blk in enumerate(blocks):
            kinds[(lname, i)] = block_kind(blk)
    usable = [(k, v[0]) for k, v in kinds.items() if v[0]]
    if not usable:
        first = next(iter(kinds.items()))
        return decline(f"no block can be merged: {_name(*first[0])}: {first[1][1]}")
    prefix = _prefix_tokens(model, prefix_tokens)
    report["prefix_tokens"] = prefix
    if mode == "auto":
        only_vit = len(lists) == 1 and all(kind == "vit" for kind, _ in kinds.values())
        mode = "block" if only_vit and prefix > 0 else "attention"
    report["mode"] = mode
    if mode == "block":
        if len(lists) != 1:
            return decline(
                f"block mode merges tokens for every later op, but the model has {len(lists)} block lists "
                "(stages of a hierarchical model need their token grid): use mode=attention"
            )
        bad = [(k, v[1]) for k, v in kinds.items() if v[0] != "vit"]
        if bad:
            return decline(f"block mode needs every block to be a ViT block: {_name(*bad[0][0])}: {bad[0][1]}")
        pool = getattr(model, "global_pool", "token")
        if isinstance(pool, str) and pool not in ("token", ""):
            return decline(
                f"block mode needs a head that reads the class token, and this one pools the tokens "
                f"(global_pool={pool!r}): the merged tokens would be averaged unweighted; use mode=attention"
            )
        if prefix <= 0:
            return decline(
                "block mode needs a head that reads the class token (no cls_token/num_prefix_tokens): "
                "merged tokens would reach a pooled or grid head; use mode=attention"
            )
    if r == 0:
        for lname, i in kinds:
            report["blocks"].append({"block": _name(lname, i), "status": "declined", "reason": "r = 0"})
        return decline("r = 0: nothing to merge")

    state = _State()
    for lname, blocks in lists:
        n = len(blocks)
        for i in range(n):
            kind, why = kinds[(lname, i)]
            name = _name(lname, i)
            if not kind:
                report["blocks"].append({"block": name, "status": "declined", "reason": why})
                continue
            if mode == "block":
                blocks[i] = TokenMergeBlock(blocks[i], r, prefix, state, first=i == 0, last=i == n - 1)
            else:
                blocks[i] = TokenMergeAttentionBlock(blocks[i], r, prefix, kind, state)
            report["blocks"].append({"block": name, "status": "merged", "reason": ""})
    model._token_merge_state = state  # a plain attribute: not a parameter, buffer or submodule

    if example_inputs is None:
        example_inputs = _guess_inputs(model)
    if example_inputs is not None:
        counts = _count_tokens(model, state, example_inputs)
        rows = [b for b in report["blocks"] if b["status"] == "merged"]
        if len(counts) == len(rows):
            for row, (n_in, n_out, r_used) in zip(rows, counts):
                row.update(tokens_in=n_in, tokens_out=n_out, r=r_used)
                if mode == "attention":
                    row["attention_tokens"] = n_in - r_used
                if r_used == 0:
                    row.update(
                        status="declined",
                        reason=f"{n_in} tokens ({prefix} protected): too few to merge"
                        + (" (proportional attention still applies)" if mode == "block" else ""),
                    )
            report["tokens_in"], report["tokens_out"] = counts[0][0], counts[-1][1]
    merged = [b for b in report["blocks"] if b["status"] == "merged"]
    report["applied"] = bool(merged)
    if not merged:
        report["reason"] = "every block has too few tokens to merge r of them"
    return model, report


def _name(lname: str, i: int) -> str:
    return f"{lname}.{i}" if lname else str(i)


def _guess_inputs(model: nn.Module) -> tuple[Tensor, ...] | None:
    size = getattr(model, "img_size", None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if not isinstance(size, int) or conv is None:
        return None
    return (torch.zeros(1, conv.in_channels, size, size),)


def _count_tokens(model: nn.Module, state: _State, inputs) -> list[tuple[int, int, int]]:
    state.record = []
    try:
        with torch.no_grad():
            model.eval()(*inputs)
        return list(state.record)
    except Exception:  # noqa: BLE001 - counting is informative; the export reports real failures
        return []
    finally:
        state.record, state.size = None, None


def transform(module: nn.Module, graph, options) -> tuple[object | None, dict]:
    """The ``token_merge`` pass's model transform: a merged copy of ``module`` exported like
    ``graph`` (same example inputs, names, dynamic batch), or ``(None, report)`` when declined."""
    model = copy.deepcopy(module).eval()
    inputs = tuple(graph.example_inputs)
    model, report = apply(
        model, r=int(options.r), mode=options.mode, prefix_tokens=int(options.prefix_tokens), example_inputs=inputs
    )
    if not report["applied"]:
        return None, report
    new = ir.export(model, inputs, name=graph.name, dynamic_batch=graph.dynamic_shapes() is not None)
    return graph.replace(new.program), report
