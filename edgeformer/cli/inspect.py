"""``edgeformer inspect``: ops, shapes, histogram, params and MACs of MODEL, or what an artifact
folder holds (from its manifest)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeformer.cli._common import emit_json, factory_args, fmt_count, input_shapes

NAME = "inspect"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME,
        parents=[common, model_args],
        help="ops, shapes, histogram, params and MACs (or an artifact folder's manifest)",
        description="MODEL is a zoo name, a .pt2, package.module:factory, or a compiled artifact folder.",
    )
    p.add_argument("--nodes", type=int, default=40, help="ops to list (default 40)")
    p.add_argument("--all", action="store_true", help="list every op")
    return p


def run(args) -> int:
    from edgeformer.sources import load_model

    if Path(args.model).is_dir():
        return _artifact(args)
    src = load_model(args.model, input_shapes=input_shapes(args), weights=args.weights, factory_args=factory_args(args))
    s = src.graph.summary()
    info = src.info
    if args.json:
        emit_json({**s.to_dict(), "weights_origin": info.weights_origin, "weights": info.to_dict().get("weights")})
        return 0
    text = s.format(max_nodes=None if args.all else args.nodes)
    head, _, rest = text.partition("\n")
    print("\n".join([head, f"# {_weights(info)}", rest]) if rest else f"{head}\n# {_weights(info)}")
    return 0


def _weights(info) -> str:
    """What the weights are: random ones are said so (accuracy cannot be measured on them)."""
    if info.weights_origin == "random":
        return "weights: random (pass --weights FILE for trained ones)"
    if info.weights is not None:
        return f"weights: checkpoint {info.weights.path} (sha256 {info.weights.sha256[:12]})"
    return {"module": "weights: as the module holds them", "pt2": "weights: as exported in the .pt2"}.get(
        info.weights_origin, f"weights: {info.weights_origin}"
    )


def _artifact(args) -> int:
    from edgeformer.errors import UserError
    from edgeformer.manifest import read_manifest

    given = [flag for flag, v in (("--input-shape", args.input_shape), ("--weights", args.weights)) if v]
    if args.factory_arg:
        given.append("--factory-arg")
    if given:
        raise UserError(f"{', '.join(given)} cannot be applied to the artifact folder {args.model}", "drop it")
    m = read_manifest(args.model)
    if args.json:
        emit_json(m.to_dict())
        return 0
    print("\n".join(_artifact_lines(Path(args.model), m)))
    return 0


def _tensors(specs) -> str:
    return ", ".join(f"{t.name}: {t.dtype}{t.shape}" for t in specs) or "-"


def _artifact_lines(folder: Path, m) -> list[str]:
    model = m.model
    origin = model.ref or model.path or model.family or ""
    weights = model.weights.path if model.weights else model.weights_origin
    n = m.numerics
    numerics = n.status
    if n.max_abs_error is not None:
        numerics += f"  max abs error {n.max_abs_error:.3g}"
    if n.cosine is not None:
        numerics += f"  cosine {n.cosine:.6f}"
    if n.atol is not None:
        numerics += f"  (atol {n.atol:g})"
    if n.reason:
        numerics += f"  {n.reason}"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(m.runtime_versions.items()))
    lines = [
        f"# artifact {folder}  (edgeformer {m.edgeformer_version or '?'}, created {m.created_at or '?'})",
        f"model     {model.name}  ({model.source}{' ' + origin if origin else ''}; weights: {weights})",
        f"target    {m.target}  ({versions})",
        f"profile   {m.profile.name}",
        f"ir hash   {m.ir_hash[:16]}  after passes {m.ir_hash_after_passes[:16]}",
        f"inputs    {_tensors(m.inputs)}",
        f"outputs   {_tensors(m.outputs)}",
        f"numerics  {numerics}",
        f"compile   {m.compile_time_s:.2f} s  cache key {m.cache_key[:12]}",
        f"passes    {len(m.passes)}",
    ]
    for p in m.passes:
        state = "changed" if p.changed else "no change"
        kind = "exact" if p.exact else "approximate"
        lines.append(f"  {p.name:<32} {state:<10} {kind:<12} matched {p.matched}")
    lines.append(f"files     {len(m.files)}  ({fmt_count(sum(f.bytes for f in m.files), 'B')})")
    for f in m.files:
        lines.append(f"  {f.path:<40} {fmt_count(f.bytes, 'B'):>9}  sha256 {f.sha256[:16]}")
    return lines
