"""Core ML target: IR → model.mlpackage, structural validation on Linux, predict on macOS."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UnsupportedOpError, UserError
from edgeformer.manifest import file_entries
from edgeformer.targets import get_target
from edgeformer.targets.coreml import PACKAGE, structural_checks

MACOS = platform.system() == "Darwin"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.norm(self.stem(x).mean((2, 3))))


class ErfinvHead(nn.Module):
    def forward(self, x):
        return torch.special.erfinv(torch.tanh(x) * 0.5)


class WithErfinv(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = ErfinvHead()

    def forward(self, x):
        return self.head(self.body(x))


def _graph(model=None, shape=(1, 3, 16, 16)) -> ir.Graph:
    torch.manual_seed(0)
    return ir.export((model or Tiny()).eval(), (torch.randn(*shape),), name="tiny", input_names=["image"])


def _compile(graph, profile, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    return get_target(profile.target).compile(graph, profile, out)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    graph = _graph()
    profile = load_profile("iphone12-coreml")
    out = tmp_path_factory.mktemp("coreml")
    return graph, profile, out, _compile(graph, profile, out)


def _spec(out: Path):
    import coremltools as ct

    return ct.models.MLModel(str(out / PACKAGE), skip_model_load=True).get_spec()


def test_iphone12_profile_loads_with_ios16_all_units_fp16():
    p = load_profile("iphone12-coreml")
    assert (p.target, p.options.minimum_deployment_target, p.options.compute_units, p.options.precision) == (
        "coreml",
        "iOS16",
        "ALL",
        "fp16",
    )
    assert p.numerics.atol == 0.5 and p.numerics.rtol == 0.05  # docs/measurement.md fp16 / Neural Engine row


def test_compile_writes_an_mlprogram_package_and_lists_its_files(compiled):
    _, _, out, result = compiled
    assert (out / PACKAGE).is_dir()
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / PACKAGE).rglob("*") if p.is_file())
    assert result.files == on_disk
    assert f"{PACKAGE}/Data/com.apple.CoreML/model.mlmodel" in result.files
    assert _spec(out).WhichOneof("Type") == "mlProgram"


def test_structural_checks_pass_and_the_mil_histogram_is_recorded(compiled):
    _, _, _, result = compiled
    checks = result.structural_checks
    assert set(checks) >= {
        "spec_loads",
        "every_op_converted",
        "input_names_match",
        "input_shapes_match",
        "input_dtypes_match",
        "output_names_match",
        "output_shapes_match",
        "output_dtypes_match",
        "deployment_target_matches",
        "precision_matches",
    }
    assert all(checks.values()), checks
    d = result.details
    assert d["minimum_deployment_target"] == "iOS16" and d["specification_version"] == 7
    assert d["mil_op_histogram"]["conv"] == 1 and d["mil_op_histogram"]["linear"] == 1
    assert d["mil_ops"] == sum(n for t, n in d["mil_op_histogram"].items() if t != "const")
    assert d["compute_units"] == "ALL" and d["compute_precision"] == "fp16"


def test_io_keeps_graph_names_shapes_and_fp32_dtypes_under_fp16(compiled):
    graph, _, out, _ = compiled
    spec = _spec(out)
    assert [i.name for i in spec.description.input] == ["image"]
    assert [o.name for o in spec.description.output] == list(graph.output_names)
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 16, 16]
    assert list(spec.description.output[0].type.multiArrayType.shape) == [1, 5]


def test_structural_checks_catch_a_mismatched_interface(compiled):
    _, _, out, _ = compiled
    import coremltools as ct

    inputs = [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    outputs = [{"name": "logits", "shape": [1, 6], "dtype": "float32"}]
    checks, problems = structural_checks(
        _spec(out), inputs, outputs, precision="fp32", target=ct.target.iOS17, missing_ops=["aten.erfinv"]
    )
    assert checks["input_names_match"] and checks["input_shapes_match"]
    assert not checks["output_names_match"] and not checks["output_shapes_match"]
    assert not checks["deployment_target_matches"] and not checks["precision_matches"]
    assert not checks["every_op_converted"]
    assert "output_names_match" in problems


def test_same_graph_gives_identical_package_hashes(compiled, tmp_path):
    _, profile, out, result = compiled
    again = _compile(_graph(), profile, tmp_path)
    assert again.files == result.files
    first = [(e.path, e.sha256) for e in file_entries(out, result.files)]
    second = [(e.path, e.sha256) for e in file_entries(tmp_path, again.files)]
    assert first == second  # Manifest.json's random UUIDs are made deterministic


def test_fp32_precision_has_no_fp16_ops(tmp_path):
    profile = load_profile("iphone12-coreml")
    profile.options.precision = "fp32"
    profile.options.minimum_deployment_target = ""
    result = _compile(_graph(), profile, tmp_path)
    assert result.structural_checks["precision_matches"] and all(result.structural_checks.values())
    assert "cast" not in result.details["mil_op_histogram"]


def test_bad_options_fail_clearly(tmp_path):
    profile = load_profile("iphone12-coreml")
    profile.options.minimum_deployment_target = "iOS99"
    with pytest.raises(UserError, match="iOS16"):
        _compile(_graph(), profile, tmp_path / "a")
    profile = load_profile("iphone12-coreml")
    profile.options.precision = "int8"
    with pytest.raises(UserError, match="fp16"):
        _compile(_graph(), profile, tmp_path / "b")


def test_unsupported_op_names_the_op_and_its_module(tmp_path):
    with pytest.raises(UnsupportedOpError) as err:
        _compile(_graph(WithErfinv(), shape=(1, 8)), load_profile("iphone12-coreml"), tmp_path)
    assert "erfinv" in str(err.value) and "head (ErfinvHead)" in str(err.value)
    assert err.value.exit_code == 2
    assert not (tmp_path / PACKAGE).exists()


@pytest.mark.skipif(MACOS, reason="on macOS Core ML runs; covered by the predict test")
def test_linux_says_core_ml_execution_needs_macos(compiled):
    graph, profile, out, _ = compiled
    target = get_target("coreml")
    reason = target.can_run_here(profile)
    assert reason and "needs macOS" in reason
    with pytest.raises(UserError, match="macOS"):
        target.load(Artifact(out, None, profile))
    with pytest.raises(UserError, match="Core ML latency and per-op profiles need macOS"):
        target.profile_ops(Artifact(out, None, profile), [t.numpy() for t in graph.example_inputs], 2)


@pytest.mark.skipif(not MACOS, reason="Core ML prediction needs macOS (coremltools cannot predict on Linux)")
def test_macos_predicts_within_tolerance_and_profiles_ops(tmp_path):
    graph = _graph()
    profile = load_profile("iphone12-coreml")
    profile.options.precision = "fp32"
    profile.options.compute_units = "CPU_ONLY"
    _compile(graph, profile, tmp_path)
    target = get_target("coreml")
    assert target.can_run_here(profile) is None
    got = target.load(Artifact(tmp_path, None, profile)).run([t.numpy() for t in graph.example_inputs])
    ref = ir.run(graph, graph.example_inputs)[0].numpy()
    assert np.abs(got[0] - ref).max() <= 1e-4  # fp32 on CPU (coremltools compare_backend)
    prof = target.profile_ops(Artifact(tmp_path, None, profile), [t.numpy() for t in graph.example_inputs], 3)
    assert prof.ops and prof.by_device


@pytest.mark.parametrize("name", ["efficientformer_tiny", "poolformer_tiny", "lmuformer_tiny"])
def test_zoo_tiny_models_convert_and_pass_structural_checks(name, tmp_path):
    from edgeformer.sources import load_model

    graph = load_model(name).graph  # seeded zoo build, exported
    result = _compile(graph, load_profile("iphone12-coreml"), tmp_path)
    assert all(result.structural_checks.values()), result.structural_checks
    assert result.details["mil_ops"] > 0


def test_compile_through_the_compiler_records_checks_and_deterministic_package_hashes(tmp_path, monkeypatch):
    from edgeformer.compiler import compile as compile_model

    monkeypatch.setenv("EDGEFORMER_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = Tiny()  # one set of weights for both compiles
    first = compile_model(model, "iphone12-coreml", tmp_path / "a", input_shapes=[(1, 3, 16, 16)], use_cache=False)
    second = compile_model(model, "iphone12-coreml", tmp_path / "b", input_shapes=[(1, 3, 16, 16)], use_cache=False)
    m = first.manifest
    paths = [f.path for f in m.files]
    assert paths == sorted(paths) and all(p.startswith(f"{PACKAGE}/") for p in paths)
    assert f"{PACKAGE}/Data/com.apple.CoreML/weights/weight.bin" in paths
    # no ExecuTorch debug-handle map inside the package (coremltools writes one for torch.export input)
    assert not any(p.endswith("executorch_debug_handle_mapping.json") for p in paths), paths
    assert not list((tmp_path / "a").rglob("executorch_debug_handle_mapping.json"))
    assert [(f.path, f.sha256) for f in m.files] == [(f.path, f.sha256) for f in second.manifest.files]
    assert m.structural_checks and all(m.structural_checks.values())
    if MACOS:
        assert m.numerics.status == "passed"
    else:
        # Core ML cannot run off macOS: the rewritten IR is run in fp16 on the CPU instead
        assert m.numerics.status == "passed" and m.numerics.method == "emulated", m.numerics
        assert "needs macOS" in m.numerics.reason
