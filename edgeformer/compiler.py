"""``compile``: model → IR → passes → target runtime files → numerics check → artifact folder.

The compile runs in five public stages, each with typed inputs and outputs, so ``tune``,
``rewrite``, the benchmarks (and later search and bundle) reuse the first ones instead of
re-deriving them:

    plan(model, profile)         -> Plan       export the model, pick the target, edit its pipeline, cache key
    rewrite(plan)                -> Rewritten  the pass pipeline, checked pass by pass; the PyTorch reference
    build(plan, rewritten, dir)  -> Built      the target's runtime files and the manifest, in a temp folder
    verify(plan, rewritten, built) -> NumericsReport   the runtime's outputs against PyTorch
    write(built, out_dir)        -> Path       manifest written, folder renamed into place atomically

:func:`compile` composes them.  The artifact folder is built in a temporary sibling and renamed
into place, so a failure at any stage leaves nothing half-written.  A cache keyed by
sha256(IR, pipeline, target options, runtime versions, tolerances) makes an identical re-compile
free, and says so.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeformer
from edgeformer import accuracy, ir, sites
from edgeformer.artifact import Artifact
from edgeformer.data import Dataset, load_data, probe_inputs
from edgeformer.device_profiles import (
    DeviceProfile,
    exact_variant,
    is_approximate,
    load_profile,
    profile_names,
    with_precision,
)
from edgeformer.errors import NumericsError, TargetUnavailableError, UserError
from edgeformer.fsutil import cache_root, make_temp_dir, replace_dir
from edgeformer.manifest import (
    MANIFEST,
    ApproximationReport,
    Manifest,
    NumericsReport,
    PassRecord,
    TensorSpec,
    file_entries,
    read_manifest,
)
from edgeformer.numerics import EMULATED_PRECISIONS, compare, emulate
from edgeformer.passes import Pipeline, get_pass
from edgeformer.sources import ModelSource, load_model
from edgeformer.streaming import block as streaming_block
from edgeformer.streaming import check as check_stream
from edgeformer.targets import Calibration, CompileResult, Target, get_target

log = logging.getLogger(__name__)

STAGES = ("export", "passes", "compile", "verify", "write")


@dataclass
class CompileReport:
    path: Path
    manifest: Manifest
    cached: bool  # True when the artifact came from the compile cache
    stage_times_s: dict[str, float] = field(default_factory=dict)
    cache_source: str = ""  # "output" (already up to date) or "cache"
    # Seconds this call took (a cached result took only the export; the manifest's
    # compile_time_s is the original compile's).
    elapsed_s: float = 0.0


# ------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """What will be compiled, and how: the exported model, the profile, its target and pipeline."""

    source: ModelSource
    profile: DeviceProfile
    target: Target
    pipeline: Pipeline  # the target's, after the profile's and the caller's edits
    cache_key: str

    @property
    def graph(self) -> ir.Graph:
        """The exported IR, before passes."""
        return self.source.graph


def resolve_target(profile: str | Path | DeviceProfile | None) -> tuple[DeviceProfile, Target]:
    """The profile and its target, refusing a precision the target does not produce (it would
    build fp32 and call it int8) and a target whose runtime is not installed."""
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    target = get_target(prof.target)
    precision, produced = prof.options.precision, ", ".join(target.precisions)
    if precision in target.refusals:
        raise UserError(
            f"profile {prof.name} asks for {precision} on {target.name}: {target.refusals[precision]}",
            _which_do(precision),
        )
    if precision not in target.precisions:
        raise UserError(
            f"profile {prof.name} asks for precision {precision}, which the {target.name} target does not "
            f"produce (it produces {produced})",
            f"set [options] precision to one of {produced}",
        )
    reason = target.is_available()
    if reason:
        raise TargetUnavailableError(f"profile {prof.name} needs target {target.name}, which is unavailable: {reason}")
    return prof, target


_STREAM_FIX = "drop --streaming, or use an fp32 profile: host-ort, host-openvino, host-executorch, host-tvm"


def _which_do(precision: str) -> str:
    """The fix for a refused precision: the shipped profiles whose target produces it."""
    names = [n for n in profile_names() if load_profile(n).options.precision == precision]
    return f"use a profile whose target does {precision}: {', '.join(names)}" if names else "use precision fp32"


def plan(
    model: str | nn.Module,
    profile: str | Path | DeviceProfile | None = None,
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    weights: str | Path | None = None,
    passes: str | None = None,
    factory_args: Mapping[str, object] | None = None,
    pass_options: Mapping[str, Mapping[str, object]] | None = None,
    streaming: bool = False,
) -> Plan:
    """Export MODEL and decide its pipeline for ``profile`` (``passes``: CLI edits like ``+a,-b``;
    ``factory_args``: keyword arguments for a ``package.module:factory``; ``pass_options``: pass
    name -> options, over the profile's ``[pipeline.options]``; ``streaming``: export one step
    with explicit state, edgeformer/streaming.py)."""
    prof, target = resolve_target(profile)
    if streaming and (why := target.cannot_stream(prof)):
        raise UserError(f"--streaming on profile {prof.name}: {why}", _STREAM_FIX)
    pipeline = target.default_pipeline(prof).edited(prof.pipeline.add, prof.pipeline.drop, passes)
    pipeline = with_pass_options(pipeline, prof.pipeline.options, pass_options or {})
    source = load_model(
        model,
        input_shapes=input_shapes,
        weights=weights,
        factory_args=factory_args,
        streaming=streaming,
        loops=target.exports_loops,
    )
    pipeline = _model_transforms_first(pipeline, source)
    return Plan(source, prof, target, pipeline, _cache_key(source, pipeline, target, prof))


def _model_transforms_first(pipeline: Pipeline, source: ModelSource) -> Pipeline:
    """Passes that transform the ``nn.Module`` before export (``Pass.model_transform``, e.g.
    token_merge, which changes the token count of every later op) go first, and the exported graph
    gets a hook to the module it came from, which they call; the exact twin (the pipeline without
    them) keeps the original export.  A graph without a module (a .pt2) gets no hook: they decline."""
    names = [n for n in pipeline.names if getattr(get_pass(n), "model_transform", None)]
    if not names:
        return pipeline
    if source.module is not None:
        module = source.module

        def model_transform(graph: ir.Graph, cls, options):
            import importlib

            ref, _, attr = cls.model_transform.partition(":")
            return getattr(importlib.import_module(ref), attr)(module, graph, options)

        source.graph.model_transform = model_transform
    return Pipeline((*names, *(n for n in pipeline.names if n not in names)), pipeline.options)


def with_pass_options(pipeline: Pipeline, *layers: Mapping[str, Mapping[str, object]]) -> Pipeline:
    """``pipeline`` with per-pass options merged in (later layers win), each checked against its pass."""
    options = {k: dict(v) for k, v in pipeline.options.items()}
    for layer in layers:
        for name, opts in layer.items():
            get_pass(name)  # a known pass name, or one line naming the close ones
            if name not in pipeline.names:
                raise UserError(
                    f"options were given for pass {name!r}, which is not in the pipeline "
                    f"({', '.join(pipeline.names) or 'empty'})",
                    f"add it with --passes +{name}",
                )
            if not isinstance(opts, Mapping):
                raise UserError(f"options of pass {name!r} must be a table of key = value", "fix the profile file")
            options[name] = {**options.get(name, {}), **opts}
            get_pass(name)(**options[name])  # unknown keys and wrong types fail here, in one line
    return Pipeline(pipeline.names, options)


def approximating_passes(pipeline: Pipeline) -> list[str]:
    """The pipeline's passes that are not exact (attention approximations, …)."""
    return [n for n in pipeline.names if not get_pass(n).exact]


