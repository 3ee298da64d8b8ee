"""User errors: one line, pluralised name lists, the JSON form and the exit codes."""

from __future__ import annotations

import pytest

from edgeformer.errors import BudgetMissedError, UnknownNameError, UserError, plural


@pytest.mark.parametrize(
    "kind, known",
    [
        ("pass", "passes"),
        ("key", "keys"),
        ("model", "models"),
        ("profile", "profiles"),
        ("box", "boxes"),
        ("dependency", "dependencies"),
        ("trainable model", "trainable models"),
        ("digits model or input kind", "digits model or input kinds"),
        ("option of pass 'fold_batchnorm'", "options of pass 'fold_batchnorm'"),
    ],
)
def test_plural(kind, known):
    assert plural(kind) == known


def test_unknown_name_lists_the_known_names_in_plural():
    err = UnknownNameError("pass", "zzzz", ["fold_batchnorm", "fold_constants"])
    assert str(err) == "unknown pass 'zzzz'. known passes: fold_batchnorm, fold_constants"
    assert "known keys: (none)" in str(UnknownNameError("key", "zzzz", []))


def test_user_error_as_json_and_exit_codes():
    err = UserError("artifact folder x does not exist", "create it with `edgeformer compile`")
    assert err.to_dict() == {
        "error": {
            "problem": "artifact folder x does not exist",
            "fix": "create it with `edgeformer compile`",
            "exit_code": 2,
        }
    }
    assert UserError("no fix here").to_dict()["error"]["fix"] is None
    missed = BudgetMissedError("latency budget 1 ms missed", "optimise")
    assert missed.exit_code == 3 and missed.to_dict()["error"]["exit_code"] == 3
    assert isinstance(missed, UserError)
