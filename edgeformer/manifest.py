"""``manifest.json``: what an artifact folder holds and how it was made.

Typed dataclasses end to end (the model, the device profile, each pass's record, the I/O, files
and numerics); they become JSON only in :meth:`Manifest.to_dict`, validated against
``edgeformer/schemas/manifest.schema.json`` on write and on read.  Everything but ``created_at``
and ``compile_time_s`` is deterministic: compiling the same input twice gives the same file hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from edgeformer.device_profiles import DeviceProfile, parse_profile
from edgeformer.errors import UserError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def _without_none(d: dict, keys) -> dict:
    """``d`` less the optional ``keys`` whose value is None (they are absent from the JSON)."""
    return {k: v for k, v in d.items() if not (k in keys and v is None)}


@dataclass
class WeightsInfo:
    """The checkpoint a model's weights came from."""

    path: str
    sha256: str
    layout: str | None = None  # "official", "timm", ... (checkpoints.load_weights)
    num_tensors: int | None = None
    source: str | None = None  # the layout's origin, as load_weights reports it

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ModelInfo:
    """Where the compiled model came from."""

    name: str
    source: str  # "zoo" | "pt2" | "factory" | "module"
    family: str | None = None  # zoo models
    path: str | None = None  # .pt2 files
    ref: str | None = None  # package.module:factory
    weights: WeightsInfo | None = None  # None: the weights the model was built or exported with
    # "checkpoint" (--weights), "random" (a zoo model without --weights: seeded random init),
    # "module" (the user's nn.Module or factory: whatever weights it holds), "pt2" (as exported)
    weights_origin: str = "random"
    # how a zoo model was adapted to an --input-shape other than its default (e.g. a ViT's
    # position table resampled to the new patch grid); None at the default resolution
    resolution: str | None = None

    _OPTIONAL = ("family", "path", "ref", "resolution")

    def to_dict(self) -> dict:
        d = _without_none(dataclasses.asdict(self), self._OPTIONAL)
        d["weights"] = self.weights.to_dict() if self.weights else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        d = dict(d)
        w = d.pop("weights", None)
        return cls(**d, weights=WeightsInfo(**w) if w else None)


@dataclass
class PassRecord:
    """What the manifest records per pass."""

    name: str
    exact: bool
    changed: bool
    matched: int = 0
    nodes_removed: int = 0
    params_folded: int = 0
    time_s: float = 0.0
    max_abs_diff: float | None = None  # this pass alone, on the example inputs
    op_delta: dict[str, int] = field(default_factory=dict)  # e.g. {"aten.batch_norm": -12}
    details: dict = field(default_factory=dict)  # "explain": [...] when asked, pass extras

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class FileEntry:
    path: str  # relative to the artifact folder, '/'-separated
    sha256: str
    bytes: int


@dataclass
class NumericsReport:
    """The outputs against PyTorch: per output ``|out − ref| ≤ atol + rtol·|ref| + scale_rtol·max|ref|``
    element by element, cosine ≥ ``min_cosine``, no NaN/inf (docs/measurement.md)."""

    status: str  # "passed" | "failed" | "skipped"
    reference: str = "PyTorch (torch.export program before passes)"
    max_abs_error: float | None = None
    cosine: float | None = None
    atol: float | None = None
    min_cosine: float | None = None
    has_nan: bool = False
    per_output: list[dict] = field(default_factory=list)  # name, max_abs_error, scale (max|ref|), cosine, ...
    reason: str = ""  # why skipped, or what failed; how an emulated check was made
    rtol: float | None = None
    scale_rtol: float | None = None
    # What produced the compared outputs: "runtime" (the artifact, in its runtime on this machine),
    # "emulated" (the rewritten IR in the profile's precision, in PyTorch on this CPU), None (nothing ran).
    method: str | None = None


