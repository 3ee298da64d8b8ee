"""``edgeformer bundle`` for Linux boards: real cmake, g++ with -Werror, the aarch64 cross g++ and
qemu-user (``make test`` installs them), the runtimes' own libraries; no mocks.

Each bundle is built, its ``ctest`` runs the C example on the golden data (the Python runtime's
outputs), and a C program of ours checks the C API's contract (names, shapes, error codes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeformer.bundle import build_bundle, elf_machine
from edgeformer.compiler import compile as compile_model
from edgeformer.sources import load_model
from edgeformer.targets.onnxruntime.quantize import ort_nodes
from tests.test_cli import assert_user_error, run_cli

CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release"]


def cmake_build(bundle: Path, build: Path, *extra: str) -> None:
    for cmd in (["cmake", "-S", bundle, "-B", build, *CMAKE_FLAGS, *extra], ["cmake", "--build", build, "-j2"]):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def ctest(build: Path) -> str:
    r = subprocess.run(["ctest", "--test-dir", str(build), "-V"], capture_output=True, text=True)
    assert r.returncode == 0 and "100% tests passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    return r.stdout


def max_abs_error(line_source: str) -> float:
    line = next(ln for ln in line_source.splitlines() if "max_abs_error" in ln)
    return float(line.split("max_abs_error")[1].split()[0])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle-artifacts")
    return {
        "ort": compile_model("poolformer_tiny", "host-ort", root / "ort", use_cache=False).path,
        "stream": compile_model("lmuformer_tiny", "host-ort", root / "stream", streaming=True, use_cache=False).path,
    }


@pytest.fixture(scope="module")
def x86_ort(artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "x86"
    b = build_bundle(artifacts["ort"], "linux-x86_64", out)
    cmake_build(out, out / "build")
    return b


def test_x86_64_ort_bundle_layout_and_io_json(x86_ort, artifacts):
    root = x86_ort.path
    io = json.loads((root / "io.json").read_text())
    manifest = json.loads((artifacts["ort"] / "manifest.json").read_text())
    assert io["inputs"] == [dict(t, layout="NCHW") for t in manifest["inputs"]]
    assert io["outputs"] == manifest["outputs"]
    assert io["runtime"] == {
        "name": "onnxruntime",
        "version": manifest["runtime_versions"]["onnxruntime"],
        "files": ["model/model.ort"],
        "threads": 2,
        "precision": "fp32",
        "compute_units": "ALL",
    }
    assert io["preprocess"]["crop"] == 32 and io["postprocess"] == {"softmax": True, "classes": 10, "labels": None}
    for rel in (
        "include/edgeformer.h",
        "src/edgeformer.cpp",
        "src/backend_onnxruntime.cpp",
        "src/bundle_info.cpp",
        "examples/example.c",
        "CMakeLists.txt",
        "cmake/aarch64-linux-gnu.cmake",
        "README.md",
        "model/required_operators.config",
        "third_party/onnxruntime/include/onnxruntime_c_api.h",
    ):
        assert (root / rel).is_file(), rel
    # the library is installed under its SONAME, and it is an x86-64 ELF
    assert elf_machine(root / "lib" / "libonnxruntime.so.1") == "x86_64"
    assert (root / "golden" / "input.bin").stat().st_size == 4 * 3 * 32 * 32
    assert (root / "golden" / "output.bin").stat().st_size == 4 * 10
    assert "ai.onnx;" in (root / "model" / "required_operators.config").read_text()
    readme = (root / "README.md").read_text()
    assert "cmake -S . -B build" in readme and "ctest --test-dir build" in readme and "libonnxruntime.so.1" in readme
    assert dict(x86_ort.files)["lib/libonnxruntime.so.1"] > 1e7  # sizes are reported per file


def test_x86_64_ort_bundle_ctest_matches_golden(x86_ort, artifacts):
    out = ctest(x86_ort.path / "build")
    assert max_abs_error(out) <= 1e-4
    # and the example's output equals the Python runtime's on the same input
    from edgeformer.runtime import load_artifact

    art = load_artifact(artifacts["ort"])
    x = art.example_inputs(seed=0)
    want = art.runner().run(x)[0]
    got = np.fromfile(x86_ort.path / "build" / "output.bin", dtype="<f4").reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


C_API_CHECK = r"""
#include <stdio.h>
#include <string.h>
#include "edgeformer.h"
#define CHECK(c) do { if (!(c)) { printf("FAILED line %d: %s\n", __LINE__, #c); return 1; } } while (0)
int main(int argc, char** argv) {
  char err[256];
  ef_model* m = (ef_model*)1;
  CHECK(argc == 2);
  CHECK(ef_api_version() == EF_API_VERSION);
  CHECK(ef_open("/nonexistent", 1, &m, err, sizeof err) == EF_ERR_IO && m == NULL && strstr(err, "io.json"));
  CHECK(ef_open(argv[1], -1, &m, err, sizeof err) == EF_ERR_ARGUMENT);
  CHECK(ef_open(NULL, 1, &m, err, sizeof err) == EF_ERR_ARGUMENT);
  CHECK(ef_open(argv[1], 1, &m, err, 8) == EF_OK && m != NULL);
  CHECK(ef_num_inputs(m) == 1 && ef_num_outputs(m) == 1);
  CHECK(!strcmp(ef_input_name(m, 0), "x") && !strcmp(ef_output_name(m, 0), "output"));
  CHECK(!strcmp(ef_input_dtype(m, 0), "float32") && ef_input_rank(m, 0) == 4 && ef_input_shape(m, 0)[1] == 3);
  CHECK(ef_input_size(m, 0) == 3 * 32 * 32 && ef_output_size(m, 0) == 10);
  CHECK(ef_input_name(m, 1) == NULL && ef_output_shape(m, 5) == NULL && ef_input_size(m, 9) == 0);
  CHECK(ef_run(m, NULL, NULL, err, sizeof err) == EF_ERR_ARGUMENT && strlen(err) > 0);
  float y[10];
  CHECK(ef_step(m, NULL, 1, y, err, sizeof err) == EF_ERR_NOT_STREAMING && !ef_is_streaming(m));
  CHECK(ef_reset(m, err, 4) == EF_ERR_NOT_STREAMING && strlen(err) == 3);  /* truncated, NUL-terminated */
  CHECK(!strcmp(ef_status_name(EF_ERR_RUNTIME), "EF_ERR_RUNTIME"));
  CHECK(!strncmp(ef_runtime(m), "onnxruntime ", 12));
  ef_close(m);
  ef_close(NULL);
  printf("c api ok\n");
  return 0;
}
"""


def test_the_c_api_contract(x86_ort, tmp_path):
    src = tmp_path / "check.c"
    src.write_text(C_API_CHECK)
    build = x86_ort.path / "build"
    exe = tmp_path / "check"
    cmd = [
        "gcc",
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-Werror",
        str(src),
        "-I",
        str(x86_ort.path / "include"),
        "-L",
        str(build),
        "-ledgeformer_model",
        f"-Wl,-rpath,{build}",
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True)
    r = subprocess.run([str(exe), str(x86_ort.path)], capture_output=True, text=True)
    assert r.returncode == 0 and "c api ok" in r.stdout, r.stdout + r.stderr
    # only the C API is exported from the library
    syms = subprocess.run(
        ["nm", "-D", "--defined-only", str(build / "libedgeformer_model.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = {ln.split()[-1] for ln in syms.splitlines() if " T " in ln}
    assert exported and all(s.startswith("ef_") for s in exported), exported


def test_the_example_refuses_bad_input_with_exit_2(x86_ort, tmp_path):
    exe = x86_ort.path / "build" / "example"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 12)
    r = subprocess.run([str(exe), str(x86_ort.path), str(bad), str(tmp_path / "o.bin")], capture_output=True, text=True)
    assert r.returncode == 2 and "must hold 3072 float32 values" in r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_aarch64_ort_bundle_cross_builds_and_runs_under_qemu(artifacts, tmp_path):
    out = tmp_path / "arm"
    b = build_bundle(artifacts["ort"], "linux-aarch64", out)
    # the x86 host model.ort (NCHWc nodes) is never shipped to ARM: it was converted for ARM
    assert any(n[0] == "com.microsoft.nchwc" for n in ort_nodes(artifacts["ort"] / "model.ort"))
    assert not any(n[0] == "com.microsoft.nchwc" for n in ort_nodes(out / "model" / "model.ort"))
    assert elf_machine(out / "lib" / "libonnxruntime.so.1") == "aarch64"
    assert any("converted for ARM" in v for v in b.verified)
    cmake_build(out, out / "build", "-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake")
    assert elf_machine(out / "build" / "example") == "aarch64"
    assert elf_machine(out / "build" / "libedgeformer_model.so") == "aarch64"
    log = ctest(out / "build")  # under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR)
    assert max_abs_error(log) <= 1e-4
    # the same .ort loads and agrees in this machine's Python onnxruntime
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(out / "model" / "model.ort"), providers=["CPUExecutionProvider"])
    x = np.fromfile(out / "golden" / "input.bin", dtype="<f4").reshape(1, 3, 32, 32)
    want = np.fromfile(out / "golden" / "output.bin", dtype="<f4").reshape(1, 10)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, atol=1e-4, rtol=0)


def test_an_x86_bundle_refuses_an_aarch64_toolchain(x86_ort, tmp_path):
    r = subprocess.run(
        [
            "cmake",
            "-S",
            str(x86_ort.path),
            "-B",
            str(tmp_path / "b"),
            "-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "is for linux-x86_64" in r.stderr and "not aarch64" in r.stderr


def test_streaming_bundle_steps_through_golden_and_reproduces_the_parallel_model(artifacts, tmp_path):
    out = tmp_path / "stream"
    build_bundle(artifacts["stream"], "linux-x86_64", out)
    io = json.loads((out / "io.json").read_text())
    assert io["golden"]["kind"] == "stream" and io["streaming"]["delay_frames"] == 5
    cmake_build(out, out / "build")
    log = ctest(out / "build")
    assert "streamed 8 frames, 5 flush steps" in log and max_abs_error(log) <= 1e-4
    # the C example's logits against PyTorch's parallel model on the same frames
    frames = np.fromfile(out / "golden" / "input.bin", dtype="<f4").reshape(8, 1, 8)
    net = load_model("lmuformer_tiny").module.eval()
    with torch.no_grad():
        want = net(torch.from_numpy(np.ascontiguousarray(frames.transpose(1, 0, 2)))).numpy()
    got = np.fromfile(out / "build" / "output.bin", dtype="<f4").reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_cli_prints_every_file_size_and_the_total(artifacts, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "bundle", str(artifacts["ort"]), "--platform", "linux-x86_64", "-o", str(tmp_path / "b")
    )
    assert code == 0, err
    assert "lib/libonnxruntime.so.1" in out and "model/model.ort" in out and "total" in out
    code, out, _ = run_cli(
        capsys, "--json", "bundle", str(artifacts["ort"]), "--platform", "linux-x86_64", "-o", str(tmp_path / "b")
    )
    data = json.loads(out)
    assert code == 0 and data["total_bytes"] == sum(f["bytes"] for f in data["files"])


@pytest.mark.parametrize(
    "platform, needle",
    [("windows-x86_64", "unknown platform 'windows-x86_64'"), ("linux-riscv64", "unknown platform")],
)
def test_a_bad_platform_is_one_line_and_writes_nothing(artifacts, tmp_path, capsys, platform, needle):
    out = tmp_path / "b"
    assert_user_error(capsys, ["bundle", str(artifacts["ort"]), "--platform", platform, "-o", str(out)], needle)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_runtime_the_platform_lacks_is_one_line_and_writes_nothing(tmp_path, capsys):
    art = compile_model("poolformer_tiny", "host-openvino", tmp_path / "ov", use_cache=False).path
    out = tmp_path / "b"
    line = assert_user_error(
        capsys, ["bundle", str(art), "--platform", "ios-arm64", "-o", str(out)], "openvino artifact", "ios-arm64"
    )
    assert "--profile" in line and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov"]


def test_a_folder_that_is_not_a_bundle_is_never_replaced(artifacts, tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert_user_error(
        capsys, ["bundle", str(artifacts["ort"]), "--platform", "linux-x86_64", "-o", str(keep)], "is not a bundle"
    )
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def test_toolchains_are_present():
    """The bundle tests need these; make test installs them (a missing one fails, never skips)."""
    for tool in ("cmake", "gcc", "g++", "aarch64-linux-gnu-g++", "qemu-aarch64"):
        assert shutil.which(tool), f"{tool} is missing: run make test (it installs the Debian packages)"


def test_a_corrupt_model_is_a_runtime_error_not_a_crash(x86_ort, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(x86_ort.path, broken, ignore=shutil.ignore_patterns("build", "lib", "third_party"))
    (broken / "model" / "model.ort").write_bytes(b"not a model")
    exe = x86_ort.path / "build" / "example"
    r = subprocess.run(
        [str(exe), str(broken), str(broken / "golden" / "input.bin"), str(tmp_path / "o.bin")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: loading ") and "model.ort" in r.stderr, r.stderr
    assert not (tmp_path / "o.bin").exists()


class Small(torch.nn.Module):
    """conv → batch norm → GELU → pool → linear: every runtime compiles it in seconds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.nn.functional.gelu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def runtime_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle-runtimes")
    shape = [(1, 3, 16, 16)]
    return {
        p: compile_model(Small().eval(), p, root / p, input_shapes=shape, use_cache=False).path for p in OTHER_RUNTIMES
    }


