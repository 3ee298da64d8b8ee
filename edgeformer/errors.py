"""User-facing errors.

Every mistake a user can make (unknown names, missing or corrupt files, bad shapes, unsupported
ops, unwritable paths) raises :class:`UserError`.  The CLI prints its one-line message and exits
with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    SDKs raise multi-page messages (graph dumps, C++ traces); a one-line error quotes this.
    """
    for line in str(err).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


class UserError(Exception):
    """A problem the user can fix.  ``str(err)`` is one line naming the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. {fix}" if fix else problem)


class UnknownNameError(UserError, KeyError):
    """An unknown model, profile, target or pass name; suggests the closest known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if close:
            fix = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        else:
            fix = f"known {kind}s: {', '.join(known) if known else '(none)'}"
        self.name = name
        self.known = known
        self.suggestions = close
        super().__init__(f"unknown {kind} {name!r}", fix)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return Exception.__str__(self)


class TargetUnavailableError(UserError):
    """A target whose runtime is not installed."""


class NumericsError(UserError):
    """Compiled outputs disagree with PyTorch beyond the profile's tolerance."""


class UnsupportedOpError(UserError):
    """An op a target cannot convert; names the op and where it came from in the model."""
