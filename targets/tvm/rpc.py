"""A TVM RPC tracker and device servers on this machine, in subprocesses.

Used by the tests (a real tracker and two "devices" on 127.0.0.1) and by ``edgeformer
rpc-server``, which turns a board into a device that ``edgeformer profile --remote`` can use.

**Security.**  A TVM RPC server executes whatever a client sends it (uploaded libraries, any
registered function), over plain TCP with no authentication; a tracker key is only a label.
Everything here binds to 127.0.0.1 by default.  To reach a real device, run the tracker and the
server bound to 127.0.0.1 on their machines and forward the ports over SSH, e.g.::

    ssh -N -L 9190:127.0.0.1:9190 user@lab-host      # tracker, seen here as 127.0.0.1:9190
    ssh -N -R 9190:127.0.0.1:9190 pi@raspberrypi     # the Pi's server reaches the same tracker

Never bind a server to 0.0.0.0 on a network you do not control.

Each process starts in its own session and is stopped by its process-group id, so the forked
per-connection workers of a server go with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeformer.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"

# Run inside the child: start TVM's tracker / server loop in this process (no extra PopenWorker),
# print the port it bound, then wait until killed.
_TRACKER = r"""
import sys
from tvm.rpc.tracker import PopenTrackerServerState
host, port = sys.argv[1], int(sys.argv[2])
state = PopenTrackerServerState(host, port, port + 64, silent=True)
print("PORT", state.port, flush=True)
state.thread.join()
"""

_SERVER = r"""
import json, os, platform, sys
# TVM's default pool is half the logical CPUs on x86 (it assumes SMT): use every CPU we may.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("TVM_NUM_THREADS", str(_CPUS))
import tvm_ffi
from tvm.rpc.server import PopenRPCServerState

def machine_info():
    try:
        from edgeformer.machine import machine_info as info
        return json.dumps(info().to_dict())
    except Exception:  # a device without edgeformer: what the standard library knows
        return json.dumps({"cpu_model": platform.processor() or platform.machine(),
                           "logical_cores": os.cpu_count() or 0, "machine": platform.machine()})

tvm_ffi.register_global_func("edgeformer.machine_info", machine_info)  # what profile --remote reports
host, port, tracker_host, tracker_port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
tracker = (tracker_host, tracker_port) if tracker_port else None
state = PopenRPCServerState(host, port, port + 64, tracker_addr=tracker, key=key, silent=True)
print("PORT", state.port, flush=True)
state.thread.join()
"""


def parse_address(address: str, what: str = "tracker") -> tuple[str, int]:
    """``host:port`` → (host, port), with a one-line UserError for anything else."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"bad {what} address {address!r}", "use HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RpcProcess:
    """A tracker or server subprocess; ``stop()`` ends it and its children."""

    kind: str  # "tracker" | "server"
    proc: subprocess.Popen
    host: str
    port: int
    key: str = ""
    log_path: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group this object created
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RpcProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _spawn(
    kind: str, script: str, args: list[str], host: str, key: str, env: dict | None, timeout: float
) -> RpcProcess:
    tmp = tempfile.TemporaryDirectory(prefix=f"edgeformer-rpc-{kind}-")
    log_path = Path(tmp.name) / f"{kind}.log"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=tmp.name,
        )
    rp = RpcProcess(kind, proc, host, 0, key, log_path, tmp)
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            break
    if not line.startswith(b"PORT "):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        rp.stop()
        raise RuntimeError(f"the TVM RPC {kind} did not start: {tail[0] if tail else 'no output'}")
    rp.port = int(line.split()[1])
    log.info("started TVM RPC %s on %s (pid %d)%s", kind, rp.address, proc.pid, f" key {key}" if key else "")
    return rp


def start_tracker(host: str = DEFAULT_HOST, port: int = 0, *, timeout: float = 30.0) -> RpcProcess:
    """A TVM RPC tracker on ``host`` (port 0 = a free one)."""
    return _spawn("tracker", _TRACKER, [host, str(port or free_port(host))], host, "", None, timeout)