@dataclass
class ApproximationReport:
    """What the approximation contract decided (``edgeformer/accuracy.py``): the requested
    approximation, its accuracy block against the exact fp32 model on the same data, the accuracy
    and speed gates, the layers the accuracy restore kept in float, and which artifact shipped."""

    kind: str  # e.g. "precision int8", "precision fp16", "compression palettize4"
    requested_profile: str
    shipped: str  # "approximate" | "exact"
    reason: str  # one sentence: why this artifact shipped
    accuracy: dict  # accuracy.AccuracyBlock.to_dict() of the shipped approximation (or the rejected one)
    gates: list[dict]  # accuracy.Gate.to_dict() per gate evaluated, in order
    speed: dict  # accuracy.SpeedGate.to_dict()
    calibration: dict | None = None  # targets.Calibration.to_dict()
    kept_float: list[dict] = field(default_factory=list)  # {"layer", "source", "sensitivity"}, in restore order
    restore: list[dict] = field(default_factory=list)  # per restore step: {"kept_float", "gate_value", "passed"}
    sensitivity: list[dict] = field(default_factory=list)  # top layers {"layer", "source", "score"}, when ranked
    forced: bool = False  # --force-approx shipped it past a failed speed gate
    exact_numerics: dict | None = None  # NumericsReport of the exact artifact built beside it
    # attention approximations: per matched site, applied or declined and why, its share of
    # end-to-end time, predicted and measured speed-up, its own output error (edgeformer/sites.py)
    sites: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Manifest:
    model: ModelInfo
    ir_hash: str  # sha256 of the exported program before passes
    ir_hash_after_passes: str
    profile: DeviceProfile  # the validated profile the artifact was compiled for
    target: str
    runtime_versions: dict[str, str]
    passes: list[PassRecord]  # in pipeline order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: list[FileEntry]
    numerics: NumericsReport
    compile_time_s: float
    cache_key: str
    target_details: dict = field(default_factory=dict)
    structural_checks: dict[str, bool] = field(default_factory=dict)
    edgeformer_version: str = ""
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    # Set when anything approximate was requested (a lower precision, compression, an approximating
    # pass) and the approximation contract ran; None for exact compiles.
    approximation: ApproximationReport | None = None
    # Set by ``compile --streaming`` (edgeformer/streaming.py): the frame, flush, logits and paired
    # state tensors a host drives the step artifact with, the look-ahead delay, the frame period and
    # the streaming numerics check; None for a whole-window artifact.
    streaming: dict | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        d["profile"] = self.profile.to_dict()
        d["passes"] = [p.to_dict() for p in self.passes]
        for key in ("inputs", "outputs", "files"):
            d[key] = [dataclasses.asdict(x) for x in d[key]]
        d["numerics"] = dataclasses.asdict(self.numerics)
        d["approximation"] = self.approximation.to_dict() if self.approximation else None
        return d

    def deterministic_dict(self) -> dict:
        """Everything except timestamps and timings."""
        d = self.to_dict()
        for key in ("created_at", "compile_time_s"):
            d.pop(key)
        for p in d["passes"]:
            p.pop("time_s", None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        d = dict(d)
        d["model"] = ModelInfo.from_dict(d["model"])
        profile = {k: v for k, v in d["profile"].items() if v is not None}
        d["profile"] = parse_profile(profile, f"manifest profile {profile.get('name', '?')}")
        d["passes"] = [PassRecord(**p) for p in d["passes"]]
        d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
        d["files"] = [FileEntry(**f) for f in d["files"]]
        d["numerics"] = NumericsReport(**d["numerics"])
        approx = d.get("approximation")
        d["approximation"] = ApproximationReport(**approx) if approx else None
        return cls(**d)

    def write(self, folder: Path) -> Path:
        data = self.to_dict()
        validate(data, "manifest")
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path


def schema(name: str) -> dict:
    return json.loads(resources.files("edgeformer").joinpath(f"schemas/{name}.schema.json").read_text())


def validate(data: dict, name: str) -> None:
    import jsonschema

    jsonschema.validate(data, schema(name))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: Path, names: list[str]) -> list[FileEntry]:
    """sha256 and size of each file; directories (e.g. .mlpackage) expand to their files, sorted."""
    out = []
    for name in names:
        p = folder / name
        paths = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in paths:
            rel = q.relative_to(folder).as_posix()
            out.append(FileEntry(rel, sha256_file(q), q.stat().st_size))
    return sorted(out, key=lambda e: e.path)


def read_manifest(folder: str | Path, *, verify_files: bool = True) -> Manifest:
    """Read and validate an artifact's manifest; with ``verify_files`` check every sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"artifact folder {folder} does not exist", "create it with `edgeformer compile MODEL -o DIR`")
    if not path.is_file():
        raise UserError(
            f"{folder} has no {MANIFEST}: not an edgeformer artifact", "compile one with `edgeformer compile`"
        )
    try:
        data = json.loads(path.read_text())
        validate(data, "manifest")
        manifest = Manifest.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise UserError(f"{path} is corrupt ({type(err).__name__})", "re-run `edgeformer compile`") from err
    except Exception as err:  # jsonschema.ValidationError
        if type(err).__name__ == "ValidationError":
            raise UserError(
                f"{path} does not match the manifest schema: {err.message}", "re-run `edgeformer compile`"
            ) from err
        raise
    if verify_files:
        for entry in manifest.files:
            f = folder / entry.path
            if f.is_symlink() or not f.resolve().is_relative_to(folder.resolve()):
                raise UserError(f"artifact file {entry.path} points outside {folder}", "re-run `edgeformer compile`")
            if not f.is_file():
                raise UserError(f"artifact file {f} is missing", "re-run `edgeformer compile`")
            if sha256_file(f) != entry.sha256:
                raise UserError(
                    f"artifact file {f} is corrupt (sha256 does not match the manifest)", "re-run `edgeformer compile`"
                )
    return manifest
