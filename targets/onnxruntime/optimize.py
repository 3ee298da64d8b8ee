"""ORT's own graph optimization, run in a subprocess, and edgeformer's rewrite of its result.

Determinism: ORT serialises part of the ``.ort`` flatbuffer from an address-ordered map, so the
same model gives different bytes run to run.  The conversion therefore runs in a subprocess with
address-space randomisation off (``setarch -R``), which makes it byte-identical; it also keeps a
native crash on a malformed model out of the compiler's process.
"""

from __future__ import annotations

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

# Beyond this the optimized graph no longer fits one protobuf (2 GB) and is left as ORT wrote it.
_MAX_REWRITE_BYTES = 1_800_000_000


def optimize_for_host(src: Path, dst: Path, level: str, fmt: str = "ORT") -> dict:
    """ORT's own graph optimization of ``src`` at ``level``, then ours on top of it, saved to ``dst``.

    At level "all" ORT's layout transformer writes CPU-specific NCHWc nodes; the graph it saved is
    then rewritten by :func:`.blocked.run_norms_blocked` (norms run on the blocked layout, without
    reorders) and converted again.  Returns that rewrite's report (empty for other levels).
    ``fmt`` is "ORT" (the mobile format) or "ONNX".
    """
    if level != "all":
        _ort_subprocess(src, dst, level, fmt)
        return {}
    import onnx

    with tempfile.TemporaryDirectory(prefix=".ort-opt-", dir=dst.parent) as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _ort_subprocess(src, optimized, level, "ONNX")
        if optimized.stat().st_size > _MAX_REWRITE_BYTES:
            _ort_subprocess(src, dst, level, fmt)
            return {"skipped": "the optimized graph is too large for one protobuf"}
        model = onnx.load(str(optimized))
        report = run_norms_blocked(model)
        if report.rewritten:
            onnx.save(model, str(optimized))
        # ORT optimizes once more on load; on this graph that changes nothing (checked by tests).
        _ort_subprocess(optimized, dst, level, fmt)
    return report.to_dict()


def _ort_subprocess(src: Path, dst: Path, level: str, fmt: str) -> None:
    cmd = [sys.executable, "-c", _CONVERT, str(src), str(dst), LEVELS[level], "1", fmt]
    setarch = shutil.which("setarch")
    if setarch and platform.system() == "Linux":
        cmd = [setarch, platform.machine(), "-R", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and setarch and "setarch" in proc.stderr:  # personality() refused
        proc = subprocess.run(cmd[3:], capture_output=True, text=True)
    if proc.returncode != 0 or not dst.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"ONNX Runtime could not load the exported model: {tail}", "run with --debug and report it")
