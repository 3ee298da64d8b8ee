"""Checkpoint loading: safe reading, wrappers, layouts (official ↔ timm), strict matching."""

from __future__ import annotations

import os
import pickle
import shlex
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from edgeformer.checkpoints import (
    detect_layout,
    load_state_dict_file,
    load_weights,
    official_to_timm,
    timm_to_official,
)
from edgeformer.errors import UserError
from edgeformer.models import get_spec

torch.set_num_threads(1)

FAMILIES = {"efficientformer_tiny": "efficientformer", "poolformer_tiny": "poolformer"}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_spec(name).build()


def randomized(name: str, seed: int = 1) -> torch.nn.Module:
    """A model whose every tensor (incl. BN statistics and attention biases) is non-default."""
    model = build(name, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            t.copy_(noise.abs() + 0.5 if key.endswith("running_var") else noise * 0.2)
    return model.eval()


def output(model: torch.nn.Module, name: str) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(get_spec(name).example_inputs()[0])


def fresh_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["efficientformer_tiny", "efficientformer_v2_tiny", "poolformer_tiny"])
@pytest.mark.parametrize(
    "fmt", ["wrapped_pth", "bare_pth", "state_dict_key_pt", "ema_key_bin", "safetensors", "in_memory"]
)
def test_official_checkpoint_round_trip_gives_identical_outputs(tmp_path, name, fmt):
    src = randomized(name)
    sd = fresh_sd(src)
    if fmt == "wrapped_pth":
        path = tmp_path / "w.pth"
        torch.save({"model": sd, "epoch": 3}, path)
    elif fmt == "bare_pth":
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    elif fmt == "state_dict_key_pt":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": sd}, path)
    elif fmt == "ema_key_bin":
        path = tmp_path / "w.bin"
        torch.save({"model_ema": sd}, path)
    elif fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    else:
        path = sd
    dst = build(name, seed=99)
    assert not torch.equal(output(dst, name), output(src, name))
    info = load_weights(dst, path)
    assert info["layout"] == "official"
    assert info["num_tensors"] == len(sd)
    assert torch.equal(output(dst, name), output(src, name))


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_layout_round_trip_gives_identical_outputs(tmp_path, name, suffix):
    src = randomized(name)
    timm_sd = official_to_timm(fresh_sd(src), FAMILIES[name])
    assert detect_layout(timm_sd) == "timm"
    path = tmp_path / f"timm{suffix}"
    save_file(timm_sd, str(path)) if suffix == ".safetensors" else torch.save(timm_sd, path)
    dst = build(name, seed=99)
    info = load_weights(dst, path)
    assert info["layout"] == "timm"
    assert torch.equal(output(dst, name), output(src, name))


def test_efficientformer_official_keys_map_to_timm_names():
    sd = {
        k: torch.zeros(1)
        for k in (
            "patch_embed.0.weight",
            "patch_embed.1.running_mean",
            "patch_embed.3.bias",
            "patch_embed.4.weight",
            "network.0.2.layer_scale_1",
            "network.0.2.mlp.norm1.weight",
            "network.5.proj.weight",
            "network.5.norm.running_var",
            "network.6.4.token_mixer.qkv.weight",
            "network.6.4.layer_scale_2",
            "norm.weight",
            "head.bias",
            "dist_head.weight",
        )
    }
    timm = official_to_timm(sd, "efficientformer")
    assert set(timm) == {
        "stem.conv1.weight", "stem.norm1.running_mean", "stem.conv2.bias", "stem.norm2.weight",
        "stages.0.blocks.2.ls1.gamma", "stages.0.blocks.2.mlp.norm1.weight",
        "stages.3.downsample.conv.weight", "stages.3.downsample.norm.running_var",
        "stages.3.blocks.4.token_mixer.qkv.weight", "stages.3.blocks.4.ls2.gamma",
        "norm.weight", "head.bias", "head_dist.weight",
    }  # fmt: skip


