"""MetaSchedule tuning and the per-profile database cache.

Untuned TVM runs about 100x slower than ONNX Runtime on a CPU, so tuning is part of the target:
``tune`` searches schedules for every fused TIR function of a workload, measures them on this
machine and stores the best in a JSON database under::

    $EDGEFORMER_CACHE_DIR (default ~/.cache/edgeformer)/tvm-tune/<profile>/<workload>/
        database_workload.json  database_tuning_record.json  tune.json

``<workload>`` is :func:`build.workload_key` (program without weights + target + TVM version).
``compile`` applies the database when one exists and says when none does.  Tuning runs in a temp
folder beside the database (continuing from it when one exists) and replaces it atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeformer.errors import UserError

from . import build as tb

log = logging.getLogger(__name__)

DB_FILES = ("database_workload.json", "database_tuning_record.json")
META_FILE = "tune.json"
DEFAULT_TRIALS = 2000  # EfficientFormer-L1 on 2 cores: see benchmarks/tvm_tuning.py


def tune_root() -> Path:
    from edgeformer.compiler import cache_root

    return cache_root() / "tvm-tune"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "profile"


def profile_dir(profile) -> Path:
    return tune_root() / _safe(profile.name)


def database_dir(profile, key: str) -> Path:
    return profile_dir(profile) / key[:24]


def has_database(folder: Path) -> bool:
    return all((folder / f).is_file() for f in DB_FILES) and (folder / DB_FILES[1]).stat().st_size > 0


def open_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=False, module_equality="structural")


def database_digest(profile) -> str | None:
    """sha256 over every database of a profile: part of the compile cache key, so a compile
    cached before tuning is not returned after it."""
    root = profile_dir(profile)
    files = sorted(p for p in root.glob("*/database_*.json") if p.is_file()) if root.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class TuneResult:
    """What ``tune`` did; ``to_dict`` is also written as ``tune.json`` beside the database."""

    model: str
    profile: str
    target: dict
    workload: str
    database: str  # folder holding the database files
    trials: int  # trials requested in this run
    measured: int  # tuning records in the database after this run
    tasks: int  # fused TIR functions (tuning tasks) in the workload
    tuning_time_s: float
    continued: bool  # True when this run started from an existing database
    cost_model: str
    runs: list[dict] = field(default_factory=list)  # history: one entry per tune() call

    def to_dict(self) -> dict:
        return asdict(self)


def _cost_model() -> str:
    """xgboost is the usual MetaSchedule cost model; without it, the MLP (torch) one."""
    env = os.environ.get("EDGEFORMER_TVM_COST_MODEL")
    if env:
        return env
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "mlp"
    return "xgb"


@contextlib.contextmanager
def _threads_env(threads: int):
    """Measure candidates with the profile's thread count (TVM reads it in the runner process)."""
    old = os.environ.get("TVM_NUM_THREADS")
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old


def prepare(graph, profile):
    """(target, lowered module, workload key) for a graph under a profile."""
    target = tb.make_target(profile)
    mod, params = tb.import_graph(graph)
    key = tb.workload_key(mod, target)
    return target, tb.lower(tb.bind(mod, params), target), key


def tune(
    graph,
    profile,
    *,
    trials: int | None = None,
    work_dir: str | Path | None = None,
    trials_per_task: int | None = None,
    trials_per_iter: int = 64,
    seed: int | None = 0,
) -> TuneResult:
    """Tune ``graph`` for ``profile`` with MetaSchedule and store the database in the cache.

    ``trials`` (default: the profile's ``tuning_trials``, else DEFAULT_TRIALS) is the global
    budget spread over the tasks by MetaSchedule's gradient task scheduler.  ``work_dir``
    overrides the database folder.  Tuning a profile whose target is another CPU architecture
    needs that device (RPC runner), which this function does not do: it refuses.
    """
    from tvm.s_tir import meta_schedule as ms

    if tb.is_cross(profile):
        raise UserError(
            f"profile {profile.name} targets {tb.target_arch(profile)}; tuning measures candidates on this "
            "machine, so it only tunes for this CPU",
            "tune with a host profile (e.g. host-tvm), or on the device itself",
        )
    trials = trials or profile.options.tuning_trials or DEFAULT_TRIALS
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    target, mod, key = prepare(graph, profile)
    dest = Path(work_dir) if work_dir else database_dir(profile, key)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    if not tasks:
        raise UserError(f"{graph.name} has no TIR functions to tune for {profile.name}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the tuning folder {dest.parent}: {err.strerror}",
                        "set EDGEFORMER_CACHE_DIR to a writable folder") from err
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    continued = has_database(dest)
    history: list[dict] = []
    if continued:
        for f in DB_FILES:
            shutil.copy2(dest / f, tmp / f)
        with contextlib.suppress(OSError, ValueError):
            history = json.loads((dest / META_FILE).read_text()).get("runs", [])
    cost_model = _cost_model()
    per_task = trials_per_task or max(trials_per_iter, -(-trials // len(tasks)) * 2)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(tmp), seed=seed, num_threads=profile.options.threads or "physical")
    log.info("tuning %s for %s: %d tasks, %d trials (database %s)", graph.name, profile.name, len(tasks),
             trials, dest)
    t0 = time.perf_counter()
    try:
        with _threads_env(profile.options.threads):
            db = ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(tmp),
                max_trials_global=trials,
                max_trials_per_task=per_task,
                num_trials_per_iter=min(trials_per_iter, trials),
                builder=ms.builder.LocalBuilder(max_workers=max(1, profile.options.threads or 0) or None),
                runner=ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
                    number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)),
                database=ms.database.JSONDatabase(work_dir=str(tmp), module_equality="structural"),
                cost_model=cost_model,
            )
        elapsed = time.perf_counter() - t0
        measured = len(db.get_all_tuning_records())
        history.append({"trials": trials, "tuning_time_s": round(elapsed, 1), "records_after": measured,
                        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        result = TuneResult(
            model=graph.name, profile=profile.name, target=tb.target_dict(profile), workload=key,
            database=str(dest), trials=trials, measured=measured, tasks=len(tasks),
            tuning_time_s=round(elapsed, 1), continued=continued, cost_model=cost_model, runs=history,
        )
        for f in sorted(tmp.iterdir()):  # logs and the cost model stay out of the cache
            if f.name not in DB_FILES:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        (tmp / META_FILE).write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("tuned %s in %.0f s: %d records in %s", graph.name, elapsed, measured, dest)
    return result


def _replace_dir(tmp: Path, dest: Path) -> None:
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if dest.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, trash / "old")
        os.replace(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dest)
