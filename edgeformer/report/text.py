"""Text reports: rich tables and lines for the compile summary and the latency profile.

Each renderer prints to the ``rich`` console it is given; rich is imported only when a table is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edgeformer.models import get_spec


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence], *, justify_right: Sequence[int] = ()):
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in justify_right else "left", overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def short_paper(paper: str) -> str:
    """First author/title field of a citation, plus its arXiv id if it has one."""
    arxiv = re.search(r"arXiv:?\s*([\d.]+)", paper)
    return paper.split(",")[0] + (f" arXiv:{arxiv.group(1)}" if arxiv else "")


def _signed(n: int) -> str:
    """An op count change with its sign: +22, −3, 0 (a true minus sign, as a table shows it)."""
    return f"+{n}" if n > 0 else f"−{-n}" if n < 0 else "0"


def ops_delta(p) -> str:
    """A pass's change in op count, e.g. "+22", "−3", "0 (+2 −2)" when it both added and removed."""
    added = sum(v for v in p.op_delta.values() if v > 0)
    removed = -sum(v for v in p.op_delta.values() if v < 0)
    net = added - removed if p.op_delta else -p.nodes_removed
    if added and removed:
        return f"{_signed(net)} (+{added} −{removed})"
    return _signed(net)


def profile_ref(manifest) -> str:
    """The --profile that names the manifest's profile: the shipped name, or the file it came from."""
    where = manifest.profile.path or ""
    if where and not where.startswith(("profile ", "manifest ")):
        return where
    return manifest.profile.name


def _shape(spec) -> str:
    text = "x".join(str(d) for d in spec.shape)
    return text if spec.dtype == "float32" else f"{text}:{spec.dtype}"


def _zoo_default_shapes(name: str) -> list[list[int]] | None:
    try:
        return [list(s) for s in get_spec(name).input_shapes]
    except Exception:  # noqa: BLE001 - only decides whether to spell out the shapes
        return None


def tune_command(
    manifest, *, profile: str | None = None, passes: str | None = None, factory_args: Sequence[str] = ()
) -> str | None:
    """The ``edgeformer tune`` command line for the model this manifest was compiled from (None for
    an ``nn.Module`` passed from Python, which has no command line).

    MODEL is given as the user gave it (zoo name, the .pt2 path, package.module:factory), with the
    input shapes, weights, passes and profile that select the same TVM workload.
    """
    import shlex

    m = manifest.model
    shapes = [_shape(t) for t in manifest.inputs]
    if m.source == "zoo":
        ref = m.name
        defaults = _zoo_default_shapes(m.name)
        if defaults is not None and defaults == [list(t.shape) for t in manifest.inputs]:
            shapes = []
    elif m.source == "pt2" and m.path:
        ref, shapes = m.path, []  # the export fixes its shapes
    elif m.source == "factory" and m.ref:
        ref = m.ref
    else:
        return None
    argv = ["edgeformer", "tune", ref]
    for s in shapes:
        argv += ["--input-shape", s]
    for a in factory_args:
        argv += ["--factory-arg", a]
    if m.weights is not None:
        argv += ["--weights", m.weights.path]
    if passes:
        argv.append(f"--passes={passes}")
    argv += ["--profile", profile or profile_ref(manifest)]
    return " ".join(shlex.quote(a) for a in argv)


def _weights_line(m) -> str | None:
    origin = m.model.weights_origin
    if origin == "random":
        return "weights: [yellow]random[/yellow] (pass --weights FILE for trained ones)"
    w = m.model.weights
    if origin == "checkpoint" and w is not None:
        # The layout says something only when the checkpoint was converted (timm names → the model's).
        layout = f", converted from the {w.layout} layout" if w.layout and w.layout != "official" else ""
        return f"weights: checkpoint {w.path} (sha256 {w.sha256[:12]}{layout})"
    return None


