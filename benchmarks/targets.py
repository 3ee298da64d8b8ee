"""Every runnable target side by side: ORT, OpenVINO, ExecuTorch (and TVM when tuned) on the zoo.

For each model (EfficientFormer-L1, PoolFormer-S12, LMUFormer at their real sizes) this compiles
the model with each host profile through ``edgeformer.compiler.compile``, builds the baselines
(torch eager, and each runtime's own default path: plain ORT from ``torch.onnx.export``, plain
OpenVINO from ``ov.convert_model`` with default settings), then times all of them in ONE process
with alternating rounds (the machine is shared and noisy, so only ratios mean anything).

Reported per model: median and p90 latency, compile time, artifact size, numerics, the speedup
over torch eager and over the best runtime default path, and the target edgeformer would pick for
this host (the fastest whose numerics passed).  TVM joins only when ``edgeformer tune`` has left a
database for the host-tvm profile; untuned TVM is ~100x slower and not worth timing.

    python benchmarks/targets.py [--models efficientformer_l1,poolformer_s12,lmuformer]
                                 [--rounds 10] [--per-round 5]

Results merge into ``bench-results/targets.json`` (one entry per model), so models can be run
one at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# OpenMP spin-waiting makes torch eager 10-60x slower on a shared machine; see host_latency.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import RESULTS, alternate, summarize, write_result  # noqa: E402

MODELS = ("efficientformer_l1", "poolformer_s12", "lmuformer")
PROFILES = ("host-ort", "host-openvino", "host-executorch", "host-tvm")


def _dir_bytes(paths) -> int:
    total = 0
    for p in paths:
        p = Path(p)
        total += sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size
    return total


def _tvm_skip_reason(model: str) -> str | None:
    """None when TVM should be benchmarked: available, a host-tvm profile, a tuned database."""
    from edgeformer.device_profiles import profile_names
    from edgeformer.targets import get_target

    if "host-tvm" not in profile_names():
        return "no host-tvm profile"
    try:
        target = get_target("tvm")
    except Exception as err:  # noqa: BLE001 - not part of this build
        return str(err)
    if reason := target.is_available():
        return reason
    from edgeformer.tuning import workload

    if not workload(model, "host-tvm").tuned_trials():  # the program compile hands to TVM
        return f"no tuned database for {model} (run `edgeformer tune {model} --profile host-tvm`)"
    return None


def _plain_ort(graph, tmp: Path):
    import onnxruntime as ort

    from edgeformer.targets.onnxruntime import export_onnx

    t0 = time.perf_counter()
    export_onnx(graph, tmp / "plain.onnx")
    session = ort.InferenceSession(str(tmp / "plain.onnx"), providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - t0
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), graph.example_inputs)}
    return (lambda: session.run(None, feeds)), seconds, _dir_bytes([tmp / "plain.onnx"])


def _plain_openvino(graph, tmp: Path):
    """OpenVINO's own default path: convert_model + compile_model(CPU) with no config at all."""
    import openvino as ov

    t0 = time.perf_counter()
    model = ov.convert_model(graph.program)
    ov.save_model(model, str(tmp / "plain.xml"))  # default: weights compressed to fp16
    compiled = ov.Core().compile_model(str(tmp / "plain.xml"), "CPU")
    seconds = time.perf_counter() - t0
    request = compiled.create_infer_request()
    feeds = [t.numpy() for t in graph.example_inputs]
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda: request.infer(feeds)), seconds, _dir_bytes([tmp / "plain.xml", tmp / "plain.bin"]), precision


