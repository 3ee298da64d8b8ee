"""The CLI: listing commands, the main flow, and one clear line + exit 2 for every user error."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeformer.cli import COMMANDS, build_parser, main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(capsys, argv, *needles):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeformer: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_models_lists_the_zoo_with_params_macs_shape_and_paper(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    models = {m["name"]: m for m in json.loads(out)}
    l1 = models["efficientformer_l1"]
    assert l1["params"] == pytest.approx(12.29e6, rel=0.005) and l1["input_shapes"] == [[1, 3, 224, 224]]
    assert "arXiv" in l1["paper"] and l1["macs"]


def test_profiles_and_targets_list_availability_and_versions(capsys):
    code, out, _ = run_cli(capsys, "profiles", "--json")
    assert code == 0 and "host-ort" in {p["name"] for p in json.loads(out)}
    code, out, _ = run_cli(capsys, "targets", "--json")
    targets = {t["name"]: t for t in json.loads(out)}
    assert code == 0 and set(targets) == {"onnxruntime", "openvino", "tvm", "coreml", "executorch"}
    assert targets["onnxruntime"]["available"] and targets["onnxruntime"]["versions"]["onnxruntime"]


def test_export_inspect_compile_profile_flow(capsys, user_models):
    code, out, _ = run_cli(capsys, "export", "mymodels:tiny", "--input-shape", "1x3x16x16", "-o", "t.pt2", "--json")
    assert code == 0 and Path("t.pt2").is_file() and json.loads(out)["macs"] > 0
    code, out, _ = run_cli(capsys, "inspect", "t.pt2", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["histogram"]["aten.conv2d"] == 1
    code, out, _ = run_cli(capsys, "inspect", "t.pt2")
    assert "aten.conv2d" in out and "MACs" in out
    code, out, _ = run_cli(capsys, "compile", "t.pt2", "--profile", "host-ort", "-o", "art", "--json")
    data = json.loads(out)
    assert code == 0 and data["manifest"]["numerics"]["status"] == "passed" and not data["cached"]
    code, out, _ = run_cli(capsys, "compile", "t.pt2", "-o", "art")
    assert code == 0 and "cached" in out and "numerics vs PyTorch: passed" in out
    code, out, _ = run_cli(capsys, "profile", "art", "--runs", "3", "--min-seconds", "0", "--ops")
    assert code == 0 and "median" in out and "unexplained" in out
    assert Path("art/profile.json").is_file()


def test_unknown_model_suggests_close_names(capsys, tmp_path):
    assert_user_error(
        capsys,
        ["compile", "efficientformer_l2", "-o", str(tmp_path / "o")],
        "unknown model 'efficientformer_l2'",
        "did you mean",
        "efficientformer_l1",
    )
    assert not (tmp_path / "o").exists()


def test_unknown_profile_suggests_close_names(capsys, tmp_path):
    assert_user_error(
        capsys,
        ["compile", "efficientformer_tiny", "--profile", "host-orrt", "-o", str(tmp_path / "o")],
        "unknown profile 'host-orrt'",
        "host-ort",
    )
    assert not (tmp_path / "o").exists()


def test_unknown_target_in_profile_file(capsys, tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text('name = "p"\ntarget = "tensorrt"\n')
    assert_user_error(
        capsys,
        ["compile", "efficientformer_tiny", "--profile", str(prof), "-o", str(tmp_path / "o")],
        str(prof),
        "unknown target 'tensorrt'",
    )


def test_missing_and_corrupt_pt2(capsys, tmp_path):
    assert_user_error(capsys, ["inspect", str(tmp_path / "none.pt2")], "does not exist")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"PK\x03\x04garbage")
    assert_user_error(capsys, ["compile", str(bad), "-o", str(tmp_path / "o")], "not a valid .pt2")
    assert not (tmp_path / "o").exists()


def test_corrupt_onnx_in_artifact_is_detected(capsys, user_models):
    assert main(["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "art"]) == 0
    capsys.readouterr()
    onnx_file = Path("art/model.onnx")
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    assert_user_error(capsys, ["profile", "art"], "model.onnx is corrupt", "re-run")
    assert_user_error(capsys, ["profile", str(user_models / "nothing")], "does not exist")


def test_onnx_file_as_model_is_refused_with_the_fix(capsys, tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"\x08\x07")
    assert_user_error(capsys, ["compile", str(f), "-o", str(tmp_path / "o")], "not a model edgeformer can import")


def test_wrong_input_shape(capsys, user_models):
    assert_user_error(
        capsys,
        ["compile", "mymodels:tiny", "--input-shape", "1x5x16x16", "-o", "o"],
        "could not trace",
        "1x5x16x16",
        "--input-shape",
    )
    assert_user_error(capsys, ["compile", "mymodels:tiny", "--input-shape", "1x3xAx16", "-o", "o"], "bad input shape")
    assert not Path("o").exists()


def test_unwritable_output_dir(capsys, user_models):
    Path("afile").write_text("x")
    assert_user_error(
        capsys,
        ["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "afile/out"],
        "cannot create output folder",
        "-o",
    )
    assert_user_error(
        capsys, ["export", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "nodir/x.pt2"], "does not exist"
    )
    assert Path("afile").read_text() == "x"


def test_factory_that_is_not_a_module(capsys, user_models):
    assert_user_error(
        capsys,
        ["compile", "mymodels:not_a_module", "--input-shape", "1x3", "-o", "o"],
        "returned a dict, not a torch.nn.Module",
    )
    assert_user_error(capsys, ["compile", "mymodels:NUMBER", "--input-shape", "1x3", "-o", "o"], "not an nn.Module")
    assert_user_error(capsys, ["compile", "mymodels:nope", "--input-shape", "1x3", "-o", "o"], "has no attribute")
    assert_user_error(capsys, ["compile", "nomodule_xyz:f", "--input-shape", "1x3", "-o", "o"], "cannot import module")
    assert_user_error(capsys, ["compile", "mymodels:tiny", "-o", "o"], "needs input shapes", "--input-shape")
    assert not Path("o").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgeformer.cli", "--debug", "inspect", str(tmp_path / "x.pt2")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_console_script_exit_code_is_2(tmp_path):
    exe = Path(sys.executable).parent / "edgeformer"
    proc = subprocess.run([str(exe), "inspect", "no_such_model"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown model" in proc.stderr


HEAVY = ("torch", "numpy", "rich", "onnxruntime", "openvino", "tvm")


def test_cli_and_every_command_module_import_nothing_heavy():
    code = (
        "import importlib, sys\n"
        "import edgeformer.cli as cli\n"
        "mods = [importlib.import_module(m.__name__) for m in cli.COMMANDS]\n"
        "cli.build_parser().format_help()\n"
        "print(len(mods), ','.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(COMMANDS))], f"importing the CLI imported {out.stdout.split()[1:]}"


def test_every_command_module_has_name_add_parser_run_in_parser_order():
    for m in COMMANDS:
        assert isinstance(m.NAME, str) and callable(m.add_parser) and callable(m.run), m.__name__
        assert m.__name__ == "edgeformer.cli." + m.NAME.replace("-", "_"), (m.__name__, m.NAME)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [m.NAME for m in COMMANDS]
    assert all(sub.choices[m.NAME].get_default("fn") is m.run for m in COMMANDS)


def test_rewrite_saves_the_ir_the_target_pipeline_produces(user_models, capsys):
    from edgeformer import ir
    from edgeformer.compiler import plan, rewrite

    code, out, _ = run_cli(
        capsys, "rewrite", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "r.pt2", "--profile", "host-ort"
    )
    assert code == 0 and "wrote r.pt2" in out and "fold_batchnorm" in out
    saved = ir.load(user_models / "r.pt2")
    expected = rewrite(plan("mymodels:tiny", "host-ort", input_shapes=[(1, 3, 8, 8)])).graph
    assert saved.hash() == expected.hash()
    assert "aten.batch_norm" not in saved.summary().histogram  # the pipeline ran
    code, out, _ = run_cli(capsys, "rewrite", "r.pt2", "-o", "r2.pt2", "--passes=-fold_batchnorm", "--json")
    assert code == 0 and json.loads(out)["ir_hash"] == saved.hash()
