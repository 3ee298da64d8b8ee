"""``edgeformer targets``: runtimes, their availability and versions."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, table

NAME = "targets"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    return subparsers.add_parser(NAME, parents=[common], help="runtimes: availability and versions")


def run(args) -> int:
    from edgeformer.errors import TargetUnavailableError
    from edgeformer.targets import get_target, target_names

    out = []
    for name in target_names():
        try:
            t = get_target(name)
        except TargetUnavailableError as err:
            out.append(
                {"name": name, "available": False, "reason": str(err), "versions": {}, "description": "", "extra": ""}
            )
            continue
        reason = t.is_available()
        out.append(
            {
                "name": name,
                "available": reason is None,
                "reason": reason or "",
                "versions": t.versions(),
                "description": t.description,
                "extra": t.extra,
            }
        )
    if args.json:
        emit_json(out)
        return 0
    rows = [
        (
            o["name"],
            "yes" if o["available"] else "no",
            ", ".join(f"{k} {v}" for k, v in o["versions"].items()) or "-",
            o["reason"] or o["description"],
        )
        for o in out
    ]
    console().print(table("targets", ["target", "available", "runtime", "notes"], rows))
    return 0
