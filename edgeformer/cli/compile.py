"""``edgeformer compile``: compile MODEL for one device profile, or for several side by side."""

from __future__ import annotations

import argparse
import sys

from edgeformer.cli._common import console, emit_json, factory_args, input_shapes

NAME = "compile"

EPILOG = """\
several profiles: --profile host-ort,host-openvino -o out compiles into out/host-ort and
out/host-openvino (one folder per profile name, under -o; likewise under --keep-failed and
--dump-ir).  Each folder is written whole or not at all; the compile stops at the first failure.

Without a terminal (CI, a pipe) each stage prints one line on stderr, `edgeformer: [stage] ...`;
an error is always the last line."""


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME,
        parents=[common, model_args],
        help="compile MODEL for a device profile (or several: --profile a,b)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--profile",
        action="append",
        metavar="NAME[,NAME...]",
        help="profile name or path to a .toml (default host-ort); several, comma-separated, compile side by side",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="artifact folder (with several profiles: their parent)"
    )
    p.add_argument("--passes", metavar="+a,-b", help="add/drop passes from the default pipeline")
    p.add_argument(
        "--pass-option",
        action="append",
        metavar="PASS.KEY=VALUE",
        help="an option of a pass in the pipeline, e.g. kv_downsample.stride=4 (repeatable)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the per-pass numerical check")
    p.add_argument("--dump-ir", metavar="DIR", help="write the readable IR after each pass")
    p.add_argument("--explain", action="store_true", help="report each pass match and each rejected near-miss")
    p.add_argument("--no-cache", action="store_true", help="recompile even if an identical compile is cached")
    p.add_argument(
        "--keep-failed",
        metavar="DIR",
        help="when the numerics check fails, keep the build there (files and manifest) to inspect it",
    )
    p.add_argument("--progress", action="store_true", help="show the progress display even when not on a terminal")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="export one step (a frame in, the logits so far out) with every state an explicit input and "
        "output, and check it against the whole window (docs/streaming.md)",
    )
    p.add_argument(
        "--frame-period-ms",
        type=float,
        metavar="MS",
        help="with --streaming: the frame hop the model assumes, recorded in the manifest (e.g. 10)",
    )
    a = p.add_argument_group(
        "approximations (docs/measurement.md: the approximation contract)",
        "A lower precision is judged against the exact fp32 model on your data; it ships only when it keeps "
        "accuracy (else the most sensitive layers return to float, one at a time) and is measurably faster.",
    )
    a.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "int8"),
        help="compute precision (the profile's sibling, e.g. host-ort -> host-ort-int8, when one is shipped)",
    )
    a.add_argument(
        "--calib",
        metavar="SRC",
        help="calibration inputs: digits | sample-images | FILE.npz | image FOLDER (int8 needs it)",
    )
    a.add_argument("--eval", metavar="SRC", help="labelled evaluation data: digits | FILE.npz (x, y) | class FOLDER")
    a.add_argument(
        "--preprocess", metavar="resize=256,crop=224,mean=..,std=..", help="how image folders become model inputs"
    )
    a.add_argument("--calib-size", type=int, metavar="N", help="calibration samples (default: the profile's, 128)")
    a.add_argument(
        "--max-accuracy-drop", type=float, metavar="POINTS", help="top-1 points allowed to be lost (default 1.0)"
    )
    a.add_argument(
        "--max-error", type=float, metavar="E", help="without labels: the largest 1 - cosine allowed (default 0.01)"
    )
    a.add_argument("--min-speedup", type=float, metavar="X", help="needed speed-up over exact fp32 (default 1.1)")
    a.add_argument(
        "--force-approx", action="store_true", help="ship the approximation even if it is not faster than fp32"
    )
    return p


def profile_list(args) -> list[str]:
    """The profiles asked for: one --profile, comma-separated names; ambiguous forms refused."""
    from edgeformer.errors import UserError

    given = args.profile or ["host-ort"]
    if len(given) > 1:
        raise UserError(
            f"--profile is given {len(given)} times",
            f"list several profiles in one --profile, comma-separated: --profile {','.join(given)}",
        )
    names = [n.strip() for n in given[0].split(",")]
    if any(not n for n in names):
        raise UserError(f"--profile {given[0]!r} has an empty name", "separate profile names with single commas")
    return names


def pass_options(items) -> dict[str, dict[str, str]]:
    """``["kv_downsample.stride=4", …]`` → ``{"kv_downsample": {"stride": "4"}}`` (typed by the pass)."""
    from edgeformer.errors import UserError

    out: dict[str, dict[str, str]] = {}
    for item in items:
        left, eq, value = item.partition("=")
        name, dot, key = left.strip().partition(".")
        if not (eq and dot and name and key.strip()):
            raise UserError(
                f"--pass-option {item!r} is not PASS.KEY=VALUE", "write e.g. --pass-option kv_downsample.stride=4"
            )
        out.setdefault(name, {})[key.strip()] = value.strip()
    return out


