"""Bundles, measured (issue 15): build, golden check, sizes per platform, and the C host's latency
against the Python runtime on the same artifact.

For EfficientFormer-L1 and PoolFormer-S12 on host-ort (random weights, 224², batch 1):

* ``linux-x86_64``: ``cmake`` + build (-Werror) + ``ctest`` (the C example on the golden data);
  then the C example (``--repeat N``, in-process median) and the Python runtime (``Runner.run``,
  in-process median) in alternating blocks, both with 2 intra-op threads.  Goal: C within 5%;
* ``linux-aarch64``: cross-built with aarch64-linux-gnu-g++ and ``ctest`` under qemu-user
  (emulated: its time is not a device latency);
* every platform's bundle size (total and runtime libraries).

The tiny model on every runtime (ONNX Runtime, ExecuTorch, OpenVINO, TVM) is built and checked too.
Writes ``bench-results/bundle.json``.

    python benchmarks/bundle.py [--models efficientformer_l1,poolformer_s12] [--rounds 6] [--repeat 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

from edgeformer.bundle import PLATFORMS, build_bundle  # noqa: E402
from edgeformer.compiler import compile as compile_model  # noqa: E402
from edgeformer.errors import UserError  # noqa: E402
from edgeformer.runtime import load_artifact  # noqa: E402

GOAL_RATIO = 1.05
THREADS = 2
# rpi4-tvm: an aarch64 model.so, so its bundle has no golden output (TVM cannot run it here); its
# qemu output is compared with the host-ort bundle's golden output of the same (seeded) model.
TINY_PROFILES = ("host-ort", "host-executorch", "host-openvino", "host-tvm", "rpi4-tvm")


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def build_and_ctest(bundle: Path, *extra: str) -> dict:
    build = bundle / "build"
    t0 = time.perf_counter()
    sh(["cmake", "-S", bundle, "-B", build, "-DCMAKE_BUILD_TYPE=Release", *extra])
    sh(["cmake", "--build", build, "-j2"])
    t1 = time.perf_counter()
    log = sh(["ctest", "--test-dir", build, "-V"]).stdout
    found = re.search(r"max_abs_error (\S+)", log)  # none when the bundle has no golden output
    err = float(found.group(1)) if found else None
    return {"build_s": round(t1 - t0, 2), "ctest_s": round(time.perf_counter() - t1, 2), "max_abs_error": err}


def c_vs_python(art_dir: Path, bundle: Path, rounds: int, repeat: int) -> dict:
    """Alternating blocks: the C example's in-process median over `repeat` runs, then the Python
    runtime's over as many, `rounds` times each (order flipped every round)."""
    art = load_artifact(art_dir)
    art.profile.options.threads = THREADS
    runner = art.runner()
    x = art.example_inputs(seed=0)
    exe = bundle / "build" / "example"
    args = [exe, bundle, bundle / "golden" / "input.bin", bundle / "build" / "bench.bin", "--threads", THREADS]

    def c_block() -> float:
        out = sh([*args, "--repeat", repeat]).stdout
        return float(re.search(r"median_ms (\S+)", out).group(1))

    # The C host's ONNX Runtime settings in Python (spinning off, BASIC on load): what is left
    # between it and the C example is the C host itself.
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    same = ort.InferenceSession(str(bundle / "model" / "model.ort"), so, providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in same.get_inputs()], x))

    def py_block(fn) -> float:
        for _ in range(3):
            fn()
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            t.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(t)

    blocks = {
        "c": c_block,
        "python": lambda: py_block(lambda: runner.run(x)),
        "python_c_settings": lambda: py_block(lambda: same.run(None, feed)),
    }
    samples: dict[str, list[float]] = {k: [] for k in blocks}
    for r in range(rounds):
        for name in list(blocks) if r % 2 == 0 else list(blocks)[::-1]:
            time.sleep(0.2)
            samples[name].append(blocks[name]())
    runner.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "c_median_ms": med["c"],
        "python_median_ms": med["python"],
        "python_c_settings_median_ms": med["python_c_settings"],
        "c_over_python": med["c"] / med["python"],
        "c_over_python_c_settings": med["c"] / med["python_c_settings"],
        "python_settings": runner.settings(),
        "blocks_ms": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="efficientformer_l1,poolformer_s12")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    result: dict = {"threads": THREADS, "goal_c_over_python": GOAL_RATIO, "models": {}, "tiny": {}}
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        tmp = Path(tmp)
        for model in args.models.split(","):
            art = compile_model(model, "host-ort", tmp / model, use_cache=False).path
            entry: dict = {"sizes": {}}
            for platform in PLATFORMS:
                try:
                    b = build_bundle(art, platform, tmp / f"{model}-{platform}")
                except UserError as e:
                    entry["sizes"][platform] = {"refused": str(e)}
                    print(f"  {platform}: refused: {e}")
                    continue
                libs = sum(n for p, n in b.files if p.startswith(("lib/", "android/src/main/jniLibs/")))
                entry["sizes"][platform] = {"total_bytes": b.total_bytes, "runtime_lib_bytes": libs}
            entry["linux-x86_64"] = build_and_ctest(tmp / f"{model}-linux-x86_64")
            entry["latency"] = c_vs_python(art, tmp / f"{model}-linux-x86_64", args.rounds, args.repeat)
            entry["linux-aarch64"] = build_and_ctest(
                tmp / f"{model}-linux-aarch64", "-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake"
            )
            result["models"][model] = entry
            lat = entry["latency"]
            print(
                f"{model}: x86_64 ctest max err {entry['linux-x86_64']['max_abs_error']:.2g}, "
                f"aarch64 (qemu) max err {entry['linux-aarch64']['max_abs_error']:.2g} in "
                f"{entry['linux-aarch64']['ctest_s']:.1f} s; C {lat['c_median_ms']:.2f} ms vs Python "
                f"{lat['python_median_ms']:.2f} ms = {lat['c_over_python']:.3f}x; vs Python with the C host's "
                f"settings {lat['python_c_settings_median_ms']:.2f} ms = {lat['c_over_python_c_settings']:.3f}x "
                f"(goal <= {GOAL_RATIO}: {'met' if lat['c_over_python'] <= GOAL_RATIO else 'missed'})"
            )
            for platform, s in entry["sizes"].items():
                if "refused" in s:
                    continue
                print(
                    f"  {platform:14s} bundle {s['total_bytes'] / 1e6:7.1f} MB, runtime libraries "
                    f"{s['runtime_lib_bytes'] / 1e6:6.1f} MB"
                )
        for prof in TINY_PROFILES:
            art = compile_model("poolformer_tiny", prof, tmp / f"tiny-{prof}", use_cache=False).path
            row = {}
            for platform in ("linux-x86_64", "linux-aarch64"):
                out = tmp / f"tiny-{prof}-{platform}"
                try:
                    b = build_bundle(art, platform, out)
                except UserError as e:
                    row[platform] = {"refused": str(e)}
                    continue
                extra = ["-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake"] if platform != "linux-x86_64" else []
                row[platform] = {"total_bytes": b.total_bytes, **build_and_ctest(out, *extra)}
                if row[platform]["max_abs_error"] is None:
                    ref = np.fromfile(tmp / f"tiny-host-ort-{platform}" / "golden" / "output.bin", dtype="<f4")
                    got = np.fromfile(out / "build" / "output.bin", dtype="<f4")
                    row[platform]["max_abs_error_vs_host_ort"] = float(np.abs(got - ref).max())
            result["tiny"][prof] = row
            print(f"poolformer_tiny {prof}: {row}")
    print(f"wrote {write_result('bundle', result)}")


if __name__ == "__main__":
    main()
