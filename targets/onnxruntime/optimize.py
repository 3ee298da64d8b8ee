"""ORT's own graph optimization, run in a subprocess, and edgeformer's rewrite of its result.

Determinism: ORT serialises part of the ``.ort`` flatbuffer from an address-ordered map, so the
same model gives different bytes run to run.  The conversion therefore runs in a subprocess with
address-space randomisation off (``setarch -R``); it also keeps a native crash on a malformed
model out of the compiler's process.  With the addresses fixed, anything that changes the
subprocess's memory layout still changes the bytes: the length of a path on its command line (an
``-o`` folder named ``a`` and one named ``aaa`` gave different ``model.ort`` files) or of any
environment variable.  So the subprocess sees neither: it converts ``model.onnx`` → ``model.ort``
by those fixed relative names inside a temporary folder it runs in (its own path is not on the
command line, and its length was checked not to matter), with an environment of fixed content
(:func:`conversion_env`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeformer.errors import UserError

from .blocked import run_norms_blocked

LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_CONVERT = r"""
import sys, onnxruntime as ort
src, dst, level, threads, fmt = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
so = ort.SessionOptions()
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
so.optimized_model_filepath = dst
so.add_session_config_entry("session.save_model_format", fmt)
so.intra_op_num_threads = 1
so.log_severity_level = 3
ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
"""

# Variables kept from the caller's environment: they decide which Python and which onnxruntime the
# subprocess loads, so a compile without them might not be the same compile.  Everything else
# (an unrelated variable of any length shifted the bytes) is dropped.
_KEPT_ENV = ("PYTHONHOME", "PYTHONPATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "SYSTEMROOT")
_FIXED_ENV = {"LC_ALL": "C", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}

# Beyond this the optimized graph no longer fits one protobuf (2 GB) and is left as ORT wrote it.
_MAX_REWRITE_BYTES = 1_800_000_000


def optimize_for_host(src: Path, dst: Path, level: str, fmt: str = "ORT") -> dict:
    """ORT's own graph optimization of ``src`` at ``level``, then ours on top of it, saved to ``dst``.

    At level "all" ORT's layout transformer writes CPU-specific NCHWc nodes; the graph it saved is
    then rewritten by :func:`.blocked.run_norms_blocked` (norms run on the blocked layout, without
    reorders) and converted again.  Returns that rewrite's report (empty for other levels).
    ``fmt`` is "ORT" (ORT's flatbuffer format, ``model.ort``) or "ONNX".  The bytes depend only on
    ``src``, ``level`` and the installed runtime, not on the paths or the caller's environment.
    """
    if level != "all":
        _ort_subprocess(src, dst, level, fmt)
        return {}
    import onnx

    with _workdir(src, dst) as work:
        _convert(work, _SRC, "level-all.onnx", level, "ONNX")
        optimized = work / "level-all.onnx"
        if optimized.stat().st_size > _MAX_REWRITE_BYTES:
            _convert(work, _SRC, _out(fmt), level, fmt)
            shutil.move(str(work / _out(fmt)), str(dst))
            return {"skipped": "the optimized graph is too large for one protobuf"}
        model = onnx.load(str(optimized))
        report = run_norms_blocked(model)
        if report.rewritten:
            onnx.save(model, str(optimized))
        # ORT optimizes once more on load; on this graph that changes nothing (checked by tests).
        _convert(work, "level-all.onnx", _out(fmt), level, fmt)
        shutil.move(str(work / _out(fmt)), str(dst))
    return report.to_dict()


def conversion_env() -> dict[str, str]:
    """The conversion subprocess's environment: fixed values plus the few that pick the runtime."""
    kept = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    return {**kept, **_FIXED_ENV}


_SRC = "model.onnx"


def _out(fmt: str) -> str:
    return "model.ort" if fmt == "ORT" else "model.optimized.onnx"


@contextlib.contextmanager
def _workdir(src: Path, dst: Path):
    """A temporary folder beside ``dst`` holding a copy of ``src`` as ``model.onnx``."""
    with tempfile.TemporaryDirectory(prefix=".ort-opt-", dir=dst.parent) as tmp:
        shutil.copyfile(src, Path(tmp) / _SRC)
        yield Path(tmp)


def _ort_subprocess(src: Path, dst: Path, level: str, fmt: str) -> None:
    """ORT's optimization of ``src`` alone (no rewrite of ours), saved to ``dst``."""
    with _workdir(src, dst) as work:
        _convert(work, _SRC, _out(fmt), level, fmt)
        shutil.move(str(work / _out(fmt)), str(dst))


def _convert(work: Path, src: str, dst: str, level: str, fmt: str) -> None:
    """Convert ``work/src`` into ``work/dst`` in a subprocess run inside ``work`` by those names."""
    cmd = [sys.executable, "-c", _CONVERT, src, dst, LEVELS[level], "1", fmt]
    setarch = shutil.which("setarch")
    if setarch and platform.system() == "Linux":
        cmd = [setarch, platform.machine(), "-R", *cmd]
    run = {"capture_output": True, "text": True, "cwd": work, "env": conversion_env()}
    proc = subprocess.run(cmd, **run)
    if proc.returncode != 0 and setarch and "setarch" in proc.stderr:  # personality() refused
        proc = subprocess.run(cmd[3:], **run)
    if proc.returncode != 0 or not (work / dst).is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"ONNX Runtime could not load the exported model: {tail}", "run with --debug and report it")
