"""The CLI: listing commands, the main flow, and one clear line + exit 2 for every user error."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeformer.cli import COMMANDS, build_parser, main

# Without a terminal `compile` prints one line per stage on stderr before anything else.
STAGE_LINE = re.compile(r"^edgeformer: \[[\w .-]+\] ")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(capsys, argv, *needles, exit_code=2):
    """The error is ONE line and the LAST on stderr; only compile's stage lines may come before it."""
    code, out, err = run_cli(capsys, *argv)
    assert code == exit_code, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("edgeformer: error:"), err
    assert all(STAGE_LINE.match(ln) for ln in lines[:-1]), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


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
    assert code == 0 and "median" in out and "not in any op: session/dispatch overhead and profiler cost" in out
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
    assert_user_error(  # export creates missing parent folders as compile does, but not through a file
        capsys, ["export", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "afile/x.pt2"], "afile"
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


# ------------------------------------------------------------------------------------ issue 11


def test_passes_value_may_start_with_a_minus_or_a_plus(capsys, user_models):
    # The form the help shows (`--passes +a,-b`), not only `--passes=-b`.
    code, out, err = run_cli(
        capsys, "rewrite", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "r.pt2", "--passes", "-fold_batchnorm"
    )
    assert code == 0, err
    from edgeformer import ir

    assert "aten.batch_norm" in ir.load(user_models / "r.pt2").summary().histogram  # the pass was dropped
    for command in (["compile", "m", "-o", "o"], ["tune", "m"], ["rewrite", "m", "-o", "o.pt2"]):
        for value in ("-fold_layer_scale", "+fold_layer_scale,-fold_batchnorm"):
            from edgeformer.cli import join_signed_values

            args = build_parser().parse_args(join_signed_values([*command, "--passes", value, "-v"]))
            assert args.passes == value and args.verbose, (command, value)


def test_untuned_tvm_hint_is_a_tune_command_that_selects_the_same_workload(capsys, user_models, monkeypatch):
    code, out, err = run_cli(
        capsys, "compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "--profile", "host-tvm", "-o", "tv"
    )
    assert code == 0, err
    hint = next((ln for ln in out.splitlines() if "edgeformer tune" in ln), None)
    assert hint and "untuned" in hint, out
    argv = shlex.split(hint[hint.index("edgeformer tune") :])
    assert argv == ["edgeformer", "tune", "mymodels:tiny", "--input-shape", "1x3x8x8", "--profile", "host-tvm"]
    # Run it.  Only the MetaSchedule search is stubbed (one real trial takes minutes on 2 cores): the
    # command must resolve to the very graph and profile the compile built.
    from edgeformer import tuning
    from edgeformer.manifest import read_manifest

    seen = {}

    def search(self, *, trials=None, work_dir=None, seed=0):
        seen.update(graph=self.graph.hash(), profile=self.profile.name, trials=trials)
        return SimpleNamespace(to_dict=lambda: {"stub": True})

    monkeypatch.setattr(tuning.Workload, "tune", search)
    code, out, err = run_cli(capsys, *argv[1:], "--trials", "1", "--json")
    assert code == 0, err
    assert seen == {"graph": read_manifest(user_models / "tv").ir_hash_after_passes, "profile": "host-tvm", "trials": 1}


@pytest.fixture
def ort_art(user_models):
    from edgeformer.compiler import compile

    compile("mymodels:tiny", "host-ort", user_models / "art", input_shapes=[(1, 3, 8, 8)])
    return user_models / "art"


def test_profile_refuses_every_bad_option_before_any_work(capsys, ort_art, monkeypatch):
    import edgeformer.profiling

    def started(*a, **k):
        raise AssertionError("the artifact was loaded before the options were checked")

    monkeypatch.setattr(edgeformer.profiling, "load_artifact", started)
    Path("afile").write_text("x")
    for argv, needle in (
        (["--runs", "0"], "--runs"),
        (["--min-seconds", "-1"], "--min-seconds"),
        (["--min-seconds", "nan"], "--min-seconds"),
        (["--warmup", "-1"], "--warmup"),
        (["--cooldown", "-1"], "--cooldown"),
        (["--threads", "-1"], "--threads"),
        (["--ops-runs", "0"], "--ops-runs"),
        (["--top", "-1"], "--top"),
        (["-o", "art"], "is a folder"),
        (["-o", "afile/p.json"], "afile is a file"),
        (["--key", "rpi4"], "--key needs --remote"),
        (["--runs", "x"], "invalid int value"),
    ):
        assert_user_error(capsys, ["profile", "art", *argv], needle)
    assert not (ort_art / "profile.json").exists()


def test_profile_output_creates_its_folders_and_says_the_real_path(capsys, ort_art):
    code, out, err = run_cli(capsys, "profile", "art", "--runs", "3", "--min-seconds", "0", "-o", "new/sub/p.json")
    assert code == 0, err
    assert Path("new/sub/p.json").is_file() and not (ort_art / "profile.json").exists()
    assert "wrote new/sub/p.json" in out


def test_a_missed_budget_exits_3_and_errors_are_json_with_json(capsys, user_models):
    prof = user_models / "tight.toml"
    prof.write_text('name = "tight"\ntarget = "onnxruntime"\n[budget]\nlatency_ms = 0.000001\n')
    assert main(["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "--profile", str(prof), "-o", "art"]) == 0
    capsys.readouterr()
    line = assert_user_error(
        capsys, ["profile", "art", "--runs", "3", "--min-seconds", "0"], "latency budget missed", exit_code=3
    )
    assert "art median" in line and Path("art/profile.json").is_file()  # the report is written first

    code, out, err = run_cli(capsys, "profile", "art", "--runs", "3", "--min-seconds", "0", "--json")
    assert code == 3 and json.loads(out)["budget"]["met"] is False
    lines = err.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["error"]["exit_code"] == 3

    for argv in (["profile", "nothing", "--json"], ["--json", "profile", "nothing"], ["profile", "--json"]):
        code, out, err = run_cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (argv, out, err)
        error = json.loads(lines[0])["error"]
        assert set(error) == {"problem", "fix", "exit_code"} and error["exit_code"] == 2 and error["problem"]


def test_a_bad_command_line_is_one_line_too(capsys):
    line = assert_user_error(capsys, ["profile"], "the following arguments are required: DIR")
    assert "edgeformer profile --help" in line


def _render(fn, *args, **kw) -> str:
    from rich.console import Console

    con = Console(record=True, width=250)
    fn(*args, con, **kw)
    return con.export_text()


def test_compile_summary_shows_op_deltas_weights_and_what_the_target_says(user_models):
    from edgeformer.compiler import compile
    from edgeformer.manifest import WeightsInfo
    from edgeformer.report.text import compile_summary

    report = compile("mymodels:tiny", "host-ort", user_models / "art", input_shapes=[(1, 3, 8, 8)])
    m = report.manifest
    text = _render(compile_summary, report)
    assert "Δ ops" in text and "nodes removed" not in text
    assert re.search(r"fold_batchnorm .* −1 ", text), text  # one node fewer
    assert "weights:" not in text  # the user's own module: nothing to say
    m.passes[0].op_delta, m.passes[1].op_delta = {"aten.add": 24, "aten.mul": -2}, {"aten.view": 3}
    m.model.weights_origin = "random"
    m.target_details.pop("ort_cpu_specific", None)  # the generic line, when the target gave no detail
    m.target_details.update(delegation_summary="5 of 6 ops delegated to XnnpackBackend", ort_format_portable=False)
    text = _render(compile_summary, report)
    assert "+22 (+24 −2)" in text and " +3 " in text
    assert "weights: random (pass --weights FILE for trained ones)" in text
    assert "delegation: 5 of 6 ops delegated to XnnpackBackend" in text
    assert "model.ort is specific to this CPU (NCHWc layout ops); for phones use --profile android-arm64-ort" in text
    m.target_details["ort_cpu_specific"] = "model.ort holds AVX-512 NCHWc kernels: this CPU family only"
    assert "AVX-512 NCHWc kernels" in _render(compile_summary, report)
    m.model.weights_origin, m.model.weights = "checkpoint", WeightsInfo("w.safetensors", "ab" * 32, layout="official")
    text = _render(compile_summary, report)
    assert "weights: checkpoint w.safetensors (sha256 abababababab)" in text and "layout" not in text
    m.model.weights.layout = "timm"
    assert "converted from the timm layout" in _render(compile_summary, report)


def test_a_cache_hit_says_when_it_was_made_and_this_calls_time(capsys, user_models):
    assert main(["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "a"]) == 0
    capsys.readouterr()
    for folder, where in (("a", "already in a"), ("b", "from the compile cache")):
        code, out, _ = run_cli(capsys, "compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", folder)
        assert code == 0
        assert re.search(rf"cached: identical compile {where}.* made 20\d\d-.*, took \d+\.\d s now", out), out
        assert "compile time" not in out  # the original compile's time is not shown as this one's


def test_keep_failed_keeps_the_build_whose_numerics_fail(capsys, user_models, monkeypatch):
    from edgeformer import compiler
    from edgeformer.manifest import NumericsReport, read_manifest

    monkeypatch.setattr(compiler, "verify", lambda *a, **k: NumericsReport("failed", reason="forced by the test"))
    assert_user_error(
        capsys,
        ["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "art", "--keep-failed", "failed"],
        "disagree with PyTorch",
        "kept in failed",
    )
    assert not Path("art").exists() and read_manifest(Path("failed")).numerics.status == "failed"


NOISY = textwrap.dedent(
    """
    import warnings
    from mymodels import Tiny

    def build():
        # as some SDKs do on import: reset the filters, then warn
        warnings.simplefilter("always")
        warnings.warn("noisy SDK says hello", FutureWarning)
        return Tiny()
    """
)


def test_no_python_warning_reaches_stderr_even_if_a_library_resets_the_filters(user_models):
    (user_models / "noisy.py").write_text(NOISY)
    exe = Path(sys.executable).parent / "edgeformer"
    argv = [str(exe), "compile", "noisy:build", "--input-shape", "1x3x8x8", "-o", "art"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=user_models)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "noisy SDK" not in proc.stderr, proc.stderr
    assert all(STAGE_LINE.match(ln) for ln in proc.stderr.splitlines()), proc.stderr
    verbose = subprocess.run([*argv, "-v", "-o", "art2"], capture_output=True, text=True, cwd=user_models)
    assert "noisy SDK says hello" in verbose.stderr  # --verbose still shows them


def test_compile_without_a_terminal_prints_one_line_per_stage(capsys, user_models):
    code, out, err = run_cli(capsys, "compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "art")
    assert code == 0
    lines = err.strip().splitlines()
    assert all(STAGE_LINE.match(ln) for ln in lines), err
    stages = [ln.split("]")[0].split("[")[1] for ln in lines]
    assert stages == ["export", "passes", "compile", "verify", "write"], err
    assert re.match(r"edgeformer: \[passes\] \d+ passes: .*fold_batchnorm", lines[1])
    code, out, err = run_cli(capsys, "compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "-o", "j", "--json")
    assert code == 0 and err == "" and json.loads(out)["path"] == "j"
