"""The target interface every runtime backend implements.

A target owns its pass pipeline and pass options (``pipeline``) and declares the precisions it
compiles (``precisions``).  It turns the rewritten IR into runtime files inside an artifact
folder, loads an :class:`~edgeformer.artifact.Artifact` back as a runner, reports per-op times in
the common :class:`OpProfile` format and, where it can, times an artifact on a device over the
network (``profile_remote``).  Vendor SDKs are imported inside methods only, so listing targets
never imports openvino, tvm, coremltools or executorch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edgeformer.errors import UserError
from edgeformer.latency import Phases
from edgeformer.machine import MachineInfo
from edgeformer.passes import PIPELINES, Pipeline

if TYPE_CHECKING:  # pragma: no cover
    from edgeformer.artifact import Artifact
    from edgeformer.device_profiles import DeviceProfile
    from edgeformer.ir import Graph


def dist_version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class CompileResult:
    """What ``Target.compile`` produced inside the artifact folder."""

    files: list[str]  # paths relative to the artifact folder; the main runtime file first
    details: dict = field(default_factory=dict)  # target-specific facts for the manifest
    # Structural checks for targets that cannot run here (Core ML on Linux): name -> passed
    structural_checks: dict[str, bool] = field(default_factory=dict)


@dataclass
class Calibration:
    """The typed context a quantizing compile gets (the approximation contract, ``edgeformer/accuracy.py``).

    ``samples`` are the calibration inputs, each one list of arrays in the model's input order and
    shapes (the exported batch size), already converted to the model's input form.  ``keep_float``
    names layers of the rewritten IR (``torch.fx`` node names of its conv/linear/matmul nodes, as
    :func:`quantizable_layers` lists them) that the quantizer must leave in float: the accuracy
    restore fills it one layer at a time.  ``cache_dir`` is a folder the target may keep derived
    data in (calibrated ranges) keyed by content; None means no caching.
    """

    samples: list[list[np.ndarray]]
    source: str  # the data set's name, e.g. "digits (train split)" or a file path
    sha256: str  # of the calibration arrays as used
    method: str = "minmax"  # minmax | percentile | entropy (profile options.calibration_method)
    mode: str = "auto"  # static | dynamic | auto (profile options.quantization_mode)
    keep_float: tuple[str, ...] = ()
    cache_dir: Path | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "samples": len(self.samples),
            "method": self.method,
            "mode": self.mode,
            "keep_float": list(self.keep_float),
        }


# The IR ops a quantizer turns into integer compute: the "layers" that sensitivity ranks and the
# accuracy restore can keep in float (by their torch.fx node name in the rewritten graph).
QUANTIZABLE_OPS = frozenset({"conv1d", "conv2d", "convolution", "linear", "matmul", "mm", "bmm", "addmm", "baddbmm"})


def quantizable_layers(graph: Graph) -> list[str]:
    """Node names of the rewritten IR's conv/linear/matmul calls, in graph order."""
    names = []
    for node in graph.program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in QUANTIZABLE_OPS:
            names.append(node.name)
    return names


@dataclass
class OpTime:
    name: str  # node name in the runtime's graph
    type: str  # op type as the runtime names it
    time_ms: float  # mean time per inference
    share: float  # time_ms / end-to-end time
    calls: int = 1  # executions per inference
    device: str | None = None  # compute unit / execution provider / delegate, when the runtime says
    source: str | None = None  # source module in the PyTorch model, when traceable


@dataclass
class OpProfile:
    """Per-op breakdown in the one format every target reports."""

    runtime: str
    runs: int
    end_to_end_ms: float  # median end-to-end time of the profiled runs
    ops: list[OpTime]  # sorted by time, descending
    explained_ms: float
    unexplained_ms: float  # end-to-end minus the sum of op times: never hidden
    unexplained_share: float
    by_type: dict[str, float] = field(default_factory=dict)  # op type -> ms, sorted descending
    by_device: dict[str, int] = field(default_factory=dict)  # device -> op count (placement)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def build(cls, runtime: str, runs: int, end_to_end_ms: float, ops: list[OpTime], notes=()) -> OpProfile:
        total = end_to_end_ms if end_to_end_ms > 0 else sum(o.time_ms for o in ops) or 1.0
        for o in ops:
            o.share = o.time_ms / total
        ops = sorted(ops, key=lambda o: (-o.time_ms, o.name))
        explained = sum(o.time_ms for o in ops)
        by_type: dict[str, float] = {}
        by_device: dict[str, int] = {}
        for o in ops:
            by_type[o.type] = by_type.get(o.type, 0.0) + o.time_ms
            if o.device:
                by_device[o.device] = by_device.get(o.device, 0) + 1
        by_type = dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
        unexplained = end_to_end_ms - explained
        return cls(
            runtime=runtime,
            runs=runs,
            end_to_end_ms=end_to_end_ms,
            ops=ops,
            explained_ms=explained,
            unexplained_ms=unexplained,
            unexplained_share=unexplained / total,
            by_type=by_type,
            by_device=dict(sorted(by_device.items())),
            notes=list(notes),
        )


@dataclass
class RemoteInfo:
    """Where a remote measurement ran: the tracker, the device key and the server it handed out."""

    tracker: str
    key: str
    server: str
    number: int  # calls averaged per sample (1: every sample is one inference)
    repeat: int  # samples
    output_shapes: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RemoteProfile:
    """What ``Target.profile_remote`` measured on a device."""

    phases: Phases  # load, first inference, warm-up, warm statistics
    settings: dict  # runtime settings in effect on the device
    machine: MachineInfo
    remote: RemoteInfo
    notes: list[str] = field(default_factory=list)
    ops: OpProfile | None = None  # None: per-op times need a local runner


