"""Run ``model.so`` in the Relax VM, and time each VM call for the per-op profile.

TVM 0.27's runtime has no ``vm.profile`` report any more; its Relax VM exposes the hook that
report was built on, ``set_instrument``, which is called before and after every VM ``Call``
instruction.  The per-op profile times each call between those two points: kernels appear under
their fused TIR function name, VM builtins (allocation, shape checks) under ``vm.builtin.*``.
The end-to-end time is measured separately without the hook, so the hook's own overhead is not
counted in it; what the op times do not explain is reported as the remainder.
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
        """Per-call times of ``runs`` inferences (after one warm-up), in the common format."""
        args = self._tensors(inputs)
        self._main(*args)  # warm-up, not profiled
        plain = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            self._main(*args)
            plain.append((time.perf_counter_ns() - t0) / 1e6)

        per: dict[str, dict] = {}
        stack: list[int] = []

        def instrument(func, symbol, before_run, ret_value, *call_args):
            if before_run:
                stack.append(time.perf_counter_ns())
            else:
                dt = time.perf_counter_ns() - stack.pop()
                d = per.setdefault(symbol, {"ns": 0, "n": 0})
                d["ns"] += dt
                d["n"] += 1
            return 0  # VMInstrumentReturnKind.NO_OP

        e2e = []
        self.vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                self._main(*args)
                e2e.append((time.perf_counter_ns() - t0) / 1e6)
        finally:
            self.vm.set_instrument(None)
        sources = sources or {}
        ops = [
            OpTime(
                name=name,
                type=op_type(name),
                time_ms=d["ns"] / runs / 1e6,
                share=0.0,
                calls=max(1, round(d["n"] / runs)),
                device="cpu",
                source=sources.get(name),
            )
            for name, d in per.items()
        ]
        return OpProfile.build(
            "tvm",
            runs,
            float(np.mean(e2e)),
            ops,
            notes=[
                "times are Relax VM calls timed by the VM's instrument hook (TVM 0.27 has no vm.profile); "
                "end-to-end is the mean of the same profiled runs; unexplained = VM dispatch and hook overhead",
                f"without the hook the mean end-to-end time was {np.mean(plain):.3f} ms",
                "kernels are fused TIR functions: one entry can cover several PyTorch ops",
            ],
        )


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
