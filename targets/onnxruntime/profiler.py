"""Per-op times from ORT's own profiler trace, mapped back to the PyTorch source modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..base import OpProfile, OpTime


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


def op_profile(trace: list[dict], runs: int, sources: dict[str, str]) -> OpProfile:
    """The last ``runs`` model runs of an ORT profiler trace as an :class:`OpProfile`."""
    run_events = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    counted = run_events[-runs:]
    t0 = counted[0]["ts"] if counted else 0
    per_node: dict[str, dict] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < t0:
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        d = per_node.setdefault(
            name, {"us": 0.0, "n": 0, "type": args.get("op_name", "?"), "device": args.get("provider", "")}
        )
        d["us"] += e["dur"]
        d["n"] += 1
    e2e_ms = sum(e["dur"] for e in counted) / max(len(counted), 1) / 1e3
    ops = [
        OpTime(
            name=name,
            type=d["type"],
            time_ms=d["us"] / runs / 1e3,
            share=0.0,
            calls=max(1, round(d["n"] / runs)),
            device=d["device"].replace("ExecutionProvider", "") or None,
            source=lookup_source(name, sources),
        )
        for name, d in per_node.items()
    ]
    return OpProfile.build(
        "onnxruntime", runs, e2e_ms, ops, notes=["times are ORT profiler kernel times; unexplained = session overhead"]
    )
