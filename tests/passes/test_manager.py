"""PassManager, registry and pipelines: checks, records, dump-ir, explain, edits."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from _helper import run_pass, tiny_graph
from torch import nn

from edgeformer.errors import UnknownNameError, UserError
from edgeformer.passes import (
    PIPELINES,
    Pass,
    PassCheckError,
    PassManager,
    PassResult,
    _registry,
    describe_passes,
    get_pass,
    pass_names,
    register,
    resolve_pipeline,
)
from edgeformer.passes._graph import Editor, arg, is_op
from edgeformer.passes.base import EXACT_RTOL
from edgeformer.targets import TARGETS, get_target


class ShiftHeadBias(Pass):
    """A deliberately wrong 'exact' pass: adds ``shift`` to every linear bias."""

    name = "shift_head_bias"
    summary = "test only"
    exact = True

    @dataclass
    class Options:
        shift: float = 1e-3

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for n in [n for n in ed.graph.nodes if is_op(n, "aten.linear")]:
            ed.tensor_arg(n, "bias", ed.const(arg(n, "bias")) + self.options.shift, "bias")
            ed.match(n)
        return self.result(graph, ed)


class Approximate(ShiftHeadBias):
    name = "approximate_shift"
    exact = False


class Corrupt(Pass):
    name = "corrupt"
    summary = "test only"

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        ed.touched = True
        new = ed.finish()
        new.program.state_dict.pop(next(iter(new.program.state_dict)))
        return PassResult(new, True, {})


@pytest.fixture
def test_passes(monkeypatch):
    for cls in (ShiftHeadBias, Approximate, Corrupt):
        monkeypatch.setitem(_registry._PASSES, cls.name, cls)


class ConvBNHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        y = self.b(x)
        return self.head((torch.relu(self.bn_b(y)) + y).mean((-2, -1)))


def graph():
    return tiny_graph(ConvBNHead(), (1, 3, 5, 5))


def test_fails_naming_the_pass_when_an_exact_pass_moves_outputs(test_passes):
    with pytest.raises(PassCheckError, match="exact pass 'shift_head_bias' moved fp32 outputs by 0.001"):
        PassManager(["fold_batchnorm", "shift_head_bias"]).run(graph())


def test_fails_when_small_exact_drifts_accumulate_beyond_tolerance(test_passes, monkeypatch):
    class Second(ShiftHeadBias):
        name = "shift_again"

    monkeypatch.setitem(_registry._PASSES, Second.name, Second)
    opts = {"shift_head_bias": {"shift": 6e-6}, "shift_again": {"shift": 6e-6}}
    with pytest.raises(PassCheckError, match="'shift_again'.*accumulated"):
        PassManager(["shift_head_bias", "shift_again"], options=opts).run(graph())


def test_records_error_of_an_approximate_pass_without_failing(test_passes):
    _, records = PassManager(["approximate_shift"]).run(graph())
    assert records[0].max_abs_diff == pytest.approx(1e-3, rel=1e-3)


def test_does_not_run_the_numeric_check_when_check_is_off(test_passes):
    _, records = PassManager(["shift_head_bias"], check=False).run(graph())
    assert records[0].changed and records[0].max_abs_diff is None


def test_fails_naming_the_pass_when_it_leaves_an_invalid_program(test_passes):
    with pytest.raises(PassCheckError, match="pass 'corrupt' produced an invalid program"):
        PassManager(["corrupt"]).run(graph())


def test_records_matches_removals_folds_and_op_delta_per_pass():
    _, records = PassManager(["fold_batchnorm", "fold_constants"]).run(graph())
    bn, const = records
    assert (bn.matched, bn.nodes_removed, bn.params_folded) == (1, 1, 2)
    assert bn.op_delta == {"aten.batch_norm": -1} and bn.max_abs_diff < 1e-5 and bn.time_s >= 0
    assert const.changed and const.details["removed_dead"] > 0  # BN parameters left behind
    json.dumps([r.to_dict() for r in records])  # manifest-ready


def test_explain_reports_matches_and_near_miss_reasons():
    _, rec = run_pass(graph(), "fold_batchnorm")
    lines = rec.details["explain"]
    assert lines[0] == "matched conv2d + batch_norm (a/bn_a): into the layer before"
    assert lines[1].startswith("rejected batch_norm_1 (bn_b): conv output has a second user;")


def test_explain_lines_are_dropped_unless_asked():
    _, records = PassManager(["fold_batchnorm"]).run(graph())
    assert "explain" not in records[0].details


def test_dump_dir_writes_the_ir_after_every_pass(tmp_path):
    names = ["fold_batchnorm", "fold_layer_scale", "fold_constants"]
    PassManager(names, dump_dir=tmp_path, explain=True).run(graph())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["00-input.txt", "01-fold_batchnorm.txt", "02-fold_layer_scale.txt", "03-fold_constants.txt"]
    first, after_bn = (tmp_path / files[0]).read_text(), (tmp_path / files[1]).read_text()
    assert "aten.batch_norm" in first and after_bn.count("aten.batch_norm") == first.count("aten.batch_norm") - 1
    assert "# op histogram" in after_bn and "# explain" in after_bn


def test_duplicate_registration_raises():
    class Again(Pass):
        name = "fold_batchnorm"

    with pytest.raises(ValueError, match="registered twice"):
        register(Again)


def test_unknown_option_is_a_user_error_with_suggestion():
    with pytest.raises(UnknownNameError, match="dw_conv"):
        PassManager(["fold_pool_mixer"], options={"fold_pool_mixer": {"dw_conf": True}})


def test_string_options_from_profiles_are_typed():
    pm = PassManager(["fold_pool_mixer"], options={"fold_pool_mixer": {"dw_conv": "true"}})
    assert pm.passes[0].options.dw_conv is True
    with pytest.raises(UserError, match="expects bool"):
        PassManager(["fold_pool_mixer"], options={"fold_pool_mixer": {"dw_conv": "maybe"}})


def test_resolve_pipeline_applies_profile_lists_then_cli_edits():
    base = list(PIPELINES["exact"])
    assert resolve_pipeline(base, edits="-fold_batchnorm,-fold_constants") == [
        n for n in base if n not in ("fold_batchnorm", "fold_constants")
    ]
    dropped = resolve_pipeline(base, drop=["fold_layer_scale"])
    assert resolve_pipeline(dropped, edits="+fold_layer_scale") == base  # back at its ordered slot
    assert resolve_pipeline([], add=["fold_constants"], edits="fold_batchnorm") == ["fold_batchnorm", "fold_constants"]
    with pytest.raises(UnknownNameError, match="fold_batchnorm"):
        resolve_pipeline(base, edits="+fold_batchnrom")


# the approximations of issue 13, in registration order
APPROXIMATING = ("kv_downsample", "binary_attention", "landmark_attention", "linear_attention", "token_merge")


def test_every_target_pipeline_holds_each_exact_pass_once():
    # decompose_unmasked_sdpa is ExecuTorch's alone: the others import SDPA into their own kernels.
    target_only = {"executorch": {"decompose_unmasked_sdpa"}}
    for name in TARGETS:
        pipeline = get_target(name).pipeline.names
        assert sorted(pipeline) == sorted(PIPELINES["exact"] + sorted(target_only.get(name, ())))
        assert len(set(pipeline)) == len(pipeline)
    approximating = {n for n in pass_names() if not get_pass(n).exact}
    # in no default pipeline: --passes +name
    assert approximating == set(APPROXIMATING)
    assert set(pass_names()) == set(PIPELINES["exact"]) | {"decompose_unmasked_sdpa"} | approximating
    assert PIPELINES["exact"].index("reparameterize_branches") < PIPELINES["exact"].index("fold_batchnorm")
    assert PIPELINES["exact"].index("fold_batchnorm") < PIPELINES["exact"].index("fold_layer_scale")


def test_target_options_are_limited_to_the_pipeline_and_accepted_by_the_manager():
    pipeline = get_target("onnxruntime").pipeline
    assert pipeline.options == {
        "fold_pool_mixer": {"branch_convs": True},
        "lower_group_norm": {"form": "instance_norm"},
    }
    edited = pipeline.edited(drop=["lower_group_norm", "fold_pool_mixer"])
    assert edited.options == {} and "lower_group_norm" not in edited.names
    assert pipeline.edited(edits="-fold_pool_mixer").options == {"lower_group_norm": {"form": "instance_norm"}}
    pm = pipeline.manager()
    assert next(p for p in pm.passes if p.name == "lower_group_norm").options.form == "instance_norm"
    assert next(p for p in pm.passes if p.name == "fold_pool_mixer").options.branch_convs is True
    assert get_target("openvino").pipeline.options == {"lower_group_norm": {"form": "layer_norm"}}


def test_describe_passes_lists_names_summaries_and_exactness():
    rows = describe_passes()
    assert [r[0] for r in rows] == pass_names() and len(rows) == 11 + len(APPROXIMATING)
    assert all(summary for _, summary, _ in rows)
    assert [name for name, _, exact in rows if not exact] == list(APPROXIMATING)


class LayerScaleHead(nn.Module):
    """A linear layer with a layer scale and outputs of order ``scale`` (box regression, ~1e3)."""

    def __init__(self, scale: float):
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.ones(16))
        self.head = nn.Linear(16, 8)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        return self.head(self.gamma * self.fc(x))


def large_graph(scale: float):
    torch.manual_seed(0)  # the linear layers' init
    return tiny_graph(LayerScaleHead(scale), (4, 32))


class PerturbHeadWeight(Pass):
    """A deliberately wrong 'exact' pass: multiplies every linear weight by (1 + ``rel``)."""

    name = "perturb_head_weight"
    summary = "test only"
    exact = True

    @dataclass
    class Options:
        rel: float = 1e-3

    def run(self, graph) -> PassResult:
        ed = Editor(graph)
        for n in [n for n in ed.graph.nodes if is_op(n, "aten.linear")]:
            ed.tensor_arg(n, "weight", ed.const(arg(n, "weight")) * (1 + self.options.rel), "weight")
            ed.match(n)
        return self.result(graph, ed)


class MakeNaN(ShiftHeadBias):
    name = "make_nan"

    @dataclass
    class Options:
        shift: float = float("nan")


@pytest.mark.parametrize("scale", [1e3, 3e4])
def test_an_exact_fold_is_not_blamed_for_fp32_rounding_at_large_output_scales(scale):
    graph = large_graph(scale)
    _, records = PassManager(["fold_layer_scale"]).run(graph)
    assert records[0].matched == 1
    # it moved the outputs by fp32 rounding (more than the 1e-5 absolute bound alone)...
    assert 1e-5 < records[0].max_abs_diff <= EXACT_RTOL * float(graph.run()[0].abs().max())


def test_a_wrong_pass_is_still_blamed_at_large_output_scales(monkeypatch):
    monkeypatch.setitem(_registry._PASSES, PerturbHeadWeight.name, PerturbHeadWeight)
    with pytest.raises(PassCheckError, match=r"exact pass 'perturb_head_weight' moved fp32 outputs by .*max\|ref\|"):
        PassManager(["fold_layer_scale", "perturb_head_weight"]).run(large_graph(1e3))


def test_a_pass_that_makes_nan_is_blamed(monkeypatch):
    monkeypatch.setitem(_registry._PASSES, MakeNaN.name, MakeNaN)
    with pytest.raises(PassCheckError, match="exact pass 'make_nan' moved fp32 outputs by inf"):
        PassManager(["make_nan"]).run(graph())