def _cache_key(source: ModelSource, pipeline: Pipeline, target: Target, profile: DeviceProfile) -> str:
    weights = source.info.weights
    blob = {
        "ir": source.graph.hash(),
        "pipeline": list(pipeline.names),
        "pass_options": pipeline.to_dict()["options"],
        "target": target.name,
        "target_options": target.cache_options(profile),
        "numerics": profile.to_dict()["numerics"],
        "versions": target.versions(),
        "torch": _torch_version(),
        "edgeformer": edgeformer.__version__,
        "code": _code_digest(),
        "weights": weights.sha256 if weights else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """sha256 of edgeformer's own sources (package, passes, targets, profiles): a changed pass or
    target option is a different compile even at the same version number (an edited checkout)."""
    import importlib.util

    h = hashlib.sha256()
    for mod in ("edgeformer", "edgeformer.passes", "edgeformer.targets", "edgeformer.profiles"):
        spec = importlib.util.find_spec(mod)
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            for path in sorted(Path(root).rglob("*")):
                if path.suffix in (".py", ".toml", ".json") and "__pycache__" not in path.parts:
                    h.update(path.relative_to(root).as_posix().encode())
                    h.update(path.read_bytes())
    return h.hexdigest()


def _torch_version() -> str:
    import torch

    return torch.__version__


# --------------------------------------------------------------------------------------- rewrite


@dataclass
class Rewritten:
    graph: ir.Graph  # the IR after the pipeline
    records: list[PassRecord]  # one per pass, in order
    reference: list[np.ndarray]  # the exported (pre-pass) program's outputs on its example inputs


def rewrite(
    plan: Plan,
    *,
    check: bool = True,
    dump_ir: str | Path | None = None,
    explain: bool = False,
    data: Sequence[Sequence[torch.Tensor]] | None = None,
    data_origin: str = "",
) -> Rewritten:
    """Run the plan's pipeline (checked per pass unless ``check=False``) and the PyTorch reference.
    ``data``: input tuples for the passes that fit constants to activations (``Pass.uses_data``;
    without it they fit on the example inputs)."""
    graph = plan.graph
    reference = [t.detach().numpy() for t in ir.run(graph, graph.example_inputs)]
    manager = plan.pipeline.manager(check=check, dump_dir=dump_ir, explain=explain, data=data, data_origin=data_origin)
    rewritten, records = manager.run(graph)
    return Rewritten(rewritten, records, reference)


# ----------------------------------------------------------------------------------------- build


@dataclass
class Built:
    folder: Path  # the (temporary) folder holding the runtime files
    result: CompileResult
    manifest: Manifest  # numerics "skipped" and compile time 0 until verify and write


def build(plan: Plan, rewritten: Rewritten, folder: Path, calibration: Calibration | None = None) -> Built:
    """The target's runtime files for the rewritten IR in ``folder``, and their manifest
    (``calibration``: the data a quantizing target needs, ``Target.needs_calibration``)."""
    graph, target, prof = plan.graph, plan.target, plan.profile
    if target.needs_calibration(prof) and calibration is None:
        raise UserError(
            f"profile {prof.name} quantizes activations ({prof.options.precision}), which needs calibration data",
            "add --calib digits|sample-images|FILE.npz|FOLDER (calib= in the Python API)",
        )
    result = target.compile(rewritten.graph, prof, folder, calibration=calibration)
    if note := _recurrence_note(plan):
        result.details = {**result.details, "recurrence": note}
    manifest = Manifest(
        model=plan.source.info,
        ir_hash=graph.hash(),
        ir_hash_after_passes=rewritten.graph.hash(),
        profile=prof,
        target=target.name,
        runtime_versions={"torch": _torch_version(), **target.versions()},
        passes=rewritten.records,
        inputs=[  # -1 marks a dynamic dimension (Graph.input_shapes / output_shapes)
            TensorSpec(n, s, str(t.dtype).replace("torch.", ""))
            for n, s, t in zip(graph.input_names, graph.input_shapes(), graph.example_inputs)
        ],
        outputs=[
            TensorSpec(n, s, str(r.dtype))
            for n, s, r in zip(graph.output_names, graph.output_shapes(), rewritten.reference)
        ],
        files=file_entries(folder, result.files),
        numerics=NumericsReport("skipped"),
        compile_time_s=0.0,
        cache_key=plan.cache_key,
        target_details=result.details,
        structural_checks=result.structural_checks,
        edgeformer_version=edgeformer.__version__,
    )
    return Built(folder, result, manifest)


def _recurrence_note(plan: Plan) -> str | None:
    """How a spiking model's LIF recurrences were exported (None for a model without them)."""
    module = plan.source.module
    if module is None or not any(type(m).__name__ == "LIF" for m in module.modules()):
        return None
    scans = sum(1 for n in plan.graph.program.graph.nodes if n.op == "call_function" and "scan" in str(n.target))
    if scans:
        return f"each LIF recurrence exported as one scan over the tokens ({scans} scans), not unrolled"
    if plan.source.graph.input_names[:2] == ("frame", "flush"):
        return "a streaming step: one token per call, no recurrence to unroll"
    return (
        f"the LIF recurrences are unrolled, one group of nodes per token: the {plan.target.name} target "
        "takes no scan (slow to compile; a --streaming step artifact compiles in seconds)"
    )


# ---------------------------------------------------------------------------------------- verify


def verify(plan: Plan, rewritten: Rewritten, built: Built) -> NumericsReport:
    """Run the built artifact on the example inputs and compare with the PyTorch reference.

    Every artifact this machine's runtime can load is run (``Target.can_verify_here``), an
    ahead-of-time one too: its reason then says it was checked here, not on the device.  One that
    cannot be loaded reports its failed structural checks; else, for an fp16 profile, the
    rewritten IR runs in fp16 on the CPU (``method: "emulated"``); else the check is skipped.
    """
    target, prof = plan.target, plan.profile
    n = prof.numerics
    tolerances = {
        "atol": n.atol,
        "rtol": n.rtol,
        "scale_rtol": n.scale_rtol,
        "min_cosine": n.min_cosine,
        "names": list(plan.graph.output_names),
    }
    reason = target.can_verify_here(prof)
    if reason:
        failed = sorted(k for k, ok in built.result.structural_checks.items() if not ok)
        if failed:
            return NumericsReport("failed", reason=f"structural checks failed: {', '.join(failed)}")
        if prof.options.precision in EMULATED_PRECISIONS:
            inputs = plan.graph.example_inputs
            return emulate(
                rewritten.graph,
                rewritten.reference,
                prof.options.precision,
                inputs=inputs,
                context=reason,
                **tolerances,
            )
        return NumericsReport("skipped", reason=reason)
    runner = target.load(Artifact(built.folder, built.manifest, prof))
    try:
        outputs = runner.run([t.detach().numpy() for t in plan.graph.example_inputs])
    finally:
        runner.close()
    report = compare(rewritten.reference, [np.asarray(o) for o in outputs], **tolerances)
    elsewhere = target.can_run_here(prof)
    if elsewhere:  # verifiable here, but it runs on a device: say which check this was
        note = f"checked here with this machine's {target.name} runtime, not on the device ({elsewhere})"
        report.reason = f"{report.reason}; {note}" if report.reason else note
    return report


# ----------------------------------------------------------------------------------------- write


def write(built: Built, out_dir: Path, *, flag: str = "-o") -> Path:
    """Write the manifest into the built folder and rename it into place as ``out_dir`` (refusing,
    as :func:`check_output_dir` does, an old artifact there that holds the user's other files)."""
    _refuse_foreign_files(out_dir, flag)
    built.manifest.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    built.manifest.write(built.folder)
    replace_dir(built.folder, out_dir)
    return out_dir


# ------------------------------------------------------------------------- approximation contract


@dataclass
class ApproxSettings:
    """The approximation contract's inputs for one compile (CLI flags over the profile's
    [approximation] section)."""

    calib: Dataset | None
    eval: Dataset | None
    max_accuracy_drop: float
    max_error: float
    min_speedup: float
    max_float_layers: int
    force: bool = False
    probe: Dataset | None = None  # no --calib/--eval: random inputs (errors only)

    @property
    def measure_on(self) -> Dataset:
        """The data the approximation is judged on: --eval, else the calibration set, else the
        random probe inputs."""
        return self.eval if self.eval is not None else self.calib if self.calib is not None else self.probe

    def key(self) -> dict:
        return {
            "calib": self.calib.sha256 if self.calib else None,
            "eval": self.eval.sha256 if self.eval else None,
            "probe": self.probe.sha256 if self.probe else None,
            "gates": [self.max_accuracy_drop, self.max_error, self.min_speedup, self.max_float_layers, self.force],
        }


def approx_settings(
    p: Plan,
    *,
    calib: str | Path | None,
    eval: str | Path | None,  # noqa: A002 - the public keyword
    preprocess: str | None = None,
    force: bool = False,
    max_accuracy_drop: float | None = None,
    max_error: float | None = None,
    min_speedup: float | None = None,
    calib_size: int | None = None,
    seed: int = 0,
) -> ApproxSettings:
    """Load --calib/--eval for the plan's model inputs and settle the gates (neither given: the
    contract judges the approximation on random probe inputs)."""
    graph, a = p.graph, p.profile.approximation
    inputs = [
        TensorSpec(n, s, str(t.dtype).replace("torch.", ""))
        for n, s, t in zip(graph.input_names, graph.input_shapes(), graph.example_inputs)
    ]
    out = graph.output_shapes()[0] if graph.output_names else []
    num_classes = out[-1] if len(out) == 2 and out[-1] > 1 else None
    size = calib_size or a.calibration_size
    calib_ds = (
        load_data(calib, role="calib", inputs=inputs, preprocess=preprocess, limit=size, seed=seed)
        if calib is not None
        else None
    )
    if calib_ds is not None and len(calib_ds) > size:
        calib_ds = calib_ds.subset(size, seed=seed)
    eval_ds = (
        load_data(eval, role="eval", inputs=inputs, num_classes=num_classes, preprocess=preprocess, seed=seed)
        if eval is not None
        else None
    )
    return ApproxSettings(
        calib_ds,
        eval_ds,
        a.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop,
        a.max_error if max_error is None else max_error,
        a.min_speedup if min_speedup is None else min_speedup,
        a.max_float_layers,
        force,
        probe=probe_inputs(graph.example_inputs, graph.input_names, seed=seed)
        if calib_ds is None and eval_ds is None
        else None,
    )


def pass_data(settings: ApproxSettings | None, graph: ir.Graph) -> tuple[list[tuple[torch.Tensor, ...]] | None, str]:
    """The input tuples the fitting passes (``Pass.uses_data``) fit on: the --calib samples (never
    --eval, which judges them), else None (they fit on the example inputs), and what they are."""
    if settings is None or settings.calib is None:
        return None, ""
    dtypes = [t.dtype for t in graph.example_inputs]
    samples = [
        tuple(torch.from_numpy(np.asarray(a)).to(dt) for a, dt in zip(arrays, dtypes))
        for arrays, _ in settings.calib.batches(_batch(graph))
    ]
    return samples, f"{len(settings.calib)} samples of --calib {settings.calib.name}"


def _batch(graph: ir.Graph) -> int:
    shape = graph.input_shapes()[0] if graph.input_names else [1]
    return shape[0] if shape and shape[0] > 0 else 1


def _run_artifact(target: Target, built: Built, prof: DeviceProfile, data: Dataset, batch: int) -> list[np.ndarray]:
    runner = target.load(Artifact(built.folder, built.manifest, prof))
    try:
        return accuracy.run_dataset(lambda xs: [np.asarray(o) for o in runner.run(xs)], data, batch)
    finally:
        runner.close()


def approximate(
    p: Plan,
    rewritten: Rewritten,
    settings: ApproxSettings,
    folder: Path,
    exact_folder: Path,
    stage: Callable[[str, str], None] = lambda _n, _m: None,
    keep: Path | None = None,
) -> Built:
    """Build the approximate artifact and its exact fp32 twin, judge the approximation on the
    data, restore the most sensitive layers to float until the accuracy gate passes, apply the
    speed gate, and return the artifact that ships (``manifest.approximation`` says which, and why).

    Raises :class:`UserError` when no restore passes the accuracy gate (nothing is written), and
    :class:`NumericsError` when, judged on random probe inputs (no data given), the outputs miss the
    error gate or the profile's [numerics] (the failed build goes to ``keep`` if given).
    """
    target, prof, graph = p.target, p.profile, p.graph
    approx_passes = approximating_passes(p.pipeline)
    kinds = []
    if prof.options.compression != "none":
        kinds.append(f"compression {prof.options.compression}")
    elif prof.options.precision != "fp32" or not approx_passes:
        kinds.append(f"precision {prof.options.precision}")
    if approx_passes:
        kinds.append(f"passes {', '.join(approx_passes)}")
    kind = " + ".join(kinds)
    batch = _batch(graph)
    data = settings.measure_on
    weights = p.source.info.weights_origin

    # The exact twin: same model and pipeline edits, fp32.  It is the speed baseline and what ships
    # when the approximation does not pay.
    exact_prof = exact_variant(prof)
    exact_default, approx_default = target.default_pipeline(exact_prof), target.default_pipeline(prof)
    if exact_default == approx_default:
        exact_pipeline = p.pipeline  # with the caller's --passes edits
    elif exact_default.names == approx_default.names:  # only pass options differ (ORT int8's pool mixer)
        options = {k: v for k, v in exact_default.options.items() if k in p.pipeline.names}
        exact_pipeline = Pipeline(p.pipeline.names, options)  # the caller's --passes edits kept
    else:
        exact_pipeline = exact_default.edited(prof.pipeline.add, prof.pipeline.drop, None)
    if approx_passes:  # the reference artifact runs the exact passes only
        names = tuple(n for n in exact_pipeline.names if n not in approx_passes)
        exact_pipeline = Pipeline(names, {k: v for k, v in exact_pipeline.options.items() if k in names})
    exact_plan = Plan(p.source, exact_prof, target, exact_pipeline, p.cache_key)
    exact_rw = rewritten if exact_pipeline == p.pipeline else rewrite(exact_plan)
    stage("compile", f"{target.name} exact fp32 twin (the reference artifact)")
    exact = build(exact_plan, exact_rw, exact_folder)
    exact.manifest.numerics = verify(exact_plan, exact_rw, exact)
    if exact.manifest.numerics.status == "failed":
        raise NumericsError(
            f"{target.name} exact fp32 outputs disagree with PyTorch: {exact.manifest.numerics.reason}",
            _numerics_fix("fp32", exact.manifest.numerics),
        )

    decisions: list[sites.SiteDecision] = []
    exact_ops = None
    if site_pass_names := sites.site_passes(p.pipeline):
        stage("verify", "attention sites: their share of end-to-end time on the exact twin")
        decisions, exact_ops = _choose_sites(p, exact_plan, exact_rw, exact, settings, site_pass_names, batch)
        chosen = sites.with_nodes(p.pipeline, decisions)
        if not any(d.applied for d in decisions):
            return _every_site_declined(kind, prof, exact, decisions, settings, weights)
        if chosen != p.pipeline:
            p = Plan(p.source, prof, target, chosen, p.cache_key)
            fit_data, fit_origin = pass_data(settings, graph)
            rewritten = rewrite(p, data=fit_data, data_origin=fit_origin)
            approx_passes = approximating_passes(p.pipeline)
    unchanged = [r for r in rewritten.records if r.name in approx_passes and not r.changed]
    if approx_passes and not is_approximate(prof) and len(unchanged) == len(approx_passes):
        why = "; ".join(f"{r.name}: {_declined_why(r.details)}" for r in unchanged)
        return _every_site_declined(
            kind, prof, exact, decisions, settings, weights, f"nothing was approximated ({why})"
        )

    stage("verify", f"exact fp32 reference on {len(data)} samples of {data.name}")
    reference = accuracy.reference_outputs(graph, data, batch)
    calib = None
    if settings.calib is not None:
        calib = Calibration(
            samples=[arrays for arrays, _ in settings.calib.batches(batch)],
            source=settings.calib.name,
            sha256=settings.calib.sha256,
            method=prof.options.calibration_method,
            mode=prof.options.quantization_mode,
            cache_dir=cache_root() / "calibration",
        )
    needs = target.needs_calibration(prof)
    here = target.can_verify_here(prof)
    sources = {n.name: ir.source_path(n) for n in rewritten.graph.program.graph.nodes}
    ranking: list[tuple[str, float]] = []
    kept: list[str] = []
    restore: list[dict] = []
    unkeepable: list[str] = []  # layers whose float restore the runtime could not build or load
    while True:
        if calib is not None:
            calib.keep_float = tuple(kept)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        stage("compile", f"{target.name} {kind}" + (f", {len(kept)} layers kept in float" if kept else ""))
        try:
            built = build(p, rewritten, folder, calib if needs else None)
            if kept and not here:  # a float island can break a delegate (XNNPACK: an invalid squeeze)
                _run_artifact(target, built, prof, data.subset(1), batch)
        except UserError as err:
            if not kept:
                raise
            bad = kept.pop()
            unkeepable.append(bad)
            restore.append({"kept_float": len(kept) + 1, "layer": bad, "passed": False, "failed": str(err)[:300]})
            log.info("keeping %s in float breaks the %s build (%s); trying the next layer", bad, target.name, err)
            remaining = [n for n, _ in ranking if n not in kept and n not in unkeepable]
            if not remaining or len(kept) + len(unkeepable) >= settings.max_float_layers:
                break  # the last judged gate (failed) stands
            kept.append(remaining[0])
            continue
        emulated = here and prof.options.precision in EMULATED_PRECISIONS and prof.options.compression == "none"
        if here and not emulated:
            block = accuracy.AccuracyBlock(
                data=data.to_dict(), samples=len(data), weights=weights, measured=f"not measured: {here}"
            )
            gate = accuracy.Gate("accuracy", "not measured here", None, settings.max_accuracy_drop, True, here)
            numerics = NumericsReport("skipped", reason=f"approximate artifact not runnable here: {here}")
            break
        stage("verify", f"{kind} on {len(data)} samples of {data.name}" + (" (emulated)" if emulated else ""))
        if emulated:  # the artifact's runtime is not here: the rewritten IR rounded to fp16 after every op
            approx_out = accuracy.emulated_outputs(rewritten.graph, data, batch, prof.options.precision)
        else:
            approx_out = _run_artifact(target, built, prof, data, batch)
        block = accuracy.accuracy_block(
            data, reference, approx_out, weights=weights, measured="emulated" if emulated else "runtime"
        )
        if emulated:
            block.notes.append(f"emulated in PyTorch on this CPU (the artifact itself cannot run here: {here})")
        elif target.can_run_here(prof):
            block.notes.append(f"measured with this machine's {target.name} runtime, not on the device")
        gate = accuracy.accuracy_gate(block, max_accuracy_drop=settings.max_accuracy_drop, max_error=settings.max_error)
        numerics = _approx_numerics(prof, reference, approx_out, data, approx_passes)
        if gate.passed and numerics.status == "failed":  # the profile's [numerics] bound the outputs too
            gate = accuracy.Gate(
                "numerics",
                "outputs within the profile's [numerics]",
                numerics.cosine,
                prof.numerics.min_cosine,
                False,
                numerics.reason,
            )
        restore.append({"kept_float": len(kept), "gate_value": gate.value, "passed": gate.passed})
        if gate.passed or not needs or len(kept) >= settings.max_float_layers:
            break
        if not ranking:
            stage("verify", "ranking layers by int8 sensitivity on the calibration set")
            ranking = accuracy.sensitivity(rewritten.graph, calib.samples)
        remaining = [name for name, _ in ranking if name not in kept and name not in unkeepable]
        if not remaining:
            break
        kept.append(remaining[0])

    if not gate.passed and settings.probe is not None and data is settings.probe:
        reason = numerics.reason if numerics.status == "failed" else f"{gate.metric} {gate.value} > {gate.limit:g}"
        kept_note = ""
        if keep is not None:
            built.manifest.numerics = numerics
            write(built, keep, flag="--keep-failed")
            kept_note = f"the failed build is kept in {keep}; "
        raise NumericsError(
            f"{target.name} {kind} outputs disagree with the exact fp32 model: {reason}",
            kept_note + _numerics_fix(prof.options.precision, numerics),
        )
    scores = dict(ranking)
    top = [{"layer": n, "source": sources.get(n, ""), "score": round(sc, 6)} for n, sc in ranking[:8]]
    if not gate.passed:
        if not ranking and calib is not None and needs:  # int8 sensitivity: only a quantizing target's
            ranking = accuracy.sensitivity(rewritten.graph, calib.samples)
        worst = ", ".join(f"{n} ({sources.get(n) or '?'})" for n, _ in ranking[:3])
        restored = f" after keeping {len(kept)} layers in float" if kept else ""
        if unkeepable:
            restored += f" ({len(unkeepable)} more would not build or load in float: {', '.join(unkeepable[:3])})"
        below = gate.name == "numerics"  # a cosine floor; the other gates are ceilings
        value = "not finite" if gate.value is None else f"{gate.value:.4g} {'<' if below else '>'} {gate.limit:g}"
        raise UserError(
            f"{kind} fails the accuracy gate{restored}: {gate.metric} {value} ({gate.detail})"
            + (f"; most sensitive layers: {worst}" if worst else "; it has no per-layer fallback"),
            "raise --max-accuracy-drop/--max-error if that loss is acceptable, calibrate on more data like the "
            "deployment's (--calib), or compile "
            + (f"without {', '.join(approx_passes)} (--passes -{',-'.join(approx_passes)})" if approx_passes else "")
            + (" or " if approx_passes and is_approximate(prof) else "")
            + ("fp32 (--precision fp32)" if is_approximate(prof) or not approx_passes else ""),
        )

    speed = accuracy.SpeedGate(measured=False, min_speedup=settings.min_speedup, forced=settings.force)
    reason_here = target.can_run_here(prof) or target.can_run_here(exact_prof)
    if reason_here or here:
        speed.note = f"speed not measured here: {reason_here or here}"
    else:
        stage("verify", f"speed gate: {kind} against exact fp32, alternating blocks")
        first = next(iter(data.batches(batch)))[0]
        defaults = target.runtime_default_precisions(prof)
        if defaults:
            stage("verify", f"speed gate: also timing {target.name}'s own default {', '.join(defaults)}")
        r_exact = target.load(Artifact(exact.folder, exact.manifest, exact_prof))
        r_approx = target.load(Artifact(built.folder, built.manifest, prof))
        others, skipped, scratch = {}, {}, []
        try:
            for precision in defaults:
                try:
                    others[precision] = _default_twin(exact_plan, exact_rw, precision, exact_folder.parent, scratch)
                except UserError as err:
                    skipped[precision] = f"not timed: {err}"
            speed = accuracy.speed_gate(r_exact, r_approx, first, min_speedup=settings.min_speedup, others=others)
        finally:
            for r in (r_exact, r_approx, *others.values()):
                r.close()
            for d in scratch:
                shutil.rmtree(d, ignore_errors=True)
        speed.runtime_defaults.update({k: {"note": v} for k, v in skipped.items()})
        for precision, row in speed.runtime_defaults.items():
            if row.get("approx_speedup") is not None and row["approx_speedup"] < settings.min_speedup:
                speed.note = (
                    f"{kind} ran {row['approx_speedup']:.2f}x {target.name}'s own {precision} default "
                    f"({row['median_ms']:.3f} ms), less than {settings.min_speedup:g}x: {precision} may serve as "
                    f"well at less error (--precision {precision}); the gate itself is against exact fp32"
                )
        speed.forced = settings.force

    if decisions:
        _measure_sites(p, target, prof, built, exact_ops, decisions, data, batch, stage, settings)
    calib_dict = calib.to_dict() if calib is not None and needs else None
    report = ApproximationReport(
        kind=kind,
        requested_profile=prof.name,
        shipped="approximate",
        reason="",
        accuracy=block.to_dict(),
        gates=[gate.to_dict()],
        speed=speed.to_dict(),
        calibration=calib_dict,
        kept_float=[{"layer": n, "source": sources.get(n, ""), "sensitivity": scores.get(n)} for n in kept],
        restore=restore,
        sensitivity=top,
        forced=settings.force and not speed.passed,
        exact_numerics=dataclasses.asdict(exact.manifest.numerics),
        sites=[d.to_dict() for d in decisions],
    )
    if speed.measured and not speed.passed and not settings.force:
        report.shipped = "exact"
        report.reason = (
            f"{kind} ran {speed.approx_median_ms:.3f} ms against exact fp32's {speed.exact_median_ms:.3f} ms "
            f"(speed-up {speed.speedup:.2f}x < {settings.min_speedup:g}x): the exact artifact ships "
            "(--force-approx ships the approximation anyway)"
        )
        exact.manifest.approximation = report
        return exact
    if speed.measured:
        report.reason = f"{kind} passed the accuracy gate and ran {speed.speedup:.2f}x the exact artifact's speed" + (
            " (below min_speedup; shipped by --force-approx)" if report.forced else ""
        )
    else:
        report.reason = f"{kind} passed the accuracy gate; {speed.note}"
    built.manifest.numerics = numerics
    built.manifest.approximation = report
    return built


def _choose_sites(p, exact_plan, exact_rw, exact, settings, names, batch):
    """The driver's decisions (``edgeformer/sites.py``) and the exact twin's per-op profile."""
    target, exact_prof = p.target, exact_plan.profile
    exact_ops, shares, share_from = None, None, "macs"
    if target.can_run_here(exact_prof) is None:
        first = next(iter(settings.measure_on.batches(batch)))[0]
        try:
            exact_ops = target.profile_ops(
                Artifact(exact.folder, exact.manifest, exact_prof), first, sites.PROFILE_RUNS
            )
            shares, share_from = sites.shares_from_profile(exact_ops), "profile"
        except NotImplementedError:
            pass
    if shares is None:
        shares = sites.shares_from_macs(exact_rw.graph)
    decisions = []
    for name in names:
        options = get_pass(name)(**p.pipeline.options.get(name, {})).options
        found = sites.matched_sites(exact_rw.graph, p.pipeline, name, *pass_data(settings, exact_rw.graph))
        decisions += sites.decide(name, found, shares, share_from, options.min_share, settings.min_speedup)
    for d in decisions:
        log.info("%s %s (%s): %s", d.pass_name, d.node, d.source, "applied" if d.applied else f"declined: {d.reason}")
    return decisions, exact_ops


def _declined_why(details: dict) -> str:
    """Why an approximating pass rewrote nothing, from its record's details."""
    if details.get("reason"):
        return str(details["reason"])
    rows = details.get("sites") or details.get("blocks") or []
    reasons = sorted({str(r.get("reason")) for r in rows if r.get("reason")})
    return "; ".join(reasons[:3]) or "nothing matched"


def _every_site_declined(kind, prof, exact, decisions, settings, weights, reason: str = "") -> Built:
    """Nothing to approximate where it pays: the exact artifact ships, and says why per site."""
    declined = [d for d in decisions if d.details.get("applied")]
    why = "; ".join(f"{d.node} ({d.source}): {d.reason}" for d in declined[:3])
    if not why:  # nothing the pass could rewrite: say why it could not
        unmatched = sorted({d.reason for d in decisions if d.reason})
        why = "no attention the pass can rewrite" + (f" ({'; '.join(unmatched[:3])})" if unmatched else "")
    speed = accuracy.SpeedGate(measured=False, min_speedup=settings.min_speedup, note="nothing was approximated")
    exact.manifest.approximation = ApproximationReport(
        kind=kind,
        requested_profile=prof.name,
        shipped="exact",
        reason=f"{reason}, so the exact artifact ships"
        if reason
        else f"every attention site was declined, so the exact artifact ships: {why}",
        accuracy=accuracy.AccuracyBlock(
            data=settings.measure_on.to_dict(),
            samples=0,
            weights=weights,
            measured="not measured: nothing was approximated",
        ).to_dict(),
        gates=[],
        speed=speed.to_dict(),
        exact_numerics=dataclasses.asdict(exact.manifest.numerics),
        sites=[d.to_dict() for d in decisions],
    )
    return exact


def _measure_sites(p, target, prof, built, exact_ops, decisions, data, batch, stage, settings) -> None:
    """Per applied site: its measured speed-up (per-op profiles) and its own output error."""
    stage("verify", "attention sites: their own output error and measured speed-up")
    samples = [arrays for arrays, _ in data.subset(min(len(data), sites.ERROR_SAMPLES)).batches(batch)]
    sites.site_errors(p.graph, p.pipeline, decisions, samples, *pass_data(settings, p.graph))
    if exact_ops is not None and target.can_run_here(prof) is None:
        try:
            approx_ops = target.profile_ops(
                Artifact(built.folder, built.manifest, prof), samples[0], sites.PROFILE_RUNS
            )
        except NotImplementedError:
            return
        sites.measured_speedups(decisions, exact_ops, approx_ops)


def _default_twin(exact_plan: Plan, exact_rw: Rewritten, precision: str, parent: Path, scratch: list[Path]):
    """A runner of the exact model at the runtime's own default ``precision`` (OpenVINO bf16), for the
    speed gate's report; built in a scratch folder under ``parent`` (appended to ``scratch``)."""
    prof = exact_plan.profile
    twin = dataclasses.replace(
        prof,
        name=f"{prof.name} ({precision}, the runtime's default)",
        options=dataclasses.replace(prof.options, precision=precision),
    )
    folder = Path(tempfile.mkdtemp(prefix=f".{precision}-twin-", dir=parent))
    scratch.append(folder)
    built = build(
        Plan(exact_plan.source, twin, exact_plan.target, exact_plan.pipeline, exact_plan.cache_key), exact_rw, folder
    )
    return exact_plan.target.load(Artifact(built.folder, built.manifest, twin))


def _approx_numerics(
    prof: DeviceProfile,
    reference: list[np.ndarray],
    approx: list[np.ndarray],
    data: Dataset,
    passes: Sequence[str] = (),
) -> NumericsReport:
    """The numerics check of an approximate artifact, on the contract's data (random example
    inputs say nothing about an int8 model calibrated on real data) against the profile's
    [numerics], which for a low precision are a sanity bound beside the accuracy gate.

    Quantized weights or activations (int8, compression) move single logits by several int8 steps
    while top-1 and the cosine hold (max |Δ| 0.15 at cosine 0.9998 on poolformer_tiny), so for them
    only the cosine and finiteness are checked (the per-element tolerances are not applied and are
    recorded as null); fp16/bf16 keep the per-element bounds.  Approximating ``passes`` (attention
    approximations) move outputs far beyond fp32 rounding by design: cosine and finiteness too."""
    n = prof.numerics
    report = compare(reference, approx, atol=n.atol, rtol=n.rtol, scale_rtol=n.scale_rtol, min_cosine=n.min_cosine)
    where = f"on {len(data)} samples of {data.name}, against the exact fp32 model (manifest approximation)"
    quantized = prof.options.precision == "int8" or prof.options.compression != "none"
    if quantized or passes:
        cosines = [o.get("cosine") for o in report.per_output]
        # an approximating pass on a float profile is bounded by the contract's gates (top-1 drop
        # or 1 − cosine ≤ max_error), not by the fp32 [numerics] floor: only finiteness here
        floor = n.min_cosine if quantized or prof.options.precision != "fp32" else -1.0
        ok = not report.has_nan and all(c is not None and c >= floor for c in cosines)
        report.status = "passed" if ok else "failed"
        report.atol = report.rtol = report.scale_rtol = None
        report.reason = "" if ok else f"cosine {min(c or -1.0 for c in cosines):.6f} < {floor} or not finite"
        what = "quantized" if quantized else ""
        what = " and ".join(w for w in (what, f"approximated by {', '.join(passes)}" if passes else "") if w)
        where += f"; {what}: cosine and finiteness checked, not per-element bounds"
    report.reason = f"{report.reason}; {where}" if report.reason else where
    return report


# --------------------------------------------------------------------------------------- compile


# Files an artifact folder may hold beside those its manifest lists: the manifest itself and the
# latency report `edgeformer profile` writes there.  Recompiling replaces the folder with them.
_ARTIFACT_EXTRAS = (MANIFEST, "profile.json")


def check_output_dir(out_dir: Path, flag: str = "-o") -> None:
    """Refuse an ``-o`` that is a file, a foreign non-empty folder, an artifact folder holding files
    its manifest does not list (recompiling would delete them), or not creatable/writable."""
    parent = out_dir.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is a file", f"choose a folder path for {flag}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise UserError(
            f"output folder {out_dir} is not empty and is not an edgeformer artifact",
            f"choose a new folder for {flag}, or remove it",
        )
    _refuse_foreign_files(out_dir, flag)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create output folder {parent}: {err.strerror}", f"choose a writable path for {flag}"
        ) from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output folder {parent} is not writable", f"choose a writable path for {flag}")


