"""``tune``: MetaSchedule-tune MODEL for a TVM profile, on exactly the graph ``compile`` builds.

The TVM database is keyed by the program the target receives, so tuning must see the graph that
:func:`edgeformer.compiler.compile` hands to ``TvmTarget.compile``: the same export and the same
pipeline, with the target's pass options.  This module gets it from the compiler's own stages
(:func:`~edgeformer.compiler.plan`, then :func:`~edgeformer.compiler.rewrite`) instead of
rebuilding the pipeline, and leaves the search itself to the target (``TvmTarget.tune``,
``targets/tvm/search.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from edgeformer import compiler, ir
from edgeformer.device_profiles import DeviceProfile, load_profile
from edgeformer.errors import TargetUnavailableError, UserError
from edgeformer.targets import get_target

if TYPE_CHECKING:  # pragma: no cover
    from edgeformer.targets.tvm import TuneResult, TvmTarget

__all__ = ["Workload", "tune_model", "workload"]


@dataclass
class Workload:
    """A model as TVM compiles it for a profile: what tuning tunes and ``compile`` looks up."""

    graph: ir.Graph  # the IR after the pipeline: what compile hands to TvmTarget.compile
    profile: DeviceProfile
    target: TvmTarget

    def tuned_trials(self) -> int:
        """Trials already stored in this workload's database (0 without one)."""
        return self.target.tuned_trials(self.graph, self.profile)

    def tune(self, *, trials: int | None = None, work_dir: str | Path | None = None, seed: int = 0) -> TuneResult:
        """Tune it (``trials`` more candidates) and store the schedules where ``compile`` looks."""
        return self.target.tune(self.graph, self.profile, trials=trials, work_dir=work_dir, seed=seed)


def workload(
    model: str | nn.Module,
    profile: str | Path | DeviceProfile = "host-tvm",
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    weights: str | Path | None = None,
    passes: str | None = None,
    factory_args: Mapping[str, object] | None = None,
) -> Workload:
    """MODEL exported and rewritten exactly as ``compile`` does for ``profile`` (a TVM profile)."""
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    if prof.target != "tvm":
        raise UserError(
            f"profile {prof.name} uses target {prof.target}; only TVM profiles are tuned",
            "pick a TVM profile, e.g. --profile host-tvm",
        )
    reason = get_target("tvm").is_available()
    if reason:
        raise TargetUnavailableError(f"tuning needs TVM: {reason}")
    plan = compiler.plan(
        model, prof, input_shapes=input_shapes, weights=weights, passes=passes, factory_args=factory_args
    )
    rewritten = compiler.rewrite(plan, check=False)
    return Workload(rewritten.graph, plan.profile, plan.target)


def tune_model(
    model: str | nn.Module,
    profile: str | Path | DeviceProfile = "host-tvm",
    *,
    trials: int | None = None,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    weights: str | Path | None = None,
    passes: str | None = None,
    work_dir: str | Path | None = None,
    factory_args: Mapping[str, object] | None = None,
) -> TuneResult:
    """``edgeformer tune``: resolve MODEL, run the pipeline ``compile`` runs, tune the result."""
    w = workload(model, profile, input_shapes=input_shapes, weights=weights, passes=passes, factory_args=factory_args)
    return w.tune(trials=trials, work_dir=work_dir)
