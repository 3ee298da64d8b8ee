"""``edgeformer rpc-server`` never leaves its TVM child behind: a TVM RPC server runs whatever it is
sent, so it must not outlive the command that started it.

Real processes: ``python -m edgeformer.cli rpc-server`` (a tracker, and a device server with an
open session, so its per-connection worker exists too) on free ports of 127.0.0.1; the test
signals the edgeformer process and checks that every process below it is gone and its port free.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from edgeformer.targets.tvm import rpc

KEY = "signal-test"
LISTENING = re.compile(r"listening on (\S+):(\d+)")


class Cli:
    """One ``edgeformer rpc-server`` process, and every process it started."""

    def __init__(self, tmp_path, name: str, *args: str):
        self.stderr_path = tmp_path / f"{name}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeformer.cli", "rpc-server", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            )
        self.seen: list[psutil.Process] = []  # every descendant ever seen, for the cleanup
        self.port = self._wait_listening()
        self.descendants()  # remembered for the cleanup, whatever happens next

    def _wait_listening(self, timeout: float = 60.0) -> int:
        deadline, out = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                out += os.read(self.proc.stdout.fileno(), 4096)
                m = LISTENING.search(out.decode(errors="replace"))
                if m:
                    return int(m.group(2))
        pytest.fail(f"rpc-server did not start: {out!r} {self.stderr_path.read_text()[-2000:]}")

    def descendants(self) -> list[psutil.Process]:
        found = psutil.Process(self.proc.pid).children(recursive=True)
        self.seen += [p for p in found if p.pid not in {s.pid for s in self.seen}]
        return found

    def cleanup(self) -> None:
        """Whatever a failing test leaves: these are processes this test started, ended by pid."""
        for p in [*self.seen, psutil.Process(self.proc.pid) if self.proc.poll() is None else None]:
            if p is not None:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc.stdout.close()


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The ones still alive (a zombie is dead: it has no sockets and runs nothing)."""
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _assert_all_gone(cli: Cli, procs: list[psutil.Process], ports: list[int], timeout: float = 10.0) -> None:
    """Every process gone and nothing listening on ``ports`` within ``timeout`` (a killed threaded
    process shows as a zombie while its other threads still exit and hold its sockets)."""
    cli.proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while (_running(procs) or not all(map(_port_free, ports))) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, p.ppid(), " ".join(p.cmdline())[:80]) for p in _running(procs)]
    assert not left, f"still running after the edgeformer process ended (pid, parent, command): {left}"
    taken = [port for port in ports if not _port_free(port)]
    assert not taken, f"something still listens on 127.0.0.1 port(s) {taken}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_the_tracker_command_ends_its_tvm_child(tmp_path, sig):
    cli = Cli(tmp_path, "tracker", "--tracker-only", "--port", str(rpc.free_port()))
    try:
        children = cli.descendants()
        assert children, "the tracker runs in a child process"
        os.kill(cli.proc.pid, sig)
        _assert_all_gone(cli, children, [cli.port])
        assert cli.proc.returncode == 0, "not a clean stop: the signal's default action ended the command"
    finally:
        cli.cleanup()


def _device_with_a_session(tmp_path):
    """A tracker and a device server (both the CLI), and an open session on the device."""
    from tvm import rpc as tvm_rpc

    tracker = Cli(tmp_path, "tracker", "--tracker-only", "--port", str(rpc.free_port()))
    try:
        address = f"127.0.0.1:{tracker.port}"
        device = Cli(tmp_path, "device", "--tracker", address, "--key", KEY, "--port", str(rpc.free_port()))
    except BaseException:
        tracker.cleanup()
        raise
    rpc.wait_for_devices(address, KEY)
    sess = tvm_rpc.connect_tracker("127.0.0.1", tracker.port).request(KEY, session_timeout=60)
    deadline = time.monotonic() + 10
    while len(device.descendants()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the server forks a worker per session
    assert len(device.descendants()) >= 2, "the device server forked no session worker"
    return tracker, device, sess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_to_the_device_command_ends_its_server_and_session_workers(tmp_path, sig):
    """SIGKILL cannot be caught: the TVM child has to notice its parent is gone by itself."""
    tracker, device, sess = _device_with_a_session(tmp_path)
    try:
        procs = device.descendants()
        os.kill(device.proc.pid, sig)
        _assert_all_gone(device, procs, [device.port])
        assert device.proc.returncode == (-sig if sig == signal.SIGKILL else 0)
        procs = tracker.descendants()
        os.kill(tracker.proc.pid, sig)
        _assert_all_gone(tracker, procs, [tracker.port])
    finally:
        with contextlib.suppress(Exception):
            del sess
        device.cleanup()
        tracker.cleanup()