def _refuse_foreign_files(out_dir: Path, flag: str) -> None:
    """Refuse an existing artifact folder holding files its manifest does not list."""
    if not (out_dir / MANIFEST).is_file():
        return
    try:
        listed = {f["path"] for f in json.loads((out_dir / MANIFEST).read_text())["files"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"output folder {out_dir} has an unreadable {MANIFEST} ({type(err).__name__}), so its own files "
            "cannot be told from others that recompiling would delete",
            f"remove the folder, or choose a new folder for {flag}",
        ) from err
    listed.update(_ARTIFACT_EXTRAS)
    foreign = sorted(
        rel for p in out_dir.rglob("*") if not p.is_dir() and (rel := p.relative_to(out_dir).as_posix()) not in listed
    )
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UserError(
            f"output folder {out_dir} is an artifact that also holds files not listed in its manifest, which "
            f"recompiling would delete: {', '.join(foreign[:3])}{more}",
            f"move them out of {out_dir}, or choose a new folder for {flag}",
        )


def compile(  # noqa: A001 - the public verb
    model: str | nn.Module,
    profile: str | Path | DeviceProfile | None = None,
    out_dir: str | Path = "out",
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    weights: str | Path | None = None,
    passes: str | None = None,
    check: bool = True,
    dump_ir: str | Path | None = None,
    explain: bool = False,
    use_cache: bool = True,
    on_stage: Callable[[str, str], None] | None = None,
    keep_failed: str | Path | None = None,
    factory_args: Mapping[str, object] | None = None,
    precision: str | None = None,
    calib: str | Path | None = None,
    eval: str | Path | None = None,  # noqa: A002 - the CLI's --eval
    preprocess: str | None = None,
    calib_size: int | None = None,
    max_accuracy_drop: float | None = None,
    max_error: float | None = None,
    min_speedup: float | None = None,
    force_approx: bool = False,
    pass_options: Mapping[str, Mapping[str, object]] | None = None,
    streaming: bool = False,
    frame_period_ms: float | None = None,
) -> CompileReport:
    """Compile MODEL for a device profile into ``out_dir``; see the module docstring.

    ``keep_failed``: a folder the build is moved to (runtime files and a manifest recording the
    failed numerics) when the numerics check fails, instead of being deleted; the error says where.

    The approximation contract (``edgeformer/accuracy.py``) runs when the profile is approximate
    (``precision`` other than fp32, or Core ML weight compression) and either needs calibration
    (int8) or was given data: ``calib`` (inputs) and ``eval`` (inputs and labels) are data sources
    (``edgeformer.data.load_data``: "digits", a .npz, an image folder, "sample-images");
    ``max_accuracy_drop``, ``max_error``, ``min_speedup`` and ``calib_size`` override the
    profile's [approximation]; ``force_approx`` ships an approximation that failed the speed gate.

    ``streaming`` exports one step of the model with explicit state (edgeformer/streaming.py) and
    checks it by streaming frames through the target's runtime; ``frame_period_ms`` is the frame
    hop the manifest records (the real-time factor ``edgeformer profile`` reports is against it).
    """
    t_start = time.perf_counter()
    stage_times: dict[str, float] = {}

    def stage(name: str, msg: str = "") -> None:
        if on_stage:
            on_stage(name, msg)
        log.info("%s %s", name, msg)

    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    prof, target = resolve_target(with_precision(prof, precision))
    if streaming and (why := target.cannot_stream(prof)):
        raise UserError(f"--streaming on profile {prof.name}: {why}", _STREAM_FIX)
    if target.needs_calibration(prof) and calib is None:
        raise UserError(
            f"profile {prof.name} quantizes to {prof.options.precision}, which needs calibration data",
            "add --calib digits (the tiny digits models), --calib sample-images (224² image models without "
            "data), or --calib FILE.npz|FOLDER",
        )
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    keep = Path(keep_failed) if keep_failed is not None else None
    if keep is not None:
        check_output_dir(keep, "--keep-failed")

    stage("export", "exporting to the IR")
    t0 = time.perf_counter()
    p = plan(
        model,
        prof,
        input_shapes=input_shapes,
        weights=weights,
        passes=passes,
        factory_args=factory_args,
        pass_options=pass_options,
        streaming=streaming,
    )
    stage_times["export"] = time.perf_counter() - t0
    if frame_period_ms is not None and (not streaming or frame_period_ms <= 0):
        raise UserError(
            f"--frame-period-ms {frame_period_ms:g}: " + ("it must be > 0" if streaming else "it needs --streaming"),
            "pass --streaming --frame-period-ms 10 (the frame hop in milliseconds)",
        )
    if streaming:
        p.cache_key = hashlib.sha256(f"{p.cache_key} streaming {frame_period_ms}".encode()).hexdigest()
    # The contract runs on every approximate compile (a lower precision, compression, or an
    # approximating pass) whose artifact and exact twin run here: with --calib/--eval on that data,
    # else on random probe inputs (errors and the speed gate, no accuracy).  Device profiles without
    # data keep the plain verify (emulated where it can be).
    approximate_compile = is_approximate(prof) or bool(approximating_passes(p.pipeline))
    if streaming and approximating_passes(p.pipeline):
        raise UserError(
            f"--streaming compiles are exact: --passes adds {', '.join(approximating_passes(p.pipeline))}, "
            "which approximates",
            "drop --streaming, or drop the approximating pass",
        )
    probe_only = calib is None and eval is None and target.can_run_here(prof) is None
    probe_only = probe_only and target.can_verify_here(prof) is None and not target.needs_calibration(prof)
    contract = approximate_compile and (
        target.needs_calibration(prof) or calib is not None or eval is not None or probe_only
    )
    if not approximate_compile and (calib is not None or eval is not None):
        raise UserError(
            f"--calib/--eval were given, but profile {prof.name} is exact fp32 and no pass approximates: "
            "nothing is approximated",
            "add --precision int8 (or bf16/fp16), use a low-precision profile such as host-ort-int8, or add an "
            "approximating pass (--passes +kv_downsample)",
        )

    settings = None
    if contract:
        settings = approx_settings(
            p,
            calib=calib,
            eval=eval,
            preprocess=preprocess,
            force=force_approx,
            max_accuracy_drop=max_accuracy_drop,
            max_error=max_error,
            min_speedup=min_speedup,
            calib_size=calib_size,
        )
        blob = json.dumps({"plan": p.cache_key, **settings.key()}, sort_keys=True)
        p.cache_key = hashlib.sha256(blob.encode()).hexdigest()
    key = p.cache_key
    cache_dir = cache_root() / "compile" / key
    if use_cache and not dump_ir and not explain:
        if (m := _valid_artifact(out_dir, key)) is not None:
            stage("write", f"up to date (cache key {key[:12]}): skipped")
            return CompileReport(out_dir, m, True, stage_times, "output", time.perf_counter() - t_start)
        if _valid_artifact(cache_dir, key) is not None:
            tmp = make_temp_dir(f".{out_dir.name}.tmp-", out_dir.parent)
            shutil.rmtree(tmp)
            shutil.copytree(cache_dir, tmp)
            replace_dir(tmp, out_dir)
            stage("write", f"identical compile found in the cache (key {key[:12]}): skipped")
            return CompileReport(
                out_dir, read_manifest(out_dir), True, stage_times, "cache", time.perf_counter() - t_start
            )

    names = p.pipeline.names
    stage("passes", f"{len(names)} passes: {', '.join(names) or '(none)'}")
    t0 = time.perf_counter()
    data, data_origin = pass_data(settings, p.graph)
    rewritten = rewrite(p, check=check, dump_ir=dump_ir, explain=explain, data=data, data_origin=data_origin)
    stage_times["passes"] = time.perf_counter() - t0

    tmp = make_temp_dir(f".{out_dir.name}.tmp-", out_dir.parent)
    if settings is not None:
        tmp_exact = make_temp_dir(f".{out_dir.name}.exact-", out_dir.parent)
        try:
            built = approximate(p, rewritten, settings, tmp, tmp_exact, stage, keep=keep)
            stage("write", str(out_dir))
            built.manifest.compile_time_s = round(time.perf_counter() - t_start, 3)
            write(built, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp_exact, ignore_errors=True)
        if use_cache:
            _store_in_cache(out_dir, cache_dir)
        return CompileReport(out_dir, built.manifest, False, stage_times, "", time.perf_counter() - t_start)
    try:
        stage("compile", f"{p.target.name}")
        t0 = time.perf_counter()
        built = build(p, rewritten, tmp)
        stage_times["compile"] = time.perf_counter() - t0

        stage("verify", "checking outputs against PyTorch")
        t0 = time.perf_counter()
        built.manifest.numerics = verify(p, rewritten, built)
        stage_times["verify"] = time.perf_counter() - t0
        if built.manifest.numerics.status == "failed":
            kept = ""
            if keep is not None:
                built.manifest.compile_time_s = round(time.perf_counter() - t_start, 3)
                write(built, keep, flag="--keep-failed")
                kept = f"the failed build is kept in {keep}; "
            raise NumericsError(
                f"{p.target.name} outputs disagree with PyTorch: {built.manifest.numerics.reason}",
                kept + _numerics_fix(p.profile.options.precision, built.manifest.numerics),
            )
        if streaming:
            stage("verify", f"streaming frames through the {p.target.name} step artifact")
            t0 = time.perf_counter()
            try:
                _check_stream(p, built, frame_period_ms)
            except NumericsError as err:
                if keep is not None:
                    built.manifest.compile_time_s = round(time.perf_counter() - t_start, 3)
                    write(built, keep, flag="--keep-failed")
                    raise NumericsError(err.problem, f"the failed build is kept in {keep}; {err.fix}") from err
                raise
            stage_times["verify"] += time.perf_counter() - t0

        stage("write", str(out_dir))
        built.manifest.compile_time_s = round(time.perf_counter() - t_start, 3)
        write(built, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if use_cache:
        _store_in_cache(out_dir, cache_dir)
    return CompileReport(out_dir, built.manifest, False, stage_times, "", time.perf_counter() - t_start)


def _check_stream(p: Plan, built: Built, frame_period_ms: float | None) -> None:
    """The manifest's streaming block and its numerics check (raises when the check fails)."""
    m, step = built.manifest, p.source.module
    m.streaming = streaming_block(step, m.inputs, m.outputs, frame_period_ms)
    if note := built.result.details.get("streaming"):  # e.g. Core ML: the states are model states
        m.streaming["note"] = note
    reason = p.target.can_verify_here(p.profile)
    if reason:
        m.streaming["check"] = {"status": "skipped", "reason": reason}
        return
    n = p.profile.numerics
    tolerances = {"atol": n.atol, "rtol": n.rtol, "scale_rtol": n.scale_rtol, "min_cosine": n.min_cosine}
    runner = p.target.load(Artifact(built.folder, m, p.profile))
    try:
        m.streaming["check"] = check_stream(runner, m.streaming, m.inputs, m.outputs, step, tolerances)
    finally:
        runner.close()
    if m.streaming["check"]["status"] == "failed":
        raise NumericsError(
            f"the {p.target.name} step artifact streams differently from the parallel model: "
            f"{m.streaming['check']['reason']}",
            "report it with the model and profile (edgeformer compile --debug shows where)",
        )


def _numerics_fix(precision: str, report: NumericsReport) -> str:
    """What to do about a failed numerics check.  In fp32 a pass or the runtime moved the numbers
    (the PassManager has already cleared each exact pass); in a lower precision, when outputs were
    compared, its rounding and range did, and dropping passes cannot help."""
    if precision == "fp32" or report.method is None:
        return "loosen [numerics] in the profile only if that error is acceptable, or drop passes with --passes"
    return (
        f"that error is {precision}'s rounding or range, not the passes': keep activations within {precision}'s "
        f"range, loosen [numerics] to {precision}'s tolerances (docs/measurement.md) only if the error is "
        'acceptable, or set [options] precision = "fp32"'
    )


def _valid_artifact(folder: Path, key: str) -> Manifest | None:
    try:
        m = read_manifest(folder)
    except UserError:
        return None
    return m if m.cache_key == key and m.numerics.status != "failed" else None


def _store_in_cache(out_dir: Path, cache_dir: Path) -> None:
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        if cache_dir.exists():
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
        shutil.rmtree(tmp)
        shutil.copytree(out_dir, tmp)
        os.replace(tmp, cache_dir)
    except OSError as err:  # a read-only cache must not fail a good compile
        log.warning("could not store the artifact in the compile cache %s: %s", cache_dir, err)
