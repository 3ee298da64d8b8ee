"""``edgeformer bundle``: a compiled artifact → a folder an app developer builds into a program."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json

NAME = "bundle"
PLATFORMS = ("linux-x86_64", "linux-aarch64", "android-arm64", "ios-arm64")


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME,
        parents=[common],
        help="turn an artifact into a C/C++ (CMake), Android or iOS bundle",
        description="Write ARTIFACT's bundle for a platform: the model converted for it, io.json, golden data, "
        "the C API (include/edgeformer.h) and its implementation, CMake (with an aarch64 toolchain), the runtime "
        "libraries, and the Android or iOS wrappers (docs/bundle.md).",
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="a folder written by `edgeformer compile`")
    p.add_argument("--platform", required=True, metavar="P", help=f"one of {', '.join(PLATFORMS)}")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the bundle folder (replaced if a bundle)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="default intra-op threads (io.json)")
    return p


def run(args) -> int:
    from edgeformer.bundle import build_bundle
    from edgeformer.errors import UserError

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} is not a thread count", "give --threads 1 or more")
    b = build_bundle(args.artifact, args.platform, args.output, threads=args.threads)
    if args.json:
        emit_json(b.to_dict())
        return 0
    out = console()
    for path, size in b.files:
        out.print(f"{size / 1e6:10.3f} MB  {path}", markup=False)
    out.print(
        f"{b.total_bytes / 1e6:10.3f} MB  total, {len(b.files)} files: {b.path} ({b.platform}, {b.runtime})",
        markup=False,
    )
    for v in b.verified:
        out.print(f"checked: {v}", markup=False)
    return 0