OTHER_RUNTIMES = ("host-executorch", "host-openvino", "host-tvm")


@pytest.mark.parametrize("profile", OTHER_RUNTIMES)
def test_x86_64_bundles_of_every_runtime_build_and_match_golden(runtime_artifacts, profile, tmp_path):
    art = runtime_artifacts[profile]
    out = tmp_path / "b"
    b = build_bundle(art, "linux-x86_64", out)
    runtime = b.runtime
    assert (out / "src" / f"backend_{runtime}.cpp").is_file() and (out / "lib").is_dir()
    assert all(elf_machine(out / p) == "x86_64" for p, _ in b.files if p.startswith("lib/") and ".so" in p)
    libs = [p for p, _ in b.files if p.startswith("lib/")]
    assert f"lib/: {len(libs)} libraries" in " ".join(b.verified)  # each once, in README and summary alike
    io = json.loads((out / "io.json").read_text())
    main = {"executorch": "model.pte", "openvino": "model.xml", "tvm": "model.so"}[runtime]
    assert io["runtime"]["files"][0] == f"model/{main}"  # the file the C host opens
    cmake_build(out, out / "build")
    log = ctest(out / "build")
    assert f"{runtime} {io['runtime']['version']}" in log and max_abs_error(log) <= 1e-4  # ef_runtime()
    want = np.fromfile(out / "golden" / "output.bin", dtype="<f4")
    np.testing.assert_allclose(np.fromfile(out / "build" / "output.bin", dtype="<f4"), want, atol=1e-4, rtol=0)


def test_aarch64_executorch_bundle_cross_builds_and_runs_under_qemu(runtime_artifacts, tmp_path):
    out = tmp_path / "arm"
    b = build_bundle(runtime_artifacts["host-executorch"], "linux-aarch64", out)
    libs = [p for p, _ in b.files if p.startswith("lib/") and ".so" in p]
    assert libs and all(elf_machine(out / p) == "aarch64" for p in libs)
    cmake_build(out, out / "build", "-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake")
    assert elf_machine(out / "build" / "example") == "aarch64"
    log = ctest(out / "build")
    assert "executorch" in log and max_abs_error(log) <= 1e-4


def test_a_tvm_library_for_another_cpu_is_refused_for_this_platform(runtime_artifacts, tmp_path, capsys):
    out = tmp_path / "b"
    assert_user_error(
        capsys,
        ["bundle", str(runtime_artifacts["host-tvm"]), "--platform", "linux-aarch64", "-o", str(out)],
        "model.so is compiled for x86_64, not linux-aarch64",
        "rpi4-tvm",
    )
    assert not out.exists()
