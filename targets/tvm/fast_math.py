"""Vectorisable GELU / erf / tanh for TVM's CPU code.

TVM lowers ``erf`` and ``tanh`` to scalar libm calls (``erff``), which LLVM cannot vectorise; on
EfficientFormer-L1 that made GELU the largest cost of the early stages.  ONNX Runtime and OpenVINO
evaluate erf with a vectorised rational approximation; this pass gives TVM the same:
``relax.nn.gelu`` (erf form), ``relax.erf`` and ``relax.tanh`` become TE computations on
``topi.fast_erf`` / ``topi.fast_tanh`` (Eigen's float approximations, clamped).  ``exp``/softmax
are left alone: they cost little in the zoo.  The error and speed figures are in
docs/benchmarks.md; the numerics check of every compile covers the result.
"""

from __future__ import annotations

_SQRT1_2 = 0.7071067811865476


def fast_math():
    """A Relax module pass rewriting GELU, erf and tanh to their vectorisable forms."""
    import tvm
    from tvm import relax, te, topi
    from tvm.relax import PyExprMutator, expr_functor

    def gelu(x):
        half = tvm.tirx.const(0.5, x.dtype)
        scaled = te.compute(x.shape, lambda *i: x(*i) * tvm.tirx.const(_SQRT1_2, x.dtype), name="gelu_scale")
        erf = topi.fast_erf(scaled)
        return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="gelu")

    rewrites = {
        "relax.erf": (topi.fast_erf, "erf"),
        "relax.tanh": (topi.fast_tanh, "tanh"),
        "relax.nn.gelu": (gelu, "gelu"),
    }

    @expr_functor.mutator
    class _Rewriter(PyExprMutator):
        def visit_call_(self, call):
            hit = rewrites.get(getattr(call.op, "name", ""))
            dtype = getattr(getattr(call, "ty", None), "dtype", "")
            if hit is None or str(dtype) != "float32":
                return super().visit_call_(call)
            fn, hint = hit
            return self.builder_.call_te(fn, self.visit_expr(call.args[0]), primfunc_name_hint=hint)

    @tvm.transform.module_pass(opt_level=0, name="EdgeformerFastMath")
    def _pass(mod, _ctx):
        rewriter = _Rewriter(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass
