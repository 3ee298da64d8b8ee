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
per-connection workers of a server go with it.  A process that runs whatever it is sent must not
outlive the one that started it:

* ``edgeformer rpc-server`` (:func:`serve`, :func:`serve_tracker`) turns SIGTERM, SIGHUP and
  SIGINT into a clean stop that ends the child's whole group, then exits 0;
* a child whose parent is gone anyway (SIGKILL, a crash) notices by itself: a thread in it
  polls ``getppid()`` every 0.2 s and, once the parent has changed, SIGKILLs its own process
  group, forked session workers included.  Polling rather than Linux's ``PR_SET_PDEATHSIG``:
  that signal needs ``preexec_fn`` (unsafe in a threaded parent) or ctypes, fires when the
  *thread* that started the child ends (a library caller on a worker thread would lose its
  server), is cleared in the server's forked workers (so the child must kill its group itself
  all the same) and is Linux-only, while a device may be any POSIX machine (a Mac, say).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeformer.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"

# Run first inside each child (_spawn prepends it): end this process group (the child and the
# server's forked session workers) once the parent that started it is gone; see the module docstring.
_PARENT_ENV = "EDGEFORMER_RPC_PARENT"
_WATCHDOG = r"""
import os as _os, signal as _signal, threading as _threading, time as _time

def _watch_parent(parent):
    while _os.getppid() == parent:
        _time.sleep(0.2)
    if _os.getpgid(0) == _os.getpid():  # the leader of its own group (start_new_session)
        _os.killpg(_os.getpid(), _signal.SIGKILL)
    _os.kill(_os.getpid(), _signal.SIGKILL)

_parent = int(_os.environ.pop("EDGEFORMER_RPC_PARENT", "0") or 0)
if _parent:
    _threading.Thread(target=_watch_parent, args=(_parent,), name="edgeformer-parent-watch", daemon=True).start()
"""

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


def device_command(tracker: str, key: str) -> str:
    """What to run on a device to serve it under ``key`` (edgeformer's server also reports the
    device's CPU to ``profile --remote``; a plain ``tvm.exec.rpc_server`` does not)."""
    return f"edgeformer rpc-server --tracker {tracker} --key {shlex.quote(key)}"


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
    rp: RpcProcess | None = None
    try:
        with open(log_path, "wb") as err:
            rp = RpcProcess(
                kind,
                subprocess.Popen(
                    [sys.executable, "-c", _WATCHDOG + script, *args],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(env or {}), _PARENT_ENV: str(os.getpid())},
                    start_new_session=True,  # its own group: stop() ends it with its workers
                    cwd=tmp.name,
                ),
                host,
                0,
                key,
                log_path,
                tmp,
            )
        proc = rp.proc
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                break
    except BaseException:  # a signal while it starts (see _foreground): do not leave it running
        if rp is not None:
            rp.stop()
        tmp.cleanup()
        raise
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
            f"start it (edgeformer rpc-server --tracker-only --port {port}) or open the SSH tunnel, and check --remote",
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
    _foreground(lambda: start_server(tracker, key, host, port, threads=threads), on_ready)


def serve_tracker(host: str = DEFAULT_HOST, port: int = 9190, *, on_ready=None) -> None:
    """Run a tracker in the foreground until interrupted (``on_ready(tracker)`` once it listens)."""
    _foreground(lambda: start_tracker(host, port), on_ready)


# What ends a foreground server: Ctrl-C, `kill`, systemd's stop, the terminal closing.
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class _Stop(BaseException):
    """Raised by the signal handler of :func:`_foreground` (a BaseException, so that an
    ``except Exception`` in ``on_ready`` does not swallow it)."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def _foreground(start, on_ready) -> None:
    """Start ``start()``, call ``on_ready(proc)``, then wait until it exits or a stop signal
    arrives (SIGINT, SIGTERM, SIGHUP), and stop it (its whole process group) either way.

    Python's default SIGTERM and SIGHUP end the process at once, with no ``finally``: the child,
    in its own session, was left serving with parent PID 1.  The handlers are set before the
    child starts and restored afterwards (main thread only: elsewhere signals cannot be caught).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS} if main else {}
    proc: RpcProcess | None = None
    try:
        proc = start()
        if on_ready:
            on_ready(proc)
        while proc.alive():
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop) as stop:
        signum = stop.args[0] if isinstance(stop, _Stop) else signal.SIGINT
        log.info("stopping the TVM RPC %s on %s", proc.kind if proc else "process", signal.Signals(signum).name)
    finally:
        try:
            for sig in previous:  # a second signal must not cut the stop short
                signal.signal(sig, signal.SIG_IGN)
            if proc is not None:
                proc.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
