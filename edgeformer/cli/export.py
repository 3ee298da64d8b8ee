"""``edgeformer export``: export MODEL to the IR (.pt2)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgeformer.cli._common import console, emit_json, factory_args, fmt_count, input_shapes

NAME = "export"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common, model_args], help="export MODEL to the IR (.pt2)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.pt2", help="the .pt2 to write (folders are created)")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension named batch")
    return p


def check_output(path: Path) -> None:
    """Refuse an ``-o`` that is not a .pt2, is a folder, or whose folder cannot be created or
    written, before anything is exported."""
    from edgeformer.errors import UserError

    if path.suffix.lower() != ".pt2":
        raise UserError(
            f"cannot write {path}: export writes the IR as a .pt2 file (torch.export's zip)",
            "name the output FILE.pt2; `edgeformer compile` produces runtime formats such as ONNX",
        )
    if path.is_dir():
        raise UserError(f"output {path} is a folder", "give -o a file path ending in .pt2")
    folder = path.absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create folder {path.parent}: {existing} is a file", "choose another path for -o")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: folder {existing} is not writable", "choose a writable path for -o")


def run(args) -> int:
    from edgeformer.errors import UserError
    from edgeformer.manifest import sha256_file
    from edgeformer.sources import load_model

    out = Path(args.output)
    check_output(out)
    src = load_model(
        args.model,
        input_shapes=input_shapes(args),
        weights=args.weights,
        dynamic_batch=args.dynamic_batch,
        factory_args=factory_args(args),
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create folder {out.parent}: {err.strerror}", "choose a writable path for -o") from err
    path = src.graph.save(out)
    s = src.graph.summary()
    file_sha = sha256_file(path)
    if args.json:
        emit_json(
            {
                "path": str(path),
                "ir_hash": s.ir_hash,
                "file_sha256": file_sha,
                "parameters": s.parameters,
                "macs": s.total_macs,
                "macs_note": s.macs_note,
                "nodes": len(s.nodes),
            }
        )
    else:
        note = f" {s.macs_note}" if s.macs_note else ""
        console().print(
            f"wrote [bold]{path}[/bold]  ir hash {s.ir_hash[:16]} (file sha256 {file_sha[:16]})  {len(s.nodes)} ops  "
            f"{fmt_count(s.parameters)} params  {fmt_count(s.total_macs)} MACs{note}"
        )
    return 0
