"""Graph rewrites on the IR, one pass per file, registered explicitly here."""

from __future__ import annotations

from edgeformer.errors import UnknownNameError

from .base import Pass, PassManager, PassRecord, PassResult

_PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    if cls.name in _PASSES:
        raise ValueError(f"pass {cls.name!r} registered twice")
    _PASSES[cls.name] = cls
    return cls


# --- explicit registration (one import per pass file) --------------------------------------------

# --- pipelines ------------------------------------------------------------------------------------
# Named, ordered lists; a comment on each ordering constraint.
PIPELINES: dict[str, list[str]] = {
    "exact": [],
}

# Each target's default pipeline.
TARGET_PIPELINES: dict[str, str] = {
    "onnxruntime": "exact",
    "openvino": "exact",
    "tvm": "exact",
    "coreml": "exact",
    "executorch": "exact",
}


def pass_names() -> list[str]:
    return list(_PASSES)


def get_pass(name: str) -> type[Pass]:
    try:
        return _PASSES[name]
    except KeyError:
        raise UnknownNameError("pass", name, _PASSES) from None


def default_pipeline(target_name: str) -> list[str]:
    return list(PIPELINES[TARGET_PIPELINES.get(target_name, "exact")])


def resolve_pipeline(base: list[str], add=(), drop=(), edits: str | None = None) -> list[str]:
    """Apply profile add/drop lists, then CLI edits like ``+name,-name``."""
    names = list(base)
    ops = [("+", n) for n in add] + [("-", n) for n in drop]
    for tok in (edits or "").split(","):
        tok = tok.strip()
        if tok:
            ops.append((tok[0], tok[1:]) if tok[0] in "+-" else ("+", tok))
    for sign, n in ops:
        get_pass(n)  # validates the name
        if sign == "+" and n not in names:
            names.append(n)
        elif sign == "-" and n in names:
            names.remove(n)
    return names


__all__ = ["PIPELINES", "Pass", "PassManager", "PassRecord", "PassResult", "default_pipeline",
           "get_pass", "pass_names", "register", "resolve_pipeline"]