def test_poolformer_official_keys_map_to_timm_names():
    sd = {
        k: torch.zeros(1)
        for k in (
            "patch_embed.proj.weight",
            "network.0.1.norm1.weight",
            "network.2.0.mlp.fc1.weight",
            "network.4.3.layer_scale_1",
            "network.1.proj.bias",
            "network.5.proj.weight",
            "norm.weight",
            "norm.bias",
            "head.weight",
            "head.bias",
        )
    }
    timm = official_to_timm(sd, "poolformer")
    assert set(timm) == {
        "stem.conv.weight", "stages.0.blocks.1.norm1.weight", "stages.1.blocks.0.mlp.fc1.weight",
        "stages.2.blocks.3.layer_scale1.scale", "stages.1.downsample.conv.bias",
        "stages.3.downsample.conv.weight",
        "head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias",
    }  # fmt: skip


@pytest.mark.parametrize("size", ["efficientformer_l1", "efficientformer_l7", "poolformer_s12"])
def test_timm_mapping_is_an_exact_inverse_on_full_models(size):
    family = "efficientformer" if size.startswith("efficientformer") else "poolformer"
    sd = build(size).state_dict()
    timm = official_to_timm(sd, family)
    assert len(timm) == len(sd)
    assert not any(k.startswith(("patch_embed", "network")) for k in timm)
    assert list(timm_to_official(timm, family)) == list(sd)


def test_timm_layout_is_refused_for_a_family_without_conversion():
    sd = {"stem.conv.weight": torch.zeros(1)}
    with pytest.raises(UserError, match="no timm layout conversion"):
        load_weights(build("efficientformer_v2_tiny"), sd)


def test_data_parallel_module_prefix_is_stripped():
    src = randomized("poolformer_tiny")
    sd = {f"module.{k}": v for k, v in fresh_sd(src).items()}
    dst = build("poolformer_tiny", seed=5)
    load_weights(dst, sd)
    assert torch.equal(output(dst, "poolformer_tiny"), output(src, "poolformer_tiny"))


# ----------------------------------------------------------------------------- stale bias


def test_loading_after_eval_gives_same_outputs_as_loading_before_eval():
    name = "efficientformer_tiny"
    src = randomized(name)
    sd = fresh_sd(src)
    before = build(name, seed=3)
    load_weights(before, sd)
    before.eval()
    after = build(name, seed=3).eval()
    output(after, name)  # run once in eval so any cache would be filled
    load_weights(after, sd)
    assert torch.equal(output(after, name), output(before, name))
    assert torch.equal(output(after, name), output(src, name))
    # the attention bias matters for these outputs, so a stale (zero) bias would show
    zeroed = {k: (torch.zeros_like(v) if k.endswith("attention_biases") else v) for k, v in sd.items()}
    load_weights(after, zeroed)
    assert not torch.allclose(output(after, name), output(src, name))


# ----------------------------------------------------------------------------------- safety


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_payload_used_below_really_executes_when_unpickled_unsafely(tmp_path):
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


