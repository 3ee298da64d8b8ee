"""MetaSchedule search: candidates sampled from the design spaces, built and timed here; the loop.

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
replay with given decisions, postprocessors, in-process builds.  The database
(:mod:`.database`, whose ``Space`` holds the design spaces) therefore stores each record as
(design space, decisions), which replays to the same schedule; the workload is identified by
sha256 of its TIR script rather than serialised.

Budget: ``trials`` candidates in all.  Each task first gets a few random samples; the rest go,
batch by batch, to the task with the largest weighted time (calls x best time), as mutations of
its best decisions.  A second ``tune`` continues from the database.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError, first_line

from . import build as tb
from . import database as db
from .runner import set_threads

log = logging.getLogger(__name__)

DEFAULT_TRIALS = 2000  # EfficientFormer-L1 on 2 cores: see benchmarks/tvm_tuning.py
_INIT_SAMPLES = 8  # random samples per task before mutation starts
_BATCH = 8  # mutations per scheduling round
_CHECKPOINT = 200  # trials between database writes


# ------------------------------------------------------------------------------------- candidates


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


def _measure_naive(func, target, dev) -> float:
    from tvm import s_tir

    try:
        return _measure(s_tir.Schedule(db.as_workload(func)), target, dev)
    except Exception:  # noqa: BLE001 - an unmeasurable function is simply not prioritised
        return 0.0


# ------------------------------------------------------------------------------------------ tasks


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
    space: db.Space | None
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

    def record(self) -> dict:
        """This task's database record (only once it has a best candidate)."""
        return {
            "space": self.best["space"],
            "decisions": self.best["decisions"],
            "latency_us": round(self.best_s * 1e6, 3),
            "untuned_us": round(self.naive_s * 1e6, 3),
            "functions": sorted(self.names),
            "calls": self.weight,
            "trials": self.trials,
        }


def _load_tasks(mod, target, dev, threads: int, records: dict) -> list[_Task]:
    """One task per distinct TIR function, timed untuned, resumed from its record if it has one."""
    tasks: list[_Task] = []
    calls = db.call_counts(mod)
    for k, (names, func) in db.tunable_functions(mod).items():
        space = db.Space(func, target, threads)
        naive = _measure_naive(func, target, dev)
        n_calls = sum(calls.get(n, 0) for n in names)
        task = _Task(k, names, n_calls, space if space.traces else None, naive, best_s=naive or float("inf"))
        rec = records.get(k)
        if rec and task.space is not None and rec["space"] < len(space.traces):
            # A record only exists if it beat the untuned function; re-time it on today's machine.
            task.best, task.best_s = {"space": rec["space"], "decisions": rec["decisions"]}, rec["latency_us"] / 1e6
            task.trials = rec.get("trials", 0)
        tasks.append(task)
    return tasks


# ----------------------------------------------------------------------------------------- search