def _details(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def compile_summary(
    report,
    console,
    *,
    profile: str | None = None,
    passes: str | None = None,
    factory_args: Sequence[str] = (),
) -> None:
    """What a compile did: passes, weights, numerics, files and runtimes.

    ``profile``, ``passes`` and ``factory_args`` are the command line's, for the commands it
    suggests (``edgeformer tune`` for an untuned TVM compile).
    """
    m = report.manifest
    console.print(f"[bold]{m.model.name}[/bold] → [bold]{m.target}[/bold] (profile {m.profile.name}) in {report.path}")
    if report.cached:
        where = (
            f"already in {report.path}"
            if report.cache_source == "output"
            else f"from the compile cache (key {m.cache_key[:12]})"
        )
        when = f" made {m.created_at}" if m.created_at else ""
        console.print(
            f"[yellow]cached:[/yellow] identical compile {where}{when}, took {report.elapsed_s:.1f} s now "
            f"(the original compile took {m.compile_time_s:.1f} s)"
        )
    rows = [
        (
            p.name,
            "exact" if p.exact else "approx",
            p.matched,
            ops_delta(p),
            p.params_folded,
            "-" if p.max_abs_diff is None else f"{p.max_abs_diff:.2e}",
        )
        for p in m.passes
    ]
    if rows:
        console.print(
            table(
                "passes",
                ["pass", "kind", "matched", "Δ ops", "params folded", "max |Δ|"],
                rows,
                justify_right=(2, 3, 4, 5),
            )
        )
    for p in m.passes:
        for line in p.details.get("explain", []):
            console.print(f"  {p.name}: {line}", markup=False)
    weights = _weights_line(m)
    if weights:
        console.print(weights)
    details = m.target_details
    layout = details.get("ort_blocked_layout") or {}
    if layout.get("norms_on_blocked_layout"):
        console.print(
            f"onnxruntime layout: {layout['norms_on_blocked_layout']} norms run on blocked NCHWc tensors, "
            f"{layout['reorders_removed']} reorders removed"
        )
    if details.get("ort_format_portable") is False:
        console.print(
            details.get("ort_cpu_specific")
            or "model.ort is specific to this CPU (NCHWc layout ops); for phones use --profile android-arm64-ort",
            markup=False,
        )
    if details.get("delegation_summary"):
        console.print(f"delegation: {_details(details['delegation_summary'])}", markup=False)
    tuning = details.get("tuning") or {}
    status = str(tuning.get("status") or "")
    if status.startswith("untuned"):
        from rich.markup import escape

        cmd = tune_command(m, profile=profile, passes=passes, factory_args=factory_args)
        how = (
            f"tune it, then compile again: {escape(cmd)}"
            if cmd
            else "tune it from Python: edgeformer.tuning.tune_model(module, profile, input_shapes=...)"
        )
        console.print(f"[yellow]tvm: {status}[/yellow]: untuned TVM runs about 100x slower; {how}", soft_wrap=True)
    elif status:
        tuned, tunable = tuning.get("tuned_functions", 0), tuning.get("tunable_functions", 0)
        console.print(f"tvm: {status} ({tuned} of {tunable} functions tuned)", markup=False)
    n = m.numerics
    if n.status == "skipped":
        console.print(f"numerics: [yellow]skipped[/yellow] ({n.reason})")
    else:
        colour = "green" if n.status == "passed" else "red"
        bound = f"atol {n.atol:g}" if n.atol is not None else f"approximate: cosine ≥ {n.min_cosine:g} checked"
        console.print(
            f"numerics vs PyTorch: [{colour}]{n.status}[/{colour}]  max abs error {n.max_abs_error:.3e} "
            f"({bound})  cosine {n.cosine:.8f}"
        )
    if m.approximation is not None:
        approximation_block(m.approximation, console)
    files = ", ".join(f"{f.path} ({f.bytes / 1e6:.2f} MB)" for f in m.files)
    console.print(f"files: {files}")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(m.runtime_versions.items()))
    if report.cached:
        console.print(f"runtimes: {versions}")
    else:
        console.print(f"compile time {m.compile_time_s:.1f} s; runtimes: {versions}")


def _top1(t: dict) -> str:
    lo, hi = t["ci95"]
    return f"{100 * t['rate']:.2f} % ({t['correct']}/{t['n']}, 95 % CI {100 * lo:.1f}-{100 * hi:.1f})"


