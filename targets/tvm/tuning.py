"""MetaSchedule tuning and the per-profile database cache.

Untuned TVM runs about 100x slower than ONNX Runtime on a CPU, so tuning is part of the target.
``tune`` takes every fused TIR function of the workload, generates MetaSchedule's design spaces
for it (the target's schedule rules: multi-level tiling, auto-inline, parallelize/vectorize/
unroll, ...), samples and mutates their decisions (tile sizes, unroll depth, compute locations),
applies MetaSchedule's postprocessors, compiles each batch of candidates on all cores (LLVM
codegen releases the GIL) and times them one at a time on this machine with the
profile's thread count, and keeps the fastest.

Why not ``ms.tune_tasks``: with the pinned apache-tvm-ffi 0.1.15.post2, serialising any TIR
object to JSON (``SaveJSON``: ``tvm.ir.save_json(tvm.ir.PrimType("int32"))``) segfaults.
MetaSchedule's evolutionary search (``DeepCopyIRModule``), its MutateParallel and
MutateComputeLocation mutators, ``LocalBuilder`` (pickles the IRModule) and ``JSONDatabase``
(workloads) all go through it.  The pieces used here do not: design-space generation, trace
replay with given decisions, postprocessors, in-process builds.  The database therefore stores
each record as (design space, decisions), which replays to the same schedule; the workload is
identified by sha256 of its TIR script rather than serialised.

Budget: ``trials`` candidates in all.  Each task first gets a few random samples; the rest go,
batch by batch, to the task with the largest weighted time (calls x best time), as mutations of
its best decisions.  The database lives in::

    $EDGEFORMER_CACHE_DIR (default ~/.cache/edgeformer)/tvm-tune/<profile>/<workload>/database.json

``<workload>`` is :func:`build.workload_key` (program without weights + target + TVM version).
A second ``tune`` continues from the database; it is replaced atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError

from . import build as tb

log = logging.getLogger(__name__)

DB_FILE = "database.json"
DB_FORMAT = "edgeformer-tvm-schedules/1"
DEFAULT_TRIALS = 2000  # EfficientFormer-L1 on 2 cores: see benchmarks/tvm_tuning.py
_INIT_SAMPLES = 8  # random samples per task before mutation starts
_BATCH = 8  # mutations per scheduling round
_CHECKPOINT = 200  # trials between database writes


# ------------------------------------------------------------------------------------- locations


def tune_root() -> Path:
    from edgeformer.compiler import cache_root

    return cache_root() / "tvm-tune"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "profile"


def profile_dir(profile) -> Path:
    return tune_root() / _safe(profile.name)


def database_dir(profile, key: str) -> Path:
    return profile_dir(profile) / key[:24]


def database_path(profile, key: str) -> Path:
    return database_dir(profile, key) / DB_FILE


def database_digest(profile) -> str | None:
    """sha256 over every database of a profile: part of the compile cache key, so an artifact
    compiled before tuning is not returned from the cache after it."""
    root = profile_dir(profile)
    files = sorted(root.glob(f"*/{DB_FILE}")) if root.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def load_database(path: Path) -> dict | None:
    """The database at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"TVM tuning database {path} is unreadable ({err})", "delete it and run `edgeformer tune` again"
        ) from err
    if data.get("format") != DB_FORMAT:
        raise UserError(
            f"TVM tuning database {path} has format {data.get('format')!r}, expected {DB_FORMAT}",
            "delete it and run `edgeformer tune` again",
        )
    return data


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------- workloads


def prepare(graph, profile):
    """(target, lowered module, workload key) for a graph under a profile."""
    target = tb.make_target(profile)
    mod, params = tb.import_graph(graph)
    key = tb.workload_key(mod, target)
    return target, tb.lower(tb.bind(mod, params), target), key


def _as_workload(func):
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def func_key(func) -> str:
    """sha256 of a TIR function's script (name-independent): the database's workload id."""
    return hashlib.sha256(_as_workload(func).script().encode()).hexdigest()


def call_counts(mod) -> dict[str, int]:
    """How many times the Relax functions call each TIR function per inference."""
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call):
            for arg in (expr.op, *expr.args):
                if isinstance(arg, relax.GlobalVar):
                    counts[arg.name_hint] = counts.get(arg.name_hint, 0) + 1

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def tunable_functions(mod) -> dict[str, tuple[list[str], object]]:
    """key → (names of the functions with that body, one of them), sorted by key."""
    from tvm import tirx

    out: dict[str, tuple[list[str], object]] = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled")):
            k = func_key(func)
            out.setdefault(k, ([], func))[0].append(gv.name_hint)
    return dict(sorted(out.items()))


