"""``edgeformer cache``: where the compile cache and TVM tuning databases are, how big, and cleaning them."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json

NAME = "cache"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME,
        parents=[common],
        help="show the cache ($EDGEFORMER_CACHE_DIR, default ~/.cache/edgeformer) and its size; --clean empties it",
        description="The cache is $EDGEFORMER_CACHE_DIR, else ~/.cache/edgeformer: compile/ holds finished "
        "artifacts keyed by content (an identical recompile copies one), tvm-tune/ the TVM tuning databases. "
        "Without --clean, shows where each is, its entries and its size.",
    )
    p.add_argument(
        "--clean",
        choices=("compile", "tuning", "all"),
        help="delete cached artifacts (compile), TVM tuning databases (tuning, hours of work), or both",
    )
    return p


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run(args) -> int:
    from edgeformer import cache
    from edgeformer.fsutil import cache_root

    if args.clean:
        kinds = list(cache.KINDS) if args.clean == "all" else [args.clean]
        removed = cache.clean(kinds)
        if args.json:
            emit_json({"root": str(cache_root()), "removed": [u.to_dict() for u in removed]})
        else:
            for u in removed:
                console().print(f"removed {u.kind}: {u.entries} entries, {_mb(u.bytes)} ({u.path})")
        return 0
    rows = cache.usage()
    if args.json:
        emit_json({"root": str(cache_root()), "kinds": [u.to_dict() for u in rows]})
        return 0
    con = console()
    con.print(f"cache {cache_root()} (set EDGEFORMER_CACHE_DIR to move it)")
    for u in rows:
        what = "artifacts" if u.kind == "compile" else "tuning databases"
        con.print(f"  {u.kind:<8} {u.entries:5d} {what:<17} {_mb(u.bytes):>10}  {u.path}")
    con.print("clean with: edgeformer cache --clean compile|tuning|all")
    return 0
