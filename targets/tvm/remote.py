"""Profile ``model.so`` on a device reached through a TVM RPC tracker.

The tracker hands out a free server registered under the device key; the library is uploaded,
loaded into a Relax VM on the device, and timed there with ``time_evaluator`` (its first call is
a discarded warm-up).  TVM reports one number per *repeat*: the mean of ``number`` calls.  With
the default ``number=1`` every sample is one inference, the same statistic local profiling
keeps; with ``number > 1`` the samples are means of means, and the report says so.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeformer.errors import UserError
from edgeformer.latency import LatencyStats, Phases
from edgeformer.machine import MachineInfo

from ..base import RemoteInfo, RemoteProfile
from . import rpc as erpc
from .build import LIBRARY

log = logging.getLogger(__name__)


def _request(tracker: str, key: str, timeout_s: float):
    """A session on a free device under ``key``: (session, "host:port" of the server)."""
    from tvm import rpc
    from tvm.rpc import base

    host, port = erpc.parse_address(tracker)
    summary = erpc.tracker_summary(tracker)  # UserError when unreachable
    total, _ = erpc.device_counts(summary, key)
    if total == 0:
        keys = sorted(
            {
                s["key"].removeprefix("server:")
                for s in summary.get("server_info", [])
                if s.get("key", "").startswith("server:")
            }
        )
        raise UserError(
            f"no device registered under key {key!r} at the TVM RPC tracker {host}:{port} "
            f"(registered keys: {', '.join(keys) if keys else 'none'})",
            f"start one on the device: {erpc.device_command(tracker, key)}",
        )
    deadline = time.monotonic() + timeout_s
    while erpc.device_counts(erpc.tracker_summary(tracker), key)[1] == 0:
        if time.monotonic() > deadline:
            raise UserError(
                f"all {total} device(s) under key {key!r} stayed busy for {timeout_s:.0f} s",
                "try again later, or raise [remote] timeout_s in the profile",
            )
        time.sleep(0.2)
    import socket
    import struct

    sock = socket.create_connection((host, port), timeout=max(timeout_s, 1.0))
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        struct.unpack("<i", base.recvall(sock, 4))
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        value = base.recvjson(sock)
    except (OSError, ValueError) as err:
        raise UserError(
            f"no device under key {key!r} became free at {host}:{port} ({err})",
            "try again later, or raise [remote] timeout_s in the profile",
        ) from err
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise UserError(f"the TVM RPC tracker at {host}:{port} refused the request for {key!r}: {value}")
    s_host, s_port, matchkey = value[1]
    try:
        return rpc.connect(s_host, s_port, matchkey), f"{s_host}:{s_port}"
    except Exception as err:  # noqa: BLE001 - TVM raises TVMError subclasses for a dead server
        raise UserError(
            f"the device {s_host}:{s_port} (key {key!r}) did not accept the session: {err}",
            f"restart it on the device: {erpc.device_command(tracker, key)}",
        ) from err


def profile_remote(
    artifact_dir: Path,
    tracker: str,
    key: str,
    *,
    inputs: Sequence[np.ndarray],
    min_runs: int = 50,
    min_seconds: float = 1.0,
    warmup: int = 1,
    number: int = 1,
    threads: int = 0,
    timeout_s: float = 60.0,
    cooldown_ms: int = 0,
) -> RemoteProfile:
    """Time ``artifact_dir/model.so`` on a device under ``key`` with the artifact's ``inputs``."""
    if not key:
        raise UserError("remote profiling needs a device key", "pass --key KEY (or set [remote] key in the profile)")
    lib_path = Path(artifact_dir) / LIBRARY
    if not lib_path.is_file():
        raise UserError(f"{artifact_dir} has no {LIBRARY}", "compile it with a TVM profile first")
    if number < 1:
        raise UserError(f"number must be >= 1, got {number}")
    sess, server = _request(tracker, key, timeout_s)
    try:
        return _profile(
            sess, server, lib_path, tracker, key, inputs, min_runs, min_seconds, warmup, number, threads, cooldown_ms
        )
    finally:
        # The session lives until every remote object is gone, and some sit in reference cycles:
        # collect them now so the device is handed back to the tracker right away.
        del sess
        gc.collect()


def _profile(
    sess, server, lib_path, tracker, key, inputs, min_runs, min_seconds, warmup, number, threads, cooldown_ms
) -> RemoteProfile:
    import tvm
    from tvm import relax

    t0 = time.perf_counter()
    sess.upload(str(lib_path))
    rlib = sess.load_module(LIBRARY)
    dev = sess.cpu()
    if threads:
        sess.get_function("runtime.config_threadpool")(1, int(threads))
    vm = relax.VirtualMachine(rlib, dev)
    load_ms = (time.perf_counter() - t0) * 1e3
    args = [tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in inputs]
    vm.set_input("main", *args)
    t0 = time.perf_counter()
    vm.invoke_stateful("main")
    first_ms = (time.perf_counter() - t0) * 1e3  # client wall time: includes the RPC round trip

    def timer(n: int, repeat: int) -> list[float]:
        f = vm.time_evaluator("invoke_stateful", dev, number=n, repeat=repeat, cooldown_interval_ms=cooldown_ms)
        return [r * 1e3 for r in f("main").results]

    warm = timer(1, warmup) if warmup else []
    est_ms = float(np.median(warm)) if warm else timer(1, 1)[0]
    repeat = max(int(min_runs), math.ceil(min_seconds * 1e3 / max(est_ms * number, 1e-3)))
    repeat = min(repeat, 100_000)
    samples = timer(number, repeat)
    statistic = (
        "TVM time_evaluator on the device, one inference per sample (number=1)"
        if number == 1
        else f"TVM time_evaluator on the device: each sample is the mean of number={number} calls "
        "(a per-repeat mean, so percentiles are of means)"
    )
    stats = LatencyStats.from_samples(samples, statistic=statistic)
    outputs = vm.get_outputs("main")
    out_shapes = [list(t.shape) for t in _flatten(outputs)]
    remote_threads = int(sess.get_function("runtime.NumThreads")())
    machine = _remote_machine(sess, key)
    machine.device_key, machine.server, machine.tracker = key, server, tracker
    return RemoteProfile(
        phases=Phases(load_ms, first_ms, warm, stats),
        settings={
            "runtime": "tvm (relax VM over RPC)",
            "version": tvm.__version__,
            "device": "cpu",
            "threads": threads or "device default",
            "runtime_threads": remote_threads,
            "model_file": LIBRARY,
            "number": number,
            "repeat": repeat,
        },
        machine=machine,
        remote=RemoteInfo(tracker, key, server, number, repeat, out_shapes),
        notes=[
            f"timed on the device by TVM's time_evaluator: {repeat} repeats x number={number}; "
            "TVM reports the mean of each repeat",
            "load and first-inference times are client wall times and include the upload and RPC round trips",
        ],
    )


def _remote_machine(sess, key: str) -> MachineInfo:
    """The device's CPU as its server reports it (edgeformer's servers register this function)."""
    import json

    try:
        return MachineInfo.from_dict(json.loads(sess.get_function("edgeformer.machine_info")()))
    except Exception:  # noqa: BLE001 - a plain TVM server does not have it
        return MachineInfo(cpu_model=f"unknown (TVM RPC device {key!r})", logical_cores=0)


def _flatten(out) -> list:
    if hasattr(out, "shape"):
        return [out]
    flat = []
    for item in out:
        flat += _flatten(item)
    return flat
