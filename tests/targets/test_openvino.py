"""OpenVINO target: IR → model.xml/.bin, numerics, precision, per-op counters, AOT NPU, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UnsupportedOpError, UserError
from edgeformer.targets import base, get_target
from edgeformer.targets.openvino import check_precision


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x).mean((2, 3))
        return self.head(torch.nn.functional.gelu(self.norm(y)))


class LgammaHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.lgamma(torch.sigmoid(self.fc(x)) + 1)


class WithLgamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = LgammaHead()

    def forward(self, x):
        return self.head(self.body(x))


def _graph(model=None, shape=(1, 3, 16, 16)) -> ir.Graph:
    torch.manual_seed(0)
    model = (model or Tiny()).eval()
    return ir.export(model, (torch.randn(*shape),), name="tiny")


def _compile(graph, profile, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    return get_target(profile.target).compile(graph, profile, out)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    graph = _graph()
    profile = load_profile("host-openvino")
    out = tmp_path_factory.mktemp("ov")
    result = _compile(graph, profile, out)
    return graph, profile, out, result


def test_profiles_load_with_their_options():
    host = load_profile("host-openvino")
    npu = load_profile("intel-npu")
    assert (host.target, host.options.device, host.options.precision) == ("openvino", "CPU", "fp32")
    assert host.options.performance_hint == "latency"
    assert (npu.options.device, npu.options.aot_only, npu.options.precision) == ("NPU", True, "fp16")


def test_compile_writes_xml_and_bin_with_the_graph_io_names(compiled):
    import openvino as ov

    graph, _, out, result = compiled
    assert result.files == ["model.xml", "model.bin"]
    model = ov.Core().read_model(str(out / "model.xml"))
    assert [p.get_any_name() for p in model.inputs] == list(graph.input_names)
    assert [p.get_any_name() for p in model.outputs] == list(graph.output_names)
    assert [list(p.get_shape()) for p in model.inputs] == [[1, 3, 16, 16]]  # static, not [?,3,?,?]
    assert result.details["ov_op_histogram"]["Convolution"] == 1
    assert result.details["inference_precision"] == "f32"


def test_outputs_match_pytorch_within_fp32_tolerance(compiled):
    graph, profile, out, _ = compiled
    target = get_target("openvino")
    assert target.can_run_here(profile) is None
    runner = target.load(Artifact(out, None, profile))
    x = [t.numpy() for t in graph.example_inputs]
    got = runner.run(x)
    ref = [t.numpy() for t in ir.run(graph, graph.example_inputs)]
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4


def test_fp32_profile_pins_f32_even_on_bf16_capable_cpus(compiled):
    _, profile, out, _ = compiled
    runner = get_target("openvino").load(Artifact(out, None, profile))
    settings = runner.settings()
    assert settings["inference_precision"] == "f32"
    assert settings["performance_hint"] == "LATENCY"


def test_same_graph_compiles_to_identical_files(tmp_path):
    graph = _graph()
    profile = load_profile("host-openvino")
    _compile(graph, profile, tmp_path / "a")
    _compile(_graph(), profile, tmp_path / "b")  # same process: OpenVINO's name counter has moved on
    for name in ("model.xml", "model.bin"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name), name


def test_bf16_runs_where_the_cpu_supports_it_and_fails_clearly_where_not(tmp_path):
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    graph = _graph()
    profile = load_profile("host-openvino")
    profile.options.precision = "bf16"
    if "BF16" not in caps:
        with pytest.raises(UserError, match="OPTIMIZATION_CAPABILITIES"):
            _compile(graph, profile, tmp_path)
        return
    result = _compile(graph, profile, tmp_path)
    assert result.details["compiled_precision"] == "bf16"
    runner = get_target("openvino").load(Artifact(tmp_path, None, profile))
    assert runner.settings()["inference_precision"] == "bf16"
    got = runner.run([t.numpy() for t in graph.example_inputs])[0]
    ref = ir.run(graph, graph.example_inputs)[0].numpy()
    assert np.abs(got - ref).max() < 0.1  # bf16 keeps ~3 significant digits


def test_precision_the_device_lacks_fails_at_compile_naming_the_capabilities(tmp_path):
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    message = check_precision("CPU", "fp16", ["FP32", "INT8"], "Some CPU")
    assert "does not support fp16" in message and "FP32, INT8" in message
    assert check_precision("CPU", "fp32", ["FP32"]) is None
    assert check_precision("CPU", "int8", ["FP32", "INT8"]) is None  # int8 is NNCF-quantized now
    lacking = [p for p, cap in (("fp16", "FP16"), ("bf16", "BF16")) if cap not in caps]
    if lacking:  # a real compile on this CPU with a precision it lacks
        profile = load_profile("host-openvino")
        profile.options.precision = lacking[0]
        with pytest.raises(UserError, match=f"does not support {lacking[0]}"):
            _compile(_graph(), profile, tmp_path)
        assert not (tmp_path / "model.xml").exists()


def test_per_op_profile_uses_performance_counters_in_the_common_format(compiled):
    graph, profile, out, _ = compiled
    prof = get_target("openvino").profile_ops(
        Artifact(out, None, profile), [t.numpy() for t in graph.example_inputs], 5
    )
    assert prof.runtime == "openvino" and prof.runs == 5
    assert prof.ops, "no executed nodes reported"
    times = [o.time_ms for o in prof.ops]
    assert times == sorted(times, reverse=True)
    assert prof.unexplained_ms == pytest.approx(prof.end_to_end_ms - prof.explained_ms)
    assert prof.explained_ms == pytest.approx(sum(times))
    for o in prof.ops:
        assert o.share == pytest.approx(o.time_ms / prof.end_to_end_ms)
        assert o.device.startswith("CPU/")  # device/exec type, e.g. CPU/brgconv_avx512_f32
    assert "Convolution" in prof.by_type
    assert any(o.source and o.source.startswith(("stem", "norm", "head")) for o in prof.ops)


def test_unsupported_op_names_the_op_and_its_module(tmp_path):
    graph = _graph(WithLgamma(), shape=(1, 8))
    with pytest.raises(UnsupportedOpError) as err:
        _compile(graph, load_profile("host-openvino"), tmp_path)
    assert "aten.lgamma" in str(err.value) and "head (LgammaHead)" in str(err.value)
    assert err.value.exit_code == 2
    assert not (tmp_path / "model.xml").exists()


def test_npu_profile_compiles_ahead_of_time_and_says_it_needs_the_device(tmp_path):
    profile = load_profile("intel-npu")
    target = get_target("openvino")
    result = _compile(_graph(), profile, tmp_path)
    assert {"model.xml", "model.bin"} <= set(result.files)
    assert result.details["device"] == "NPU" and result.details["weights_fp16"] is True
    if "model.blob" in result.files:
        assert (tmp_path / "model.blob").stat().st_size > 0
    else:
        assert result.details["blob"].startswith("not produced")
    reason = target.can_run_here(profile)
    assert reason and "NPU" in reason and "ahead of time" in reason
    with pytest.raises(UserError, match="NPU"):
        target.load(Artifact(tmp_path, None, profile))


def test_missing_sdk_fails_compile_with_exit_code_2_and_writes_nothing(monkeypatch, tmp_path):
    from edgeformer.compiler import compile as compile_model
    from edgeformer.errors import TargetUnavailableError

    real = base.dist_version
    monkeypatch.setattr(base, "dist_version", lambda d: None if d == "openvino" else real(d))
    out = tmp_path / "art"
    with pytest.raises(TargetUnavailableError, match=r"pip install 'edgeformer\[openvino\]'") as err:
        compile_model(Tiny(), "host-openvino", out, input_shapes=[(1, 3, 16, 16)], use_cache=False)
    assert err.value.exit_code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["efficientformer_tiny", "poolformer_tiny", "lmuformer_tiny"])
def test_zoo_tiny_models_match_pytorch(name, tmp_path):
    from edgeformer.sources import load_model

    graph = load_model(name).graph  # seeded zoo build, exported
    inputs = graph.example_inputs
    profile = load_profile("host-openvino")
    _compile(graph, profile, tmp_path)
    got = get_target("openvino").load(Artifact(tmp_path, None, profile)).run([t.numpy() for t in inputs])
    ref = [t.numpy() for t in ir.run(graph, inputs)]
    for a, b in zip(got, ref):
        assert np.abs(a - b).max() <= 1e-4, f"{name}: max abs error {np.abs(a - b).max():.3g}"


def test_compile_through_the_compiler_checks_numerics_and_hashes_files(tmp_path, monkeypatch):
    from edgeformer.compiler import compile as compile_model

    monkeypatch.setenv("EDGEFORMER_CACHE_DIR", str(tmp_path / "cache"))
    report = compile_model(Tiny(), "host-openvino", tmp_path / "art", input_shapes=[(1, 3, 16, 16)])
    m = report.manifest
    assert m.target == "openvino" and m.numerics.status == "passed"
    assert m.numerics.max_abs_error <= 1e-4
    assert [f.path for f in m.files] == ["model.bin", "model.xml"]
    assert m.target_details["inference_precision"] == "f32"
    assert m.runtime_versions["openvino"]


def _cumulative_snapshots(per_run_us: dict[str, list[float]]) -> list[dict]:
    """What the CPU plugin reports after each run: per node the mean since the model was compiled,
    in whole microseconds (``get_profiling_info`` as (type, exec type, ms))."""
    runs = len(next(iter(per_run_us.values())))
    snaps = []
    for k in range(1, runs + 1):
        snaps.append(
            {name: ("Convolution", "jit_avx2_FP32", (sum(t[:k]) // k) / 1e3) for name, t in per_run_us.items()}
        )
    return snaps


def test_counters_give_each_node_s_median_per_run_time_so_one_outlier_does_not_dominate():
    from edgeformer.targets.openvino import per_run_medians

    # 3 warm-up runs (the first one cold), then 7 counted runs, one of them a 100x outlier
    conv = [5000, 300, 150, 100, 104, 96, 10_000, 101, 99, 103]
    add = [80, 12, 11, 10, 10, 10, 10, 1000, 10, 10]
    medians = per_run_medians(_cumulative_snapshots({"conv": conv, "add": add}), warmup=3)
    assert set(medians) == {"conv", "add"}
    node_type, exec_type, conv_ms = medians["conv"]
    assert (node_type, exec_type) == ("Convolution", "jit_avx2_FP32")
    # the plugin's whole-µs means make each reconstructed run uncertain by up to the run count (10 µs)
    assert abs(conv_ms * 1e3 - 101) <= 10 and abs(medians["add"][2] * 1e3 - 10) <= 10


def test_per_op_profile_reads_the_counters_after_every_run_and_warms_up(compiled, monkeypatch):
    from edgeformer.targets import openvino

    graph, profile, out, _ = compiled
    reads = []
    real = openvino._counters
    monkeypatch.setattr(openvino, "_counters", lambda request: reads.append(1) or real(request))
    inputs = [t.numpy() for t in graph.example_inputs]
    prof = get_target("openvino").profile_ops(Artifact(out, None, profile), inputs, 4)
    assert prof.runs == 4 and len(reads) >= 4 + 3  # every counted run and at least 3 warm-up runs
    assert any("median" in note for note in prof.notes)
