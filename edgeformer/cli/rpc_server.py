"""``edgeformer rpc-server``: serve this machine as a TVM RPC device, or run a tracker."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console

NAME = "rpc-server"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME,
        parents=[common],
        help="serve this machine as a TVM RPC device (runs whatever it is sent: keep it on 127.0.0.1, tunnel over SSH)",
    )
    p.add_argument("--tracker", metavar="HOST:PORT", help="register with this tracker")
    p.add_argument("--key", default="local", help="device key to register under (default local)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 9090; 9190 with --tracker-only)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tracker-only", action="store_true", help="run a tracker instead of a device server")
    return p


def run(args) -> int:
    from edgeformer.targets.tvm import rpc

    con = console()
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