class _Space:
    """MetaSchedule design spaces of one workload, replayable with given decisions."""

    def __init__(self, func, target, threads: int):
        from tvm.s_tir import meta_schedule as ms

        self.workload = _as_workload(func)
        gen = ms.space_generator.PostOrderApply(sch_rules="from-target", postprocs="from-target", mutator_probs={})
        ctx = ms.TuneContext(
            mod=self.workload,
            target=target,
            space_generator=gen,
            task_name="edgeformer",
            rand_state=1,
            num_threads=max(1, threads),
        )
        self.traces = [s.trace.simplified(remove_postproc=True) for s in ctx.generate_design_space()]
        self.postprocs = list(ctx.space_generator.postprocs)

    def schedule(self, space: int, decisions: list | None, seed: int, resample: set[int] = frozenset()):
        """Apply design space ``space`` with ``decisions`` (None = all random; indices in
        ``resample`` drawn anew).  Returns (schedule, decisions) or None if a postproc rejects it."""
        from tvm import s_tir

        count = [0]

        def provider(inst, inputs, attrs, decision):
            if decision is None:
                return None
            i = count[0]
            count[0] += 1
            if decisions is None or i in resample or i >= len(decisions):
                return None  # sample anew
            return decisions[i]

        sch = s_tir.Schedule(self.workload, seed=seed)
        self.traces[space].apply_to_schedule(sch, remove_postproc=True, decision_provider=provider)
        for p in self.postprocs:
            if not p.apply(sch):
                return None
        trace = sch.trace
        chosen = [
            _py(trace.get_decision(i))
            for i in trace.insts
            if i.kind.name.startswith("Sample") and trace.get_decision(i) is not None
        ]
        return sch, chosen


def _py(decision):
    try:
        return [int(v) for v in decision]
    except TypeError:
        return int(decision)


def _build(sch, target):
    """The scheduled function, compiled in-process (LLVM codegen releases the GIL)."""
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build

    return default_build(sch.mod, target, None)


def _measure(sch, target, dev) -> float:
    return _time(_build(sch, target), sch, dev)


def _time(rt, sch, dev) -> float:
    """Median seconds of a built candidate on random inputs."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    rng = np.random.default_rng(0)
    args = []
    for a in ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True):
        shape = [int(s) for s in a.shape]
        dtype = str(a.dtype)
        data = rng.random(shape).astype(dtype) if "float" in dtype else np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(data, dev))
    timer = rt.time_evaluator(
        rt.entry_name if hasattr(rt, "entry_name") else "main", dev, number=1, repeat=3, min_repeat_ms=15
    )
    return float(np.median(timer(*args).results))


# ------------------------------------------------------------------------------------------ tuning


@dataclass
class TuneResult:
    """What ``tune`` did (``to_dict`` is stored in the database as its history)."""

    model: str
    profile: str
    target: dict
    workload: str
    database: str  # path of database.json
    trials: int  # candidates measured in this run
    tasks: int  # distinct TIR functions of the workload
    tuning_time_s: float
    continued: bool  # this run started from an existing database
    estimated_ms: float  # sum over tasks of calls x best measured time
    untuned_estimated_ms: float  # the same for the untuned functions
    failed: int = 0  # candidates that did not build or run
    runs: list[dict] = field(default_factory=list)  # history, one entry per tune() call

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Task:
    key: str
    names: list[str]
    calls: int  # calls per inference, over all functions with this body
    space: _Space | None
    naive_s: float
    best_s: float = float("inf")
    best: dict | None = None  # {"space", "decisions"}
    trials: int = 0

    @property
    def weight(self) -> int:
        return max(1, self.calls)

    @property
    def cost_s(self) -> float:
        """Time per inference spent in this task's functions, as best known."""
        best = self.best_s if self.best_s != float("inf") else self.naive_s
        return self.weight * best


