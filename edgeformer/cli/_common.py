"""What several commands share: console and JSON output, tables, counts, and the common parsers."""

from __future__ import annotations

import argparse
import json
import sys


def table(*args, **kwargs):
    """:func:`edgeformer.report.text.table`, imported when a table is built (report.text needs the
    zoo, hence torch, which `edgeformer --help` must not import)."""
    from edgeformer.report.text import table as build

    return build(*args, **kwargs)


__all__ = ["console", "emit_json", "table", "fmt_count", "input_shapes", "factory_args", "flags", "model_args"]


def console(stderr: bool = False):
    import shutil

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(160, shutil.get_terminal_size().columns)
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fmt_count(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def input_shapes(args) -> list[tuple[int, ...]] | None:
    """``--input-shape`` values as ``sources.InputShape`` tuples (they carry the dtype), or None."""
    from edgeformer.sources import parse_shape

    return [parse_shape(s) for s in args.input_shape] if args.input_shape else None


def factory_args(args) -> dict[str, object]:
    """``--factory-arg NAME=VALUE`` values as keyword arguments for ``load_model(factory_args=)``."""
    from edgeformer.sources import parse_factory_args

    return parse_factory_args(getattr(args, "factory_arg", None))


def flags(default) -> argparse.ArgumentParser:
    # The same flags at top level and after the subcommand; the subcommand copies default to
    # SUPPRESS so `edgeformer --debug inspect X` is not reset by the subparser's defaults.
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", action="store_true", default=default, help="machine-readable output on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log what each stage does")
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks for errors")
    return parser


def model_args() -> argparse.ArgumentParser:
    """The parent parser of the commands that load a model: MODEL, --input-shape, --weights,
    --factory-arg."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("model", metavar="MODEL", help="zoo name, file.pt2, or package.module:factory")
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="1x3x224x224",
        help="example input shape, optionally with a dtype: 1x12:int64 (float32, float16, int64, int32, bool; "
        "integer inputs get values in [0, 2)); repeat for several inputs",
    )
    parser.add_argument("--weights", metavar="PATH", help="checkpoint (.safetensors, or .pth loaded weights-only)")
    parser.add_argument(
        "--factory-arg",
        action="append",
        metavar="NAME=VALUE",
        help="keyword argument for a package.module:factory (a Python literal, else text); repeat for several",
    )
    return parser
