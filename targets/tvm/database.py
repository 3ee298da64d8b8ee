"""The per-profile MetaSchedule database: where it lives, reading and writing it, applying it.

The database lives in::

    $EDGEFORMER_CACHE_DIR (default ~/.cache/edgeformer)/tvm-tune/<profile>/<workload>/database.json

``<workload>`` is :func:`build.workload_key` (program without weights + target + TVM version).
Each record is keyed by :func:`func_key` (sha256 of one TIR function's script) and stores a
(design space, decisions) pair, which :class:`Space` replays to the same schedule; see
:mod:`.search` for why records are not MetaSchedule's own JSON.  The file is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from edgeformer.errors import UserError
from edgeformer.fsutil import atomic_write_json, cache_root

from . import build as tb

log = logging.getLogger(__name__)

DB_FILE = "database.json"
DB_FORMAT = "edgeformer-tvm-schedules/1"


# ------------------------------------------------------------------------------------- locations


def tune_root() -> Path:
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


# ------------------------------------------------------------------------------- reading, writing


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


def save_database(path: Path, *, target: dict, workload: str, model: str, records: dict, history: list) -> Path:
    """Write a database atomically (sorted keys, indent 1, trailing newline), creating its folder."""
    import tvm

    data = {
        "format": DB_FORMAT,
        "tvm": tvm.__version__,
        "target": target,
        "workload": workload,
        "model": model,
        "records": records,
        "history": history,
    }
    return atomic_write_json(path, data, indent=1, mkdir=True)


def tuned_trials(graph, profile) -> int:
    """Trials already stored for this graph's workload under ``profile`` (0 without a database)."""
    target = tb.make_target(profile)
    mod, _ = tb.import_graph(graph)
    db = load_database(database_path(profile, tb.workload_key(mod, target)))
    return sum(h.get("trials", 0) for h in db.get("history", [])) if db else 0


# --------------------------------------------------------------------------------------- workloads


def prepare(graph, profile):
    """(target, lowered module, workload key) for a graph under a profile."""
    target = tb.make_target(profile)
    mod, params = tb.import_graph(graph)
    key = tb.workload_key(mod, target)
    return target, tb.lower(tb.bind(mod, params), target), key


def as_workload(func):
    """One TIR function as a module whose entry is ``main``: what MetaSchedule schedules."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def func_key(func) -> str:
    """sha256 of a TIR function's script (name-independent): the database's workload id."""
    return hashlib.sha256(as_workload(func).script().encode()).hexdigest()


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


# ---------------------------------------------------------------------------------- design spaces


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (``TuneContext`` does, to register the intrinsics) without
    its cost in a process that has torch and the other runtimes loaded.

    Each of its hundreds of ``@T.prim_func`` calls ``inspect.stack()``, which asks
    ``inspect.getmodule`` for every frame; for a frame of a frozen module (``<frozen importlib...>``,
    a dozen per nested import) that scans all of ``sys.modules`` and finds nothing, twice.  With
    ~10⁴ modules loaded that import took 272 s of a 19-minute test run (54 s in a fresh CLI
    process).  Such frames have no source either way, so answering None for them at once changes
    nothing TVM sees.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    original = inspect.getmodule

    def getmodule(obj, _filename=None):
        name = _filename or getattr(getattr(obj, "f_code", None), "co_filename", None)
        if isinstance(name, str) and name.startswith("<") and name.endswith(">"):
            return None
        return original(obj, _filename)

    inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the intrinsics
    finally:
        inspect.getmodule = original


class Space:
    """MetaSchedule design spaces of one workload, replayable with given decisions.

    A database record is (index of a design space, its sampling decisions); :meth:`schedule`
    replays it, so the search (:mod:`.search`) samples through this class and ``apply_database``
    replays through it.
    """

    def __init__(self, func, target, threads: int):
        from tvm.s_tir import meta_schedule as ms

        import_tensor_intrinsics()
        self.workload = as_workload(func)
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
        space = Space(func, target, threads)
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
