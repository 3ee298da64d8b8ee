"""What every target shares: installed here, lazy SDK import, and a missing SDK names its extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

import edgeformer.targets.base as base
from edgeformer.device_profiles import load_profile
from edgeformer.targets import TARGETS, get_target

# target -> (distribution checked, pip extra, top-level SDK module, a profile of that target)
SDKS = {
    "onnxruntime": ("onnxruntime", "onnxruntime", "onnxruntime", "host-ort"),
    "openvino": ("openvino", "openvino", "openvino", "host-openvino"),
    "tvm": ("apache-tvm", "tvm", "tvm", "host-tvm"),
    "coreml": ("coremltools", "coreml", "coremltools", "iphone12-coreml"),
    "executorch": ("executorch", "executorch", "executorch", "host-executorch"),
}
# Targets whose can_run_here() repeats the missing-SDK reason (the others leave it to is_available,
# which compile and load_artifact check first).
RUN_CHECK_REPORTS_SDK = {"openvino", "coreml", "executorch"}


def test_every_registered_target_is_covered_here():
    assert set(SDKS) == set(TARGETS)


@pytest.mark.parametrize("name", sorted(SDKS))
def test_target_runtime_is_installed(name):
    # CI always installs every runtime: a missing one must fail here, not skip elsewhere.
    assert get_target(name).is_available() is None
    assert SDKS[name][0] in get_target(name).versions()


@pytest.mark.parametrize("name", sorted(SDKS))
def test_missing_sdk_names_the_extra_to_install(name, monkeypatch):
    dist, extra, _, profile = SDKS[name]
    real = base.dist_version
    monkeypatch.setattr(base, "dist_version", lambda d: None if d == dist else real(d))
    target = get_target(name)
    reason = target.is_available()
    assert reason == f"{dist} not installed: pip install 'edgeformer[{extra}]'"
    assert dist not in target.versions()
    if name in RUN_CHECK_REPORTS_SDK:  # these also refuse to run artifacts without the SDK
        assert target.can_run_here(load_profile(profile)) == reason


def test_importing_target_modules_imports_no_sdk():
    code = (
        "import sys\n"
        "from edgeformer.targets import get_target\n"
        "for name in sys.argv[1].split(','):\n"
        "    get_target(name).is_available()\n"
        "print(','.join(sorted(m for m in sys.argv[2].split(',') if m in sys.modules)))\n"
    )
    names = ",".join(SDKS)
    modules = ",".join(m for _, _, m, _ in SDKS.values())
    out = subprocess.run([sys.executable, "-c", code, names, modules], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at target import: {out.stdout.strip()}"
