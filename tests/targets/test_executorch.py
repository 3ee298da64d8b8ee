"""ExecuTorch target: IR → model.pte with XNNPACK, placement counts, numerics, ETDump per-op."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UnsupportedOpError, UserError
from edgeformer.targets import get_target


class Tiny(nn.Module):
    """Conv/linear go to XNNPACK; cumsum has no XNNPACK kernel and falls back to portable."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)
        self.tail = Accumulate()

    def forward(self, x):
        return self.tail(self.head(self.stem(x).mean((2, 3))))


class Accumulate(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


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
    return ir.export((model or Tiny()).eval(), (torch.randn(*shape),), name="tiny")


def _compile(graph, profile, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    return get_target(profile.target).compile(graph, profile, out)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    graph = _graph()
    profile = load_profile("host-executorch")
    out = tmp_path_factory.mktemp("et")
    return graph, profile, out, _compile(graph, profile, out)


def _reference(graph):
    return [t.numpy() for t in ir.run(graph, graph.example_inputs)]


def test_profiles_load_with_their_options():
    host = load_profile("host-executorch")
    android = load_profile("android-arm64-xnnpack")
    assert (host.target, host.options.partitioner, host.options.aot_only) == ("executorch", "xnnpack", False)
    assert (android.target, android.options.partitioner, android.options.aot_only) == ("executorch", "xnnpack", True)


def test_compile_writes_a_pte_and_reports_placement(compiled):
    _, _, out, result = compiled
    assert result.files == ["model.pte"] and (out / "model.pte").stat().st_size > 0
    d = result.details
    assert d["delegate"] == "XnnpackBackend" and d["delegated_subgraphs"] >= 1
    assert d["delegated_op_types"].get("aten.convolution") == 1
    assert d["delegated_op_types"].get("aten.linear") == 1
    assert d["fallback_op_types"].get("aten.cumsum") == 1
    assert d["delegated_ops"] == sum(d["delegated_op_types"].values())
    assert d["fallback_ops"] == sum(d["fallback_op_types"].values())
    assert {"op": "aten.cumsum", "source": "tail"} in d["fallback_nodes"]
    assert "aten::cumsum.out" in d["portable_kernels"]


def test_outputs_match_pytorch_within_fp32_tolerance(compiled):
    graph, profile, out, _ = compiled
    target = get_target("executorch")
    assert target.can_run_here(profile) is None
    runner = target.load(Artifact(out, None, profile))
    got = runner.run([t.numpy() for t in graph.example_inputs])
    for a, b in zip(got, _reference(graph)):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4
    assert runner.settings()["delegate"] == "XnnpackBackend"


def test_same_graph_compiles_to_identical_pte(compiled, tmp_path):
    _, profile, out, _ = compiled
    _compile(_graph(), profile, tmp_path)
    assert (tmp_path / "model.pte").read_bytes() == (out / "model.pte").read_bytes()


def test_partitioner_none_runs_everything_on_portable_kernels(tmp_path):
    graph = _graph()
    profile = load_profile("host-executorch")
    profile.options.partitioner = "none"
    result = _compile(graph, profile, tmp_path)
    assert result.details["delegated_ops"] == 0 and result.details["delegate"] is None
    assert result.details["fallback_ops"] > 3
    got = (
        get_target("executorch").load(Artifact(tmp_path, None, profile)).run([t.numpy() for t in graph.example_inputs])
    )
    assert np.abs(got[0] - _reference(graph)[0]).max() <= 1e-4


def test_per_op_profile_from_etdump_in_the_common_format(compiled):
    graph, profile, out, result = compiled
    manifest = SimpleNamespace(target_details=result.details)
    prof = get_target("executorch").profile_ops(
        Artifact(out, manifest, profile), [t.numpy() for t in graph.example_inputs], 4
    )
    assert prof.runtime == "executorch" and prof.runs == 4
    times = [o.time_ms for o in prof.ops]
    assert times == sorted(times, reverse=True)
    assert prof.unexplained_ms == pytest.approx(prof.end_to_end_ms - prof.explained_ms)
    for o in prof.ops:
        assert o.share == pytest.approx(o.time_ms / prof.end_to_end_ms)
    assert set(prof.by_device) == {"XnnpackBackend", "portable"}
    assert len({o.name for o in prof.ops}) == len(prof.ops)  # unique even across delegates
    cumsum = [o for o in prof.ops if o.device == "portable" and o.type == "aten.cumsum"]
    assert len(cumsum) == 1 and cumsum[0].source == "tail"
    assert any(o.type.startswith("Convolution") for o in prof.ops if o.device == "XnnpackBackend")


def test_unsupported_op_names_the_op_and_its_module(tmp_path):
    with pytest.raises(UnsupportedOpError) as err:
        _compile(_graph(WithErfinv(), shape=(1, 8)), load_profile("host-executorch"), tmp_path)
    assert "aten.erfinv" in str(err.value) and "head (ErfinvHead)" in str(err.value)
    assert err.value.exit_code == 2
    assert not (tmp_path / "model.pte").exists()


def test_android_profile_compiles_but_says_it_needs_the_device(tmp_path):
    profile = load_profile("android-arm64-xnnpack")
    target = get_target("executorch")
    result = _compile(_graph(), profile, tmp_path)
    assert (tmp_path / "model.pte").is_file() and result.details["delegated_ops"] > 0
    reason = target.can_run_here(profile)
    assert reason and "arm64 Android" in reason
    with pytest.raises(UserError, match="arm64 Android"):
        target.load(Artifact(tmp_path, None, profile))


@pytest.mark.parametrize("name", ["efficientformer_tiny", "poolformer_tiny", "lmuformer_tiny"])
def test_zoo_tiny_models_match_pytorch(name, tmp_path):
    from edgeformer.sources import load_model

    graph = load_model(name).graph  # seeded zoo build, exported
    inputs = graph.example_inputs
    profile = load_profile("host-executorch")
    result = _compile(graph, profile, tmp_path)
    assert result.details["delegated_ops"] > 0
    got = get_target("executorch").load(Artifact(tmp_path, None, profile)).run([t.numpy() for t in inputs])
    for a, b in zip(got, _reference(graph)):
        assert np.abs(a - b).max() <= 1e-4, f"{name}: max abs error {np.abs(a - b).max():.3g}"


def test_compile_through_the_compiler_records_placement_and_passes_numerics(tmp_path, monkeypatch):
    from edgeformer.compiler import compile as compile_model

    monkeypatch.setenv("EDGEFORMER_CACHE_DIR", str(tmp_path / "cache"))
    report = compile_model(Tiny(), "host-executorch", tmp_path / "art", input_shapes=[(1, 3, 16, 16)])
    m = report.manifest
    assert m.target == "executorch" and m.numerics.status == "passed"
    assert [f.path for f in m.files] == ["model.pte"]
    assert m.target_details["delegated_ops"] > 0 and m.target_details["fallback_op_types"]["aten.cumsum"] == 1
