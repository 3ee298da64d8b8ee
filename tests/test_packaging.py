"""Packaging: passes/targets/profiles install under edgeformer only; import stays light."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR_SDKS = ("openvino", "tvm", "coremltools", "executorch", "onnxruntime", "onnx", "onnxscript")


def test_wheel_installs_passes_targets_profiles_only_under_edgeformer(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("edgeformer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"edgeformer", f"edgeformer-{wheel.name.split('-')[1]}.dist-info"}, tops
    assert "edgeformer/profiles/host-ort.toml" in names
    assert "edgeformer/passes/__init__.py" in names and "edgeformer/targets/onnxruntime/__init__.py" in names
    assert "edgeformer/targets/tvm/search.py" in names and "edgeformer/cli/compile.py" in names
    assert "edgeformer/models/lmuformer/model.py" in names and "edgeformer/report/text.py" in names
    assert "edgeformer/schemas/profile.schema.json" in names
    # edgeformer bundle's C sources, CMake files and runtime specs ship in the wheel
    for f in (
        "CMakeLists.txt",
        "include/edgeformer.h",
        "src/edgeformer.cpp",
        "src/backend_onnxruntime.cpp",
        "examples/example.c",
        "cmake/aarch64-linux-gnu.cmake",
        "tools/run-aarch64.sh",
        "runtimes/onnxruntime.json",
    ):
        assert f"edgeformer/bundle/files/{f}" in names, f

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib.util as u, sys\n"
        "assert all(u.find_spec(m) is None for m in ('passes', 'targets', 'profiles')), 'top-level module installed'\n"
        "spec = u.find_spec('edgeformer.passes')\n"
        "assert spec and spec.origin.startswith(sys.argv[1]), spec\n"
        "from importlib import resources\n"
        "assert resources.files('edgeformer.profiles').joinpath('host-ort.toml').is_file()\n"
        "print('ok')\n"
    )
    out = subprocess.run([str(py), "-I", "-c", probe, site], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_import_edgeformer_imports_no_vendor_sdk():
    code = (
        "import sys, edgeformer, edgeformer.targets as t, edgeformer.models, edgeformer.compiler\n"
        "[t.get_target(n).is_available() for n in t.target_names() if n in t.TARGETS]\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *VENDOR_SDKS], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing edgeformer imported {out.stdout.strip()}"


def test_help_is_fast_and_needs_no_torch():
    code = "import sys; from edgeformer.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"
