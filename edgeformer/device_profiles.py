"""Device profiles: one TOML file per device, validated against a typed schema.

A profile names the target and its options, the numerics tolerance, optional remote (TVM RPC
tracker) settings, an optional latency budget, and edits to the target's default pass pipeline.
Unknown keys and bad values are reported with the file and the key.  ``--profile`` takes a
shipped profile's name or a path to the user's own TOML file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import tomllib

from edgeformer.errors import UnknownNameError, UserError
from edgeformer.target_names import TARGETS

DEFAULT_PROFILE = "host-ort"


def _opt(default, doc: str, choices: tuple | None = None, minimum: float | None = None, maximum: float | None = None):
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TargetOptions:
    """Options a target may read; each target documents which ones it uses."""

    threads: int = _opt(0, "intra-op threads (0 = the runtime's default)", minimum=0)
    optimization_level: str = _opt("all", "graph optimization level", ("disable", "basic", "extended", "all"))
    precision: str = _opt("fp32", "compute precision", ("fp32", "fp16", "bf16", "int8"))
    device: str = _opt("CPU", "runtime device (OpenVINO: CPU, GPU, NPU)")
    performance_hint: str = _opt("latency", "OpenVINO performance hint", ("latency", "throughput"))
    execution_mode: str = _opt("sequential", "ORT execution mode", ("sequential", "parallel"))
    compute_units: str = _opt("ALL", "Core ML compute units", ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"))
    minimum_deployment_target: str = _opt("", "Core ML minimum deployment target, e.g. iOS16")
    tvm_target: dict = _opt({}, "TVM target as a JSON dict, e.g. {kind='llvm', mcpu='...'}")
    tvm_host: dict = _opt({}, "TVM host target for cross-compilation (JSON dict)")
    cross_compiler: str = _opt("", "C compiler used to link the library, e.g. aarch64-linux-gnu-gcc")
    tuning_trials: int = _opt(0, "MetaSchedule trials used by `edgeformer tune` (0 = the default)", minimum=0)
    partitioner: str = _opt("xnnpack", "ExecuTorch delegate", ("xnnpack", "none"))
    aot_only: bool = _opt(False, "compile ahead of time only; running needs the device itself")
    compression: str = _opt(
        "none",
        "Core ML weight compression: w8 (int8 weights), palettize4/palettize6 (4/6-bit lookup tables), "
        "w8a8 (int8 weights and activations, for A17 Pro/M4-class Neural Engines)",
        ("none", "w8", "palettize4", "palettize6", "w8a8"),
    )
    quantization_mode: str = _opt(
        "auto",
        "int8 activations: static (calibrated ranges), dynamic (ranges computed per call, linear/matmul "
        "only), auto (the target picks by measurement: dynamic for linear-heavy sequence models)",
        ("auto", "static", "dynamic"),
    )
    calibration_method: str = _opt(
        "minmax", "how int8 ranges are taken from the calibration set", ("minmax", "percentile", "entropy")
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Numerics:
    """Per output: pass when |out − ref| ≤ atol + rtol·|ref| + scale_rtol·max|ref| element by element,
    cosine ≥ min_cosine and no NaN/inf (docs/measurement.md gives each shipped profile's values)."""

    atol: float = _opt(1e-4, "max abs error allowed against PyTorch", minimum=0.0)
    rtol: float = _opt(0.0, "relative tolerance: rtol·|ref| is added to atol, element by element", minimum=0.0)
    scale_rtol: float = _opt(
        1e-5,
        "tolerance relative to the output's scale: scale_rtol·max|ref| is added to every element's bound "
        "(rounding grows with the magnitude of the values an element is computed from)",
        minimum=0.0,
    )
    min_cosine: float = _opt(0.999, "minimum cosine similarity against PyTorch", minimum=-1.0, maximum=1.0)


@dataclass
class Approximation:
    """The approximation contract's gates (docs/measurement.md): what an approximate artifact (a lower
    precision, an approximating pass) must show against the exact fp32 one before it ships."""

    max_accuracy_drop: float = _opt(
        1.0, "top-1 points the approximation may lose against the exact model on --eval data", minimum=0.0
    )
    max_error: float = _opt(
        0.01, "without labels: the largest 1 − cosine allowed between approximate and exact outputs", minimum=0.0
    )
    min_speedup: float = _opt(
        1.1, "exact median / approximate median needed to ship the approximation (host profiles)", minimum=0.0
    )
    calibration_size: int = _opt(128, "calibration samples used (taken in a seeded order)", minimum=1)
    max_float_layers: int = _opt(
        8, "layers the accuracy restore may return to float, one at a time, before it gives up", minimum=0
    )


@dataclass
class Remote:
    tracker: str = _opt("", "TVM RPC tracker as host:port")
    key: str = _opt("", "device key registered with the tracker")
    timeout_s: float = _opt(60.0, "seconds to wait for a free device", minimum=0.0)


@dataclass
class Budget:
    latency_ms: float = _opt(0.0, "target median latency in ms (0 = none)", minimum=0.0)


@dataclass
class PipelineEdits:
    add: list = _opt([], "pass names appended to the target's default pipeline")
    drop: list = _opt([], "pass names removed from the target's default pipeline")
    options: dict = _opt({}, "per-pass options, a table per pass: [pipeline.options.kv_downsample] stride = 4")


@dataclass
class DeviceProfile:
    name: str
    target: str
    description: str = ""
    options: TargetOptions = field(default_factory=TargetOptions)
    numerics: Numerics = field(default_factory=Numerics)
    remote: Remote | None = None
    budget: Budget = field(default_factory=Budget)
    approximation: Approximation = field(default_factory=Approximation)
    pipeline: PipelineEdits = field(default_factory=PipelineEdits)
    path: str = ""  # where it was loaded from

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


_SECTIONS = {
    "options": TargetOptions,
    "numerics": Numerics,
    "remote": Remote,
    "budget": Budget,
    "approximation": Approximation,
    "pipeline": PipelineEdits,
}
_TOP = {"name": str, "target": str, "description": str}


def _check_value(where: str, key: str, value: Any, typ, meta) -> Any:
    expect = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a table",
        list: "a list",
    }[typ]
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: key '{key}' must be {expect}, got {value!r}", "fix the profile file")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(
            f"{where}: key '{key}' = {value!r} is not one of {', '.join(map(str, choices))}", "fix the profile file"
        )
    minimum = meta.get("minimum")
    if minimum is not None and value < minimum:
        raise UserError(f"{where}: key '{key}' = {value!r} must be >= {minimum}", "fix the profile file")
    maximum = meta.get("maximum")
    if maximum is not None and value > maximum:
        raise UserError(f"{where}: key '{key}' = {value!r} must be <= {maximum}", "fix the profile file")
    if typ is list and not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: key '{key}' must be a list of strings", "fix the profile file")
    return value


