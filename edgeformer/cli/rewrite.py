"""``edgeformer rewrite``: MODEL through a profile's pass pipeline, saved as the rewritten IR (.pt2)."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, factory_args, fmt_count, input_shapes

NAME = "rewrite"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, parents=[common, model_args], help="run a profile's pass pipeline on MODEL and save the rewritten IR"
    )
    p.add_argument("--profile", default="host-ort", help="profile whose target pipeline to run (default host-ort)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.pt2")
    p.add_argument("--passes", metavar="+a,-b", help="add/drop passes from the target's pipeline")
    p.add_argument("--no-check", action="store_true", help="skip the per-pass numerical check")
    p.add_argument("--explain", action="store_true", help="report each pass match and each rejected near-miss")
    return p


def run(args) -> int:
    from edgeformer.compiler import plan, rewrite

    p = plan(
        args.model,
        args.profile,
        input_shapes=input_shapes(args),
        weights=args.weights,
        passes=args.passes,
        factory_args=factory_args(args),
    )
    done = rewrite(p, check=not args.no_check, explain=args.explain)
    path = done.graph.save(args.output)
    before, after = p.graph.summary(), done.graph.summary()
    if args.json:
        emit_json(
            {
                "path": str(path),
                "profile": p.profile.name,
                "ir_hash": before.ir_hash,
                "ir_hash_after_passes": after.ir_hash,
                "nodes": [len(before.nodes), len(after.nodes)],
                "parameters": [before.parameters, after.parameters],
                "passes": [r.to_dict() for r in done.records],
            }
        )
        return 0
    con = console()
    changed = [r.name for r in done.records if r.changed]
    con.print(
        f"wrote [bold]{path}[/bold]  ir sha256 {after.ir_hash[:16]}  {len(before.nodes)} → {len(after.nodes)} ops  "
        f"{fmt_count(before.parameters)} → {fmt_count(after.parameters)} params  "
        f"({p.target.name} pipeline of {p.profile.name}; changed: {', '.join(changed) or 'nothing'})"
    )
    for r in done.records:
        for line in r.details.get("explain", []):
            con.print(f"  {r.name}: {line}", markup=False)
    return 0