def bench_model(name: str, rounds: int, per_round: int, profiles: list[str]) -> dict:
    import numpy as np
    import torch

    from edgeformer.compiler import compile as compile_model
    from edgeformer.runtime import load_artifact
    from edgeformer.sources import load_model

    src = load_model(name)
    model, graph = src.module.eval(), src.graph
    x = graph.example_inputs
    feeds = [t.numpy() for t in x]
    with torch.no_grad():
        reference = [t.numpy() for t in torch.utils._pytree.tree_flatten(model(*x))[0]]
    rows: dict[str, dict] = {}
    candidates = {}
    runners = []
    with tempfile.TemporaryDirectory(prefix="edgeformer-bench-targets-") as tmp:
        tmp = Path(tmp)
        candidates["torch_eager"] = lambda: model(*x)  # timed under inference_mode below
        rows["torch_eager"] = {"kind": "baseline", "what": f"torch {torch.__version__} eager, no_grad"}

        def error_vs_eager(run) -> float:
            out = run()
            outs = out.to_tuple() if hasattr(out, "to_tuple") else out  # an OpenVINO OVDict
            outs = list(outs.values()) if isinstance(outs, dict) else list(outs)
            return max(float(np.abs(np.asarray(a, dtype=np.float64) - b).max()) for a, b in zip(outs, reference))

        run, seconds, size = _plain_ort(graph, tmp)
        candidates["plain_ort"] = run
        rows["plain_ort"] = {
            "kind": "default",
            "what": "torch.onnx.export(dynamo) + ORT defaults",
            "compile_s": round(seconds, 2),
            "artifact_bytes": size,
            "max_abs_error_vs_eager": error_vs_eager(run),
        }
        run, seconds, size, precision = _plain_openvino(graph, tmp)
        candidates["plain_openvino"] = run
        rows["plain_openvino"] = {
            "kind": "default",
            "what": f"ov.convert_model + compile_model(CPU) defaults (runs {precision})",
            "compile_s": round(seconds, 2),
            "artifact_bytes": size,
            "max_abs_error_vs_eager": error_vs_eager(run),
        }

        for profile in profiles:
            key = f"edgeformer:{profile}"
            if profile == "host-tvm" and (reason := _tvm_skip_reason(name)):
                rows[key] = {"kind": "edgeformer", "skipped": reason}
                continue
            t0 = time.perf_counter()
            try:
                report = compile_model(name, profile, tmp / profile, use_cache=False)
            except Exception as err:  # noqa: BLE001 - report and go on with the other targets
                rows[key] = {"kind": "edgeformer", "failed": f"{type(err).__name__}: {err}"}
                continue
            seconds = time.perf_counter() - t0
            m = report.manifest
            art = load_artifact(report.path)
            runner = art.runner()
            runners.append(runner)
            out = runner.run(feeds)
            err = max(float(np.abs(np.asarray(a, dtype=np.float64) - b).max()) for a, b in zip(out, reference))
            candidates[key] = (lambda r: lambda: r.run(feeds))(runner)
            rows[key] = {
                "kind": "edgeformer",
                "target": m.target,
                "profile": profile,
                "compile_s": round(seconds, 2),
                "target_compile_s": round(report.stage_times_s.get("compile", 0), 2),
                "artifact_bytes": sum(f.bytes for f in m.files),
                "numerics": {
                    "status": m.numerics.status,
                    "max_abs_error": m.numerics.max_abs_error,
                    "cosine": m.numerics.cosine,
                },
                "max_abs_error_vs_eager": err,
                "passes": [p.name for p in m.passes if p.changed],
                "settings": runner.settings(),
                "placement": {
                    k: m.target_details[k]
                    for k in ("delegated_ops", "fallback_ops", "fallback_op_types")
                    if k in m.target_details
                }
                or None,
            }
        with torch.inference_mode():
            samples = alternate(candidates, rounds=rounds, per_round=per_round, warmup=1)
        for runner in runners:
            runner.close()
    stats = summarize(samples)
    eager = stats["torch_eager"]["median_ms"]
    defaults = {k: stats[k]["median_ms"] for k, r in rows.items() if r.get("kind") == "default"}
    best_default = min(defaults, key=defaults.get)
    for key, s in stats.items():
        rows[key].update({k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()})
        rows[key]["speedup_vs_torch_eager"] = round(eager / s["median_ms"], 3)
        rows[key]["speedup_vs_best_default"] = round(defaults[best_default] / s["median_ms"], 3)
    passed = {
        k: stats[k]["median_ms"]
        for k, r in rows.items()
        if r.get("kind") == "edgeformer" and k in stats and r["numerics"]["status"] == "passed"
    }
    pick = min(passed, key=passed.get) if passed else None
    return {
        "input_shapes": [list(t.shape) for t in x],
        "rows": rows,
        "best_default_path": best_default,
        "pick_for_host": {
            "profile": rows[pick]["profile"],
            "target": rows[pick]["target"],
            "median_ms": round(passed[pick], 4),
            "why": "lowest median latency among targets whose numerics passed",
        }
        if pick
        else None,
    }


def _print(name: str, result: dict) -> None:
    print(f"\n{name}  input {result['input_shapes']}  (speedups: >1 = faster)")
    print(f"{'path':<28}{'median':>9}{'p90':>9}{'xEager':>8}{'xBestDef':>9}{'compile s':>10}{'MB':>8}  numerics")
    for key, r in result["rows"].items():
        if "median_ms" not in r:
            print(f"{key:<28}  {r.get('skipped') or r.get('failed')}")
            continue
        num = r.get("numerics") or {}
        if num:
            num_s = f"{num.get('status')} {num.get('max_abs_error') or 0:.1e}"
        elif "max_abs_error_vs_eager" in r:
            num_s = f"(not checked) {r['max_abs_error_vs_eager']:.1e}"
        else:
            num_s = ""
        size = f"{r['artifact_bytes'] / 1e6:.1f}" if "artifact_bytes" in r else "-"
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        print(
            f"{key:<28}{r['median_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['speedup_vs_torch_eager']:>8.2f}"
            f"{r['speedup_vs_best_default']:>9.2f}{comp:>10}{size:>8}  {num_s}"
        )
    pick = result["pick_for_host"]
    print(
        f"best default path: {result['best_default_path']}; edgeformer would pick: "
        f"{pick['profile'] if pick else '(none passed)'}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=5)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("torch", "coremltools", "executorch", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from edgeformer.profiling import machine_info

    path = RESULTS / "targets.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("models", {})
    for name in [m for m in args.models.split(",") if m]:
        t0 = time.perf_counter()
        result = bench_model(name, args.rounds, args.per_round, [p for p in args.profiles.split(",") if p])
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["rounds"], result["per_round"] = args.rounds, args.per_round
        data["models"][name] = result
        _print(name, result)
    data["machine"] = machine_info().to_dict()
    data["method"] = (
        "one process, alternating rounds (order reversed every other round; each block after a 0.1 s pause "
        "and one untimed call), batch 1 fp32, runtime default thread counts; speedup = other median / this median"
    )
    print(f"\nwrote {write_result('targets', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