def _section(cls, table: dict, where: str, prefix: str):
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            close = UnknownNameError("key", key, fields).fix
            raise UserError(f"{where}: unknown key '{prefix}{key}'", close)
        typ = hints[key]
        kwargs[key] = _check_value(where, prefix + key, value, typ, fields[key].metadata)
    return cls(**kwargs)


def parse_profile(data: dict, where: str) -> DeviceProfile:
    """Validate a parsed TOML table (``where`` names the file in every message)."""
    for key in data:
        if key not in _TOP and key not in _SECTIONS:
            fix = UnknownNameError("key", key, [*_TOP, *_SECTIONS]).fix
            raise UserError(f"{where}: unknown key '{key}'", fix)
    for key in ("name", "target"):
        if key not in data:
            raise UserError(f"{where}: missing required key '{key}'", "add it to the profile file")
    kwargs: dict[str, Any] = {}
    for key, typ in _TOP.items():
        if key in data:
            kwargs[key] = _check_value(where, key, data[key], typ, {})
    if kwargs["target"] not in TARGETS:
        err = UnknownNameError("target", kwargs["target"], TARGETS)
        raise UserError(f"{where}: key 'target': {err.problem}", err.fix)
    for key, cls in _SECTIONS.items():
        if key in data:
            if not isinstance(data[key], dict):
                raise UserError(f"{where}: '{key}' must be a table ([{key}])", "fix the profile file")
            kwargs[key] = _section(cls, data[key], where, f"{key}.")
    return DeviceProfile(**kwargs)


def _shipped() -> dict[str, Any]:
    root = resources.files("edgeformer.profiles")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".toml")}


def profile_names() -> list[str]:
    return sorted(_shipped())


