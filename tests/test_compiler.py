"""compile(): artifact folder, manifest, atomic writes, cache, determinism, numerics check."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeformer.compiler import compile
from edgeformer.device_profiles import load_profile
from edgeformer.errors import NumericsError, TargetUnavailableError, UserError
from edgeformer.manifest import read_manifest, schema


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
