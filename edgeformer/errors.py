"""User-facing errors.

Every mistake a user can make (unknown names, missing or corrupt files, bad shapes, unsupported
ops, unwritable paths) raises :class:`UserError`.  The CLI prints its one-line message and exits
with its ``exit_code``; anything else is a bug and keeps its traceback.

Exit codes (the CLI's, documented in ``edgeformer --help`` and docs/cli.md):

    0  success
    1  a bug in edgeformer or a runtime (a traceback)
    2  a user error (:class:`UserError`), including a bad command line
    3  ``edgeformer profile``: the profile's latency budget was missed (:class:`BudgetMissedError`)
  130  interrupted
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


EXIT_USER_ERROR = 2
EXIT_BUDGET_MISSED = 3


def plural(kind: str) -> str:
    """``kind`` in the plural: "pass" → "passes", "key" → "keys", "option of pass 'x'" → "options of pass 'x'"."""
    head, of, tail = kind.partition(" of ")
    words = head.split(" ")
    word = words[-1]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        word += "es"
    elif word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        word = word[:-1] + "ies"
    else:
        word += "s"
    return " ".join([*words[:-1], word]) + of + tail


class UserError(Exception):
    """A problem the user can fix.  ``str(err)`` is one line naming the problem and the fix."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. {fix}" if fix else problem)

    def to_dict(self) -> dict:
        """The error as ``edgeformer --json`` prints it: ``{"error": {"problem", "fix", "exit_code"}}``
        (each text on one line; ``fix`` is None when the message carries none)."""

        def one_line(text: str | None) -> str | None:
            return None if text is None else " ".join(str(text).split())

        return {"error": {"problem": one_line(self.problem), "fix": one_line(self.fix), "exit_code": self.exit_code}}


class UnknownNameError(UserError, KeyError):
    """An unknown model, profile, target or pass name; suggests the closest known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if close:
            fix = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        else:
            fix = f"known {plural(kind)}: {', '.join(known) if known else '(none)'}"
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


class BudgetMissedError(UserError):
    """The measured median missed the profile's ``[budget] latency_ms``: exit code 3, so CI can gate
    on it (the report is still printed and written first)."""

    exit_code = EXIT_BUDGET_MISSED
