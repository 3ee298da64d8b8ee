"""Run ``model.so`` in the Relax VM, and time each VM call for the per-op profile.

TVM 0.27's runtime has no ``vm.profile`` report any more; its Relax VM exposes the hook that
report was built on, ``set_instrument``, which is called before and after every VM ``Call``
instruction.  The per-op profile times each call between those two points: kernels appear under
their fused TIR function name, VM builtins (allocation, shape checks) under ``vm.builtin.*``.
Each op's time is the median over the profiled runs of its time in a run, and the end-to-end
time the median of the same runs (hook included); what the op times do not explain is reported
as the remainder, and the median without the hook is given in a note.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..base import OpProfile, OpTime, Runner
from .build import LIBRARY

log = logging.getLogger(__name__)


def set_threads(threads: int) -> None:
    """Size TVM's runtime thread pool (0 = TVM's default: one thread per physical core).

    The pool can only shrink: if something ran TVM kernels before ``edgeformer.targets.tvm``
    set TVM_NUM_THREADS, it may be smaller than asked, and that is worth a warning.
    """
    if threads:
        import tvm

        tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
        got = int(tvm.get_global_func("runtime.NumThreads")())
        if got < threads:
            log.warning(
                "TVM's thread pool has %d thread(s), not the %d asked for (TVM_NUM_THREADS says so, or "
                "TVM ran kernels before edgeformer sized the pool); set TVM_NUM_THREADS=%d before importing tvm",
                got,
                threads,
                threads,
            )


def flatten(out) -> list:
    """A VM result (tensor, or nested tuples of them) → flat list of TVM tensors."""
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        return [out]
    flat = []
    for item in out:
        flat += flatten(item)
    return flat


class TvmRunner(Runner):
    def __init__(self, artifact_dir: Path, threads: int = 0):
        import tvm
        from tvm import relax

        self._path = Path(artifact_dir) / LIBRARY
        self._threads = threads
        set_threads(threads)
        self.dev = tvm.cpu()
        self.lib = tvm.runtime.load_module(str(self._path))
        self.vm = relax.VirtualMachine(self.lib, self.dev)
        self._main = self.vm["main"]

    def _tensors(self, inputs: Sequence[np.ndarray]) -> list:
        import tvm

        return [tvm.runtime.tensor(np.ascontiguousarray(x), self.dev) for x in inputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [t.numpy() for t in flatten(self._main(*self._tensors(inputs)))]

    def settings(self) -> dict:
        import tvm

        return {
            "runtime": "tvm (relax VM)",
            "version": tvm.__version__,
            "device": "cpu",
            "threads": self._threads or "default (physical cores)",
            "runtime_threads": int(tvm.get_global_func("runtime.NumThreads")()),
            "model_file": self._path.name,
        }

    # -------------------------------------------------------------------------------- per-op
    def profile_ops(self, inputs: Sequence[np.ndarray], runs: int, sources: dict[str, str] | None = None) -> OpProfile:
        """Per-call times of ``runs`` inferences, in the common format: per op the median over the
        runs of its time in a run, and the median end to end (see :func:`aggregate_runs`).

        Warm-up, not profiled: one run without the hook (first-call allocations, caches), then one
        with it (the hook's own first calls: Python callback set-up, the ``per`` dict growing).
        """
        args = self._tensors(inputs)
        self._main(*args)  # warm-up, not profiled
        plain = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            self._main(*args)
            plain.append((time.perf_counter_ns() - t0) / 1e6)

        per: dict[str, list[int]] = {}  # this run: symbol -> [total ns, calls]
        stack: list[int] = []

        def instrument(func, symbol, before_run, ret_value, *call_args):
            if before_run:
                stack.append(time.perf_counter_ns())
            else:
                dt = time.perf_counter_ns() - stack.pop()
                d = per.setdefault(symbol, [0, 0])
                d[0] += dt
                d[1] += 1
            return 0  # VMInstrumentReturnKind.NO_OP

        per_run: list[dict[str, tuple[int, int]]] = []
        e2e = []
        self.vm.set_instrument(instrument)
        try:
            for i in range(runs + _HOOKED_WARMUP):
                per.clear()
                stack.clear()
                t0 = time.perf_counter_ns()
                self._main(*args)
                dt = (time.perf_counter_ns() - t0) / 1e6
                if i >= _HOOKED_WARMUP:
                    per_run.append({k: (v[0], v[1]) for k, v in per.items()})
                    e2e.append(dt)
        finally:
            self.vm.set_instrument(None)
        medians, end_to_end = aggregate_runs(per_run, e2e)
        sources = sources or {}
        ops = [
            OpTime(
                name=name,
                type=op_type(name),
                time_ms=ms,
                share=0.0,
                calls=max(1, calls),
                device="cpu",
                source=sources.get(name),
            )
            for name, (ms, calls) in medians.items()
        ]
        return OpProfile.build(
            "tvm",
            runs,
            end_to_end,
            ops,
            notes=[
                "times are Relax VM calls timed by the VM's instrument hook (TVM 0.27 has no vm.profile); "
                f"per op the median over {runs} profiled runs of its time in a run, end to end the median "
                f"of the same runs, after {1 + _HOOKED_WARMUP} warm-up runs; "
                "unexplained = VM dispatch and hook overhead",
                f"without the hook the median end-to-end time was {float(np.median(plain)):.3f} ms",
                "kernels are fused TIR functions: one entry can cover several PyTorch ops",
            ],
        )


_HOOKED_WARMUP = 1  # runs with the instrument hook before the profiled ones


def aggregate_runs(
    per_run: Sequence[dict[str, tuple[int, int]]], e2e_ms: Sequence[float]
) -> tuple[dict[str, tuple[float, int]], float]:
    """Per-run op timings → ({symbol: (median ms per run, calls per run)}, median end-to-end ms).

    ``per_run[i][symbol]`` is (total ns, calls) of that op in run i; an op missing from a run took
    0 there.  Medians, not means: on a small model one preempted run (a page fault, the scheduler)
    is many times a typical one, and a mean lets it dominate every op it touched.  The op medians
    are taken per op, so they need not add up to the median end to end; the difference is
    reported as unexplained, as always.
    """
    if not per_run:
        return {}, float(np.median(e2e_ms)) if len(e2e_ms) else 0.0
    names = sorted({name for run in per_run for name in run})
    out = {}
    for name in names:
        ns = [run.get(name, (0, 0))[0] for run in per_run]
        calls = [run.get(name, (0, 0))[1] for run in per_run]
        out[name] = (float(np.median(ns)) / 1e6, round(float(np.median(calls))))
    return out, float(np.median(e2e_ms))


def op_type(symbol: str) -> str:
    """``fused_conv2d3_add2_relu1`` → ``conv2d+add+relu``; builtins keep their name."""
    if "." in symbol:
        return symbol
    base = symbol.removeprefix("fused_").removesuffix("_prepacked")  # tuned weight layout: same op
    words = [re.sub(r"\d+$", "", w) for w in base.split("_")]
    words = [w for w in words if w]
    out: list[str] = []
    i = 0
    while i < len(words):
        for n in (3, 2, 1):  # longest known multi-word op first (avg_pool2d, layer_norm, ...)
            name = "_".join(words[i : i + n])
            if n == 1 or name in _MULTI_WORD:
                out.append(name)
                i += n
                break
    return "+".join(out) or symbol


_MULTI_WORD = {
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "layer_norm",
    "group_norm",
    "batch_norm",
    "rms_norm",
    "instance_norm",
    "broadcast_to",
    "permute_dims",
    "strided_slice",
    "expand_dims",
    "dynamic_strided_slice",
    "full_like",
    "zeros_like",
    "ones_like",
    "log_softmax",
    "scatter_elements",
    "collapse_sum_like",
    "collapse_sum_to",
    "image_resize2d",
    "one_hot",
    "cumsum",
    "where",
    "conv2d_transpose",
    "conv1d_transpose",
}