@pytest.mark.parametrize("kind", ["torch_save_zip", "raw_pickle_protocol2", "raw_pickle_protocol4"])
def test_checkpoint_with_pickled_code_is_refused_and_not_executed(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = fresh_sd(build("poolformer_tiny"))
    if kind == "torch_save_zip":
        torch.save({"model": sd, "extra": _Payload(marker)}, path)
    else:
        # legacy raw pickle (no zip); tensors are left out so the payload is the first global
        protocol = int(kind[-1])
        path.write_bytes(pickle.dumps({"extra": _Payload(marker)}, protocol=protocol))
    with pytest.raises(UserError) as err:
        load_weights(build("poolformer_tiny"), path)
    msg = str(err.value)
    assert "refusing to load" in msg and "safetensors" in msg
    if kind != "raw_pickle_protocol4":  # torch cannot name the global behind protocol-4 framing
        assert "system" in msg
    assert "\n" not in msg
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(UserError, match="TorchScript"):
        load_state_dict_file(path)


def test_missing_file_gives_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_directory_gives_user_error(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        load_state_dict_file(tmp_path)


def test_unknown_extension_gives_user_error(tmp_path):
    path = tmp_path / "w.ckpt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="unknown checkpoint extension"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    "fname,content",
    [
        ("garbage.pth", b"this is not a checkpoint at all"),
        ("empty.pth", b""),
        ("truncated.pth", None),
        ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"),
        ("empty.safetensors", b""),
    ],
)
def test_corrupt_checkpoint_gives_one_line_user_error(tmp_path, fname, content):
    path = tmp_path / fname
    if content is None:
        whole = tmp_path / "whole.pth"
        torch.save(fresh_sd(build("poolformer_tiny")), whole)
        data = whole.read_bytes()
        assert zipfile.is_zipfile(whole)
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_non_tensor_entries_give_user_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"head.weight": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(UserError, match="not a flat state_dict: 1 entries are not tensors \\(epoch\\)"):
        load_state_dict_file(path)


# ----------------------------------------------------------------------------------- strict


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped_keys():
    model = build("efficientformer_tiny")
    sd = fresh_sd(model)
    del sd["head.weight"], sd["dist_head.bias"]
    sd["foo"] = torch.zeros(3)
    sd["norm.weight"] = torch.zeros(8)
    with pytest.raises(UserError) as err:
        load_weights(model, sd)
    msg = str(err.value)
    assert msg.startswith("checkpoint does not match efficientformer_tiny: ")
    assert "2 missing keys (head.weight, dist_head.bias)" in msg
    assert "1 unexpected (foo)" in msg
    assert "1 shape mismatch (norm.weight: ckpt (8,) vs model (64,))" in msg


def test_mismatch_error_lists_only_the_first_few_keys():
    with pytest.raises(UserError) as err:
        load_weights(build("poolformer_tiny"), {"a": torch.zeros(1)})
    msg = str(err.value)
    assert "62 missing keys (" in msg and ", …)" in msg and "1 unexpected (a)" in msg


def test_wrong_model_size_is_reported_not_loaded():
    small = fresh_sd(build("poolformer_tiny"))
    model = build("poolformer_tiny")
    model_wide = get_spec("poolformer_tiny").build(widths=(16, 32, 48, 96))
    with pytest.raises(UserError, match="shape mismatch"):
        load_weights(model_wide, small)
    load_weights(model, small)  # the matching one loads


def test_failed_load_leaves_model_unchanged():
    model = build("poolformer_tiny")
    before = fresh_sd(model)
    bad = {k: torch.ones_like(v) for k, v in before.items()}
    bad["extra"] = torch.zeros(1)
    with pytest.raises(UserError):
        load_weights(model, bad)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_derived_buffers_may_be_absent_from_checkpoint():
    name = "efficientformer_tiny"
    src = randomized(name)
    sd = {k: v for k, v in fresh_sd(src).items() if not k.endswith(("attention_bias_idxs", "num_batches_tracked"))}
    dst = build(name, seed=4)
    assert load_weights(dst, sd)["num_tensors"] == len(sd)
    assert torch.equal(output(dst, name), output(src, name))


def test_bias_indices_for_another_resolution_are_rejected():
    model = build("efficientformer_tiny")
    sd = fresh_sd(model)
    key = next(k for k in sd if k.endswith("attention_bias_idxs"))
    sd[key] = sd[key].flip(0)
    with pytest.raises(UserError, match="different attention resolution"):
        load_weights(model, sd)


def test_explicit_layout_overrides_detection():
    model = build("poolformer_tiny")
    timm_sd = official_to_timm(fresh_sd(model), "poolformer")
    with pytest.raises(UserError, match="used official, detected timm"):
        load_weights(model, timm_sd, layout="official")
    with pytest.raises(UserError, match="unknown checkpoint layout"):
        load_weights(model, timm_sd, layout="hf")
