"""The ``edgeformer`` command line.

Every user error prints one line (``edgeformer: error: <problem>. <fix>``) and exits with code 2;
``--debug`` shows the traceback.  ``--json`` prints machine-readable output instead of tables.
Heavy imports (torch, runtimes) happen inside the commands so ``edgeformer --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from edgeformer import __version__

log = logging.getLogger("edgeformer")


# ------------------------------------------------------------------------------------- output


def _console(stderr: bool = False):
    import shutil

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(160, shutil.get_terminal_size().columns)
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence], *, justify_right: Sequence[int] = ()):
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in justify_right else "left", overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def _fmt_count(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def _shapes(args) -> list[tuple[int, ...]] | None:
    from edgeformer.sources import parse_shape

    return [parse_shape(s) for s in args.input_shape] if args.input_shape else None


# ------------------------------------------------------------------------------------ commands


def _short_paper(paper: str) -> str:
    import re

    arxiv = re.search(r"arXiv:?\s*([\d.]+)", paper)
    return paper.split(",")[0] + (f" arXiv:{arxiv.group(1)}" if arxiv else "")


def cmd_models(args) -> int:
    from edgeformer.models import list_models

    specs = list_models()
    if args.json:
        _emit_json(
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
            _fmt_count(s.params),
            _fmt_count(s.macs),
            " ".join("x".join(map(str, x)) for x in s.input_shapes),
            _short_paper(s.paper),
        )
        for s in specs
    ]
    _console().print(
        _table("zoo models", ["name", "family", "params", "MACs", "input", "paper"], rows, justify_right=(2, 3))
    )
    return 0


def cmd_profiles(args) -> int:
    from edgeformer.device_profiles import load_profile, profile_names

    profiles = [load_profile(n) for n in profile_names()]
    if args.json:
        _emit_json([p.to_dict() for p in profiles])
        return 0
    rows = [(p.name, p.target, p.description) for p in profiles]
    _console().print(
        _table("device profiles (or pass --profile path/to/own.toml)", ["name", "target", "description"], rows)
    )
    return 0


def cmd_targets(args) -> int:
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
        _emit_json(out)
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
    _console().print(_table("targets", ["target", "available", "runtime", "notes"], rows))
    return 0


def cmd_passes(args) -> int:
    from edgeformer.passes import PIPELINES, TARGET_PIPELINES, describe_passes

    passes = describe_passes()
    if args.json:
        _emit_json(
            {
                "passes": [{"name": n, "summary": s, "exact": e} for n, s, e in passes],
                "pipelines": PIPELINES,
                "target_pipelines": TARGET_PIPELINES,
            }
        )
        return 0
    con = _console()
    con.print(_table("passes", ["name", "kind", "summary"], [(n, "exact" if e else "approx", s) for n, s, e in passes]))
    for name, names in PIPELINES.items():
        used = [t for t, p in TARGET_PIPELINES.items() if p == name]
        con.print(
            f"pipeline [bold]{name}[/bold]{' (default for ' + ', '.join(used) + ')' if used else ''}: "
            f"{' → '.join(names) or '(empty)'}"
        )
    return 0


def cmd_export(args) -> int:
    from edgeformer.sources import load_model

    src = load_model(args.model, input_shapes=_shapes(args), weights=args.weights, dynamic_batch=args.dynamic_batch)
    path = src.graph.save(args.output)
    s = src.graph.summary()
    if args.json:
        _emit_json(
            {
                "path": str(path),
                "ir_hash": s.ir_hash,
                "parameters": s.parameters,
                "macs": s.total_macs,
                "nodes": len(s.nodes),
            }
        )
    else:
        _console().print(
            f"wrote [bold]{path}[/bold]  ir sha256 {s.ir_hash[:16]}  {len(s.nodes)} ops  "
            f"{_fmt_count(s.parameters)} params  {_fmt_count(s.total_macs)} MACs"
        )
    return 0


def cmd_inspect(args) -> int:
    from edgeformer.sources import load_model

    src = load_model(args.model, input_shapes=_shapes(args), weights=args.weights)
    s = src.graph.summary()
    if args.json:
        _emit_json(s.to_dict())
        return 0
    print(s.format(max_nodes=None if args.all else args.nodes))
    return 0


def cmd_compile(args) -> int:
    from functools import partial

    from edgeformer.compiler import STAGES, compile

    run = partial(
        compile,
        args.model,
        args.profile,
        args.output,
        input_shapes=_shapes(args),
        weights=args.weights,
        passes=args.passes,
        check=not args.no_check,
        dump_ir=args.dump_ir,
        explain=args.explain,
        use_cache=not args.no_cache,
    )
    con = _console(stderr=True)
    if args.json or not con.is_terminal and not args.progress:
        # Not a terminal: no progress display (stages are logged with --verbose), so an error
        # stays the single line on stderr.
        report = run()
    else:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con, transient=True
        ) as progress:
            task = progress.add_task("starting", total=len(STAGES))

            def on_stage(stage: str, msg: str) -> None:
                done = STAGES.index(stage) if stage in STAGES else 0
                progress.update(task, description=f"[bold]{stage}[/bold] {msg}", completed=done)

            report = run(on_stage=on_stage)
            progress.update(task, completed=len(STAGES), description="[bold]done[/bold]")
    if args.json:
        _emit_json({"path": str(report.path), "cached": report.cached, "manifest": report.manifest.to_dict()})
        return 0
    _print_compile_summary(report)
    return 0


def _print_compile_summary(report) -> None:
    m = report.manifest
    con = _console()
    cached = f"  [yellow](cached: identical compile skipped, key {m.cache_key[:12]})[/yellow]" if report.cached else ""
    con.print(
        f"[bold]{m.model['name']}[/bold] → [bold]{m.target}[/bold] (profile {m.profile['name']}) "
        f"in {report.path}{cached}"
    )
    rows = [
        (
            p["name"],
            "exact" if p["exact"] else "approx",
            p["matched"],
            p["nodes_removed"],
            p["params_folded"],
            "-" if p.get("max_abs_diff") is None else f"{p['max_abs_diff']:.2e}",
        )
        for p in m.passes
    ]
    if rows:
        con.print(
            _table(
                "passes",
                ["pass", "kind", "matched", "nodes removed", "params folded", "max |Δ|"],
                rows,
                justify_right=(2, 3, 4, 5),
            )
        )
    for p in m.passes:
        for line in p.get("details", {}).get("explain", []):
            con.print(f"  {p['name']}: {line}", markup=False)
    layout = m.target_details.get("ort_blocked_layout") or {}
    if layout.get("norms_on_blocked_layout"):
        con.print(
            f"onnxruntime layout: {layout['norms_on_blocked_layout']} norms run on blocked NCHWc tensors, "
            f"{layout['reorders_removed']} reorders removed"
        )
    n = m.numerics
    if n.status == "skipped":
        con.print(f"numerics: [yellow]skipped[/yellow] ({n.reason})")
    else:
        colour = "green" if n.status == "passed" else "red"
        con.print(
            f"numerics vs PyTorch: [{colour}]{n.status}[/{colour}]  max abs error {n.max_abs_error:.3e} "
            f"(atol {n.atol:g})  cosine {n.cosine:.8f}"
        )
    files = ", ".join(f"{f.path} ({f.bytes / 1e6:.2f} MB)" for f in m.files)
    con.print(f"files: {files}")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(m.runtime_versions.items()))
    con.print(f"compile time {m.compile_time_s:.1f} s; runtimes: {versions}")


def cmd_profile(args) -> int:
    from edgeformer.profiling import profile_artifact

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
        _emit_json(report.to_dict())
        return 0
    print_profile(report, top=args.top)
    return 0


def print_profile(report, *, top: int = 15) -> None:
    con = _console()
    a, lat, mach = report.artifact, report.latency, report.machine
    where = f"remote {report.remote.get('key')}@{report.remote.get('tracker')}" if report.remote else "this machine"
    con.print(
        f"[bold]{a['model']}[/bold] on [bold]{a['target']}[/bold] ({a['profile']}), {where}: "
        f"{mach.get('cpu_model', '?')}, {mach.get('usable_cores', mach.get('logical_cores'))} cores"
    )
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    con.print(f"[dim]settings: {settings}[/dim]")
    rows = [
        (f"{x:.3f}" if isinstance(x, float) else x)
        for x in (
            report.load_ms,
            report.first_inference_ms,
            lat["median_ms"],
            lat["p90_ms"],
            lat["p99_ms"],
            lat["min_ms"],
            lat["mean_ms"],
            lat["std_ms"],
            lat["runs"],
        )
    ]
    con.print(
        _table(
            "latency (ms)",
            ["load", "first", "median", "p90", "p99", "min", "mean", "std", "runs"],
            [rows],
            justify_right=range(9),
        )
    )
    if report.budget:
        ok = report.budget["met"]
        con.print(f"budget {report.budget['latency_ms']} ms: " + ("[green]met[/green]" if ok else "[red]missed[/red]"))
    if report.ops:
        ops = report.ops
        rows = [
            (
                o["name"],
                o["type"],
                o.get("source") or "",
                o.get("device") or "",
                f"{o['time_ms']:.4f}",
                f"{100 * o['share']:.1f}%",
            )
            for o in ops["ops"][:top]
        ]
        rows.append(
            (
                "(unexplained: runtime overhead between ops)",
                "",
                "",
                "",
                f"{ops['unexplained_ms']:.4f}",
                f"{100 * ops['unexplained_share']:.1f}%",
            )
        )
        con.print(
            _table(
                f"top {min(top, len(ops['ops']))} of {len(ops['ops'])} ops, mean of {ops['runs']} runs "
                f"(end to end {ops['end_to_end_ms']:.3f} ms)",
                ["op", "type", "source module", "device", "ms", "share"],
                rows,
                justify_right=(4, 5),
            )
        )
        by_type = list(ops.get("by_type", {}).items())[:8]
        if by_type:
            con.print("by type: " + ", ".join(f"{k} {v:.3f} ms" for k, v in by_type))
    for note in report.notes:
        con.print(f"[dim]note: {note}[/dim]")
    con.print(f"[dim]wrote {a['path']}/profile.json[/dim]" if not report.remote else "")


def cmd_train(args) -> int:
    from edgeformer.training import train

    result = train(args.family, args.out, epochs=args.epochs, seed=args.seed)
    data = result.to_dict() if hasattr(result, "to_dict") else vars(result)
    if args.json:
        _emit_json(data)
    else:
        _console().print(", ".join(f"{k}={v}" for k, v in data.items()))
    return 0


def cmd_tune(args) -> int:
    from edgeformer.targets.tvm import tune_model

    result = tune_model(
        args.model,
        args.profile,
        trials=args.trials,
        input_shapes=_shapes(args),
        weights=args.weights,
        passes=args.passes,
        work_dir=args.work_dir,
    )
    data = result.to_dict()
    if args.json:
        _emit_json(data)
        return 0
    _console().print(
        f"tuned {data['model']} for {data['profile']}: {data['trials']} trials over {data['tasks']} tasks in "
        f"{data['tuning_time_s']:.0f} s; estimated {data['untuned_estimated_ms']:.1f} ms untuned → "
        f"{data['estimated_ms']:.1f} ms tuned; database {data['database']}"
    )
    return 0


def cmd_rpc(args) -> int:
    from edgeformer import rpc

    con = _console()
    if args.tracker_only:
        on_ready = lambda t: con.print(f"tracker listening on {t.address}")  # noqa: E731
        rpc.serve_tracker(args.host, args.port or 9190, on_ready=on_ready)
    else:
        rpc.serve(
            args.tracker,
            args.key,
            args.host,
            args.port or 9090,
            threads=args.threads,
            on_ready=lambda srv: con.print(f"RPC server '{args.key}' listening on {srv.address}"),
        )
    return 0


# -------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    def flags(default):
        # The same flags at top level and after the subcommand; the subcommand copies default to
        # SUPPRESS so `edgeformer --debug inspect X` is not reset by the subparser's defaults.
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--json", action="store_true", default=default, help="machine-readable output on stdout")
        parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log what each stage does")
        parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks for errors")
        return parser

    top, common = flags(False), flags(argparse.SUPPRESS)

    model_args = argparse.ArgumentParser(add_help=False)
    model_args.add_argument("model", metavar="MODEL", help="zoo name, file.pt2, or package.module:factory")
    model_args.add_argument(
        "--input-shape", action="append", metavar="1x3x224x224", help="example input shape (repeat for several inputs)"
    )
    model_args.add_argument("--weights", metavar="PATH", help="checkpoint (.safetensors, or .pth loaded weights-only)")

    p = argparse.ArgumentParser(
        prog="edgeformer",
        description="Deployment compiler for efficient transformers on edge and mobile devices.",
        parents=[top],
    )
    p.add_argument("--version", action="version", version=f"edgeformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("models", parents=[common], help="list the model zoo").set_defaults(fn=cmd_models)
    sub.add_parser("profiles", parents=[common], help="list device profiles").set_defaults(fn=cmd_profiles)
    sub.add_parser("targets", parents=[common], help="runtimes: availability and versions").set_defaults(fn=cmd_targets)
    sub.add_parser("passes", parents=[common], help="list graph rewrites and pipelines").set_defaults(fn=cmd_passes)

    e = sub.add_parser("export", parents=[common, model_args], help="export MODEL to the IR (.pt2)")
    e.add_argument("-o", "--output", required=True, metavar="FILE.pt2")
    e.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    e.set_defaults(fn=cmd_export)

    i = sub.add_parser("inspect", parents=[common, model_args], help="ops, shapes, histogram, params and MACs")
    i.add_argument("--nodes", type=int, default=40, help="ops to list (default 40)")
    i.add_argument("--all", action="store_true", help="list every op")
    i.set_defaults(fn=cmd_inspect)

    c = sub.add_parser("compile", parents=[common, model_args], help="compile MODEL for a device profile")
    c.add_argument("--profile", default="host-ort", help="profile name or path to a .toml (default host-ort)")
    c.add_argument("-o", "--output", required=True, metavar="DIR", help="artifact folder to write")
    c.add_argument("--passes", metavar="+a,-b", help="add/drop passes from the default pipeline")
    c.add_argument("--no-check", action="store_true", help="skip the per-pass numerical check")
    c.add_argument("--dump-ir", metavar="DIR", help="write the readable IR after each pass")
    c.add_argument("--explain", action="store_true", help="report each pass match and each rejected near-miss")
    c.add_argument("--no-cache", action="store_true", help="recompile even if an identical compile is cached")
    c.add_argument("--progress", action="store_true", help="show the progress display even when not on a terminal")
    c.set_defaults(fn=cmd_compile)

    pr = sub.add_parser("profile", parents=[common], help="measure latency of a compiled artifact")
    pr.add_argument("artifact", metavar="DIR")
    pr.add_argument("--runs", type=int, default=50, help="minimum timed runs (default 50)")
    pr.add_argument("--min-seconds", type=float, default=1.0, help="minimum timed duration (default 1 s)")
    pr.add_argument("--warmup", type=int, default=1, help="warm-up runs after the first inference (default 1)")
    pr.add_argument("--cooldown", type=float, default=0.0, help="seconds to sleep before timing")
    pr.add_argument("--threads", type=int, help="override the profile's thread count")
    pr.add_argument("--ops", action="store_true", help="per-op breakdown from the runtime's profiler")
    pr.add_argument("--ops-runs", type=int, default=10, help="runs averaged for --ops (default 10)")
    pr.add_argument("--top", type=int, default=15, help="ops to show (default 15)")
    pr.add_argument("--remote", metavar="HOST:PORT", help="TVM RPC tracker to time the artifact on a device")
    pr.add_argument("--key", help="device key registered with the tracker")
    pr.add_argument("-o", "--output", metavar="FILE", help="report path (default DIR/profile.json)")
    pr.set_defaults(fn=cmd_profile)

    t = sub.add_parser("train", parents=[common], help="train a tiny zoo model on scikit-learn's digits")
    t.add_argument("family", help="model name, e.g. poolformer_tiny")
    t.add_argument("--out", required=True, metavar="FILE.safetensors")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_train)

    tu = sub.add_parser("tune", parents=[common, model_args], help="MetaSchedule-tune MODEL for a TVM profile")
    tu.add_argument("--profile", default="host-tvm")
    tu.add_argument("--trials", type=int, help="total trials wanted in the database (default: the profile's)")
    tu.add_argument("--work-dir", metavar="DIR", help="tuning database folder (default: per-profile cache)")
    tu.add_argument("--passes", metavar="+a,-b", help="add/drop passes (must match the later compile)")
    tu.set_defaults(fn=cmd_tune)

    rs = sub.add_parser(
        "rpc-server",
        parents=[common],
        help="serve this machine as a TVM RPC device (runs whatever it is sent: keep it on 127.0.0.1, tunnel over SSH)",
    )
    rs.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker")
    rs.add_argument("--key", default="local", help="device key to register under (default local)")
    rs.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    rs.add_argument("--port", type=int, help="port (default 9090; 9190 with --tracker-only)")
    rs.add_argument("--threads", type=int, default=0)
    rs.add_argument("--tracker-only", action="store_true", help="run a tracker instead of a device server")
    rs.set_defaults(fn=cmd_rpc)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not (args.verbose or args.debug):
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for noisy in ("torch", "torch.onnx", "onnxscript", "torch.export", "torch._export"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    from edgeformer.errors import UserError

    try:
        return args.fn(args)
    except UserError as err:
        if args.debug:
            raise
        msg = " ".join(str(err).split())  # one line, always
        print(f"edgeformer: error: {msg}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("edgeformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