def run(args) -> int:
    from pathlib import Path

    from edgeformer.compiler import compile, resolve_target
    from edgeformer.device_profiles import load_profile, with_precision
    from edgeformer.errors import UserError

    refs = profile_list(args)
    out = Path(args.output)
    common = dict(
        input_shapes=input_shapes(args),
        weights=args.weights,
        passes=args.passes,
        check=not args.no_check,
        explain=args.explain,
        use_cache=not args.no_cache,
        factory_args=factory_args(args),
        precision=args.precision,
        calib=args.calib,
        eval=args.eval,
        preprocess=args.preprocess,
        calib_size=args.calib_size,
        max_accuracy_drop=args.max_accuracy_drop,
        max_error=args.max_error,
        min_speedup=args.min_speedup,
        force_approx=args.force_approx,
        pass_options=pass_options(args.pass_option or ()),
        streaming=args.streaming,
        frame_period_ms=args.frame_period_ms,
    )
    # Everything is resolved before the first compile starts: a typo in the third profile must
    # not cost the first two compiles.
    resolved = [resolve_target(with_precision(load_profile(ref), args.precision))[0] for ref in refs]
    jobs = []  # (profile ref, out dir, dump dir, keep dir, label)
    if len(refs) == 1:
        jobs.append((refs[0], out, args.dump_ir, args.keep_failed, ""))
    else:
        seen: dict[str, str] = {}
        for ref, prof in zip(refs, resolved):
            if prof.name in seen:
                raise UserError(
                    f"--profile names profile {prof.name} twice ({seen[prof.name]} and {ref}); with several "
                    f"profiles -o holds one folder per profile name",
                    "give each profile once",
                )
            seen[prof.name] = ref
        if (out / "manifest.json").is_file():
            raise UserError(
                f"-o {out} is an artifact folder; with several profiles -o is the parent folder of one "
                "artifact folder per profile",
                "choose a new folder for -o",
            )
        if out.exists() and not out.is_dir():
            raise UserError(f"-o {out} exists and is a file", "with several profiles -o is a folder")
        for ref, prof in zip(refs, resolved):
            dump = str(Path(args.dump_ir) / prof.name) if args.dump_ir else None
            keep = str(Path(args.keep_failed) / prof.name) if args.keep_failed else None
            jobs.append((ref, out / prof.name, dump, keep, prof.name))

    reports = []
    try:
        for ref, out_dir, dump_dir, keep_dir, label in jobs:
            kw = dict(common, dump_ir=dump_dir)
            if keep_dir:
                kw["keep_failed"] = keep_dir
            report = _compile_one(args, compile, ref, out_dir, kw, label)
            reports.append((ref, report))
            if not args.json:
                from edgeformer.report.text import compile_summary

                compile_summary(report, console(), profile=ref, passes=args.passes, factory_args=args.factory_arg or ())
    except UserError as err:
        if len(jobs) == 1:
            raise
        failed = jobs[len(reports)][4]
        if not args.json:
            _recap(jobs, reports, failed=failed)
        named = UserError(f"profile {failed}: {err.problem}", err.fix)
        named.exit_code = err.exit_code
        raise named from err
    if args.json:
        items = [_as_json(r) for _, r in reports]
        emit_json(items[0] if len(jobs) == 1 else items)
    elif len(jobs) > 1:
        _recap(jobs, reports)
    return 0


def _as_json(report) -> dict:
    m = report.manifest
    return {"profile": m.profile.name, "path": str(report.path), "cached": report.cached, "manifest": m.to_dict()}


def _compile_one(args, compile, ref, out_dir, kw, label):
    """One compile, with the progress display on a terminal, else one line per stage on stderr."""
    con = console(stderr=True)
    if args.json:
        return compile(args.model, ref, out_dir, **kw)
    if not con.is_terminal and not args.progress:
        # Not a terminal (CI, a pipe): one plain line per stage, so a long compile shows where it is;
        # an error stays the last, single line after them.
        prefix = f"{label} " if label else ""

        def on_stage(stage: str, msg: str) -> None:
            line = " ".join(f"edgeformer: [{prefix}{stage}] {msg}".split())
            print(line, file=sys.stderr, flush=True)

        return compile(args.model, ref, out_dir, on_stage=on_stage, **kw)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgeformer.compiler import STAGES

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con, transient=True
    ) as progress:
        task = progress.add_task(f"{label} starting".strip(), total=len(STAGES))

        def on_stage(stage: str, msg: str) -> None:
            done = STAGES.index(stage) if stage in STAGES else 0
            progress.update(task, description=f"{label} [bold]{stage}[/bold] {msg}".strip(), completed=done)

        report = compile(args.model, ref, out_dir, on_stage=on_stage, **kw)
        progress.update(task, completed=len(STAGES), description="[bold]done[/bold]")
    return report


def _recap(jobs, reports, failed: str | None = None) -> None:
    """One final line per profile of a several-profile compile."""
    con = console()
    con.print(f"[bold]{len(jobs)} profiles[/bold]:")
    for i, (_, out_dir, _, _, label) in enumerate(jobs):
        if i < len(reports):
            r = reports[i][1]
            n = r.manifest.numerics
            how = "cached" if r.cached else f"{r.elapsed_s:.1f} s"
            con.print(f"  {label}: {r.path} ({r.manifest.target}; numerics {n.status}; {how})", markup=False)
        elif label == failed:
            con.print(f"  {label}: {out_dir} failed, nothing written (the error is the last line)", markup=False)
        else:
            con.print(f"  {label}: {out_dir} not compiled (stopped at the first failure)", markup=False)
