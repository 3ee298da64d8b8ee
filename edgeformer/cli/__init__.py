"""The ``edgeformer`` command line.

Every user error prints one line (``edgeformer: error: <problem>. <fix>``) and exits with code 2;
``--debug`` shows the traceback.  ``--json`` prints machine-readable output instead of tables.
Heavy imports (torch, runtimes) happen inside the commands so ``edgeformer --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from edgeformer import __version__
from edgeformer.cli import (
    _common,
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

log = logging.getLogger("edgeformer")

# One module per command, in the order `edgeformer --help` lists them. Each has NAME,
# add_parser(subparsers, common, model_args) -> its parser, and run(args) -> exit code.
COMMANDS = (models, profiles, targets, passes, export, inspect, rewrite, compile, profile, train, tune, rpc_server)


def build_parser() -> argparse.ArgumentParser:
    top, common = _common.flags(False), _common.flags(argparse.SUPPRESS)
    model_args = _common.model_args()

    p = argparse.ArgumentParser(
        prog="edgeformer",
        description="Deployment compiler for efficient transformers on edge and mobile devices.",
        parents=[top],
    )
    p.add_argument("--version", action="version", version=f"edgeformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub, common, model_args).set_defaults(fn=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not (args.verbose or args.debug):
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for noisy in ("torch", "torch.onnx", "onnxscript", "torch.export", "torch._export"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    from edgeformer.errors import UserError

    try:
        return args.fn(args)
    except UserError as err:
        if args.debug:
            raise
        msg = " ".join(str(err).split())  # one line, always
        print(f"edgeformer: error: {msg}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("edgeformer: interrupted", file=sys.stderr)
        return 130
