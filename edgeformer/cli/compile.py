"""``edgeformer compile``: compile MODEL for a device profile."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, input_shapes

NAME = "compile"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common, model_args], help="compile MODEL for a device profile")
    p.add_argument("--profile", default="host-ort", help="profile name or path to a .toml (default host-ort)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="artifact folder to write")
    p.add_argument("--passes", metavar="+a,-b", help="add/drop passes from the default pipeline")
    p.add_argument("--no-check", action="store_true", help="skip the per-pass numerical check")
    p.add_argument("--dump-ir", metavar="DIR", help="write the readable IR after each pass")
    p.add_argument("--explain", action="store_true", help="report each pass match and each rejected near-miss")
    p.add_argument("--no-cache", action="store_true", help="recompile even if an identical compile is cached")
    p.add_argument("--progress", action="store_true", help="show the progress display even when not on a terminal")
    return p


def run(args) -> int:
    from functools import partial

    from edgeformer.compiler import STAGES, compile
    from edgeformer.report.text import compile_summary

    compile_model = partial(
        compile,
        args.model,
        args.profile,
        args.output,
        input_shapes=input_shapes(args),
        weights=args.weights,
        passes=args.passes,
        check=not args.no_check,
        dump_ir=args.dump_ir,
        explain=args.explain,
        use_cache=not args.no_cache,
    )
    con = console(stderr=True)
    if args.json or not con.is_terminal and not args.progress:
        # Not a terminal: no progress display (stages are logged with --verbose), so an error
        # stays the single line on stderr.
        report = compile_model()
    else:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con, transient=True
        ) as progress:
            task = progress.add_task("starting", total=len(STAGES))

            def on_stage(stage: str, msg: str) -> None:
                done = STAGES.index(stage) if stage in STAGES else 0
                progress.update(task, description=f"[bold]{stage}[/bold] {msg}", completed=done)

            report = compile_model(on_stage=on_stage)
            progress.update(task, completed=len(STAGES), description="[bold]done[/bold]")
    if args.json:
        emit_json({"path": str(report.path), "cached": report.cached, "manifest": report.manifest.to_dict()})
        return 0
    compile_summary(report, console())
    return 0