def start_server(
    tracker: str | None, key: str, host: str = DEFAULT_HOST, port: int = 0, *, threads: int = 0, timeout: float = 30.0
) -> RpcProcess:
    """A TVM RPC server ("device") registered under ``key`` with ``tracker`` (``host:port``).

    ``threads`` sets TVM_NUM_THREADS for what it runs.  It executes anything sent to it: keep it
    on 127.0.0.1 and tunnel over SSH (see the module docstring).
    """
    t_host, t_port = parse_address(tracker) if tracker else ("", 0)
    env = {"TVM_NUM_THREADS": str(threads)} if threads else None
    return _spawn(
        "server", _SERVER, [host, str(port or free_port(host)), t_host, str(t_port), key], host, key, env, timeout
    )


def tracker_summary(tracker: str, *, timeout: float = 5.0) -> dict:
    """The tracker's summary (``server_info``, ``queue_info``); UserError when unreachable."""
    from tvm.rpc import base

    host, port = parse_address(tracker)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise UserError(
            f"cannot reach the TVM RPC tracker at {host}:{port} ({err.strerror or err})",
            "start it (python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port PORT) or open the SSH tunnel, "
            "and check --remote",
        ) from err
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise UserError(f"{host}:{port} is not a TVM RPC tracker", "check the --remote address")
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except (OSError, ValueError, struct.error) as err:
        raise UserError(
            f"the TVM RPC tracker at {host}:{port} did not answer ({err})",
            "check that HOST:PORT is a tracker, not a server",
        ) from err
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise UserError(f"the TVM RPC tracker at {host}:{port} refused the request: {value}")
    return value[1]


def device_counts(summary: dict, key: str) -> tuple[int, int]:
    """(registered servers, free servers) under ``key``."""
    total = sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{key}")
    free = int(summary.get("queue_info", {}).get(key, {}).get("free", 0))
    return total, free


def wait_for_devices(tracker: str, key: str, count: int = 1, *, timeout: float = 30.0) -> None:
    """Block until ``count`` servers are free under ``key`` (servers register asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        _, free = device_counts(tracker_summary(tracker), key)
        if free >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{free} of {count} device(s) under key {key!r} free at {tracker} after {timeout} s")
        time.sleep(0.2)


@contextlib.contextmanager
def local_cluster(key: str = "local", devices: int = 1, *, threads: int = 0, host: str = DEFAULT_HOST):
    """A tracker plus ``devices`` servers under ``key`` on ``host``; yields the tracker address."""
    procs: list[RpcProcess] = []
    try:
        tracker = start_tracker(host)
        procs.append(tracker)
        for _ in range(devices):
            procs.append(start_server(tracker.address, key, host, threads=threads))
        wait_for_devices(tracker.address, key, devices)
        yield tracker.address
    finally:
        for p in reversed(procs):
            p.stop()


def serve(
    tracker: str | None, key: str, host: str = DEFAULT_HOST, port: int = 9090, *, threads: int = 0, on_ready=None
) -> None:
    """``edgeformer rpc-server``: run one device server in the foreground until interrupted.

    ``on_ready(server)`` is called once it listens (the CLI prints ``server.address`` there).
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "binding the RPC server to %s: anyone who can connect can run code on this machine; "
            "prefer 127.0.0.1 with an SSH tunnel",
            host,
        )
    _foreground(start_server(tracker, key, host, port, threads=threads), on_ready)


def serve_tracker(host: str = DEFAULT_HOST, port: int = 9190, *, on_ready=None) -> None:
    """Run a tracker in the foreground until interrupted (``on_ready(tracker)`` once it listens)."""
    _foreground(start_tracker(host, port), on_ready)


def _foreground(proc: RpcProcess, on_ready) -> None:
    """Call ``on_ready(proc)``, then wait until it exits or Ctrl-C, and stop it either way."""
    try:
        if on_ready:
            on_ready(proc)
        while proc.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()
