"""``edgeformer inspect``: ops, shapes, histogram, params and MACs of MODEL."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import emit_json, input_shapes

NAME = "inspect"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common, model_args], help="ops, shapes, histogram, params and MACs")
    p.add_argument("--nodes", type=int, default=40, help="ops to list (default 40)")
    p.add_argument("--all", action="store_true", help="list every op")
    return p


def run(args) -> int:
    from edgeformer.sources import load_model

    src = load_model(args.model, input_shapes=input_shapes(args), weights=args.weights)
    s = src.graph.summary()
    if args.json:
        emit_json(s.to_dict())
        return 0
    print(s.format(max_nodes=None if args.all else args.nodes))
    return 0
