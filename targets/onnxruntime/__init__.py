"""ONNX Runtime: the embedded default target.

IR → ``torch.onnx.export(ep, dynamo=True)`` → ``model.onnx`` → ORT-optimized ``model.ort`` (the
mobile format) → InferenceSession on the CPU execution provider.  At optimization level "all"
edgeformer also rewrites ORT's own optimized graph: norms over a whole sample run on the blocked
NCHWc tensors instead of being reordered out and back (``blocked.py``); the manifest's
``ort_blocked_layout`` says what changed, and the compile's numerics check covers it.

Options read from the profile: ``threads`` (0 = ORT's default), ``optimization_level``
(disable/basic/extended/all; "all" adds layout transforms specific to this CPU, so use "extended"
for a ``model.ort`` that ships to other devices) and ``execution_mode``.

Files: ``export.py`` (IR → ONNX), ``optimize.py`` (ORT's optimization in a deterministic
subprocess), ``blocked.py`` (the blocked-layout rewrite), ``profiler.py`` (per-op times).

The pipeline's pass options were chosen by measurement (figures: docs/benchmarks.md): ORT runs
GroupNorm(1, C) fastest as a reshaped InstanceNormalization, and with the pool mixer as two
depthwise 1x1 convs (``branch_convs``) its NCHWc layout engine keeps the residual stream blocked
and folds the adds into the convs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.passes import PIPELINES, Pipeline

from ..base import CompileResult, OpProfile, Runner, Target
from .export import export_onnx
from .optimize import LEVELS, optimize_for_host
from .profiler import op_profile, source_map

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeTarget", "OrtRunner", "export_onnx", "optimize_for_host"]


class OrtRunner(Runner):
    def __init__(self, path: Path, options, *, profile_dir: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[options.optimization_level])
        so.log_severity_level = 3
        if profile_dir:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(profile_dir, "ort")
        self._threads = options.threads
        self._level = options.optimization_level
        self._path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs)))

    def settings(self) -> dict:
        import onnxruntime as ort

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "execution_provider": "CPUExecutionProvider",
            "intra_op_threads": self._threads or "default (physical cores)",
            "graph_optimization_level": self._level,
            "model_file": self._path.name,
        }


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    description = "ONNX Runtime, CPU execution provider; ships model.onnx and the mobile model.ort"
    extra = "onnxruntime"
    distributions = ("onnxruntime", "onnx", "onnxscript")
    sdk_modules = ("onnxruntime",)
    main_file = "model.ort"
    pipeline = Pipeline(
        PIPELINES["exact"],
        {"fold_pool_mixer": {"branch_convs": True}, "lower_group_norm": {"form": "instance_norm"}},
    )

    def compile(self, graph, profile, out_dir: Path) -> CompileResult:
        onnx_path = out_dir / "model.onnx"
        export_onnx(graph, onnx_path)
        layout = optimize_for_host(onnx_path, out_dir / "model.ort", profile.options.optimization_level)
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        hist: dict[str, int] = defaultdict(int)
        for n in model.graph.node:
            hist[n.op_type] += 1
        return CompileResult(
            files=["model.ort", "model.onnx"],
            details={
                "onnx_opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                "onnx_nodes": len(model.graph.node),
                "onnx_op_histogram": dict(sorted(hist.items())),
                "ort_optimization_level": profile.options.optimization_level,
                "ort_format_portable": profile.options.optimization_level != "all",
                **({"ort_blocked_layout": layout} if layout else {}),
            },
        )

    @staticmethod
    def _model_path(artifact_dir: Path) -> Path:
        ort_path = artifact_dir / "model.ort"
        return ort_path if ort_path.is_file() else artifact_dir / "model.onnx"

    def load(self, artifact) -> OrtRunner:
        return OrtRunner(self._model_path(Path(artifact.path)), artifact.profile.options)

    def profile_ops(self, artifact, inputs, runs: int) -> OpProfile:
        """Per-node times from ORT's own profiler, mapped back to the source module."""
        folder = Path(artifact.path)
        sources = source_map(folder / "model.onnx") if (folder / "model.onnx").is_file() else {}
        with tempfile.TemporaryDirectory(prefix="edgeformer-ortprof-") as tmp:
            runner = OrtRunner(self._model_path(folder), artifact.profile.options, profile_dir=tmp)
            runner.run(inputs)  # warm-up: its events are excluded below
            for _ in range(runs):
                runner.run(inputs)
            trace = json.loads(Path(runner.session.end_profiling()).read_text())
        return op_profile(trace, runs, sources)