class _Search:
    """One run's candidates: the random stream, the trial counters and the builder pool.

    Candidates go in batches: scheduled here, compiled on all cores at once (LLVM codegen was most
    of a tuning run's time, single-threaded: docs/benchmarks.md), then timed one by one on the quiet
    machine.
    """

    def __init__(self, tasks: list[_Task], target, dev, seed: int):
        self.tasks = tasks
        self.live = [t for t in tasks if t.space is not None]
        self.target, self.dev = target, dev
        self.rng = random.Random(seed)
        self.done = self.failed = 0
        self.builders = ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0))))

    def attempt(self, task: _Task, specs: list[tuple]) -> None:
        """Try ``specs`` = [(space, decisions, resample), ...] for ``task``; keep the fastest."""
        scheduled = self._schedule(task, specs)
        built = self.builders.map(lambda candidate: self._build(task, candidate), scheduled)
        for (space, sch, chosen), rt in zip(scheduled, built):
            secs = self._time(task, rt, sch)
            if secs is None:
                self.failed += 1
            elif secs < task.best_s:
                task.best_s, task.best = secs, {"space": space, "decisions": chosen}

    def _schedule(self, task: _Task, specs: list[tuple]) -> list[tuple]:
        """[(space, schedule, decisions)] of the specs the postprocessors accept; each draws a seed."""
        scheduled = []
        for space, decisions, resample in specs:
            self.done += 1
            task.trials += 1
            try:
                got = task.space.schedule(space, decisions, self.rng.randrange(1, 1 << 30), resample)
            except Exception as err:  # noqa: BLE001 - a bad candidate is a failed trial, not a failed tune
                got = None
                log.debug("candidate failed for %s: %s", task.names[0], first_line(err))
            if got is None:
                self.failed += 1
            else:
                scheduled.append((space, *got))
        return scheduled

    def _build(self, task: _Task, candidate: tuple):
        try:
            return _build(candidate[1], self.target)
        except Exception as err:  # noqa: BLE001
            log.debug("candidate failed to build for %s: %s", task.names[0], first_line(err))
            return None

    def _time(self, task: _Task, rt, sch) -> float | None:
        try:
            return _time(rt, sch, self.dev) if rt is not None else None
        except Exception as err:  # noqa: BLE001
            log.debug("candidate failed to run for %s: %s", task.names[0], first_line(err))
            return None

    def initial_round(self, trials: int) -> None:
        """Random samples for every task, most expensive first (all of them if trials allow)."""
        init = max(1, min(_INIT_SAMPLES, trials // max(1, len(self.live))))
        for task in sorted(self.live, key=lambda t: (-t.weight * t.naive_s, t.key)):
            if task.best is not None:  # continued from the database: it has had its exploration
                continue
            n = min(init, trials - self.done)
            if n > 0:
                self.attempt(task, [(i % len(task.space.traces), None, frozenset()) for i in range(n)])

    def mutation_round(self, trials: int) -> None:
        """One batch of mutations of the incumbent for the task costing the most time overall;
        the decay on trials already spent keeps one stubborn task from taking the whole budget."""
        task = max(self.live, key=lambda t: (t.cost_s / (1 + 0.05 * t.trials), t.key))
        self.attempt(task, [self._mutation(task) for _ in range(min(_BATCH, trials - self.done))])

    def _mutation(self, task: _Task) -> tuple:
        """(space, decisions, resample): a fresh sample 20% of the time, else one decision redrawn."""
        if task.best is None or self.rng.random() < 0.2:
            return (self.rng.randrange(len(task.space.traces)), None, frozenset())
        n = len(task.best["decisions"])
        flip = {self.rng.randrange(n)} if n else set()
        return (task.best["space"], task.best["decisions"], frozenset(flip))

    def close(self) -> None:
        self.builders.shutdown()


# --------------------------------------------------------------------------------------- database


class _Store:
    """The run's database file: its records and history, written at checkpoints and at the end."""

    def __init__(self, path: Path, graph, profile, key: str):
        self.path = path
        self.old = db.load_database(path)
        self.records = dict(self.old["records"]) if self.old else {}
        self.history = list(self.old.get("history", [])) if self.old else []
        self.header = {"target": tb.target_dict(profile), "workload": key, "model": graph.name}
        self.t0 = time.perf_counter()

    def save(self, search: _Search, final: bool) -> tuple[float, float, float]:
        """Write the database (also every few hundred trials, so a stopped run keeps its work).
        Returns (elapsed seconds, estimated ms, untuned estimated ms)."""
        elapsed = time.perf_counter() - self.t0
        for task in search.tasks:
            if task.best is not None:
                self.records[task.key] = task.record()
        est = sum(t.cost_s for t in search.tasks) * 1e3
        naive_est = sum(t.weight * t.naive_s for t in search.tasks) * 1e3
        entry = {
            "trials": search.done,
            "failed": search.failed,
            "tuning_time_s": round(elapsed, 1),
            "estimated_ms": round(est, 3),
            "complete": final,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        db.save_database(self.path, **self.header, records=self.records, history=[*self.history, entry])
        if final:
            self.history.append(entry)
        return elapsed, est, naive_est


# ------------------------------------------------------------------------------------------- tune


def _check(profile, trials: int | None) -> int:
    """The trial budget; refuses a profile for another CPU (candidates are timed here)."""
    if tb.is_cross(profile):
        raise UserError(
            f"profile {profile.name} targets {tb.target_arch(profile)}; tuning times candidates on this "
            "machine, so it only tunes for this CPU",
            "tune with a host profile (e.g. host-tvm), or on the device itself",
        )
    trials = trials or profile.options.tuning_trials or DEFAULT_TRIALS
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    return trials


def _run(search: _Search, store: _Store, trials: int) -> None:
    """The whole budget: the random round, then mutation batches, checkpointing as it goes."""
    search.initial_round(trials)
    next_save = search.done + _CHECKPOINT
    while search.done < trials:
        search.mutation_round(trials)
        if search.done >= next_save:
            store.save(search, final=False)
            next_save = search.done + _CHECKPOINT


def tune(graph, profile, *, trials: int | None = None, work_dir: str | Path | None = None, seed: int = 0) -> TuneResult:
    """Tune ``graph`` for ``profile`` and store the schedules in the per-profile cache.

    ``trials`` (default: the profile's ``tuning_trials``, else DEFAULT_TRIALS) candidates are
    built and timed in all.  ``work_dir`` overrides the database folder.  Candidates are timed
    on this machine, so a profile for another CPU architecture is refused.
    """
    import tvm

    trials = _check(profile, trials)
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # per-candidate chatter
    target, mod, key = db.prepare(graph, profile)
    path = (Path(work_dir) / db.DB_FILE) if work_dir else db.database_path(profile, key)
    set_threads(profile.options.threads)
    dev = tvm.cpu()
    store = _Store(path, graph, profile, key)  # reads the database; the run's clock starts here
    tasks = _load_tasks(mod, target, dev, profile.options.threads or 1, store.records)
    if not any(t.space for t in tasks):
        raise UserError(f"{graph.name} has no TIR functions to tune for {profile.name}")
    log.info("tuning %s for %s: %d tasks, %d trials -> %s", graph.name, profile.name, len(tasks), trials, path)
    search = _Search(tasks, target, dev, seed)
    try:
        _run(search, store, trials)
    finally:
        search.close()
    return _result(graph, profile, store, search, *store.save(search, final=True))


def _result(graph, profile, store: _Store, search: _Search, elapsed: float, est: float, naive_est: float) -> TuneResult:
    log.info(
        "tuned %s in %.0f s (%d trials, %d failed): estimated %.2f ms, untuned %.2f ms",
        graph.name,
        elapsed,
        search.done,
        search.failed,
        est,
        naive_est,
    )
    return TuneResult(
        model=graph.name,
        profile=profile.name,
        target=dict(store.header["target"]),
        workload=store.header["workload"],
        database=str(store.path),
        trials=search.done,
        tasks=len(search.tasks),
        tuning_time_s=round(elapsed, 1),
        continued=store.old is not None,
        estimated_ms=round(est, 3),
        untuned_estimated_ms=round(naive_est, 3),
        failed=search.failed,
        runs=store.history,
    )
