"""verify: an ahead-of-time profile whose artifact this machine's runtime can load is checked here.

``Target.can_run_here`` answers "can this machine *run* the profile's artifacts" (timing, profiling:
the device itself); ``Target.can_verify_here`` answers "can it check their numbers".  The target
below is the real ONNX Runtime target with ExecuTorch's ahead-of-time semantics: an ``aot_only``
profile cannot run here, but the file it builds is portable, so its numbers are checked here.
"""

from __future__ import annotations

import pytest

from edgeformer import compiler
from edgeformer.device_profiles import load_profile
from edgeformer.errors import UserError
from edgeformer.targets.base import Target
from edgeformer.targets.onnxruntime import OnnxRuntimeTarget

AOT = "profile {} compiles ahead of time only: the model runs on the device"


class AotOnlyOrt(OnnxRuntimeTarget):
    """ORT whose aot_only profiles run only on the device, yet whose files load here."""

    def can_run_here(self, profile) -> str | None:
        return AOT.format(profile.name) if profile.options.aot_only else None

    def can_verify_here(self, profile) -> str | None:
        return None

    def load(self, artifact):
        reason = self.can_verify_here(artifact.profile)
        if reason:
            raise UserError(f"cannot run {artifact.path} here: {reason}")
        return super().load(artifact)


class DeviceOnlyOrt(AotOnlyOrt):
    """The same, but its files need the device too: the base class's can_verify_here."""

    can_verify_here = Target.can_verify_here

    def load(self, artifact):
        raise AssertionError("verify must not load an artifact it cannot check here")


def _use(monkeypatch, cls):
    real = compiler.get_target
    monkeypatch.setattr(compiler, "get_target", lambda name: cls() if name == "onnxruntime" else real(name))


def _aot_profile():
    prof = load_profile("host-ort")
    prof.options.aot_only = True
    return prof


def test_an_aot_only_artifact_the_runtime_loads_here_is_checked_here(user_models, monkeypatch):
    _use(monkeypatch, AotOnlyOrt)
    report = compiler.compile("mymodels:tiny", _aot_profile(), user_models / "art", input_shapes=[(1, 3, 16, 16)])
    n = report.manifest.numerics
    assert n.status == "passed" and n.method == "runtime" and n.max_abs_error < 1e-4
    # it says what was checked: this machine's runtime, not the device
    assert "checked here with this machine's onnxruntime runtime, not on the device" in n.reason
    assert AOT.format("host-ort") in n.reason


def test_an_aot_only_artifact_that_needs_the_device_stays_skipped(user_models, monkeypatch):
    _use(monkeypatch, DeviceOnlyOrt)
    report = compiler.compile("mymodels:tiny", _aot_profile(), user_models / "art", input_shapes=[(1, 3, 16, 16)])
    n = report.manifest.numerics
    assert n.status == "skipped" and n.method is None and n.reason == AOT.format("host-ort")


def test_can_verify_here_defaults_to_can_run_here():
    prof = _aot_profile()
    assert DeviceOnlyOrt().can_verify_here(prof) == AOT.format("host-ort")
    assert OnnxRuntimeTarget().can_verify_here(prof) is None


@pytest.mark.parametrize("name", ["host-ort", "host-openvino"])
def test_targets_that_run_here_still_verify_with_their_runtime(user_models, name):
    report = compiler.compile("mymodels:tiny", name, user_models / name, input_shapes=[(1, 3, 16, 16)])
    assert report.manifest.numerics.status == "passed" and report.manifest.numerics.method == "runtime"
