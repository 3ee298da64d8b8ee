"""Text reports: rich tables and lines for the compile summary and the latency profile.

Each renderer prints to the ``rich`` console it is given; rich is imported only when a table is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


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


def compile_summary(report, console) -> None:
    """What a compile did: passes, numerics, files and runtimes."""
    m = report.manifest
    cached = f"  [yellow](cached: identical compile skipped, key {m.cache_key[:12]})[/yellow]" if report.cached else ""
    console.print(
        f"[bold]{m.model.name}[/bold] → [bold]{m.target}[/bold] (profile {m.profile.name}) in {report.path}{cached}"
    )
    rows = [
        (
            p.name,
            "exact" if p.exact else "approx",
            p.matched,
            p.nodes_removed,
            p.params_folded,
            "-" if p.max_abs_diff is None else f"{p.max_abs_diff:.2e}",
        )
        for p in m.passes
    ]
    if rows:
        console.print(
            table(
                "passes",
                ["pass", "kind", "matched", "nodes removed", "params folded", "max |Δ|"],
                rows,
                justify_right=(2, 3, 4, 5),
            )
        )
    for p in m.passes:
        for line in p.details.get("explain", []):
            console.print(f"  {p.name}: {line}", markup=False)
    layout = m.target_details.get("ort_blocked_layout") or {}
    if layout.get("norms_on_blocked_layout"):
        console.print(
            f"onnxruntime layout: {layout['norms_on_blocked_layout']} norms run on blocked NCHWc tensors, "
            f"{layout['reorders_removed']} reorders removed"
        )
    n = m.numerics
    if n.status == "skipped":
        console.print(f"numerics: [yellow]skipped[/yellow] ({n.reason})")
    else:
        colour = "green" if n.status == "passed" else "red"
        console.print(
            f"numerics vs PyTorch: [{colour}]{n.status}[/{colour}]  max abs error {n.max_abs_error:.3e} "
            f"(atol {n.atol:g})  cosine {n.cosine:.8f}"
        )
    files = ", ".join(f"{f.path} ({f.bytes / 1e6:.2f} MB)" for f in m.files)
    console.print(f"files: {files}")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(m.runtime_versions.items()))
    console.print(f"compile time {m.compile_time_s:.1f} s; runtimes: {versions}")


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
                "(unexplained: runtime overhead between ops)",
                "",
                "",
                "",
                f"{ops.unexplained_ms:.4f}",
                f"{100 * ops.unexplained_share:.1f}%",
            )
        )
        console.print(
            table(
                f"top {min(top, len(ops.ops))} of {len(ops.ops)} ops, mean of {ops.runs} runs "
                f"(end to end {ops.end_to_end_ms:.3f} ms)",
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
    console.print(f"[dim]wrote {a.path}/profile.json[/dim]" if not report.remote else "")
