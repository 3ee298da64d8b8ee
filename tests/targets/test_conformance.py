"""Every target offers the same surface: a Pipeline of registered passes with valid options,
declared precisions, compile → load(artifact) → run matching PyTorch, per-op profiles in the common
format where the runtime runs here, profile_remote declared, and one error naming an op it cannot
convert and where it came from."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer.artifact import Artifact
from edgeformer.device_profiles import TargetOptions, load_profile
from edgeformer.errors import UnsupportedOpError, UserError
from edgeformer.passes import Pipeline, get_pass
from edgeformer.targets import TARGETS, OpProfile, Target, get_target
from edgeformer.targets.base import RemoteProfile

# target -> a shipped profile that compiles for this machine's runtime (Core ML: converts here only)
PROFILES = {
    "onnxruntime": "host-ort",
    "openvino": "host-openvino",
    "tvm": "host-tvm",
    "coreml": "iphone12-coreml",
    "executorch": "host-executorch",
}
# An op each converter has no rule for (the exporter's decompositions differ per runtime).
UNSUPPORTED = {
    "onnxruntime": ("lgamma", torch.lgamma),
    "openvino": ("lgamma", torch.lgamma),
    "tvm": ("erfcx", torch.special.erfcx),
    "coreml": ("erfinv", torch.special.erfinv),
    "executorch": ("erfinv", torch.special.erfinv),
}


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class OddHead(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(torch.sigmoid(x))


class WithOddOp(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.odd = OddHead(fn)

    def forward(self, x):
        return self.odd(self.body(x))


def test_every_target_is_covered():
    assert set(PROFILES) == set(TARGETS) == set(UNSUPPORTED)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_declares_its_surface(name):
    target = get_target(name)
    assert isinstance(target, Target)
    for attr in ("name", "description", "extra", "distributions", "main_file"):
        assert getattr(target, attr), attr
    assert target.name == name
    assert isinstance(target.pipeline, Pipeline) and target.pipeline.names
    for pass_name in target.pipeline.names:
        get_pass(pass_name)  # registered
    for pass_name, options in target.pipeline.options.items():
        assert pass_name in target.pipeline.names
        get_pass(pass_name)(**options)  # options the pass accepts
    choices = dict((f.name, f) for f in TargetOptions.__dataclass_fields__.values())["precision"].metadata["choices"]
    assert "fp32" in target.precisions and set(target.precisions) <= set(choices)
    profile = load_profile(PROFILES[name])
    assert profile.target == name
    assert isinstance(target.default_pipeline(profile), Pipeline)
    # profile_remote is part of the interface, not found with getattr
    assert list(inspect.signature(target.profile_remote).parameters)[:1] == ["artifact"]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_compile_load_run_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    graph = ir.export(Small().eval(), (torch.randn(1, 3, 8, 8),), name="small")
    profile = load_profile(PROFILES[name])
    target = get_target(name)
    result = target.compile(graph, profile, tmp_path)
    assert result.files and all((tmp_path / f).exists() for f in result.files)
    assert (tmp_path / target.main_file).exists()
    inputs = [t.numpy() for t in graph.example_inputs]
    artifact = Artifact(tmp_path, None, profile)
    if target.can_run_here(profile):  # Core ML on Linux: structural checks only
        assert result.structural_checks and all(result.structural_checks.values()), result.structural_checks
        with pytest.raises(UserError):
            target.load(artifact)
        return
    runner = target.load(artifact)
    try:
        got = runner.run(inputs)
        assert isinstance(runner.settings(), dict) and runner.settings()
    finally:
        runner.close()
    reference = ir.run(graph, graph.example_inputs)[0].numpy()
    np.testing.assert_allclose(np.asarray(got[0]), reference, atol=1e-4)
    if name == "executorch":
        artifact = Artifact(tmp_path, type("M", (), {"target_details": result.details})(), profile)
    ops = target.profile_ops(artifact, inputs, 2)
    assert isinstance(ops, OpProfile) and ops.runtime == name and ops.runs == 2 and ops.ops
    times = [o.time_ms for o in ops.ops]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("name", sorted(set(TARGETS) - {"tvm"}))
def test_profile_remote_refuses_targets_without_rpc(name, tmp_path):
    profile = load_profile(PROFILES[name])
    with pytest.raises(UserError, match=f"remote profiling is not available for {name} artifacts"):
        get_target(name).profile_remote(Artifact(tmp_path, None, profile), tracker="127.0.0.1:9190", key="k", inputs=[])


def test_tvm_implements_profile_remote():
    assert type(get_target("tvm")).profile_remote is not Target.profile_remote
    assert "RemoteProfile" in str(inspect.signature(Target.profile_remote).return_annotation) or RemoteProfile


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_unsupported_op_names_the_op_and_its_module(name, tmp_path):
    op, fn = UNSUPPORTED[name]
    torch.manual_seed(0)
    graph = ir.export(WithOddOp(fn).eval(), (torch.randn(1, 8),), name="odd")
    profile = load_profile(PROFILES[name])
    with pytest.raises(UnsupportedOpError) as err:
        get_target(name).compile(graph, profile, tmp_path)
    msg = str(err.value)
    assert op in msg and "odd (OddHead)" in msg, msg
    assert "\n" not in msg and "\x1b" not in msg
