"""``edgeformer profiles``: list device profiles."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, table

NAME = "profiles"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    return subparsers.add_parser(NAME, parents=[common], help="list device profiles")


def run(args) -> int:
    from edgeformer.device_profiles import load_profile, profile_names

    profiles = [load_profile(n) for n in profile_names()]
    if args.json:
        emit_json([p.to_dict() for p in profiles])
        return 0
    rows = [(p.name, p.target, p.description) for p in profiles]
    console().print(
        table("device profiles (or pass --profile path/to/own.toml)", ["name", "target", "description"], rows)
    )
    return 0