def approximation_block(a, console) -> None:
    """The approximation contract's accuracy block, gates and decision (manifest ``approximation``)."""
    acc = a.accuracy
    data = acc["data"]
    label = "" if data.get("labelled") else " (no labels)"
    if not acc["samples"]:
        console.print(f"[bold]approximation[/bold]: {a.kind}: nothing approximated")
    else:
        console.print(
            f"[bold]approximation[/bold]: {a.kind}, judged on {acc['samples']} samples of {data['name']}{label}"
        )
    if not acc["samples"]:
        pass
    elif str(acc["measured"]).startswith("not measured"):
        console.print(f"  accuracy: {acc['measured']}", markup=False)
    else:
        if acc.get("reference_top1"):
            ref, app, mc = acc["reference_top1"], acc["approx_top1"], acc["mcnemar"]
            console.print(f"  top-1 exact fp32  {_top1(ref)}", markup=False)
            console.print(
                f"  top-1 {a.kind.split()[-1]:<10} {_top1(app)}; drop {acc['accuracy_drop_points']:+.2f} points, "
                f"McNemar p = {mc['p']:.3g} ({mc['b']} lost, {mc['c']} gained)",
                markup=False,
            )
        if acc.get("agreement"):
            ag = acc["agreement"]
            console.print(f"  top-1 agreement with exact fp32: {ag['count']}/{ag['n']} ({100 * ag['rate']:.2f} %)")
        cos = "-" if acc.get("cosine") is None else f"{acc['cosine']:.6f}"
        console.print(
            f"  outputs vs exact fp32: cosine {cos}, max |Δ| {acc['max_abs_error']:.4g}, "
            f"mean |Δ| {acc['mean_abs_error']:.4g}",
            markup=False,
        )
    for note in acc.get("notes", []):
        console.print(f"  note: {note}", markup=False)
    for g in a.gates:
        verdict = "passed" if g["passed"] else "failed"
        value = "-" if g.get("value") is None else f"{g['value']:.4g}"
        console.print(f"  {g['name']} gate: {verdict} ({g['metric']} {value}, limit {g['limit']:g})", markup=False)
    _sites(a, console)
    if a.kept_float:
        names = ", ".join(f"{k['layer']} ({k['source'] or '?'})" for k in a.kept_float)
        console.print(f"  kept in float (most sensitive first): {names}", markup=False)
    sp = a.speed
    if sp.get("measured"):
        console.print(
            f"  speed gate: {'passed' if sp['passed'] else 'failed'}: exact fp32 {sp['exact_median_ms']:.3f} ms, "
            f"{a.kind.split()[-1]} {sp['approx_median_ms']:.3f} ms (median), speed-up {sp['speedup']:.2f}x, "
            f"needed {sp['min_speedup']:g}x",
            markup=False,
        )
        for precision, row in (sp.get("runtime_defaults") or {}).items():
            if row.get("median_ms") is None:
                console.print(f"  against the runtime's {precision} default: {row.get('note', '')}", markup=False)
                continue
            console.print(
                f"  against the runtime's own {precision} default: {row['median_ms']:.3f} ms (median), "
                f"{a.kind.split()[-1]} {row['approx_speedup']:.2f}x its speed",
                markup=False,
            )
        if sp.get("note"):
            console.print(f"  note: {sp['note']}", markup=False)
    else:
        console.print(f"  speed gate: {sp.get('note') or 'not measured'}", markup=False)
    colour = "green" if a.shipped == "approximate" else "yellow"
    console.print(f"  [{colour}]shipped: {a.shipped}[/{colour}]: {a.reason}")


def _sites(a, console) -> None:
    """The driver's table (edgeformer/sites.py): one row per attention site each site pass saw."""
    rows = []
    for d in getattr(a, "sites", None) or []:
        matched = d["details"].get("applied")
        verdict = "applied" if d["applied"] else "declined" if matched else "not matched"
        share = "-" if d["share"] is None else f"{100 * d['share']:.1f}% ({d['share_from']})"

        def x(v, fmt):
            return "-" if v is None else format(v, fmt)

        rows.append((
            d["pass_name"], d["node"], d["source"] or "?", verdict, share, x(d["predicted_speedup"], ".2f"),
            x(d["measured_speedup"], ".2f"), x(d["cosine"], ".6f"), x(d["max_abs_error"], ".3g"), d["reason"],
        ))  # fmt: skip
    if rows:
        columns = ["pass", "node", "source", "verdict", "share", "predicted ×", "measured ×", "own cosine",
                   "own max |Δ|", "reason"]  # fmt: skip
        console.print(table("attention sites", columns, rows, justify_right=(5, 6, 7, 8)))


