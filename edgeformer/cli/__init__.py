"""The ``edgeformer`` command line.

Every user error prints one line (``edgeformer: error: <problem>. <fix>``) on stderr and exits
with its code (below); ``--debug`` shows the traceback.  ``--json`` prints machine-readable output
on stdout instead of tables, and an error as one JSON line on stderr:
``{"error": {"problem": ..., "fix": ..., "exit_code": N}}``.  A bad command line is a user error
too.  Heavy imports (torch, runtimes) happen inside the commands so ``edgeformer --help`` is
instant.  docs/cli.md describes all of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from edgeformer import __version__
from edgeformer.cli import (
    _common,
    bundle,
    cache,
    compile,
    export,
    inspect,
    models,
    passes,
    profile,
    profiles,
    rewrite,
    rpc_server,
    targets,
    train,
    tune,
)
from edgeformer.errors import EXIT_BUDGET_MISSED, EXIT_USER_ERROR, BudgetMissedError, UserError

log = logging.getLogger("edgeformer")

# One module per command, in the order `edgeformer --help` lists them. Each has NAME,
# add_parser(subparsers, common, model_args) -> its parser, and run(args) -> exit code.
COMMANDS = (
    models,
    profiles,
    targets,
    passes,
    export,
    inspect,
    rewrite,
    compile,
    profile,
    bundle,
    train,
    tune,
    cache,
    rpc_server,
)

EXIT_CODES = f"""\
exit codes:
  0    success
  1    a bug in edgeformer or a runtime (a traceback: please report it)
  {EXIT_USER_ERROR}    a user error: one line on stderr, `edgeformer: error: <problem>. <fix>`
  {EXIT_BUDGET_MISSED}    edgeformer profile: a median missed the profile's [budget] latency_ms
  130  interrupted
with --json, results are JSON on stdout and an error is one JSON line on stderr:
  {{"error": {{"problem": "...", "fix": "...", "exit_code": 2}}}}
(docs/cli.md)"""

# Options whose values may start with - or +: `--passes -fold_layer_scale` (argparse alone would
# read -fold_layer_scale as an unknown option and say "expected one argument").
SIGNED_VALUE_OPTIONS = ("--passes",)


class UsageError(UserError):
    """A command line argparse refuses: the same one line (or JSON) as every other user error."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises :class:`UsageError` instead of printing usage."""

    def error(self, message: str):
        command = self.prog.removeprefix("edgeformer").strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message}", f"see `{self.prog} --help`")


def join_signed_values(argv: Sequence[str]) -> list[str]:
    """``--passes -a,+b`` → ``--passes=-a,+b`` for the options in :data:`SIGNED_VALUE_OPTIONS`.

    The next token is taken as the value when it starts with ``+``, or with a single ``-`` and is
    longer than a short option (``-o``, ``-v`` stay options; no pass has a one-letter name).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + list(argv[i:])
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if token in SIGNED_VALUE_OPTIONS and nxt is not None:
            signed = nxt.startswith("+") or (nxt.startswith("-") and not nxt.startswith("--") and len(nxt) > 2)
            if signed:
                out.append(f"{token}={nxt}")
                i += 2
                continue
        out.append(token)
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    top, common = _common.flags(False), _common.flags(argparse.SUPPRESS)
    model_args = _common.model_args()

    p = Parser(
        prog="edgeformer",
        description="Deployment compiler for efficient transformers on edge and mobile devices.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[top],
    )
    p.add_argument("--version", action="version", version=f"edgeformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub, common, model_args).set_defaults(fn=command.run)
    return p


def _flag_before_separator(argv: Sequence[str], flag: str) -> bool:
    return flag in (list(argv)[: list(argv).index("--")] if "--" in argv else argv)


def report_error(err: UserError, as_json: bool) -> int:
    """Print ``err`` as the one line (or one JSON line) on stderr; return its exit code."""
    if as_json:
        sys.stderr.write(json.dumps(err.to_dict(), sort_keys=True) + "\n")
    else:
        msg = " ".join(str(err).split())  # one line, always
        print(f"edgeformer: error: {msg}", file=sys.stderr)
    sys.stderr.flush()
    return err.exit_code


def quiet_warnings() -> None:
    """No Python warnings for the whole run, even if an SDK resets the warning filters on import
    (``warnings.simplefilter("always")``): they are routed to logging, which shows them only with
    --verbose."""
    warnings.filterwarnings("ignore")
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for noisy in ("torch", "torch.onnx", "onnxscript", "torch.export", "torch._export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = join_signed_values(sys.argv[1:] if argv is None else list(argv))
    try:
        args = build_parser().parse_args(argv)
    except UserError as err:
        return report_error(err, _flag_before_separator(argv, "--json"))
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not (args.verbose or args.debug):
        quiet_warnings()
    try:
        return args.fn(args)
    except UserError as err:
        if args.debug and not isinstance(err, BudgetMissedError):  # a missed budget is a result
            raise
        return report_error(err, args.json)
    except KeyboardInterrupt:
        if args.json:
            sys.stderr.write(json.dumps({"error": {"problem": "interrupted", "fix": None, "exit_code": 130}}) + "\n")
        else:
            print("edgeformer: interrupted", file=sys.stderr)
        return 130
