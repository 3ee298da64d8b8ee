"""``compile``: model → IR → passes → target runtime files → numerics check → artifact folder.

The artifact folder is built in a temporary sibling and renamed into place, so a failure at any
stage leaves nothing half-written.  A cache keyed by sha256(IR, pipeline, target options, runtime
versions, tolerances) makes an identical re-compile free, and says so.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

import edgeformer
from edgeformer import ir
from edgeformer.device_profiles import Profile, load_profile
from edgeformer.errors import NumericsError, TargetUnavailableError, UserError
from edgeformer.manifest import MANIFEST, Manifest, NumericsReport, TensorSpec, file_entries, read_manifest
from edgeformer.numerics import compare
from edgeformer.sources import load_model
from edgeformer.targets import get_target

log = logging.getLogger(__name__)

STAGES = ("export", "passes", "compile", "verify", "write")


def cache_root() -> Path:
    return Path(os.environ.get("EDGEFORMER_CACHE_DIR") or Path.home() / ".cache" / "edgeformer")


@dataclass
class CompileReport:
    path: Path
    manifest: Manifest
    cached: bool  # True when the artifact came from the compile cache
    stage_times_s: dict[str, float] = field(default_factory=dict)
    cache_source: str = ""  # "output" (already up to date) or "cache"


def _check_output_dir(out_dir: Path) -> None:
    parent = out_dir.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is a file", "choose a folder path for -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise UserError(
            f"output folder {out_dir} is not empty and is not an edgeformer artifact",
            "choose a new folder for -o, or remove it",
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create output folder {parent}: {err.strerror}", "choose a writable path for -o"
        ) from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"output folder {parent} is not writable", "choose a writable path for -o")


def _cache_key(graph: ir.Graph, pipeline: list[str], target, profile: Profile, model_info: dict) -> str:
    blob = {
        "ir": graph.hash(),
        "pipeline": pipeline,
        "target": target.name,
        "target_options": target.cache_options(profile),
        "numerics": profile.to_dict()["numerics"],
        "versions": target.versions(),
        "torch": _torch_version(),
        "edgeformer": edgeformer.__version__,
        "code": _code_digest(),
        "weights": (model_info.get("weights") or {}).get("sha256"),
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


def _mkdtemp(prefix: str, parent: Path) -> Path:
    """A temp folder beside the destination, with normal (umask) permissions, not mkdtemp's 0700."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _place(tmp: Path, out_dir: Path) -> None:
    """Atomically move a finished folder into place, replacing an older artifact."""
    _fsync_tree(tmp)
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _valid_artifact(folder: Path, key: str) -> Manifest | None:
    try:
        m = read_manifest(folder)
    except UserError:
        return None
    return m if m.cache_key == key and m.numerics.status != "failed" else None


def _tensor_specs(names, tensors) -> list[TensorSpec]:
    return [TensorSpec(n, list(t.shape), str(t.dtype).replace("torch.", "")) for n, t in zip(names, tensors)]


