"""``edgeformer models``: list the model zoo."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, fmt_count, table

NAME = "models"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    return subparsers.add_parser(NAME, parents=[common], help="list the model zoo")


def run(args) -> int:
    from edgeformer.models import list_models
    from edgeformer.report.text import short_paper

    specs = list_models()
    if args.json:
        emit_json(
            [
                {
                    "name": s.name,
                    "family": s.family,
                    "params": s.params,
                    "published_params": s.published_params,
                    "macs": s.macs,
                    "published_macs": s.published_macs,
                    "input_shapes": [list(x) for x in s.input_shapes],
                    "paper": s.paper,
                    "tags": list(s.tags),
                    "num_classes": s.num_classes,
                    "checkpoint_layouts": list(s.checkpoint_layouts),
                }
                for s in specs
            ]
        )
        return 0
    rows = [
        (
            s.name,
            s.family,
            fmt_count(s.params),
            fmt_count(s.macs),
            " ".join("x".join(map(str, x)) for x in s.input_shapes),
            short_paper(s.paper),
        )
        for s in specs
    ]
    console().print(
        table("zoo models", ["name", "family", "params", "MACs", "input", "paper"], rows, justify_right=(2, 3))
    )
    return 0