def tune(graph, profile, *, trials: int | None = None, work_dir: str | Path | None = None, seed: int = 0) -> TuneResult:
    """Tune ``graph`` for ``profile`` and store the schedules in the per-profile cache.

    ``trials`` (default: the profile's ``tuning_trials``, else DEFAULT_TRIALS) candidates are
    built and timed in all.  ``work_dir`` overrides the database folder.  Candidates are timed
    on this machine, so a profile for another CPU architecture is refused.
    """
    import tvm

    from .runner import set_threads

    if tb.is_cross(profile):
        raise UserError(
            f"profile {profile.name} targets {tb.target_arch(profile)}; tuning times candidates on this "
            "machine, so it only tunes for this CPU",
            "tune with a host profile (e.g. host-tvm), or on the device itself",
        )
    trials = trials or profile.options.tuning_trials or DEFAULT_TRIALS
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # per-candidate chatter
    target, mod, key = prepare(graph, profile)
    path = (Path(work_dir) / DB_FILE) if work_dir else database_path(profile, key)
    old = load_database(path)
    records = dict(old["records"]) if old else {}
    set_threads(profile.options.threads)
    dev = tvm.cpu()
    rng = random.Random(seed)
    t0 = time.perf_counter()

    tasks: list[_Task] = []
    calls = call_counts(mod)
    for k, (names, func) in tunable_functions(mod).items():
        space = _Space(func, target, profile.options.threads or 1)
        naive = _measure_naive(func, target, dev)
        n_calls = sum(calls.get(n, 0) for n in names)
        task = _Task(k, names, n_calls, space if space.traces else None, naive, best_s=naive or float("inf"))
        rec = records.get(k)
        if rec and task.space is not None and rec["space"] < len(space.traces):
            # A record only exists if it beat the untuned function; re-time it on today's machine.
            task.best, task.best_s = {"space": rec["space"], "decisions": rec["decisions"]}, rec["latency_us"] / 1e6
            task.trials = rec.get("trials", 0)
        tasks.append(task)
    if not any(t.space for t in tasks):
        raise UserError(f"{graph.name} has no TIR functions to tune for {profile.name}")
    log.info("tuning %s for %s: %d tasks, %d trials -> %s", graph.name, profile.name, len(tasks), trials, path)

    done = failed = 0

    # Candidates go in batches: scheduled here, compiled on all cores at once (LLVM codegen was 70%
    # of a tuning run's time, single-threaded), then timed one by one on the quiet machine.
    builders = ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0))))

    def attempt(task: _Task, specs: list[tuple]) -> None:
        """Try ``specs`` = [(space, decisions, resample), ...] for ``task``; keep the fastest."""
        nonlocal done, failed
        scheduled = []
        for space, decisions, resample in specs:
            done += 1
            task.trials += 1
            try:
                got = task.space.schedule(space, decisions, rng.randrange(1, 1 << 30), resample)
            except Exception as err:  # noqa: BLE001 - a bad candidate is a failed trial, not a failed tune
                got = None
                log.debug("candidate failed for %s: %s", task.names[0], str(err).splitlines()[0] if str(err) else err)
            if got is None:
                failed += 1
            else:
                scheduled.append((space, *got))

        def build(candidate):
            try:
                return _build(candidate[1], target)
            except Exception as err:  # noqa: BLE001
                log.debug("candidate failed to build for %s: %s", task.names[0], str(err).splitlines()[:1])
                return None

        for (space, sch, chosen), rt in zip(scheduled, builders.map(build, scheduled)):
            try:
                secs = _time(rt, sch, dev) if rt is not None else None
            except Exception as err:  # noqa: BLE001
                secs = None
                log.debug("candidate failed to run for %s: %s", task.names[0], str(err).splitlines()[:1])
            if secs is None:
                failed += 1
            elif secs < task.best_s:
                task.best_s, task.best = secs, {"space": space, "decisions": chosen}

    live = [t for t in tasks if t.space is not None]
    history = list(old.get("history", [])) if old else []

    def save(final: bool) -> tuple[float, float, float]:
        """Write the database (also every few hundred trials, so a stopped run keeps its work)."""
        elapsed = time.perf_counter() - t0
        for task in tasks:
            if task.best is not None:
                records[task.key] = {
                    "space": task.best["space"],
                    "decisions": task.best["decisions"],
                    "latency_us": round(task.best_s * 1e6, 3),
                    "untuned_us": round(task.naive_s * 1e6, 3),
                    "functions": sorted(task.names),
                    "calls": task.weight,
                    "trials": task.trials,
                }
        est = sum(t.cost_s for t in tasks) * 1e3
        naive_est = sum(t.weight * t.naive_s for t in tasks) * 1e3
        entry = {
            "trials": done,
            "failed": failed,
            "tuning_time_s": round(elapsed, 1),
            "estimated_ms": round(est, 3),
            "complete": final,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_json(
            path,
            {
                "format": DB_FORMAT,
                "tvm": tvm.__version__,
                "target": tb.target_dict(profile),
                "workload": key,
                "model": graph.name,
                "records": records,
                "history": [*history, entry],
            },
        )
        if final:
            history.append(entry)
        return elapsed, est, naive_est

    # Round 1: random samples for every task, most expensive first (all of them if trials allow).
    init = max(1, min(_INIT_SAMPLES, trials // max(1, len(live))))
    for task in sorted(live, key=lambda t: (-t.weight * t.naive_s, t.key)):
        if task.best is not None:  # continued from the database: it has had its exploration
            continue
        n = min(init, trials - done)
        if n > 0:
            attempt(task, [(i % len(task.space.traces), None, frozenset()) for i in range(n)])
    # Then: batches of mutations of the incumbent for the task costing the most time overall;
    # the decay on trials already spent keeps one stubborn task from taking the whole budget.
    next_save = done + _CHECKPOINT
    while done < trials:
        task = max(live, key=lambda t: (t.cost_s / (1 + 0.05 * t.trials), t.key))
        specs = []
        for _ in range(min(_BATCH, trials - done)):
            if task.best is None or rng.random() < 0.2:
                specs.append((rng.randrange(len(task.space.traces)), None, frozenset()))
            else:
                n = len(task.best["decisions"])
                flip = {rng.randrange(n)} if n else set()
                specs.append((task.best["space"], task.best["decisions"], frozenset(flip)))
        attempt(task, specs)
        if done >= next_save:
            save(final=False)
            next_save = done + _CHECKPOINT
    builders.shutdown()
    elapsed, est, naive_est = save(final=True)
    result = TuneResult(
        model=graph.name,
        profile=profile.name,
        target=tb.target_dict(profile),
        workload=key,
        database=str(path),
        trials=done,
        tasks=len(tasks),
        tuning_time_s=round(elapsed, 1),
        continued=old is not None,
        estimated_ms=round(est, 3),
        untuned_estimated_ms=round(naive_est, 3),
        failed=failed,
        runs=history,
    )
    log.info(
        "tuned %s in %.0f s (%d trials, %d failed): estimated %.2f ms, untuned %.2f ms",
        graph.name,
        elapsed,
        done,
        failed,
        est,
        naive_est,
    )
    return result


def _measure_naive(func, target, dev) -> float:
    from tvm import s_tir

    try:
        return _measure(s_tir.Schedule(_as_workload(func)), target, dev)
    except Exception:  # noqa: BLE001 - an unmeasurable function is simply not prioritised
        return 0.0


# --------------------------------------------------------------------------------------- applying


def apply_database(mod, target, database: dict, threads: int = 1):
    """Replace every TIR function that has a record with its tuned schedule.

    Returns (module, number of functions scheduled).  Scheduled functions keep their names and
    attributes and are marked ``tirx.is_scheduled``; weight re-layouts chosen by tuning stay as
    preprocessing blocks for ``SplitLayoutRewritePreproc`` to lift out and fold.
    """
    records = database.get("records", {})
    applied = 0
    for k, (names, func) in tunable_functions(mod).items():
        rec = records.get(k)
        if rec is None:
            continue
        space = _Space(func, target, threads)
        got = space.schedule(rec["space"], rec["decisions"], seed=1) if rec["space"] < len(space.traces) else None
        if got is None:
            log.warning("tuning record for %s no longer applies; it stays untuned", names[0])
            continue
        scheduled = got[0].mod["main"]
        for name in names:
            gv = mod.get_global_var(name)
            new = scheduled
            for attr_key, value in (mod[gv].attrs or {}).items():
                new = new.with_attr(attr_key, value)
            mod[gv] = new.with_attr("tirx.is_scheduled", True)
            applied += 1
    return mod, applied


def compiled_graph(model, profile, *, input_shapes=None, weights=None, passes: str | None = None):
    """MODEL as ``compile`` hands it to the target: exported, then the profile's pass pipeline.

    Tuning must see exactly this program, since the database is keyed by it.
    """
    from edgeformer.device_profiles import Profile, load_profile
    from edgeformer.passes import PassManager, resolve_pipeline
    from edgeformer.sources import load_model
    from edgeformer.targets import get_target

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if prof.target != "tvm":
        raise UserError(
            f"profile {prof.name} uses target {prof.target}; only TVM profiles are tuned",
            "pick a TVM profile, e.g. --profile host-tvm",
        )
    target = get_target("tvm")
    reason = target.is_available()
    if reason:
        from edgeformer.errors import TargetUnavailableError

        raise TargetUnavailableError(f"tuning needs TVM: {reason}")
    source = load_model(model, input_shapes=input_shapes, weights=weights)
    pipeline = resolve_pipeline(target.default_pipeline(prof), prof.pipeline.add, prof.pipeline.drop, passes)
    graph, _ = PassManager(pipeline, check=False).run(source.graph)
    return graph, prof


def tuned_trials(graph, profile) -> int:
    """Trials already stored for this graph's workload under ``profile`` (0 without a database)."""
    target = tb.make_target(profile)
    mod, _ = tb.import_graph(graph)
    db = load_database(database_path(profile, tb.workload_key(mod, target)))
    return sum(h.get("trials", 0) for h in db.get("history", [])) if db else 0


def tune_model(
    model,
    profile="host-tvm",
    *,
    trials: int | None = None,
    input_shapes=None,
    weights=None,
    passes: str | None = None,
    work_dir: str | Path | None = None,
) -> TuneResult:
    """``edgeformer tune``: resolve MODEL, run the same pass pipeline ``compile`` runs, tune it."""
    graph, prof = compiled_graph(model, profile, input_shapes=input_shapes, weights=weights, passes=passes)
    return tune(graph, prof, trials=trials, work_dir=work_dir)
