"""compile(): artifact folder, manifest, atomic writes, cache, determinism, numerics check."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from torch import nn

from edgeformer.compiler import compile
from edgeformer.device_profiles import load_profile
from edgeformer.errors import NumericsError, TargetUnavailableError, UserError
from edgeformer.manifest import read_manifest, schema
from edgeformer.passes import PassCheckError


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("." + folder.name))


def test_compile_writes_artifact_with_full_manifest(user_models):
    out = user_models / "art"
    report = compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 16, 16)])
    assert not report.cached
    data = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(data, schema("manifest"))
    assert data["model"]["name"] == "tiny" and data["model"]["source"] == "factory"
    assert data["target"] == "onnxruntime" and data["profile"]["name"] == "host-ort"
    assert {"onnxruntime", "torch", "onnx"} <= set(data["runtime_versions"])
    assert data["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert data["outputs"][0]["shape"] == [1, 4]
    assert [f["path"] for f in data["files"]] == ["model.onnx", "model.ort"]
    assert data["numerics"]["status"] == "passed"
    assert data["numerics"]["max_abs_error"] < 1e-4 and data["numerics"]["cosine"] > 0.9999
    assert data["compile_time_s"] > 0 and len(data["ir_hash"]) == 64
    assert isinstance(data["passes"], list)
    assert _siblings(out) == [], "temporary build folders left behind"
    read_manifest(out)  # every file hash verifies


def test_repeated_identical_compile_is_skipped_and_says_so(user_models):
    out = user_models / "art"
    first = compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 16, 16)])
    again = compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 16, 16)])
    assert again.cached and again.cache_source == "output"
    other = compile("mymodels:tiny", "host-ort", user_models / "elsewhere", input_shapes=[(1, 3, 16, 16)])
    assert other.cached and other.cache_source == "cache"
    assert other.manifest.cache_key == first.manifest.cache_key
    read_manifest(user_models / "elsewhere")


def test_cache_key_changes_when_edgeformers_code_changes(user_models, monkeypatch):
    """An edited pass or target option at the same version number must not return the old artifact."""
    from edgeformer import compiler as compiler_module

    a = compile("mymodels:tiny", "host-ort", user_models / "a", input_shapes=[(1, 3, 16, 16)])
    monkeypatch.setattr(compiler_module, "_code_digest", lambda: "another checkout")
    b = compile("mymodels:tiny", "host-ort", user_models / "b", input_shapes=[(1, 3, 16, 16)])
    assert not b.cached and a.manifest.cache_key != b.manifest.cache_key


def test_cache_key_changes_with_options(user_models):
    a = compile("mymodels:tiny", "host-ort", user_models / "a", input_shapes=[(1, 3, 16, 16)])
    prof = load_profile("host-ort")
    prof.options.optimization_level = "extended"
    b = compile("mymodels:tiny", prof, user_models / "b", input_shapes=[(1, 3, 16, 16)])
    assert not b.cached and a.manifest.cache_key != b.manifest.cache_key


def test_two_compiles_give_identical_manifest_hashes(user_models):
    a = compile("mymodels:tiny", "host-ort", user_models / "a", input_shapes=[(1, 3, 16, 16)], use_cache=False)
    b = compile("mymodels:tiny", "host-ort", user_models / "b", input_shapes=[(1, 3, 16, 16)], use_cache=False)
    assert not b.cached
    assert a.manifest.deterministic_dict() == b.manifest.deterministic_dict()


def test_numerics_failure_leaves_nothing_on_disk(user_models):
    prof = load_profile("host-ort")
    prof.numerics.min_cosine = 1.5  # impossible: forces the check to fail after compiling
    out = user_models / "art"
    with pytest.raises(NumericsError, match="disagree with PyTorch"):
        compile("mymodels:tiny", prof, out, input_shapes=[(1, 3, 16, 16)])
    assert not out.exists() and _siblings(out) == []


def test_recompile_replaces_an_existing_artifact_atomically(user_models):
    out = user_models / "art"
    compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 16, 16)])
    report = compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 8, 8)])
    assert report.manifest.inputs[0].shape == [1, 3, 8, 8]
    assert read_manifest(out).inputs[0].shape == [1, 3, 8, 8]
    assert _siblings(out) == []


def test_refuses_to_overwrite_a_folder_that_is_not_an_artifact(user_models):
    out = user_models / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an edgeformer artifact"):
        compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 16, 16)])
    assert (out / "thesis.txt").read_text() == "keep me"


def test_missing_runtime_names_the_extra_to_install(user_models, monkeypatch):
    import edgeformer.targets.base as base

    real = base.dist_version
    monkeypatch.setattr(base, "dist_version", lambda d: None if d == "onnxruntime" else real(d))
    with pytest.raises(TargetUnavailableError, match=r"pip install 'edgeformer\[onnxruntime\]'"):
        compile("mymodels:tiny", "host-ort", user_models / "art", input_shapes=[(1, 3, 16, 16)])
    assert not (user_models / "art").exists()


def test_pt2_export_compiles_like_the_model(user_models, tmp_path):
    from edgeformer.sources import load_model

    src = load_model("mymodels:tiny", input_shapes=[(1, 3, 16, 16)])
    pt2 = src.graph.save(tmp_path / "tiny.pt2")
    report = compile(str(pt2), "host-ort", user_models / "art")
    assert report.manifest.model.source == "pt2"
    assert report.manifest.ir_hash == src.graph.hash()


def test_model_with_two_inputs_compiles(user_models):
    report = compile("mymodels:two_inputs", "host-ort", user_models / "art", input_shapes=[(2, 6), (2, 5)])
    assert [i.name for i in report.manifest.inputs] == ["x", "y"]
    assert report.manifest.numerics.status == "passed"


def test_efficientformer_l1_compiles_within_tolerance(tmp_path):
    report = compile("efficientformer_l1", "host-ort", tmp_path / "l1")
    m = report.manifest
    assert m.numerics.status == "passed" and m.numerics.max_abs_error <= 1e-4
    assert m.inputs[0].shape == [1, 3, 224, 224] and m.outputs[0].shape == [1, 1000]
    assert (tmp_path / "l1" / "model.ort").stat().st_size > 1e6


# ------------------------------------------------------------ precisions a target does not produce


@pytest.mark.parametrize("target", ["onnxruntime", "executorch"])
def test_a_precision_the_target_does_not_produce_is_refused_in_one_line(user_models, capsys, target):
    from edgeformer.cli import main
    from edgeformer.targets import get_target

    prof = user_models / "bf16.toml"
    prof.write_text(f'name = "bf16-{target}"\ntarget = "{target}"\n[options]\nprecision = "bf16"\n')
    out = user_models / "art"
    code = main(["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "--profile", str(prof), "-o", str(out)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    produced = ", ".join(get_target(target).precisions)
    assert code == 2 and len(lines) == 1, lines
    assert f"profile bf16-{target} asks for precision bf16, which the {target} target does not produce" in lines[0]
    assert f"(it produces {produced})" in lines[0] and f"set [options] precision to one of {produced}" in lines[0]
    assert not out.exists() and _siblings(out) == []


def test_every_stage_entry_refuses_it_and_the_check_reads_the_targets_precisions(user_models, monkeypatch):
    from edgeformer.compiler import plan, resolve_target
    from edgeformer.targets.onnxruntime import OnnxRuntimeTarget

    prof = load_profile("host-ort")
    prof.options.precision = "bf16"
    with pytest.raises(UserError, match="does not produce"):
        plan("mymodels:tiny", prof, input_shapes=[(1, 3, 8, 8)])  # what rewrite and tune start from
    monkeypatch.setattr(OnnxRuntimeTarget, "precisions", ("fp32", "bf16"))  # a target that learned bf16
    assert resolve_target(prof)[1].name == "onnxruntime"


# ----------------------------------------------------------------- tolerances at the output's scale


class LayerScaleBoxes(nn.Module):
    """Box regression: a linear with a layer scale (fold_layer_scale folds it), outputs ~1e3."""

    def __init__(self, scale: float = 1e3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.empty(16).uniform_(0.3, 1.2, generator=g))
        self.head = nn.Linear(16, 8)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        return self.head(self.gamma * self.fc(x))


class LargeLogits(nn.Module):
    """Nothing to fold; outputs ~3e4, so fp32 runtimes differ from PyTorch by ulps of 2e-3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64, 8)
        with torch.no_grad():
            self.fc.weight.mul_(1e5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_outputs_of_order_1e3_compile_on_host_ort_without_blaming_a_pass(user_models):
    torch.manual_seed(0)
    report = compile(LayerScaleBoxes(), "host-ort", user_models / "art", input_shapes=[(4, 32)])
    m = report.manifest
    fold = next(r for r in m.passes if r.name == "fold_layer_scale")
    assert fold.matched == 1 and fold.max_abs_diff > 1e-5  # fp32 rounding at 1e3, beyond the 1e-5 alone
    assert m.numerics.status == "passed" and m.numerics.per_output[0]["scale"] > 100


def test_outputs_of_order_3e4_pass_the_final_check(user_models):
    torch.manual_seed(0)
    report = compile(LargeLogits(), "host-ort", user_models / "art", input_shapes=[(1, 3, 8, 8)])
    n = report.manifest.numerics
    assert n.status == "passed", n.reason
    assert n.max_abs_error > 1e-4 and n.per_output[0]["scale"] > 1e4  # beyond atol: the scale term took it
    assert (n.atol, n.rtol, n.scale_rtol) == (1e-4, 1e-4, 1e-5)


def test_a_wrong_fold_is_still_blamed_at_that_scale(user_models, monkeypatch):
    import edgeformer.passes.fold_layer_scale as fls

    real = fls.fold_into_producer
    monkeypatch.setattr(fls, "fold_into_producer", lambda ed, x, vec: real(ed, x, vec * (1 + 1e-3)))
    torch.manual_seed(0)
    with pytest.raises(PassCheckError, match="exact pass 'fold_layer_scale' moved fp32 outputs"):
        compile(LayerScaleBoxes(), "host-ort", user_models / "art", input_shapes=[(4, 32)])
    assert not (user_models / "art").exists()


# ------------------------------------------------------------------------ the artifact folder, keep


def test_recompiling_refuses_a_folder_that_holds_the_users_other_files(user_models):
    out = user_models / "art"
    compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 16, 16)])
    (out / "profile.json").write_text("{}")  # written by `edgeformer profile`: part of the artifact
    for name in ("notes.txt", "a.png", "b.png", "c.png"):
        (out / name).write_text("mine")
    with pytest.raises(UserError) as err:
        compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 8, 8)])
    msg = str(err.value)
    assert "\n" not in msg and "not listed in its manifest" in msg and "a.png, b.png, c.png and 1 more" in msg
    assert all((out / n).read_text() == "mine" for n in ("notes.txt", "a.png", "b.png", "c.png"))
    for name in ("notes.txt", "a.png", "b.png", "c.png"):
        (out / name).unlink()
    compile("mymodels:tiny", "host-ort", out, input_shapes=[(1, 3, 8, 8)])  # only its own files: replaced
    assert read_manifest(out).inputs[0].shape == [1, 3, 8, 8] and not (out / "profile.json").exists()


