"""The targets: ``get_target(name)`` imports a target's module from ``edgeformer.target_names`` on demand,
so listing targets imports no runtime SDK."""

from __future__ import annotations

import importlib

from edgeformer.errors import TargetUnavailableError, UnknownNameError
from edgeformer.target_names import TARGETS, target_names

from .base import Calibration, CompileResult, OpProfile, OpTime, Runner, Target, quantizable_layers

__all__ = [
    "TARGETS",
    "Calibration",
    "CompileResult",
    "quantizable_layers",
    "OpProfile",
    "OpTime",
    "Runner",
    "Target",
    "get_target",
    "target_names",
]


def get_target(name: str) -> Target:
    """Instantiate a target by name.  Importing its module must not import the vendor SDK."""
    try:
        path = TARGETS[name]
    except KeyError:
        raise UnknownNameError("target", name, TARGETS) from None
    module, cls = path.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:  # the target module exists but its own import failed: a bug
            raise
        raise TargetUnavailableError(f"target {name!r} is not part of this edgeformer build") from None
    return getattr(mod, cls)()
