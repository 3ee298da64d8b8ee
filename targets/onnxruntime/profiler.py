"""Per-op times from ORT's own profiler trace, mapped back to the PyTorch source modules.

Small models make means mislead: one slow run of one node (a page fault, a thread woken late)
outweighs the others, and the cold first run is slower everywhere.  So the profile is taken after
``WARMUP_RUNS`` runs, and every time is a median over the counted runs: each node's time per run
(the sum of its kernel events inside that run's ``model_run`` event, 0 when it did not run), and
the end-to-end time of the ``model_run`` events.
"""

from __future__ import annotations

import ast
import bisect
import re
import statistics
from pathlib import Path

from ..base import OpProfile, OpTime

# Runs before the counted ones (their events are in the trace and left out by time).
WARMUP_RUNS = 3


def source_map(onnx_path: Path) -> dict[str, str]:
    """ONNX node name and output value names → source module path (exporter name-scope metadata).

    ``pkg.torch.onnx.name_scopes`` holds cumulative module paths ending with the op, e.g.
    ``['', 'network.0', 'network.0.1', 'network.0.1.mlp', 'gelu']``: the module is the one before
    the op.  Output names are mapped too because ORT names rewritten nodes after their outputs.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    out = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in ast.literal_eval(prop.value)[:-1] if s]
                except (ValueError, SyntaxError):
                    continue
                module = scopes[-1] if scopes else ""
                out[node.name] = module
                for value in node.output:
                    out.setdefault(value, module)
    return out


def lookup_source(node_name: str, sources: dict[str, str]) -> str | None:
    """ORT keeps the ONNX node name, or names a rewritten node after an output plus a suffix."""
    base = node_name.split("/")[0]
    candidates = [node_name, base, re.sub(r"(_nchwc|_token_\d+|_fused)+$", "", base)]
    candidates.append(re.sub(r"_(mul|add|sub|relu|gelu)_nchwc$", "", base))
    for c in candidates:
        if sources.get(c):
            return sources[c]
    return None


def op_profile(trace: list[dict], runs: int, sources: dict[str, str], *, warmup: int = 0) -> OpProfile:
    """The last ``runs`` model runs of an ORT profiler trace as an :class:`OpProfile` of medians.

    ``warmup`` is how many runs the trace holds before them (only recorded in the notes).
    """
    run_events = sorted(
        (e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    counted = run_events[-runs:] if runs > 0 else []
    starts = [e["ts"] for e in counted]
    per_node: dict[str, dict] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > counted[i]["ts"] + counted[i]["dur"]:
            continue  # session set-up, a warm-up run, or between runs
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        d = per_node.setdefault(
            name,
            {
                "us": [0.0] * len(counted),
                "n": [0] * len(counted),
                "type": args.get("op_name", "?"),
                "device": args.get("provider", ""),
            },
        )
        d["us"][i] += e["dur"]
        d["n"][i] += 1
    e2e_ms = statistics.median(e["dur"] for e in counted) / 1e3 if counted else 0.0
    ops = [
        OpTime(
            name=name,
            type=d["type"],
            time_ms=statistics.median(d["us"]) / 1e3,
            share=0.0,
            calls=max(1, round(statistics.median(d["n"]))),
            device=d["device"].replace("ExecutionProvider", "") or None,
            source=lookup_source(name, sources),
        )
        for name, d in per_node.items()
    ]
    return OpProfile.build(
        "onnxruntime",
        len(counted),
        e2e_ms,
        ops,
        notes=[
            f"times are medians over {len(counted)} runs after {warmup} warm-up runs: per node (ORT profiler "
            "kernel times) and end to end (model_run)",
            "unexplained = session overhead; medians of the parts need not add up to the median of the whole",
        ],
    )
