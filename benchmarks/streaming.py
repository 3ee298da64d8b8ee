"""Streaming LMUFormer, measured (issue 14): the step artifact against recomputing the window.

Per runtime (ONNX Runtime, OpenVINO, ExecuTorch, TVM), for ``lmuformer`` and ``spiking_lmuformer``
(128 frames × 128 mel bins), side by side in alternating blocks, 2 threads, batch 1:

* ``step``: one ``compile --streaming`` step through :class:`edgeformer.runtime.StreamingRunner`
  (a frame in, the logits so far and the state out, the state carried);
* ``window``: the whole-window artifact once, which is what a device recomputes for every new frame
  without a step artifact (so it is also "the parallel model over the full window once").

The spiking whole-window model is compiled on the runtimes that take its LIF recurrences as one
scan each (ONNX Runtime, ExecuTorch: seconds); elsewhere they unroll to ~8.5k nodes (minutes), so
only with ``--spiking-window``.  Its compile time is printed against the 30 s goal.

Streaming accuracy: the tiny trained models (digits rows as 8 frames) on the 360 held-out test
images, after every frame (the step's logits, which cover the tokens whose look-ahead is complete)
and after the flush (equal to the parallel model), as counts.

Goals (issue 14) are printed as distances.  Writes ``bench-results/streaming.json``.

    python benchmarks/streaming.py [--runtimes ort,openvino,executorch,tvm] [--models lmuformer,...]
                                   [--rounds 10] [--spiking-window] [--no-accuracy]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, summarize, write_result  # noqa: E402

from edgeformer.compiler import compile as compile_model  # noqa: E402
from edgeformer.data import digits_dataset  # noqa: E402
from edgeformer.device_profiles import load_profile  # noqa: E402
from edgeformer.runtime import load_artifact  # noqa: E402
from edgeformer.sources import load_model  # noqa: E402
from edgeformer.targets import get_target  # noqa: E402
from edgeformer.training import train  # noqa: E402

RUNTIMES = {"ort": "host-ort", "openvino": "host-openvino", "executorch": "host-executorch", "tvm": "host-tvm"}
GOAL_STEP_FRACTION = 1 / 50  # a step costs at most 1/50 of recomputing the window
GOAL_RTF, HOP_MS = 0.01, 10.0  # real-time factor at a 10 ms hop
GOAL_SPIKING_COMPILE_S = 30.0


def latency(models, runtimes, rounds, spiking_window, tmp: Path) -> dict:
    out: dict = {}
    for model in models:
        for rt in runtimes:
            prof = RUNTIMES[rt]
            t0 = time.perf_counter()
            step_dir = compile_model(model, prof, tmp / f"{model}-{rt}-step", streaming=True, use_cache=False).path
            step_compile = time.perf_counter() - t0
            stream = load_artifact(step_dir).streaming_runner()
            frames = np.random.default_rng(0).standard_normal((64, 1, 128)).astype(np.float32)
            i = [0]

            def push(stream=stream, i=i, frames=frames):
                stream.push(frames[i[0] % 64])
                i[0] += 1

            candidates = {"step": push}
            row = {"step_compile_s": round(step_compile, 1)}
            loops = get_target(load_profile(prof).target).exports_loops  # the spiking window compiles in seconds
            if model != "spiking_lmuformer" or spiking_window or loops:
                t0 = time.perf_counter()
                win_dir = compile_model(model, prof, tmp / f"{model}-{rt}-win", use_cache=False).path
                row["window_compile_s"] = round(time.perf_counter() - t0, 1)
                art = load_artifact(win_dir)
                runner, inputs = art.runner(), art.example_inputs()
                candidates["window"] = lambda runner=runner, inputs=inputs: runner.run(inputs)
            stats = summarize(alternate(candidates, rounds=rounds, per_round=20))
            row.update(stats)
            step_ms = stats["step"]["median_ms"]
            row["real_time_factor_10ms"] = step_ms / HOP_MS
            if "window" in stats:
                row["step_over_window"] = step_ms / stats["window"]["median_ms"]
            out[f"{model}/{rt}"] = row
            w = f"{stats['window']['median_ms']:.3f} ms" if "window" in stats else "(not compiled)"
            frac = f"1/{1 / row['step_over_window']:.0f}" if "step_over_window" in row else "-"
            print(
                f"{model:18s} {rt:10s} step {step_ms:.3f} ms  window {w}  step/window {frac}  "
                f"RTF@10ms {row['real_time_factor_10ms']:.4f}  step compile {row['step_compile_s']} s"
                + (f"  window compile {row['window_compile_s']} s" if "window_compile_s" in row else ""),
                flush=True,
            )
    return out


def accuracy(tmp: Path) -> dict:
    """Held-out top-1 of the tiny trained models after every frame, through the ORT step artifact."""
    out = {}
    x, y = digits_dataset("sequence", "test")
    for name, epochs in (("lmuformer_tiny", 30), ("spiking_lmuformer_tiny", 40)):
        t0 = time.perf_counter()
        weights = tmp / f"{name}.safetensors"
        train(name, weights, epochs=epochs, seed=0, threads=2)
        train_s = time.perf_counter() - t0
        step_dir = compile_model(name, "host-ort", tmp / f"{name}-acc", weights=weights, streaming=True).path
        stream = load_artifact(step_dir).streaming_runner()
        net = load_model(name, weights=weights).module
        with torch.no_grad():
            parallel = net(x).argmax(-1)
        per_frame = np.zeros(x.shape[1] + 1, dtype=int)
        for i in range(len(x)):
            stream.reset()
            for t in range(x.shape[1]):
                logits = stream.push(x[i : i + 1, t].numpy())
                per_frame[t] += int(logits.argmax() == int(y[i])) if t >= stream.delay else 0
            per_frame[-1] += int(stream.flush().argmax() == int(y[i]))
        n = len(x)
        row = {
            "epochs": epochs,
            "train_s": round(train_s, 1),
            "images": n,
            "correct_after_frame": per_frame[:-1].tolist(),
            "correct_after_flush": int(per_frame[-1]),
            "parallel_correct": int((parallel == y).sum()),
        }
        out[name] = row
        print(
            f"{name}: correct of {n} after frame 1..{x.shape[1]} (logits of the tokens complete so far; 0 "
            f"before the {stream.delay}-frame look-ahead fills): {row['correct_after_frame']}; after the "
            f"flush {row['correct_after_flush']} (parallel model {row['parallel_correct']})",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--models", default="lmuformer,spiking_lmuformer")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--spiking-window", action="store_true", help="also compile the spiking whole-window model")
    ap.add_argument("--no-accuracy", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"latency": latency(args.models.split(","), args.runtimes.split(","), args.rounds,
                                     args.spiking_window, tmp)}  # fmt: skip
        if not args.no_accuracy:
            result["accuracy"] = accuracy(tmp)
    print("goals:")
    for key, row in result["latency"].items():
        if "step_over_window" in row:
            ratio = row["step_over_window"]
            verdict = "met" if ratio <= GOAL_STEP_FRACTION else "MISSED"
            print(f"  {key}: step = 1/{1 / ratio:.0f} of the window (goal <= 1/50): {verdict}")
        rtf = row["real_time_factor_10ms"]
        print(f"  {key}: RTF {rtf:.4f} at 10 ms (goal <= {GOAL_RTF}): {'met' if rtf <= GOAL_RTF else 'MISSED'}")
        for k in ("window_compile_s",):
            if k in row and key.startswith("spiking_lmuformer/"):
                s = row[k]
                print(f"  {key}: spiking window compile {s} s (goal <= {GOAL_SPIKING_COMPILE_S:g} s)")
    path = write_result("streaming", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
