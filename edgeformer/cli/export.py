"""``edgeformer export``: export MODEL to the IR (.pt2)."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, fmt_count, input_shapes

NAME = "export"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common, model_args], help="export MODEL to the IR (.pt2)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.pt2")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    return p


def run(args) -> int:
    from edgeformer.sources import load_model

    src = load_model(
        args.model, input_shapes=input_shapes(args), weights=args.weights, dynamic_batch=args.dynamic_batch
    )
    path = src.graph.save(args.output)
    s = src.graph.summary()
    if args.json:
        emit_json(
            {
                "path": str(path),
                "ir_hash": s.ir_hash,
                "parameters": s.parameters,
                "macs": s.total_macs,
                "nodes": len(s.nodes),
            }
        )
    else:
        console().print(
            f"wrote [bold]{path}[/bold]  ir sha256 {s.ir_hash[:16]}  {len(s.nodes)} ops  "
            f"{fmt_count(s.parameters)} params  {fmt_count(s.total_macs)} MACs"
        )
    return 0
