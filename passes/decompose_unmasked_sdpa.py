"""Rewrite an unmasked, non-causal, dropout-free SDPA as bmm → scale → softmax → bmm.

Before (a ViT block's attention, ``F.scaled_dot_product_attention(q, k, v)``)::

    scaled_dot_product_attention = aten.scaled_dot_product_attention(getitem, getitem_1, getitem_2)  # (1, 3, 197, 64)

After::

    reshape   = aten.reshape(getitem, [3, 197, 64])            # q: batch dims flattened
    reshape_1 = aten.reshape(getitem_1, [3, 197, 64])          # k
    transpose = aten.transpose.int(reshape_1, 1, 2)            # kᵀ (3, 64, 197)
    bmm       = aten.bmm(reshape, transpose)                   # q·kᵀ (3, 197, 197)
    mul       = aten.mul.Tensor(bmm, 0.125)                    # × scale
    softmax   = aten.softmax.int(mul, -1)
    reshape_2 = aten.reshape(getitem_2, [3, 197, 64])          # v
    bmm_1     = aten.bmm(softmax, reshape_2)                   # (3, 197, 64)
    reshape_3 = aten.reshape(bmm_1, [1, 3, 197, 64])

Algebra: with no mask, ``SDPA(q, k, v) = softmax(q·kᵀ · s) · v`` with ``s = scale`` or, by
default, ``1/√E`` (E = q's last dimension).  Why a pass: ExecuTorch decomposes SDPA into its
math form, whose softmax is the *safe* softmax (rows that are all ``-inf`` give 0, not NaN):
``eq(-inf) → logical_not → any → logical_not → where``, plus ``mul.Scalar`` on q and k (√s each)
and no-op ``expand_copy``s around the matmuls.  XNNPACK delegates none of those, so the portable
kernels run them between four delegate calls per attention; XNNPACK's own SDPA fusion matches
only a 2-D float mask.  Without a mask a score row is all ``-inf`` only when an input is
infinite, so the safe-softmax masking is dead and the plain form is the same function (fp32
rounding moves by ~1e-7: one scale on the scores instead of √s on q and on k).  The bmm form
(batch dimensions flattened) lowers to one XNNPACK partition per attention, no portable ops.

Only ExecuTorch runs it (``ExecuTorchTarget.pipeline``): ONNX Runtime and OpenVINO import SDPA
into their own attention patterns (OpenVINO's CPU plugin has a fused ScaledDotProductAttention
kernel), which the explicit form would defeat; figures in benchmarks/sdpa_executorch.py's
results.

Must not fire when: there is an ``attn_mask``; ``is_causal``; ``dropout_p`` > 0 (random, not an
inference graph); ``enable_gqa`` (key/value heads repeated); the batch dimensions of q, k and v
differ (SDPA broadcasts them, bmm does not); the tensors are not fp32 (exactness is checked in
fp32); the token or feature dimensions are dynamic, or more than one batch dimension is.

Options: none.
"""

from __future__ import annotations

import math

import torch

from ._graph import Editor, arg, is_op
from .base import Pass, PassResult

aten = torch.ops.aten


def _dims(node) -> list | None:
    val = node.meta.get("val")
    return list(val.shape) if isinstance(val, torch.Tensor) else None


def _static(d) -> bool:
    return isinstance(d, int)


class DecomposeUnmaskedSdpa(Pass):
    name = "decompose_unmasked_sdpa"
    summary = "Rewrite unmasked, non-causal SDPA as bmm → scale → softmax → bmm (ExecuTorch/XNNPACK delegates it)"
    exact = True

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for node in [n for n in ed.graph.nodes if is_op(n, "aten.scaled_dot_product_attention")]:
            reason = self._reject_reason(node)
            if reason:
                ed.reject(node, reason)
                continue
            q, k, v = arg(node, "query"), arg(node, "key"), arg(node, "value")
            qd, kd, vd = _dims(q), _dims(k), _dims(v)
            batch, (L, E), S, Ev = qd[:-2], qd[-2:], kd[-2], vd[-1]
            dynamic = [i for i, d in enumerate(batch) if not _static(d)]
            n = math.prod(batch) if not dynamic else -1
            out_shape = [d if _static(d) else -1 for d in batch] + [L, Ev]
            scale = arg(node, "scale")
            scale = float(scale) if scale is not None else 1.0 / math.sqrt(E)

            def call(target, *args, _node=node):
                return ed.call(target, args, before=_node, like=_node)

            q3 = call(aten.reshape.default, q, [n, L, E])
            kt = call(aten.transpose.int, call(aten.reshape.default, k, [n, S, E]), 1, 2)
            scores = call(aten.mul.Tensor, call(aten.bmm.default, q3, kt), scale)
            probs = call(aten.softmax.int, scores, -1)
            out = call(aten.bmm.default, probs, call(aten.reshape.default, v, [n, S, Ev]))
            ed.replace(node, call(aten.reshape.default, out, out_shape))
            ed.match(node, note=f"scale {scale:.6g}, {L}×{S} scores per head")
            ed.graph.erase_node(node)  # dead now, but dead-code removal keeps it (dropout makes it "impure")
        return self.result(graph, ed)

    @staticmethod
    def _reject_reason(node) -> str | None:
        if arg(node, "attn_mask") is not None:
            return "it has an attention mask (only the unmasked form has dead masking)"
        if arg(node, "is_causal"):
            return "is_causal=True masks the scores"
        dropout = arg(node, "dropout_p")
        if dropout:
            return f"dropout_p {dropout:g} > 0 (random: not an inference graph)"
        if arg(node, "enable_gqa"):
            return "enable_gqa=True repeats key/value heads"
        q, k, v = arg(node, "query"), arg(node, "key"), arg(node, "value")
        dims = [_dims(t) for t in (q, k, v)]
        if any(d is None or len(d) < 2 for d in dims):
            return "q, k or v has no known shape"
        if any(t.meta["val"].dtype != torch.float32 for t in (q, k, v)):
            return "q, k or v is not fp32 (exactness is checked in fp32)"
        qd, kd, vd = dims
        if not (len(qd) == len(kd) == len(vd)) or not (
            [str(d) for d in qd[:-2]] == [str(d) for d in kd[:-2]] == [str(d) for d in vd[:-2]]
        ):
            return f"the batch dimensions broadcast ({qd[:-2]}, {kd[:-2]}, {vd[:-2]}): bmm does not"
        if kd[-2] != vd[-2] or qd[-1] != kd[-1]:
            return "q, k and v shapes do not agree"
        if not all(_static(d) for d in (*qd[-2:], *kd[-2:], vd[-1])):
            return "the token or feature dimensions are dynamic"
        if sum(not _static(d) for d in qd[:-2]) > 1:
            return "more than one batch dimension is dynamic"
        return None