class Runner(ABC):
    """A loaded artifact.  ``run`` takes and returns numpy arrays in manifest order."""

    @abstractmethod
    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def settings(self) -> dict:
        """Runtime settings in effect (threads, EP, hints), recorded in every profile report."""
        return {}


class Target(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    extra: ClassVar[str]  # pip extra that installs the runtime: pip install 'edgeformer[<extra>]'
    distributions: ClassVar[tuple[str, ...]]  # runtime distributions whose versions are recorded
    main_file: ClassVar[str]  # e.g. "model.onnx"
    # The SDK modules a runner needs, imported by ``import_sdk`` (before any timer starts).
    sdk_modules: ClassVar[tuple[str, ...]] = ()
    # The passes this target's artifacts are rewritten with, and their options (a profile and the
    # CLI edit it).  Targets that need more than the exact pipeline override it.
    pipeline: ClassVar[Pipeline] = Pipeline(PIPELINES["exact"])
    # Compute precisions ``compile`` produces (the profile's ``options.precision``).
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # The precisions among them that need calibration data (``compile(..., calibration=...)``).
    calibrated_precisions: ClassVar[tuple[str, ...]] = ()
    # precision -> one line saying why this target refuses it (e.g. TVM and int8), shown instead of
    # the generic "does not produce" message.
    refusals: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ availability / versions
    @classmethod
    def is_available(cls) -> str | None:
        """None when the runtime can be used here, else the reason (and the fix)."""
        missing = [d for d in cls.distributions if dist_version(d) is None]
        if missing:
            return f"{', '.join(missing)} not installed: pip install 'edgeformer[{cls.extra}]'"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {d: v for d in cls.distributions if (v := dist_version(d))}

    def import_sdk(self) -> None:
        """Import the runtime's Python modules now, so no later measurement pays for the import."""
        for module in self.sdk_modules:
            importlib.import_module(module)

    def can_run_here(self, profile: DeviceProfile) -> str | None:
        """None when compiled artifacts can execute on this machine, else why not."""
        return None

    def can_verify_here(self, profile: DeviceProfile) -> str | None:
        """None when this machine's runtime can load the profile's artifact to check its numbers, else
        why not.  Wider than ``can_run_here`` for a portable file built ahead of time for a device
        (``options.aot_only``): its numbers can be checked here though its latency means nothing;
        such a target overrides this, and its ``load`` must accept what this accepts."""
        return self.can_run_here(profile)

    # --------------------------------------------------------------------------- compilation
    def default_pipeline(self, profile: DeviceProfile) -> Pipeline:
        """The pipeline artifacts for ``profile`` start from, before the profile's own edits."""
        return self.pipeline

    def cache_options(self, profile: DeviceProfile) -> dict:
        """Everything besides the IR and versions that changes the compiled files."""
        return profile.options.to_dict()

    def runtime_default_precisions(self, profile: DeviceProfile) -> tuple[str, ...]:
        """Float precisions other than fp32 that this runtime picks by itself on the profile's device
        when a user sets none (OpenVINO: bf16 on CPUs with BF16).  An approximate artifact's speed is
        also reported against those, since they are what the runtime's plain user gets.  () here."""
        return ()

    # Whether the target takes a recurrence exported as one ``torch.scan`` (ONNX ``Scan``) rather
    # than unrolled per token (a spiking model's LIF neurons: edgeformer.models.lmuformer.lif_loops).
    exports_loops: bool = False

    def cannot_stream(self, profile: DeviceProfile) -> str | None:
        """Why this target cannot compile a streaming step for ``profile`` (None: it can).  The
        step is exact fp32: a lower precision would drift the carried state frame after frame."""
        if profile.options.precision != "fp32":
            return (
                f"streaming steps compile at fp32, the profile asks for {profile.options.precision} "
                "(rounding would accumulate in the carried state)"
            )
        return None

    def needs_calibration(self, profile: DeviceProfile) -> bool:
        """True when compiling ``profile`` needs calibration data (an int8 artifact, W8A8 Core ML)."""
        return profile.options.precision in self.calibrated_precisions

    @abstractmethod
    def compile(
        self, graph: Graph, profile: DeviceProfile, out_dir: Path, calibration: Calibration | None = None
    ) -> CompileResult:
        """Write runtime files into ``out_dir`` (a fresh temp folder) from the rewritten IR.

        ``calibration`` is given exactly when :meth:`needs_calibration` is true for the profile."""

    # ------------------------------------------------------------------------------ execution
    @abstractmethod
    def load(self, artifact: Artifact) -> Runner:
        """A runner for the compiled artifact (``artifact.path`` holds the runtime files)."""

    def profile_ops(self, artifact: Artifact, inputs: Sequence[np.ndarray], runs: int) -> OpProfile:
        """Per-op times from the runtime's own profiler over ``runs`` runs of ``inputs``."""
        raise NotImplementedError(f"{self.name} has no per-op profiler")

    def profile_remote(
        self,
        artifact: Artifact,
        *,
        tracker: str,
        key: str,
        inputs: Sequence[np.ndarray],
        min_runs: int = 50,
        min_seconds: float = 1.0,
        warmup: int = 1,
    ) -> RemoteProfile:
        """Time the artifact on a device registered under ``key`` with the TVM RPC ``tracker``."""
        raise UserError(
            f"remote profiling is not available for {self.name} artifacts",
            "compile with a TVM profile (e.g. --profile rpi4-tvm) to profile over RPC",
        )
