"""``edgeformer passes``: list graph rewrites and pipelines."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, table

NAME = "passes"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    return subparsers.add_parser(NAME, parents=[common], help="list graph rewrites and pipelines")


def run(args) -> int:
    from edgeformer.passes import PIPELINES, describe_passes
    from edgeformer.targets import get_target, target_names

    passes = describe_passes()
    owned = {t: get_target(t).pipeline for t in target_names()}
    # each target's pipeline by the name of the pass order it follows ("custom" if none)
    named = {
        t: next((n for n, names in PIPELINES.items() if list(p.names) == names), "custom") for t, p in owned.items()
    }
    if args.json:
        emit_json(
            {
                "passes": [{"name": n, "summary": s, "exact": e} for n, s, e in passes],
                "pipelines": PIPELINES,
                "target_pipelines": named,
                "target_pass_options": {t: p.to_dict()["options"] for t, p in owned.items()},
            }
        )
        return 0
    con = console()
    con.print(table("passes", ["name", "kind", "summary"], [(n, "exact" if e else "approx", s) for n, s, e in passes]))
    for name, names in PIPELINES.items():
        used = [t for t, p in named.items() if p == name]
        con.print(
            f"pipeline [bold]{name}[/bold]{' (default for ' + ', '.join(used) + ')' if used else ''}: "
            f"{' → '.join(names) or '(empty)'}"
        )
    for t, p in owned.items():
        if p.options:
            opts = "; ".join(f"{n} {', '.join(f'{k}={v}' for k, v in o.items())}" for n, o in sorted(p.options.items()))
            con.print(f"  {t} pass options: {opts}")
    return 0
