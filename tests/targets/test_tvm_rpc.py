"""Remote profiling through a REAL TVM RPC tracker and two servers started here on 127.0.0.1.

The tracker and the two "devices" are subprocesses on free ports, stopped (with their forked
session workers) when the module's tests are done.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer.errors import UserError
from edgeformer.machine import MachineInfo
from edgeformer.runtime import load_artifact
from edgeformer.targets.base import RemoteInfo, RemoteProfile
from edgeformer.targets.tvm import rpc

KEY = "edge-test"
STATS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "std_ms", "samples_ms")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def cluster():
    procs = []
    try:
        tracker = rpc.start_tracker()
        procs.append(tracker)
        procs += [rpc.start_server(tracker.address, KEY, threads=1) for _ in range(2)]
        rpc.wait_for_devices(tracker.address, KEY, 2)
        yield tracker, procs[1:]
    finally:
        for p in reversed(procs):
            p.stop()
    assert not any(p.alive() for p in procs)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A compiled host artifact (through edgeformer.compile, so it has a manifest), loaded."""
    from edgeformer.compiler import compile
    from edgeformer.device_profiles import parse_profile

    root = tmp_path_factory.mktemp("tvm-rpc")
    prof = parse_profile(
        {
            "name": "rpc-host-tvm",
            "target": "tvm",
            "options": {"threads": 1, "tvm_target": {"kind": "llvm", "mcpu": "native"}},
        },
        "test",
    )
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFORMER_CACHE_DIR", str(root / "cache"))
        report = compile(Small(), prof, root / "art", input_shapes=[(1, 3, 8, 8)], use_cache=False)
    return load_artifact(report.path)


def _inputs():
    return [np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")]


def profile_remote(artifact, tracker: str, key: str, **kwargs) -> RemoteProfile:
    """The target's hook, as ``edgeformer.profiling.profile_artifact(remote=...)`` calls it."""
    return artifact.target.profile_remote(artifact, tracker=tracker, key=key, **kwargs)


def test_servers_bind_to_localhost_and_register(cluster):
    tracker, servers = cluster
    assert tracker.host == "127.0.0.1" and all(s.host == "127.0.0.1" for s in servers)
    total, _ = rpc.device_counts(rpc.tracker_summary(tracker.address), KEY)
    assert total == 2


def test_remote_profile_reports_the_standard_statistics(cluster, artifact):
    tracker, servers = cluster
    res = profile_remote(artifact, tracker.address, KEY, inputs=_inputs(), min_runs=5, min_seconds=0.05)
    assert isinstance(res, RemoteProfile)
    warm = res.phases.warm.to_dict()
    assert all(k in warm for k in STATS) and warm["runs"] >= 5 and len(warm["samples_ms"]) == warm["runs"]
    assert warm["min_ms"] <= warm["median_ms"] <= warm["p90_ms"] <= warm["p99_ms"]
    assert "time_evaluator" in warm["statistic"] and "number=1" in warm["statistic"]
    assert res.phases.load_ms > 0 and res.phases.first_inference_ms > 0
    assert isinstance(res.remote, RemoteInfo) and res.remote.key == KEY and res.remote.tracker == tracker.address
    assert res.remote.server in {s.address for s in servers}
    assert res.remote.output_shapes == [[1, 4]]
    assert isinstance(res.machine, MachineInfo) and res.machine.logical_cores > 0  # edgeformer's server reports it
    assert (res.machine.device_key, res.machine.server) == (KEY, res.remote.server)
    assert res.settings["threads"] == 1 and res.notes and res.ops is None


def test_two_profiles_at_once_are_served_by_the_two_devices(cluster, artifact):
    tracker, servers = cluster
    rpc.wait_for_devices(tracker.address, KEY, 2)  # a device re-registers after each session
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            barrier.wait()
            results[i] = profile_remote(artifact, tracker.address, KEY, inputs=_inputs(), min_runs=20, min_seconds=0.3)
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert {r.remote.server for r in results.values()} == {s.address for s in servers}
    for r in results.values():
        assert r.phases.warm.runs >= 20 and r.phases.warm.median_ms > 0


def test_profile_artifact_remote_writes_a_remote_report(cluster, artifact, tmp_path):
    from edgeformer.profiling import profile_artifact

    tracker, _ = cluster
    report = profile_artifact(
        artifact.path, min_runs=5, min_seconds=0.05, remote=tracker.address, key=KEY, output=tmp_path / "profile.json"
    )
    assert report.kind == "remote" and report.remote.key == KEY
    assert all(k in report.latency.to_dict() for k in STATS)
    assert (tmp_path / "profile.json").is_file()


def test_unknown_key_is_a_user_error(cluster, artifact):
    tracker, _ = cluster
    with pytest.raises(UserError, match="no device registered under key 'nope'.*edge-test") as err:
        profile_remote(artifact, tracker.address, "nope", inputs=_inputs())
    msg = str(err.value)  # the fix names edgeformer's own server (it reports the device's CPU)
    assert f"edgeformer rpc-server --tracker {tracker.address} --key nope" in msg
    assert "tvm.exec" not in msg and "\n" not in msg


def test_unreachable_tracker_is_a_one_line_user_error(artifact):
    port = rpc.free_port()  # nothing listens there
    with pytest.raises(UserError) as err:
        profile_remote(artifact, f"127.0.0.1:{port}", KEY, inputs=_inputs())
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "\n" not in msg
    assert f"edgeformer rpc-server --tracker-only --port {port}" in msg and "tvm.exec" not in msg
    assert err.value.exit_code == 2


def test_cli_profile_remote_exits_2_on_an_unreachable_tracker(artifact, tmp_path, capsys):
    from edgeformer.cli import main

    port = rpc.free_port()
    out = tmp_path / "profile.json"
    code = main(["profile", str(artifact.path), "--remote", f"127.0.0.1:{port}", "--key", KEY, "-o", str(out)])
    assert code == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_bad_tracker_address_is_a_user_error(artifact):
    with pytest.raises(UserError, match="HOST:PORT"):
        profile_remote(artifact, "localhost", KEY, inputs=_inputs())


def test_stopped_processes_release_their_ports():
    tracker = rpc.start_tracker()
    server = rpc.start_server(tracker.address, "gone")
    pids = [tracker.proc.pid, server.proc.pid]
    server.stop()
    tracker.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    with socket.socket() as s:  # the tracker's port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", tracker.port))


def test_foreground_tracker_stops_when_its_process_ends_or_on_ready_fails():
    """``edgeformer rpc-server --tracker-only``: runs until the process ends, and never leaks it."""
    seen = []

    def ready(proc):
        seen.append(proc)
        proc.stop()

    rpc.serve_tracker("127.0.0.1", 0, on_ready=ready)
    assert len(seen) == 1 and seen[0].address.startswith("127.0.0.1:") and not seen[0].alive()

    def broken(proc):
        seen.append(proc)
        raise RuntimeError("on_ready failed")

    with pytest.raises(RuntimeError, match="on_ready failed"):
        rpc.serve_tracker("127.0.0.1", 0, on_ready=broken)
    assert not seen[1].alive(), "the tracker outlived a failing on_ready"
