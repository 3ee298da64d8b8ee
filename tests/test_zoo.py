"""The zoo as a whole: every entry is listed with its figures; every family compiles on host-ort."""

from __future__ import annotations

import json

import pytest
import torch

from edgeformer.cli import main
from edgeformer.compiler import compile
from edgeformer.errors import UserError
from edgeformer.models import build_model, get_spec, list_models

TINY = sorted(s.name for s in list_models() if "tiny" in s.tags)
FAMILIES = {"efficientformer", "efficientformer_v2", "poolformer", "lmuformer", "pvt_v2", "ecoformer", "vit"}


def test_every_family_has_a_tiny_configuration():
    families = {get_spec(n).family for n in TINY}
    assert FAMILIES <= families | {f for f in families}, families
    for fam in FAMILIES:
        assert any(get_spec(n).family.startswith(fam) or fam in get_spec(n).family for n in TINY), fam


def test_every_model_is_listed_with_params_macs_shape_and_paper(capsys):
    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(listed) == {s.name for s in list_models()}
    for name, m in listed.items():
        assert m["params"] and m["params"] > 0, name
        assert m["macs"] and m["macs"] > 0, name
        assert m["input_shapes"] and all(d > 0 for s in m["input_shapes"] for d in s), name
        assert "arXiv" in m["paper"], name


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_compiles_on_host_ort_within_fp32_tolerance(name, tmp_path):
    report = compile(name, "host-ort", tmp_path / name)
    n = report.manifest.numerics
    assert n.status == "passed" and n.max_abs_error <= 1e-4 and not n.has_nan, (name, n)


def test_weights_flag_applies_a_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(123)
    trained = build_model("poolformer_tiny")
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, ckpt)
    assert main(["compile", "poolformer_tiny", "--weights", str(ckpt), "-o", str(tmp_path / "a"), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert manifest["model"]["weights"]["path"] == str(ckpt) and len(manifest["model"]["weights"]["sha256"]) == 64
    assert main(["compile", "poolformer_tiny", "-o", str(tmp_path / "b"), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["manifest"]
    assert manifest["ir_hash"] != plain["ir_hash"]  # the weights changed the program
    x = get_spec("poolformer_tiny").example_inputs()
    from edgeformer.runtime import load_artifact

    out = load_artifact(tmp_path / "a").runner().run([t.numpy() for t in x])[0]
    torch.testing.assert_close(torch.from_numpy(out), trained.eval()(*x), atol=1e-4, rtol=0)


def test_names_accept_case_and_dash_variants():
    for variant in ("efficientformer-l1", "EfficientFormer-L1", "EFFICIENTFORMER_L1", " efficientformer_l1 "):
        assert get_spec(variant).name == "efficientformer_l1"
    with pytest.raises(UserError, match="did you mean"):
        get_spec("efficientformer-l2")


def test_a_wrong_resolution_says_the_attention_bias_table_is_fixed():
    from edgeformer.sources import load_model

    with pytest.raises(UserError) as e:
        load_model("efficientformer_v2_tiny", input_shapes=[(1, 3, 48, 48)])
    msg = str(e.value)
    assert "attention-bias table" in msg and "1x3x32x32" in msg and "\n" not in msg, msg
    assert load_model("efficientformer_v2_tiny", input_shapes=[(2, 3, 32, 32)]).graph  # another batch is fine


def test_efficientformer_at_another_resolution_resamples_its_attention_biases_and_says_so():
    from edgeformer.models.efficientformer import relative_bias_index
    from edgeformer.sources import load_model

    src = load_model("efficientformer_tiny", input_shapes=[(1, 3, 48, 48)])  # stride 8: 4x4 -> 6x6 tokens
    assert src.info.resolution.startswith("attention-bias tables resampled bicubically from a 4x4 to a 6x6"), src.info
    attn = [m for m in src.module.modules() if hasattr(m, "set_resolution")]
    assert attn and all(m.attention_biases.shape == (m.num_heads, 36) for m in attn)
    assert all(torch.equal(m.attention_bias_idxs, relative_bias_index(6)) for m in attn)
    with torch.no_grad():  # a constant table stays constant
        attn[0].attention_biases.fill_(0.5)
    attn[0].set_resolution(3)
    assert torch.allclose(attn[0].attention_biases, torch.full((attn[0].num_heads, 9), 0.5))
    with pytest.raises(UserError, match="cannot run at 44x44: EfficientFormer needs a square input.*multiple of 8"):
        load_model("efficientformer_tiny", input_shapes=[(1, 3, 44, 44)])


@pytest.mark.parametrize(("name", "size"), [("pvt_v2_tiny", 64), ("ecoformer_pvt_v2_tiny", 64), ("vit_tiny", 40)])
def test_pyramid_and_plain_vits_compile_at_another_resolution(name, size, tmp_path):
    report = compile(name, "host-ort", tmp_path / name, input_shapes=[(1, 3, size, size)])
    assert report.manifest.numerics.status == "passed", report.manifest.numerics
    assert report.manifest.inputs[0].shape == [1, 3, size, size]