def profile_table(report, console, *, top: int = 15) -> None:
    """A latency report: machine, settings, latency table, budget, the ``top`` slowest ops and notes."""
    a, lat, mach = report.artifact, report.latency, report.machine
    where = f"remote {report.remote.key}@{report.remote.tracker}" if report.remote else "this machine"
    cores = mach.usable_cores if mach.usable_cores is not None else mach.logical_cores
    console.print(
        f"[bold]{a.model}[/bold] on [bold]{a.target}[/bold] ({a.profile}), {where}: "
        f"{mach.cpu_model or '?'}, {cores} cores"
    )
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    console.print(f"[dim]settings: {settings}[/dim]")
    rows = [
        (f"{x:.3f}" if isinstance(x, float) else x)
        for x in (
            report.load_ms,
            report.first_inference_ms,
            lat.median_ms,
            lat.p90_ms,
            lat.p99_ms,
            lat.min_ms,
            lat.mean_ms,
            lat.std_ms,
            lat.runs,
        )
    ]
    console.print(
        table(
            "latency (ms)",
            ["load", "first", "median", "p90", "p99", "min", "mean", "std", "runs"],
            [rows],
            justify_right=range(9),
        )
    )
    if report.streaming:
        st = report.streaming
        f = st["frame_ms"]
        console.print(
            f"streaming: per frame median {f['median']:.3f} ms, p90 {f['p90']:.3f}, p99 {f['p99']:.3f} "
            f"({st['frames']} frames, state carried); real-time factor {st['real_time_factor']:.4f} at a "
            f"{st['frame_period_ms']:g} ms frame period ({st['frame_period_origin']}); reset {st['reset_ms']:.4f} ms; "
            f"look-ahead {st.get('delay_frames', '?')} frames"
        )
    if report.budget:
        verdict = "[green]met[/green]" if report.budget.met else "[red]missed[/red]"
        console.print(f"budget {report.budget.latency_ms} ms: {verdict}")
    if report.ops:
        ops = report.ops
        rows = [
            (
                o.name,
                o.type,
                o.source or "",
                o.device or "",
                f"{o.time_ms:.4f}",
                f"{100 * o.share:.1f}%",
            )
            for o in ops.ops[:top]
        ]
        rows.append(
            (
                "(not in any op: session/dispatch overhead and profiler cost)",
                "",
                "",
                "",
                f"{ops.unexplained_ms:.4f}",
                f"{100 * ops.unexplained_share:.1f}%",
            )
        )
        console.print(
            table(
                f"top {min(top, len(ops.ops))} of {len(ops.ops)} ops, medians of {ops.runs} profiled runs after a "
                f"warm-up (shares are of the median profiled run: {ops.end_to_end_ms:.3f} ms end to end)",
                ["op", "type", "source module", "device", "ms", "share"],
                rows,
                justify_right=(4, 5),
            )
        )
        by_type = list(ops.by_type.items())[:8]
        if by_type:
            console.print("by type: " + ", ".join(f"{k} {v:.3f} ms" for k, v in by_type))
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]")
    if report.path is not None:
        console.print(f"[dim]wrote {report.path}[/dim]")


def compare_table(reports, console) -> None:
    """Several latency reports side by side: median, p90, load, first run, and each median's ratio
    to the fastest (1.00× is the fastest)."""
    fastest = min(r.latency.median_ms for r in reports)
    budgets = any(r.budget for r in reports)
    rows = []
    for r in reports:
        a, lat = r.artifact, r.latency
        row = [
            a.path,
            a.model,
            f"{a.target} ({a.profile})",
            f"{lat.median_ms:.3f}",
            f"{lat.p90_ms:.3f}",
            f"{r.load_ms:.1f}",
            f"{r.first_inference_ms:.3f}",
            f"{lat.median_ms / fastest:.2f}×" if fastest > 0 else "-",
            lat.runs,
        ]
        if budgets:
            row.append("-" if not r.budget else f"{r.budget.latency_ms:g} {'met' if r.budget.met else 'MISSED'}")
        rows.append(row)
    columns = ["artifact", "model", "target (profile)", "median", "p90", "load", "first", "vs fastest", "runs"]
    if budgets:
        columns.append("budget ms")
    console.print(table("latency (ms), timed in alternating blocks", columns, rows, justify_right=range(3, 9)))
    mach = reports[0].machine
    cores = mach.usable_cores if mach.usable_cores is not None else mach.logical_cores
    console.print(f"[dim]this machine: {mach.cpu_model or '?'}, {cores} cores[/dim]")
    for r in reports:
        for note in r.notes:
            if not note.startswith("timed in alternating blocks"):
                console.print(f"[dim]note: {r.artifact.path}: {note}[/dim]")
        if r.path is not None:
            console.print(f"[dim]wrote {r.path}[/dim]")