def compile(  # noqa: A001 - the public verb
    model: str | nn.Module,
    profile: str | Path | Profile | None = None,
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
) -> CompileReport:
    """Compile MODEL for a device profile into ``out_dir``; see the module docstring."""
    t_start = time.perf_counter()
    stage_times: dict[str, float] = {}

    def stage(name: str, msg: str = "") -> None:
        if on_stage:
            on_stage(name, msg)
        log.info("%s %s", name, msg)

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    target = get_target(prof.target)
    reason = target.is_available()
    if reason:
        raise TargetUnavailableError(f"profile {prof.name} needs target {target.name}, which is unavailable: {reason}")
    out_dir = Path(out_dir)
    _check_output_dir(out_dir)

    stage("export", "exporting to the IR")
    t0 = time.perf_counter()
    source = load_model(model, input_shapes=input_shapes, weights=weights)
    graph = source.graph
    stage_times["export"] = time.perf_counter() - t0

    from edgeformer.passes import PassManager, default_options, resolve_pipeline

    pipeline = resolve_pipeline(target.default_pipeline(prof), prof.pipeline.add, prof.pipeline.drop, passes)
    key = _cache_key(graph, pipeline, target, prof, source.info)
    cache_dir = cache_root() / "compile" / key
    if use_cache and not dump_ir and not explain:
        if (m := _valid_artifact(out_dir, key)) is not None:
            stage("write", f"up to date (cache key {key[:12]}): skipped")
            return CompileReport(out_dir, m, True, stage_times, "output")
        if _valid_artifact(cache_dir, key) is not None:
            tmp = _mkdtemp(f".{out_dir.name}.tmp-", out_dir.parent)
            shutil.rmtree(tmp)
            shutil.copytree(cache_dir, tmp)
            _place(tmp, out_dir)
            stage("write", f"identical compile found in the cache (key {key[:12]}): skipped")
            return CompileReport(out_dir, read_manifest(out_dir), True, stage_times, "cache")

    stage("passes", f"{len(pipeline)} passes: {', '.join(pipeline) or '(none)'}")
    t0 = time.perf_counter()
    reference = [t.detach().numpy() for t in ir.run(graph, graph.example_inputs)]
    rewritten, records = PassManager(
        pipeline,
        check=check,
        dump_dir=dump_ir,
        explain=explain,
        options=default_options(target.name, pipeline),
    ).run(graph)
    stage_times["passes"] = time.perf_counter() - t0

    tmp = _mkdtemp(f".{out_dir.name}.tmp-", out_dir.parent)
    try:
        stage("compile", f"{target.name}")
        t0 = time.perf_counter()
        result = target.compile(rewritten, prof, tmp)
        stage_times["compile"] = time.perf_counter() - t0

        manifest = Manifest(
            model=source.info,
            ir_hash=graph.hash(),
            ir_hash_after_passes=rewritten.hash(),
            profile=prof.to_dict(),
            target=target.name,
            runtime_versions={"torch": _torch_version(), **target.versions()},
            passes=[r.to_dict() for r in records],
            inputs=_tensor_specs(graph.input_names, graph.example_inputs),
            outputs=[TensorSpec(n, list(r.shape), str(r.dtype)) for n, r in zip(graph.output_names, reference)],
            files=file_entries(tmp, result.files),
            numerics=NumericsReport("skipped"),
            compile_time_s=0.0,
            cache_key=key,
            target_details=result.details,
            structural_checks=result.structural_checks,
            edgeformer_version=edgeformer.__version__,
        )

        stage("verify", "checking outputs against PyTorch")
        t0 = time.perf_counter()
        manifest.numerics = _verify(target, prof, tmp, manifest, graph, reference, result)
        stage_times["verify"] = time.perf_counter() - t0
        if manifest.numerics.status == "failed":
            raise NumericsError(
                f"{target.name} outputs disagree with PyTorch: {manifest.numerics.reason}",
                "loosen [numerics] in the profile only if that error is acceptable, or drop passes with --passes",
            )

        stage("write", str(out_dir))
        manifest.compile_time_s = round(time.perf_counter() - t_start, 3)
        manifest.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest.write(tmp)
        _place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if use_cache:
        _store_in_cache(out_dir, cache_dir)
    return CompileReport(out_dir, manifest, False, stage_times)


def _verify(target, prof: Profile, folder: Path, manifest: Manifest, graph, reference, result) -> NumericsReport:
    reason = target.can_run_here(prof)
    if reason:
        failed = sorted(k for k, ok in result.structural_checks.items() if not ok)
        if failed:
            return NumericsReport("failed", reason=f"structural checks failed: {', '.join(failed)}")
        return NumericsReport("skipped", reason=reason)
    runner = target.load(folder, manifest, prof)
    try:
        outputs = runner.run([t.detach().numpy() for t in graph.example_inputs])
    finally:
        runner.close()
    n = prof.numerics
    return compare(
        reference,
        [np.asarray(o) for o in outputs],
        atol=n.atol,
        rtol=n.rtol,
        min_cosine=n.min_cosine,
        names=list(graph.output_names),
    )


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