def test_keep_failed_moves_the_failed_build_there_and_says_where(user_models):
    prof = load_profile("host-ort")
    prof.numerics.atol = prof.numerics.rtol = prof.numerics.scale_rtol = 0.0  # bit-exact: ORT is not
    out, keep = user_models / "art", user_models / "failed"
    with pytest.raises(NumericsError, match="disagree with PyTorch") as err:
        compile("mymodels:tiny", prof, out, input_shapes=[(1, 3, 16, 16)], keep_failed=keep)
    assert f"kept in {keep}" in str(err.value) and "\n" not in str(err.value)
    m = read_manifest(keep)  # every file hash verifies
    assert m.numerics.status == "failed" and (keep / "model.onnx").is_file() and m.compile_time_s > 0
    assert not out.exists() and _siblings(out) == [] and _siblings(keep) == []
    again = compile("mymodels:tiny", "host-ort", keep, input_shapes=[(1, 3, 16, 16)])  # never served as good
    assert not again.cached and read_manifest(keep).numerics.status == "passed"


def test_elapsed_s_is_this_calls_time_on_every_return_path(user_models):
    first = compile("mymodels:tiny", "host-ort", user_models / "a", input_shapes=[(1, 3, 16, 16)])
    assert first.elapsed_s >= first.manifest.compile_time_s > 0
    same = compile("mymodels:tiny", "host-ort", user_models / "a", input_shapes=[(1, 3, 16, 16)])
    cached = compile("mymodels:tiny", "host-ort", user_models / "b", input_shapes=[(1, 3, 16, 16)])
    for report, source in ((same, "output"), (cached, "cache")):
        assert report.cached and report.cache_source == source
        assert report.elapsed_s >= report.stage_times_s["export"] > 0
        assert report.manifest.compile_time_s == first.manifest.compile_time_s  # the original compile's


def test_a_low_precision_numerics_failure_blames_the_precision_not_the_passes(user_models):
    """fp16 (or bf16) that misses its tolerance is that precision's rounding: the hint must not
    send the user to drop passes, which the PassManager has already cleared in fp32."""
    from edgeformer.compiler import _numerics_fix
    from edgeformer.manifest import NumericsReport

    profile = load_profile("host-ort-fp16")
    profile.numerics.atol, profile.numerics.rtol, profile.numerics.scale_rtol = 1e-9, 0.0, 0.0
    profile.numerics.min_cosine = 1.0
    with pytest.raises(NumericsError) as err:
        compile("mymodels:tiny", profile, user_models / "fp16", input_shapes=[(1, 3, 16, 16)], use_cache=False)
    assert "fp16's rounding or range" in err.value.fix and "--passes" not in err.value.fix, err.value.fix
    assert not (user_models / "fp16").exists()
    bf16 = _numerics_fix("bf16", NumericsReport("failed", method="runtime"))
    assert "bf16's rounding" in bf16 and "--passes" not in bf16 and 'precision = "fp32"' in bf16
    fp32 = _numerics_fix("fp32", NumericsReport("failed", method="runtime"))
    assert "--passes" in fp32
