"""The pass registry: pass name → class, filled explicitly by ``edgeformer.passes``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeformer.errors import UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from .base import Pass

_PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Add a pass class; a duplicate name is a bug and raises."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _PASSES:
        raise ValueError(f"pass {cls.name!r} registered twice ({_PASSES[cls.name].__name__}, {cls.__name__})")
    _PASSES[cls.name] = cls
    return cls


def pass_names() -> list[str]:
    return list(_PASSES)


def get_pass(name: str) -> type[Pass]:
    try:
        return _PASSES[name]
    except KeyError:
        raise UnknownNameError("pass", name, _PASSES) from None


def describe_passes() -> list[tuple[str, str, bool]]:
    """``(name, one-line summary, exact)`` for every registered pass, for ``edgeformer passes``."""
    return [(name, cls.summary, cls.exact) for name, cls in _PASSES.items()]
