"""edgeformer: a deployment compiler for efficient transformers on edge and mobile devices.

``import edgeformer`` is light: it imports no runtime SDK.  The public API is resolved lazily.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "export": "edgeformer.ir",
    "load_ir": ("edgeformer.ir", "load"),
    "save_ir": ("edgeformer.ir", "save"),
    "Graph": "edgeformer.ir",
    "compile": "edgeformer.compiler",
    "load_model": ("edgeformer.sources", "load_model"),
    "load_profile": ("edgeformer.device_profiles", "load_profile"),
    "load_artifact": ("edgeformer.runtime", "load_artifact"),
    "profile": ("edgeformer.profiling", "profile_artifact"),
    "UserError": "edgeformer.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    where = _API.get(name)
    if where is None:
        raise AttributeError(f"module 'edgeformer' has no attribute {name!r}")
    module, attr = (where, name) if isinstance(where, str) else where
    return getattr(importlib.import_module(module), attr)
