"""``edgeformer profile``: measure the latency of a compiled artifact, or of several side by side."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json

NAME = "profile"

EPILOG = """\
several folders: edgeformer profile DIR1 DIR2 ... times them in alternating blocks on this machine
and prints one table (median, p90, load, first run, ratio to the fastest); each DIR/profile.json
is written.

exit codes: 0 measured (budget met, or none); 2 a user error, before anything is measured;
3 a median missed its profile's [budget] latency_ms (the report is printed and written first),
so CI can gate on it.  With --json the report is on stdout and the error one JSON line on stderr."""


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME,
        parents=[common],
        help="measure latency of a compiled artifact (several: side by side)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="DIR", nargs="+", help="artifact folder(s) from `edgeformer compile`")
    p.add_argument("--runs", type=int, default=50, help="minimum timed runs (default 50)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed duration (default 1 s)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs after the first inference (default 1)")
    p.add_argument("--cooldown", type=float, default=0.0, help="seconds to sleep before timing")
    p.add_argument("--threads", type=int, help="override the profile's thread count (0: the runtime's default)")
    p.add_argument("--ops", action="store_true", help="per-op breakdown from the runtime's profiler")
    p.add_argument("--ops-runs", type=int, default=10, help="runs averaged for --ops (default 10)")
    p.add_argument("--top", type=int, default=15, help="ops to show (default 15)")
    p.add_argument(
        "--frame-period-ms",
        type=float,
        metavar="MS",
        help="a streaming artifact: the frame hop for the real-time factor when its manifest has none (default 10)",
    )
    p.add_argument(
        "--state",
        metavar="FILE.npz",
        help="a streaming artifact: start from this state (arrays named by state or input name) instead of zeros",
    )
    p.add_argument("--remote", metavar="HOST:PORT", help="TVM RPC tracker to time the artifact on a device")
    p.add_argument("--key", help="device key registered with the tracker")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="report path (default DIR/profile.json; missing folders are created; one DIR only)",
    )
    return p


def _settings(args) -> dict:
    """The measurement settings, as ``profile_artifact`` and ``profile_artifacts`` take them."""
    return dict(
        min_runs=args.runs,
        min_seconds=args.min_seconds,
        warmup=args.warmup,
        cooldown_s=args.cooldown,
        ops=args.ops,
        ops_runs=args.ops_runs,
        threads=args.threads,
    )


def check_args(args) -> None:
    """Refuse every bad option before anything is loaded or measured."""
    from edgeformer.errors import UserError
    from edgeformer.latency import check_output, check_settings

    check_settings(**{k: v for k, v in _settings(args).items() if k != "ops"})
    if args.top < 0:
        raise UserError(f"--top must be 0 or more, got {args.top}", "pass --top 15, say")
    if args.key and not args.remote:
        raise UserError("--key needs --remote", "add --remote HOST:PORT (the TVM RPC tracker)")
    if len(args.artifact) > 1:
        for flag, value in (("-o", args.output), ("--remote", args.remote)):
            if value:
                raise UserError(
                    f"{flag} takes one artifact, got {len(args.artifact)}",
                    "profile the folders one at a time for it; side by side each report goes to DIR/profile.json",
                )
    check_output(args.output)
    if args.frame_period_ms is not None and args.frame_period_ms <= 0:
        raise UserError(f"--frame-period-ms must be > 0, got {args.frame_period_ms:g}", "pass --frame-period-ms 10")
    if args.state and len(args.artifact) > 1:
        raise UserError("--state takes one streaming artifact", "profile the folders one at a time for it")


def run(args) -> int:
    check_args(args)
    from edgeformer.profiling import profile_artifact, profile_artifacts

    settings = _settings(args)
    if len(args.artifact) == 1:
        stream = dict(frame_period_ms=args.frame_period_ms, state=args.state)
        one = profile_artifact(
            args.artifact[0], remote=args.remote, key=args.key, output=args.output, **stream, **settings
        )
        reports = [one]
    else:
        reports = profile_artifacts(args.artifact, **settings)
    if args.json:
        emit_json(reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports])
    elif len(reports) == 1:
        from edgeformer.report.text import profile_table

        profile_table(reports[0], console(), top=args.top)
    else:
        from edgeformer.report.text import compare_table

        compare_table(reports, console())
    check_budgets(reports)
    return 0


def check_budgets(reports) -> None:
    """Raise :class:`BudgetMissedError` (exit code 3) naming every median over its budget."""
    from edgeformer.errors import BudgetMissedError

    missed = [r for r in reports if r.budget and not r.budget.met]
    if missed:
        what = "; ".join(
            f"{r.artifact.path} median {r.latency.median_ms:.3f} ms > {r.budget.latency_ms:g} ms" for r in missed
        )
        raise BudgetMissedError(
            f"latency budget missed: {what}",
            "make the model faster or pick a faster profile; [budget] latency_ms in the profile sets the budget",
        )
