"""Rewrite matmuls of provably integer-valued operands (EcoFormer's ±1 hash codes) as integer matmuls.

Before (EcoFormer's denominator ``h_n · Σ_m h_m``, stage 1 of the tiny model)::

    where       = aten.where.Scalar(ge, 1.0, -1.0)                 # the hash codes, (1, 1, 64, 16)
    to_2        = aten.to.dtype(where, torch.float32)
    sum_3       = aten.sum.dim_IntList(to_2, [-2])                 # Σ_m h_m ∈ [-64, 64]
    unsqueeze_1 = aten.unsqueeze(sum_3, -1)
    matmul_2    = aten.matmul(to_2, unsqueeze_1)                   # (1, 1, 64, 1), fp32

After::

    _to_copy   = aten._to_copy(to_2, dtype=torch.int32)
    _to_copy_1 = aten._to_copy(unsqueeze_1, dtype=torch.int32)
    matmul     = aten.matmul(_to_copy, _to_copy_1)                 # int32 accumulation
    _to_copy_2 = aten._to_copy(matmul, dtype=torch.float32)

Which operands qualify: an integer-range analysis walks back from each matmul operand through
the ops that keep values integral and bounded — ``sign``, ``where`` of two integer constants (the
hash's ``where(y >= 0, 1, -1)``), views (reshape/view/transpose/permute/(un)squeeze/expand/
select/slice/flatten/clone/contiguous/alias/detach), casts to fp32/fp64/int32/int64, ``neg``,
``mul``/``add``/``sub`` by integer scalars or other integer-valued tensors, ``sum`` over static
dims, integer-valued constants and integer matmuls — and returns the range ``[lo, hi]``.  A
matmul of two such operands with ``K·max|a|·max|b| ≤ 2^24`` is rewritten.

Which products EcoFormer has (``hamming_linear_attention``): the denominator ``h·Σh`` (both
operands integral, |Σh| ≤ N) is the only one in the deployed linear form; ``hᵀ·v`` and
``h·(hᵀv)`` have a float operand and stay float.  The quadratic reference form's affinities
``G = h·hᵀ`` (both ±1) and the KSH objective's ``H·Hᵀ`` match too.

Exactness: every partial sum of such a product is an integer of magnitude ≤ 2^24, which fp32
represents exactly, so the float form computes the exact integer in any summation order and the
integer form (exact in int32) gives bit-identical outputs; tests check bit equality.  The pass is
nevertheless declared ``exact = False``: in this framework only non-exact passes are driven by
"only where it pays" (``edgeformer/sites.py`` chooses sites by their measured share of the target's
time, and the speed gate measures the artifact against its exact fp32 twin — here the float
form — and reverts below the contract's ``min_speedup``).  The rewrite is a speed bet, not a
numerics change, and that is the machinery that measures speed bets.  It is in no default
pipeline (``--passes +binary_attention``).

Why int32 and not int8: ``aten._int_mm`` (int8×int8→int32, 2-D only) has no conversion in
either the ONNX exporter (torch 2.13) or OpenVINO's PyTorch frontend (2026.4), and an int8
``aten.matmul`` accumulates in int8 (wrong) and is invalid ONNX (MatMul has no int8 type).  The
int32 matmul converts on both (ONNX ``Cast → MatMul(int32) → Cast``; OpenVINO ``Convert → MatMul →
Convert``) and is exact for any bound here.

Measured (``/tmp/binattn_bench.py``, 2 threads, AMD EPYC with AVX-512 VNNI, median of alternating
blocks; integer form's speed-up over the float form, > 1 is faster):

===================================  ===========  ==============  =====================
product                              ORT int32    OpenVINO int32  best int8 (ORT u8s8)
===================================  ===========  ==============  =====================
h·Σh    (1,1,3136,16)×(1,1,16,1)     0.39×        0.93×           n/a (|Σh| > 127)
h·hᵀ    (1,1,3136,16)×(1,1,16,3136)  0.19×        0.59×           0.50×
h·hᵀ    (1,2,784,16)×(1,2,16,784)    0.03×        0.43×           0.83×
===================================  ===========  ==============  =====================

End to end, ecoformer_pvt_v2_b0 with its 6 denominators integer (float form → integer form):
ORT 11.18 → 10.99 ms at 224 (1.02×), 57.29 → 58.14 ms at 512 (0.99×); OpenVINO 6.94 → 7.25 ms
at 224 (0.96×), 30.36 → 30.92 ms at 512 (0.98×): noise around 1×, far below a 1.1× gate.

No target measured here runs the integer form faster: with 16-bit codes the inner dimension is
16, so these products are bound by writing their output, which the integer form writes twice
(int32, then the cast).  ``predicted_speedup`` therefore returns the best measured figure,
:data:`MEASURED_SPEEDUP` (< 1), and the driver declines every site unless forced
(``min_speedup = 0``); a forced artifact still meets the speed gate.  The rewrite stays for
targets that gain (an int8 GEMM kernel fed ±1 codes with a large inner dimension).

Must not fire when: an operand is not provably integer-valued (a float activation such as ``v``,
a hash projection before ``sign``), the bound exceeds 2^24 (fp32 would no longer be exact), the
operands or output are not fp32, or the node is not chosen (``nodes``).

Options: ``nodes`` ("": every matmul that qualifies; else a comma-separated list of node names,
which the "only where it pays" driver sets), ``min_share`` (0.10: the driver declines a site whose
module's share of end-to-end time is below it).

``details["sites"]`` lists every matmul with an integral operand: node, source module, applied or
the reason not, the inner dimension ``k`` and the bound on the products' magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from edgeformer.ir import source_path

from ._graph import Editor, arg, is_op, shape
from .base import Pass, PassResult

aten = torch.ops.aten

# The integer form's measured speed-up of EcoFormer's Hamming products over the float form, per
# target, best over the shapes measured (module docstring; /tmp/binattn_bench.py).
MEASURED_SPEEDUP = {"onnxruntime": 0.39, "openvino": 0.93}
FP32_EXACT = 2**24  # integers up to this magnitude are exact in fp32

_MATMULS = ("aten.matmul", "aten.bmm", "aten.mm")
_VIEWS = (
    "aten.reshape",
    "aten.view",
    "aten._unsafe_view",
    "aten.transpose",
    "aten.t",
    "aten.permute",
    "aten.unsqueeze",
    "aten.squeeze",
    "aten.expand",
    "aten.expand_as",
    "aten.select",
    "aten.slice",
    "aten.flatten",
    "aten.clone",
    "aten.contiguous",
    "aten.alias",
    "aten.detach",
    "aten.lift_fresh_copy",
)
_CASTS = ("aten.to", "aten._to_copy", "aten.type_as")
_KEEPS_INTEGERS = (torch.float32, torch.float64, torch.int32, torch.int64)


@dataclass
class Options:
    nodes: str = ""  # comma-separated matmul node names to rewrite ("": every one that qualifies)
    min_share: float = 0.10  # the compiler's driver declines a site below this share of end-to-end time


Range = tuple[int, int]


def _dtype(node) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _scalar_int(x) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and math.isfinite(x) and x == int(x):
        return int(x)
    return None


class _Ranges:
    """Integer ranges of graph values, memoised; None where a value is not provably integral."""

    def __init__(self, ed: Editor):
        self.ed = ed
        self.memo: dict[fx.Node, Range | None] = {}

    def of(self, x) -> Range | None:
        if not isinstance(x, fx.Node):
            v = _scalar_int(x)
            return None if v is None else (v, v)
        if x not in self.memo:
            self.memo[x] = None  # cycles cannot happen in a DAG; this guards re-entry anyway
            self.memo[x] = self._compute(x)
        return self.memo[x]

    def _compute(self, n: fx.Node) -> Range | None:
        value = self.ed.const(n)
        if value is not None:
            if value.numel() == 0 or value.numel() > 1 << 20 or value.is_complex():
                return None
            v = value.double()
            if not bool(torch.isfinite(v).all()) or not bool((v == v.round()).all()):
                return None
            return int(v.min()), int(v.max())
        if n.op != "call_function":
            return None
        if is_op(n, "aten.sign"):
            return -1, 1
        if is_op(n, *_VIEWS):
            return self.of(n.args[0])
        if is_op(n, *_CASTS):
            out = _dtype(n)
            return self.of(n.args[0]) if out in _KEEPS_INTEGERS else None
        if is_op(n, "aten.where"):
            a, b = self.of(n.args[1]), self.of(n.args[2])
            return None if a is None or b is None else (min(a[0], b[0]), max(a[1], b[1]))
        if is_op(n, "aten.neg"):
            r = self.of(n.args[0])
            return None if r is None else (-r[1], -r[0])
        if is_op(n, "aten.add", "aten.sub"):
            a, b = self.of(n.args[0]), self.of(n.args[1])
            alpha = _scalar_int(arg(n, "alpha"))
            if a is None or b is None or alpha is None:
                return None
            b = (min(alpha * b[0], alpha * b[1]), max(alpha * b[0], alpha * b[1]))
            if is_op(n, "aten.sub"):
                b = (-b[1], -b[0])
            return a[0] + b[0], a[1] + b[1]
        if is_op(n, "aten.mul"):
            a, b = self.of(n.args[0]), self.of(n.args[1])
            if a is None or b is None:
                return None
            p = [x * y for x in a for y in b]
            return min(p), max(p)
        if is_op(n, "aten.sum"):
            r, s_in = self.of(n.args[0]), shape(n.args[0])
            names = [a.name for a in n.target._schema.arguments]
            dims = arg(n, "dim") if "dim" in names else None
            if r is None or s_in is None or arg(n, "dtype") not in (None, *_KEEPS_INTEGERS):
                return None
            dims = range(len(s_in)) if not dims else [d % len(s_in) for d in dims]
            count = math.prod(s_in[d] for d in dims)
            if count < 0:  # a dynamic reduced dimension: no static bound
                return None
            return min(0, r[0] * count), max(0, r[1] * count)
        if is_op(n, *_MATMULS):
            bound = self.product_bound(n)
            return None if bound is None else (-bound, bound)
        return None

    def product_bound(self, n: fx.Node) -> int | None:
        """max |(a·b)_ij| for a matmul of two integral operands, else None."""
        a, b = self.of(n.args[0]), self.of(n.args[1])
        sa = shape(n.args[0])
        if a is None or b is None or not sa or sa[-1] < 0:
            return None
        return sa[-1] * max(abs(a[0]), abs(a[1])) * max(abs(b[0]), abs(b[1]))


class BinaryAttention(Pass):
    name = "binary_attention"
    summary = "Integer matmuls for products of ±1 hash codes (EcoFormer's Hamming products); bit-exact"
    exact = False  # bit-exact numerics; declared a speed bet so the "only where it pays" driver measures it
    Options = Options

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        ranges = _Ranges(ed)
        wanted = {n.strip() for n in self.options.nodes.split(",") if n.strip()}
        sites = []
        for node in list(ed.graph.nodes):
            if not is_op(node, *_MATMULS):
                continue
            ra, rb = ranges.of(node.args[0]), ranges.of(node.args[1])
            if ra is None and rb is None:
                continue  # a float product: not a site (explain lines would drown in every linear)
            entry = {"node": node.name, "source": source_path(node) or ""}
            reason = self._reason(node, ra, rb, ranges)
            if reason is None and wanted and node.name not in wanted:
                reason = "not chosen (nodes option)"
            sa = shape(node.args[0])
            k = sa[-1] if sa else None
            if reason is not None:
                ed.reject(node, reason)
                sites.append({**entry, "applied": False, "reason": reason, "k": k})
                continue
            bound = ranges.product_bound(node)
            self._rewrite(ed, node)
            ed.match(node, note=f"operands in {list(ra)} x {list(rb)}, k = {k}, |products| <= {bound}")
            sites.append({**entry, "applied": True, "k": k, "bound": bound})
        return self.result(graph, ed, sites=sites)

    @staticmethod
    def predicted_speedup(site: dict) -> float:
        """The product's predicted speed-up at an applied site: the best measured on any target
        here (< 1: no target measured runs the integer form faster, so the driver declines)."""
        return max(MEASURED_SPEEDUP.values())

    @staticmethod
    def _reason(node: fx.Node, ra: Range | None, rb: Range | None, ranges: _Ranges) -> str | None:
        if ra is None or rb is None:
            which = "first" if ra is None else "second"
            return f"its {which} operand is not provably integer-valued (a float operand stays float)"
        if any(_dtype(x) != torch.float32 for x in (node, node.args[0], node.args[1])):
            return "the operands or the output are not fp32"
        bound = ranges.product_bound(node)
        if bound is None:
            return "the inner dimension is dynamic: no static bound"
        if bound > FP32_EXACT:
            return f"|products| may reach {bound} > 2^24: the float form would not be exact"
        return None

    @staticmethod
    def _rewrite(ed: Editor, node: fx.Node) -> None:
        def call(target, *args, **kwargs):
            return ed.call(target, args, kwargs, before=node, like=node)

        a = call(aten._to_copy.default, node.args[0], dtype=torch.int32)
        b = call(aten._to_copy.default, node.args[1], dtype=torch.int32)
        prod = call(node.target, a, b)
        ed.replace(node, call(aten._to_copy.default, prod, dtype=torch.float32))


__all__ = ["MEASURED_SPEEDUP", "BinaryAttention"]
