"""Which targets exist and where each one's class lives: data only, importing nothing.

``device_profiles`` (the ground floor) validates a profile's ``target`` against these names, and
``edgeformer.targets`` (a floor above) imports a target's module from its path only when the target
is asked for, so listing targets or loading a profile never imports a runtime SDK.
"""

from __future__ import annotations

# name -> "module:Class"
TARGETS: dict[str, str] = {
    "onnxruntime": "edgeformer.targets.onnxruntime:OnnxRuntimeTarget",
    "openvino": "edgeformer.targets.openvino:OpenVinoTarget",
    "tvm": "edgeformer.targets.tvm:TvmTarget",
    "coreml": "edgeformer.targets.coreml:CoreMLTarget",
    "executorch": "edgeformer.targets.executorch:ExecuTorchTarget",
}


def target_names() -> list[str]:
    return list(TARGETS)
