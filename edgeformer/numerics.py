"""Compare runtime outputs with the PyTorch reference: max abs error, cosine, NaNs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeformer.manifest import NumericsReport


def compare(
    reference: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float = 0.0,
    min_cosine: float = 0.999,
    names: Sequence[str] | None = None,
) -> NumericsReport:
    """Pass when every output is within ``atol + rtol·|ref|``, cosine ≥ ``min_cosine``, no NaN."""
    if len(reference) != len(actual):
        return NumericsReport("failed", reason=f"{len(actual)} outputs, expected {len(reference)}")
    per_output = []
    worst, worst_cos, any_nan, ok, problems = 0.0, 1.0, False, True, []
    for i, (ref, out) in enumerate(zip(reference, actual)):
        name = names[i] if names and i < len(names) else f"output_{i}"
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            ok = False
            problems.append(f"{name}: shape {list(out.shape)} vs reference {list(ref.shape)}")
            per_output.append({"name": name, "shape_mismatch": True})
            continue
        nan = bool(np.isnan(out).any() or np.isinf(out).any())
        err = np.abs(ref - out)
        max_err = float(err.max()) if err.size else 0.0
        denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
        cos = float(np.dot(ref.ravel(), out.ravel()) / denom) if denom > 0 else (1.0 if max_err == 0 else 0.0)
        within = bool(np.all(err <= atol + rtol * np.abs(ref))) if err.size else True
        passed = within and not nan and cos >= min_cosine
        per_output.append({"name": name, "max_abs_error": max_err, "cosine": cos, "has_nan": nan, "passed": passed})
        if not passed:
            ok = False
            problems.append(
                f"{name}: max abs error {max_err:.3g} (atol {atol:g}), cosine {cos:.6f}"
                + (", NaN/inf in output" if nan else "")
            )
        worst = max(worst, max_err if not nan else float("inf"))
        worst_cos = min(worst_cos, cos)
        any_nan |= nan
    return NumericsReport(
        status="passed" if ok else "failed",
        max_abs_error=worst if np.isfinite(worst) else None,
        cosine=worst_cos,
        atol=atol,
        min_cosine=min_cosine,
        has_nan=any_nan,
        per_output=per_output,
        reason="; ".join(problems),
    )
