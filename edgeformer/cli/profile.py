"""``edgeformer profile``: measure the latency of a compiled artifact."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json

NAME = "profile"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common], help="measure latency of a compiled artifact")
    p.add_argument("artifact", metavar="DIR")
    p.add_argument("--runs", type=int, default=50, help="minimum timed runs (default 50)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed duration (default 1 s)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs after the first inference (default 1)")
    p.add_argument("--cooldown", type=float, default=0.0, help="seconds to sleep before timing")
    p.add_argument("--threads", type=int, help="override the profile's thread count")
    p.add_argument("--ops", action="store_true", help="per-op breakdown from the runtime's profiler")
    p.add_argument("--ops-runs", type=int, default=10, help="runs averaged for --ops (default 10)")
    p.add_argument("--top", type=int, default=15, help="ops to show (default 15)")
    p.add_argument("--remote", metavar="HOST:PORT", help="TVM RPC tracker to time the artifact on a device")
    p.add_argument("--key", help="device key registered with the tracker")
    p.add_argument("-o", "--output", metavar="FILE", help="report path (default DIR/profile.json)")
    return p


def run(args) -> int:
    from edgeformer.profiling import profile_artifact
    from edgeformer.report.text import profile_table

    report = profile_artifact(
        args.artifact,
        min_runs=args.runs,
        min_seconds=args.min_seconds,
        warmup=args.warmup,
        cooldown_s=args.cooldown,
        ops=args.ops,
        ops_runs=args.ops_runs,
        threads=args.threads,
        remote=args.remote,
        key=args.key,
        output=args.output,
    )
    if args.json:
        emit_json(report.to_dict())
        return 0
    profile_table(report, console(), top=args.top)
    return 0
