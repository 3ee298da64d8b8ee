"""Apache TVM: tuned, cross-compiled, profiled on devices over RPC.

IR → ``relax.frontend.torch.from_exported_program`` → legalize + fuse → (MetaSchedule database)
→ ``relax.build`` for the profile's target (a JSON dict) → ``model.so`` via ``export_library``,
linked with the profile's cross compiler when it has one.  Weights are constants inside the
library, so ``model.so`` is the whole runtime artifact.

Options read from the profile: ``tvm_target`` (dict; ``mcpu = "native"`` = this CPU; default
this CPU), ``tvm_host``, ``threads`` (runtime thread pool, and the target's ``num-cores``),
``cross_compiler`` and ``tuning_trials``; ``[remote]`` gives the RPC tracker and device key.

Untuned TVM is about 100x slower than ORT on a CPU, so ``edgeformer tune``
(:func:`edgeformer.tuning.tune_model`, which calls :meth:`TvmTarget.tune`) stores a MetaSchedule
database per profile and workload, and ``compile`` applies it, or warns that there is none.
Files: ``build.py`` (import, lowering, build, export), ``search.py`` (the MetaSchedule search),
``database.py`` (where databases live, reading, writing and applying them), ``runner.py``
(Relax VM runner and per-op times), ``remote.py`` (profiling over the tracker), ``rpc.py``
(tracker and servers).
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from ..base import CompileResult, OpProfile, RemoteProfile, Target
from . import build as tb
from . import database as db
from . import search
from .remote import profile_remote as _profile_remote
from .runner import TvmRunner
from .search import TuneResult

# TVM's thread pool pins the *calling* thread to core 0 when it first runs parallel work, so
# everything else in the process (ORT sessions, torch, the caller's own threads) is left on one
# core (figures: docs/benchmarks.md).
os.environ.setdefault("TVM_BIND_THREADS", "0")

# TVM sizes its thread pool once, at the first parallel kernel, from TVM_NUM_THREADS, else from
# half the logical CPUs on x86 (it assumes every core is hyper-threaded).  On a 2-vCPU VM with no
# SMT that is ONE thread, and ``runtime.config_threadpool`` can only shrink the pool afterwards
# (the cost: docs/benchmarks.md).  Size the pool to the CPUs this process may use; the profile's
# ``threads`` then picks how many of them run.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("TVM_NUM_THREADS", str(_CPUS))

log = logging.getLogger(__name__)

__all__ = ["TuneResult", "TvmTarget"]


class TvmTarget(Target):
    name = "tvm"
    description = "Apache TVM (Relax): MetaSchedule-tuned model.so, cross-compiled, profiled over RPC"
    extra = "tvm"
    distributions = ("apache-tvm", "apache-tvm-ffi")  # ffi: its ABI matters (see search.py)
    sdk_modules = ("tvm", "tvm.relax")
    main_file = tb.LIBRARY
    # Checked on 0.27 (docs/measurement.md): a QDQ model imports, but every conv2d/matmul still runs
    # in float32 between element-wise quantize/dequantize ops, so "int8" would be fp32 plus overhead.
    refusals = {
        "int8": "TVM 0.27 Relax has no integer conv/matmul lowering here (a QDQ model would run its convs in "
        "fp32 plus quantize/dequantize overhead)"
    }

    @classmethod
    def is_available(cls) -> str | None:
        reason = super().is_available()
        if reason:
            return reason
        import importlib.util

        missing = [m for m in ("cloudpickle", "tornado", "psutil") if importlib.util.find_spec(m) is None]
        if missing:  # tvm's RPC and MetaSchedule import these at run time
            return f"{', '.join(missing)} not installed: pip install 'edgeformer[{cls.extra}]'"
        return None

    def can_run_here(self, profile) -> str | None:
        if tb.is_cross(profile):
            return (
                f"the library is built for {tb.target_arch(profile)}, not this machine; "
                "run it on the device, e.g. edgeformer profile DIR --remote HOST:PORT --key KEY"
            )
        return None

    def cache_options(self, profile) -> dict:
        opts = profile.options.to_dict()
        opts["tvm_target"] = tb.target_dict(profile)  # "native" resolved: another CPU, another key
        opts["tuning_database"] = db.database_digest(profile)
        return opts

    def compile(self, graph, profile, out_dir: Path, calibration=None) -> CompileResult:
        from tvm import relax

        target, mod, key = db.prepare(graph, profile)
        db_path = db.database_path(profile, key)
        database = db.load_database(db_path)
        n_funcs = sum(len(names) for names, _ in db.tunable_functions(mod).values())
        applied = 0
        if database is None:
            log.warning(  # the compile still succeeds: untuned is correct, only slow
                "no TVM tuning database for %s on %s (looked for %s): compiling untuned, which runs about "
                "100x slower than tuned; %s first",
                graph.name,
                profile.name,
                db_path,
                _tune_hint(profile),
            )
        else:
            mod, applied = db.apply_database(mod, target, database, profile.options.threads or 1)
        executable = tb.build(mod, target, tuned=applied > 0)
        tb.export(executable, out_dir / tb.LIBRARY, profile.options.cross_compiler)
        funcs = [gv.name_hint for gv, f in mod.functions.items() if not isinstance(f, relax.Function)]
        details = {
            "tvm_target": tb.target_dict(profile),
            "tvm_host": tb.host_dict(profile),
            "arch": tb.target_arch(profile),
            "cross_compiler": profile.options.cross_compiler or None,
            "workload": key,
            "tir_functions": len(funcs),
            "params": "bound as constants inside model.so",
            "tuning": {
                "database": str(db_path) if database is not None else None,
                "status": _status(database is not None, applied, n_funcs),
                "tuned_functions": applied,
                "tunable_functions": n_funcs,
                "trials": sum(r.get("trials", 0) for r in database["records"].values()) if database else 0,
                "message": (
                    f"applied {applied} tuned schedules from {db_path}"
                    if database is not None
                    else f"no tuning database for this workload ({db_path}); untuned TVM runs about 100x "
                    f"slower: {_tune_hint(profile)}"
                ),
            },
        }
        return CompileResult(files=[tb.LIBRARY], details=details)

    # ---------------------------------------------------------------------------------- tuning
    def tune(
        self, graph, profile, *, trials: int | None = None, work_dir: str | Path | None = None, seed: int = 0
    ) -> TuneResult:
        """MetaSchedule-tune ``graph`` (the IR ``compile`` hands to :meth:`compile`) for ``profile``
        and store the schedules where ``compile`` looks for them; see :mod:`.search`."""
        return search.tune(graph, profile, trials=trials, work_dir=work_dir, seed=seed)

    def tuned_trials(self, graph, profile) -> int:
        """Trials already stored for ``graph``'s workload under ``profile`` (0 without a database)."""
        return db.tuned_trials(graph, profile)

    # ------------------------------------------------------------------------------- execution
    def load(self, artifact):
        return TvmRunner(Path(artifact.path), artifact.profile.options.threads)

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        runner = self.load(artifact)
        try:
            return runner.profile_ops(inputs, runs)
        finally:
            runner.close()

    def profile_remote(
        self,
        artifact,
        *,
        tracker: str,
        key: str,
        inputs,
        min_runs: int = 50,
        min_seconds: float = 1.0,
        warmup: int = 1,
        number: int = 1,
        timeout_s: float | None = None,
        cooldown_ms: int = 0,
    ) -> RemoteProfile:
        """Time ``model.so`` on a device from the tracker; see :mod:`.remote`."""
        profile = artifact.profile
        if timeout_s is None:
            timeout_s = profile.remote.timeout_s if profile.remote else 60.0
        return _profile_remote(
            Path(artifact.path),
            tracker,
            key,
            inputs=inputs,
            min_runs=min_runs,
            min_seconds=min_seconds,
            warmup=warmup,
            number=number,
            threads=profile.options.threads,
            timeout_s=timeout_s,
            cooldown_ms=cooldown_ms,
        )


def _tune_hint(profile) -> str:
    """How to tune this workload, without naming the model: the target sees only ``graph.name``,
    not what the user typed (a zoo name, ``file.pt2``, ``package.module:factory``), and the
    database is keyed by the exact graph, so every option that shapes it must be repeated.  The
    CLI prints the full command from the manifest."""
    # A profile loaded from a TOML file is found again by its path, a shipped one by its name.
    ref = profile.path if profile.path and Path(profile.path).is_file() else profile.name
    return (
        "run `edgeformer tune` with the same MODEL, --input-shape and --weights as this compile "
        f"(and its --factory-arg and --passes, if any), and --profile {shlex.quote(ref)}"
    )


def _status(has_database: bool, applied: int, total: int) -> str:
    if not has_database:
        return "untuned"
    if applied == 0:
        return "untuned (the database has no schedule for these functions)"
    return "tuned" if applied >= total else f"partly tuned ({applied} of {total} functions)"
