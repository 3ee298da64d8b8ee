"""``edgeformer export`` and ``inspect``: the IR hash they print, corrupt and foreign files, -o checks,
typed and dynamic inputs, factory arguments, artifact folders, and one line + exit 2 for every
user error (torch's own log lines and warnings included: they go to fd 2, so ``capfd``)."""

from __future__ import annotations

import json
import os
import re
import struct
import textwrap
import zipfile
from pathlib import Path

import pytest

from edgeformer.cli import main

MODELS = textwrap.dedent(
    """
    import collections

    import torch
    from torch import nn

    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent Python control flow
                return x * 2
            return x - 1

    class Tokens(nn.Module):
        def __init__(self, vocab=10, width=8):
            super().__init__()
            self.emb = nn.Embedding(vocab, width)
            self.head = nn.Linear(width, 3)

        def forward(self, ids):
            return self.head(self.emb(ids).mean(1))

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            y = self.fc(x)
            return {"logits": y[:, :3], "boxes": y[:, 3:]}

    def make(width, depth=1, act="relu"):
        assert act == "gelu", act
        layers = [nn.Linear(4, width)] + [nn.Linear(width, width) for _ in range(depth - 1)]
        return nn.Sequential(*layers, nn.GELU())

    def broken():
        raise ValueError("weights file missing\\nsecond line of detail")

    def counted():
        import pathlib
        pathlib.Path("factory_was_called").write_text("yes")
        return nn.Linear(4, 2)
    """
)


@pytest.fixture
def models(user_models):
    (user_models / "cli_models.py").write_text(MODELS)
    yield user_models
    import sys

    sys.modules.pop("cli_models", None)


def cli(capfd, *argv):
    code = main(list(argv))
    out = capfd.readouterr()
    return code, out.out, out.err


def user_error(capfd, *argv) -> str:
    """Exit 2 and exactly one error line on stderr, the last (no torch log lines, warnings or
    traceback); only compile's one line per stage may come before it."""
    code, out, err = cli(capfd, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err)
    assert lines and lines[-1].startswith("edgeformer: error:"), err
    assert all(re.match(r"^edgeformer: \[[\w .-]+\] ", ln) for ln in lines[:-1]), err
    return lines[-1]


