"""Device profiles: typed schema, errors name the file and key, user files, shipped profiles."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeformer.device_profiles import json_schema, load_profile, profile_names
from edgeformer.errors import UnknownNameError, UserError


def _write(tmp_path, text, name="dev.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_host_ort_is_shipped_and_is_the_default():
    assert "host-ort" in profile_names()
    p = load_profile(None)
    assert p.name == "host-ort" and p.target == "onnxruntime"
    assert p.numerics.atol == pytest.approx(1e-4)


def test_every_shipped_profile_validates_against_the_json_schema():
    from importlib import resources

    import tomllib

    schema = json_schema()
    for name in profile_names():
        data = tomllib.loads(resources.files("edgeformer.profiles").joinpath(f"{name}.toml").read_text())
        jsonschema.validate(data, schema)
        assert load_profile(name).name == name


def test_user_profile_file_loads_by_path(tmp_path):
    path = _write(tmp_path, 'name = "mine"\ntarget = "onnxruntime"\n[options]\nthreads = 1\n[budget]\nlatency_ms = 5\n')
    p = load_profile(str(path))
    assert p.name == "mine" and p.options.threads == 1 and p.budget.latency_ms == 5.0


def test_unknown_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, 'name = "x"\ntarget = "onnxruntime"\n[options]\nthread = 2\n')
    with pytest.raises(UserError) as err:
        load_profile(str(path))
    msg = str(err.value)
    assert str(path) in msg and "options.thread" in msg and "threads" in msg  # suggestion


def test_bad_value_names_file_key_and_choices(tmp_path):
    path = _write(tmp_path, 'name = "x"\ntarget = "onnxruntime"\n[options]\noptimization_level = "max"\n')
    with pytest.raises(UserError, match=r"options.optimization_level.*not one of disable, basic, extended, all"):
        load_profile(str(path))


def test_bad_type_and_negative_values_are_rejected(tmp_path):
    p1 = _write(tmp_path, 'name = "x"\ntarget = "onnxruntime"\n[options]\nthreads = "two"\n', "a.toml")
    with pytest.raises(UserError, match="options.threads' must be an integer"):
        load_profile(str(p1))
    p2 = _write(tmp_path, 'name = "x"\ntarget = "onnxruntime"\n[numerics]\natol = -1\n', "b.toml")
    with pytest.raises(UserError, match="numerics.atol"):
        load_profile(str(p2))


def test_unknown_target_suggests_the_closest(tmp_path):
    path = _write(tmp_path, 'name = "x"\ntarget = "onnxruntim"\n')
    with pytest.raises(UserError, match=r"key 'target'.*did you mean 'onnxruntime'"):
        load_profile(str(path))


def test_missing_required_key_and_invalid_toml(tmp_path):
    with pytest.raises(UserError, match="missing required key 'target'"):
        load_profile(str(_write(tmp_path, 'name = "x"\n', "a.toml")))
    with pytest.raises(UserError, match="not valid TOML"):
        load_profile(str(_write(tmp_path, "name = \n", "b.toml")))


def test_unknown_profile_name_suggests_shipped_names():
    with pytest.raises(UnknownNameError, match="did you mean 'host-ort'"):
        load_profile("host-or")


def test_missing_profile_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_profile(str(tmp_path / "nope.toml"))


def test_profile_schema_is_published_in_the_repo():
    from importlib import resources

    published = json.loads(resources.files("edgeformer").joinpath("schemas/device-profile.schema.json").read_text())
    assert published == json_schema(), "regenerate: python -m edgeformer.device_profiles > edgeformer/schemas/..."


def test_a_value_above_the_maximum_is_rejected_naming_file_key_and_bound(tmp_path):
    path = _write(tmp_path, 'name = "x"\ntarget = "onnxruntime"\n[numerics]\nmin_cosine = 1.5\n')
    with pytest.raises(UserError, match=r"numerics.min_cosine' = 1.5 must be <= 1.0") as err:
        load_profile(str(path))
    assert str(path) in str(err.value)
    assert json_schema()["properties"]["numerics"]["properties"]["min_cosine"]["maximum"] == 1.0


def test_every_shipped_profile_has_a_scale_aware_tolerance():
    for name in profile_names():  # docs/measurement.md: rounding grows with the output's scale
        assert load_profile(name).numerics.scale_rtol > 0, name
    fp32 = ["host-ort", "host-openvino", "host-executorch", "host-tvm", "android-arm64-xnnpack", "rpi4-tvm"]
    for name in fp32:  # fp32 runtime vs PyTorch (onnxruntime op tests' rtol), scaled rounding term
        n = load_profile(name).numerics
        assert (n.atol, n.rtol, n.scale_rtol, n.min_cosine) == (1e-4, 1e-4, 1e-5, 0.9999), name
    for name in ["iphone12-coreml", "intel-npu"]:  # coremltools fp16 rule: 100 x the fp32 terms, floors
        n = load_profile(name).numerics
        assert (n.atol, n.rtol, n.scale_rtol) == (0.5, 0.05, 1e-3), name
