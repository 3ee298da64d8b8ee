"""Side by side: `compile --profile a,b` and `profile DIR1 DIR2`, timed in alternating blocks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgeformer.cli import main
from edgeformer.latency import alternate
from edgeformer.manifest import read_manifest


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(capsys, argv, *needles):
    code, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("edgeformer: error:"), (code, err)
    assert all(ln.startswith("edgeformer: [") for ln in lines[:-1]), err  # stage lines only before it
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def test_alternate_times_each_candidate_in_blocks_and_alternates_their_order():
    calls: list[str] = []
    samples = alternate(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        min_runs=6,
        min_seconds=0.0,
        blocks=3,
        settle_s=0.0,
    )
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6}
    blocks = [m.group(0) for m in re.finditer(r"a+|b+", "".join(calls))]
    # three rounds of two blocks, each one untimed call + 2 timed; the order reverses each round
    # (so the last block of a round and the first of the next are the same candidate, merged here)
    assert blocks == ["aaa", "bbbbbb", "aaaaaa", "bbb"], blocks


def test_compile_for_several_profiles_then_profile_them_side_by_side(capsys, user_models):
    code, out, err = run_cli(
        capsys,
        "compile",
        "mymodels:tiny",
        "--input-shape",
        "1x3x8x8",
        "--profile",
        "host-ort,host-openvino",
        "-o",
        "out",
    )
    assert code == 0, err
    for name, target in (("host-ort", "onnxruntime"), ("host-openvino", "openvino")):
        assert read_manifest(Path("out", name)).target == target
        assert f"→ {target} (profile {name}) in out/{name}" in out  # one summary each
        assert re.search(rf"^  {name}: out/{name} \({target}; numerics passed; ", out, re.M), out  # final lines
    assert "[host-ort export]" in err and "[host-openvino write]" in err  # stage lines say which

    code, out, err = run_cli(
        capsys, "profile", "out/host-ort", "out/host-openvino", "--runs", "4", "--min-seconds", "0"
    )
    assert code == 0, err
    for col in ("median", "p90", "load", "first", "vs fastest"):
        assert col in out
    assert "1.00×" in out and "alternating blocks" in out
    for name in ("host-ort", "host-openvino"):
        data = json.loads(Path("out", name, "profile.json").read_text())
        assert data["latency"]["runs"] >= 4 and any("alternating blocks" in n for n in data["notes"])
        assert f"wrote out/{name}/profile.json" in out

    code, out, _ = run_cli(
        capsys, "profile", "out/host-ort", "out/host-openvino", "--runs", "2", "--min-seconds", "0", "--json"
    )
    assert code == 0 and [r["artifact"]["profile"] for r in json.loads(out)] == ["host-ort", "host-openvino"]


def test_several_profiles_and_folders_refuse_ambiguous_forms(capsys, user_models):
    model = ["compile", "mymodels:tiny", "--input-shape", "1x3x8x8"]
    assert_user_error(capsys, [*model, "--profile", "host-ort,host-ort", "-o", "o"], "host-ort twice")
    assert_user_error(capsys, [*model, "--profile", "host-ort,,host-openvino", "-o", "o"], "empty name")
    assert_user_error(
        capsys,
        [*model, "--profile", "host-ort", "--profile", "host-openvino", "-o", "o"],
        "--profile host-ort,host-openvino",
    )
    assert_user_error(capsys, [*model, "--profile", "host-ort,host-orrt", "-o", "o"], "unknown profile 'host-orrt'")
    assert not Path("o").exists()  # refused before the first compile
    assert main([*model, "-o", "art"]) == 0
    capsys.readouterr()
    assert_user_error(capsys, [*model, "--profile", "host-ort,host-openvino", "-o", "art"], "is an artifact folder")
    assert_user_error(capsys, ["profile", "art", "art/", "--runs", "2"], "given twice")
    assert_user_error(capsys, ["profile", "art", "art2", "-o", "p.json"], "-o takes one artifact")
    assert not Path("art/profile.json").exists() and not Path("p.json").exists()