def flip_weight_bytes(path: Path, n: int = 64) -> str:
    """Invert ``n`` bytes inside the data of the largest weight entry; return the entry's name."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/weights/weight_" in i.filename), key=lambda i: i.file_size)
    assert info.file_size >= n and info.compress_type == zipfile.ZIP_STORED
    data = bytearray(path.read_bytes())
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
    start = h + 30 + name_len + extra_len
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() == info.filename  # the archive's own CRC flags it
    return info.filename


# ------------------------------------------------------------------------------------ item 2


def test_corrupted_weight_entry_is_refused_by_inspect_and_compile(capfd, models):
    assert main(["export", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "t.pt2"]) == 0
    entry = flip_weight_bytes(Path("t.pt2"))
    line = user_error(capfd, "inspect", "t.pt2")
    assert entry in line and "corrupt" in line and "edgeformer export" in line, line
    line = user_error(capfd, "compile", "t.pt2", "-o", "art")
    assert entry in line, line
    assert not Path("art").exists()


# ------------------------------------------------------------------------------------ item 8


def test_export_prints_the_ir_hash_that_inspect_of_the_name_and_of_the_file_print(capfd, tmp_path):
    out_file = tmp_path / "e.pt2"
    code, out, _ = cli(capfd, "export", "efficientformer_tiny", "-o", str(out_file), "--json")
    assert code == 0
    exported = json.loads(out)
    code, out, _ = cli(capfd, "inspect", "efficientformer_tiny", "--json")
    by_name = json.loads(out)["ir_hash"]
    code, out, _ = cli(capfd, "inspect", str(out_file), "--json")
    by_file = json.loads(out)["ir_hash"]
    assert exported["ir_hash"] == by_name == by_file
    from edgeformer.manifest import sha256_file

    assert exported["file_sha256"] == sha256_file(out_file) != exported["ir_hash"]
    code, out, _ = cli(capfd, "export", "efficientformer_tiny", "-o", str(out_file))
    assert code == 0 and f"ir hash {by_name[:16]}" in out and "file sha256" in out


# ----------------------------------------------------------------------------------- item 14


def test_integer_input_shape_and_factory_args(capfd, models):
    code, out, _ = cli(capfd, "inspect", "cli_models:Tokens", "--input-shape", "2x12:int64", "--json")
    assert code == 0, out
    s = json.loads(out)
    assert s["inputs"] == [{"name": "ids", "shape": [2, 12], "dtype": "int64"}]
    assert s["histogram"]["aten.embedding"] == 1
    code, out, _ = cli(
        capfd,
        "export",
        "cli_models:make",
        "--input-shape",
        "1x4",
        "--factory-arg",
        "width=16",
        "--factory-arg",
        "depth=2",
        "--factory-arg",
        "act=gelu",  # not a Python literal: a string
        "-o",
        "m.pt2",
        "--json",
    )
    assert code == 0, out
    assert json.loads(out)["parameters"] == (4 * 16 + 16) + (16 * 16 + 16)
    line = user_error(capfd, "inspect", "cli_models:make", "--input-shape", "1x4", "--factory-arg", "width")
    assert "--factory-arg 'width'" in line and "NAME=VALUE" in line, line


def test_compile_rewrite_and_tune_pass_factory_args_to_the_factory(capfd, models):
    args = ["cli_models:make", "--input-shape", "1x4", "--factory-arg", "width=16", "--factory-arg", "depth=2"]
    args += ["--factory-arg", "act=gelu"]
    code, out, err = cli(capfd, "compile", *args, "-o", "art", "--json")
    assert code == 0, err
    assert json.loads(out)["manifest"]["outputs"][0]["shape"] == [1, 16]  # depth 2 of width 16
    code, out, err = cli(capfd, "rewrite", *args, "-o", "r.pt2", "--json")
    assert code == 0, err
    from edgeformer import tuning

    w = tuning.workload(
        "cli_models:make", "host-tvm", input_shapes=[(1, 4)], factory_args={"width": 16, "depth": 2, "act": "gelu"}
    )
    assert w.graph.summary().to_dict()["parameters"] == (4 * 16 + 16) + (16 * 16 + 16)
    # the hint after an untuned TVM compile is a tune command that carries the same factory arguments
    from edgeformer.manifest import read_manifest
    from edgeformer.report.text import tune_command

    m = read_manifest("art")
    cmd = tune_command(m, profile="host-tvm", factory_args=["width=16", "depth=2"])
    assert "--factory-arg width=16 --factory-arg depth=2" in cmd, cmd


def test_dict_outputs_keep_their_names_and_dynamic_batch_is_named(capfd, models):
    code, out, _ = cli(capfd, "inspect", "cli_models:Heads", "--input-shape", "2x4", "--json")
    assert code == 0
    assert [o["name"] for o in json.loads(out)["outputs"]] == ["logits", "boxes"]
    code, out, _ = cli(capfd, "export", "cli_models:Heads", "--input-shape", "2x4", "--dynamic-batch", "-o", "d.pt2")
    assert code == 0
    code, out, _ = cli(capfd, "inspect", "d.pt2")
    assert code == 0 and "input  x: float32[batch, 4]" in out and "per sample" in out, out
    code, out, _ = cli(capfd, "inspect", "d.pt2", "--json")
    s = json.loads(out)
    assert s["total_macs"] == 4 * 6 and s["dynamic_dims"] == {"x": {"0": "batch"}}


def test_compiled_dynamic_batch_manifest_marks_the_dynamic_dim(capfd, models):
    assert main(["export", "cli_models:Heads", "--input-shape", "2x4", "--dynamic-batch", "-o", "d.pt2"]) == 0
    capfd.readouterr()
    code, out, _ = cli(capfd, "compile", "d.pt2", "-o", "art", "--json")
    assert code == 0, out
    manifest = json.loads(out)["manifest"]
    assert manifest["inputs"] == [{"name": "x", "shape": [-1, 4], "dtype": "float32"}]
    assert [(o["name"], o["shape"]) for o in manifest["outputs"]] == [("logits", [-1, 3]), ("boxes", [-1, 3])]


# ----------------------------------------------------------------------------------- item 15


def test_data_dependent_branch_points_to_torch_cond(capfd, models):
    line = user_error(capfd, "inspect", "cli_models:Branchy", "--input-shape", "1x3")
    assert "data-dependent" in line and "torch.cond" in line and "cli_models.py" in line, line
    assert "--input-shape matches" not in line  # the old, wrong hint


def test_wrong_resolution_for_a_zoo_model_names_the_fixed_attention_bias(capfd):
    line = user_error(capfd, "inspect", "efficientformer_v2_tiny", "--input-shape", "1x3x48x48")
    assert "attention-bias table" in line and "1x3x32x32" in line, line


def test_factory_that_raises_or_needs_arguments_is_one_line(capfd, models):
    line = user_error(capfd, "inspect", "cli_models:broken", "--input-shape", "1x4")
    assert "cli_models:broken" in line and "ValueError: weights file missing" in line, line
    line = user_error(capfd, "inspect", "cli_models:make", "--input-shape", "1x4")
    assert "width" in line and "--factory-arg width=" in line, line
    line = user_error(capfd, "inspect", "cli_models:make", "--input-shape", "1x4", "--factory-arg", "nope=1")
    assert "nope" in line, line


def test_a_valid_zip_that_is_not_a_pt2_is_one_line(capfd, tmp_path):
    for members in ({"hello.txt": "hi"}, {"archive/notes.txt": "hi"}):
        f = tmp_path / "z.pt2"
        with zipfile.ZipFile(f, "w") as z:
            for name, text in members.items():
                z.writestr(name, text)
        line = user_error(capfd, "inspect", str(f))
        assert "not a .pt2" in line or "not a valid .pt2" in line, line
        assert "warnings above" not in line, line


# ----------------------------------------------------------------------------------- item 16


def test_zoo_names_accept_case_and_dash_variants(capfd):
    code, out, _ = cli(capfd, "inspect", "EfficientFormer-Tiny", "--json")
    assert code == 0 and json.loads(out)["name"] == "efficientformer_tiny"


def test_inspect_an_artifact_folder(capfd, models):
    assert main(["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "art"]) == 0
    capfd.readouterr()
    code, out, _ = cli(capfd, "inspect", "art")
    assert code == 0, out
    for needle in ("tiny", "onnxruntime", "host-ort", "model.onnx", "numerics", "passed", "fold_batchnorm"):
        assert needle in out, (needle, out)
    code, out, _ = cli(capfd, "inspect", "art", "--json")
    data = json.loads(out)
    assert code == 0 and data["target"] == "onnxruntime" and data["model"]["name"] == "tiny"
    Path("empty").mkdir()
    line = user_error(capfd, "inspect", "empty")
    assert "manifest.json" in line


def test_export_refuses_a_non_pt2_output_before_exporting(capfd, models):
    line = user_error(capfd, "export", "cli_models:counted", "--input-shape", "1x4", "-o", "x.onnx")
    assert "x.onnx" in line and ".pt2" in line, line
    assert not Path("x.onnx").exists() and not Path("factory_was_called").exists()
    Path("adir.pt2").mkdir()
    line = user_error(capfd, "export", "cli_models:counted", "--input-shape", "1x4", "-o", "adir.pt2")
    assert "folder" in line and not Path("factory_was_called").exists(), line
    Path("afile").write_text("x")
    line = user_error(capfd, "export", "cli_models:counted", "--input-shape", "1x4", "-o", "afile/m.pt2")
    assert "cannot create" in line and not Path("factory_was_called").exists(), line


def test_export_creates_parent_folders_and_honours_the_umask(capfd, models):
    old = os.umask(0o027)
    try:
        code, out, _ = cli(capfd, "export", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "new/sub/t.pt2")
    finally:
        os.umask(old)
    assert code == 0, out
    assert (Path("new/sub/t.pt2").stat().st_mode & 0o777) == 0o640


def test_random_weights_are_said_by_inspect_and_recorded_in_the_manifest(capfd, models):
    code, out, _ = cli(capfd, "inspect", "efficientformer_tiny", "--nodes", "1")
    assert code == 0 and out.splitlines()[1] == "# weights: random (pass --weights FILE for trained ones)", out
    code, out, _ = cli(capfd, "inspect", "efficientformer_tiny", "--json")
    assert code == 0 and json.loads(out)["weights_origin"] == "random"
    code, out, _ = cli(capfd, "inspect", "cli_models:counted", "--input-shape", "1x4", "--nodes", "1")
    assert code == 0 and "# weights: as the module holds them" in out and "random" not in out, out
    assert main(["compile", "efficientformer_tiny", "-o", "art"]) == 0
    assert "weights: random (pass --weights FILE for trained ones)" in capfd.readouterr().out
    assert json.loads(Path("art/manifest.json").read_text())["model"]["weights_origin"] == "random"
    code, out, _ = cli(capfd, "inspect", "art")
    assert code == 0 and "weights: random" in out, out