def load_profile(name_or_path: str | Path | None = None) -> DeviceProfile:
    """A shipped profile by name, or a TOML file by path."""
    ref = str(name_or_path or DEFAULT_PROFILE)
    shipped = _shipped()
    if ref in shipped:
        text, where = shipped[ref].read_text(), f"profile {ref}"
    else:
        path = Path(ref)
        if not (path.suffix == ".toml" or path.exists() or "/" in ref):
            raise UnknownNameError("profile", ref, shipped)
        if not path.is_file():
            raise UserError(f"profile file {path} does not exist", "check the path, or use a shipped profile name")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read profile {path}: {err}", "check the file") from err
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{where} is not valid TOML: {err}", "fix the syntax") from err
    profile = parse_profile(data, where)
    profile.path = where
    return profile


# The [numerics] a precision gets when --precision changes a profile that has no shipped sibling
# "<profile>-<precision>" (docs/measurement.md gives the sources).  int8's is a sanity bound: an
# int8 artifact is judged by the approximation contract on the user's data, not by these.
PRECISION_NUMERICS = {
    "fp32": Numerics(atol=1e-4, rtol=1e-4, scale_rtol=1e-5, min_cosine=0.9999),
    "fp16": Numerics(atol=2.5e-3, rtol=1e-3, scale_rtol=1e-3, min_cosine=0.995),
    "bf16": Numerics(atol=1e-2, rtol=1.6e-2, scale_rtol=1e-2, min_cosine=0.99),
    "int8": Numerics(atol=1.0, rtol=0.1, scale_rtol=0.1, min_cosine=0.99),
}


def with_precision(profile: DeviceProfile, precision: str | None) -> DeviceProfile:
    """``profile`` computing in ``precision`` (``--precision``): the shipped sibling profile
    ``<name>-<precision>`` when there is one (host-ort → host-ort-int8), else the same profile with
    that precision and its [numerics] from :data:`PRECISION_NUMERICS`."""
    if precision is None or precision == profile.options.precision:
        return profile
    if precision not in PRECISION_NUMERICS:
        raise UserError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISION_NUMERICS)}")
    sibling = f"{profile.name}-{precision}"
    if precision == "fp32" and profile.name.endswith(f"-{profile.options.precision}"):
        sibling = profile.name[: -len(profile.options.precision) - 1]
    if sibling in _shipped() and not profile.path.endswith(".toml"):
        found = load_profile(sibling)
        if found.target == profile.target and found.options.precision == precision:
            return found
    options = dataclasses.replace(profile.options, precision=precision)
    if precision == "fp32":
        options = dataclasses.replace(options, compression="none")
    numerics = dataclasses.replace(PRECISION_NUMERICS[precision])
    return dataclasses.replace(
        profile, name=f"{profile.name}+{precision}", options=options, numerics=numerics, path=profile.path
    )


def exact_variant(profile: DeviceProfile) -> DeviceProfile:
    """The exact fp32 twin of an approximate profile: the approximation contract's reference artifact."""
    options = dataclasses.replace(profile.options, precision="fp32", compression="none")
    return dataclasses.replace(
        profile,
        name=f"{profile.name} (exact fp32)",
        options=options,
        numerics=dataclasses.replace(PRECISION_NUMERICS["fp32"]),
    )


def is_approximate(profile: DeviceProfile) -> bool:
    """True when the profile's artifact is not exact fp32 (a lower precision or weight compression)."""
    return profile.options.precision != "fp32" or profile.options.compression != "none"


def json_schema() -> dict:
    """JSON Schema of the profile file format (published as edgeformer/schemas/device-profile.schema.json)."""
    pytype = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}

    def section(cls) -> dict:
        hints = get_type_hints(cls)
        props = {}
        for f in dataclasses.fields(cls):
            p: dict[str, Any] = {"type": pytype[hints[f.name]], "description": f.metadata.get("doc", "")}
            if f.metadata.get("choices"):
                p["enum"] = list(f.metadata["choices"])
            if f.metadata.get("minimum") is not None:
                p["minimum"] = f.metadata["minimum"]
            if f.metadata.get("maximum") is not None:
                p["maximum"] = f.metadata["maximum"]
            if hints[f.name] is list:
                p["items"] = {"type": "string"}
            props[f.name] = p
        return {"type": "object", "additionalProperties": False, "properties": props}

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "edgeformer device profile",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "target"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "target": {"enum": sorted(TARGETS)},
            **{k: section(c) for k, c in _SECTIONS.items()},
        },
    }


if __name__ == "__main__":  # regenerate the published schema file
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
