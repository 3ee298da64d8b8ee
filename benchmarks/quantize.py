"""int8 and bf16 against fp32 and against each runtime's own plain flows (issue 12).

Part 1, 224² (EfficientFormer-L1, PoolFormer-S12, PVTv2-B0; batch 1, random weights, ``--threads``
threads).  Calibration: ``sample-images``, 32 random crops of sklearn's two photos.  Per model:

- edgeformer artifacts built with the public compiler stages (``plan`` → ``rewrite`` → ``build``,
  calibrated with a :class:`targets.base.Calibration` of the crops): ORT fp32/int8, OpenVINO
  f32/bf16/int8, ExecuTorch fp32/int8 (profiles ``host-ort[-int8]``, ``host-openvino[-bf16|-int8]``,
  ``host-executorch[-int8]``; a profile file not there yet is stood in for by the fp32 profile with
  that precision, and the result says so);
- the peers' plain flows: ``torch.onnx.export(model, dynamo=True)`` run by ORT (fp32) and quantized
  by ``quantize_static`` with its defaults (calibrated on the same crops); ``ov.convert_model`` run
  with OpenVINO's defaults (no precision hint: bf16 on this CPU) and with an f32 hint, and quantized
  by ``nncf.quantize`` with its defaults; ExecuTorch's documented PT2E flow (``XNNPACKQuantizer``,
  per-channel symmetric config, ``to_edge_transform_and_lower``).

Every candidate of one model, across all runtimes, is timed in ONE ``edgeformer.latency.alternate``
call: blocks of calls, one candidate alone per block after a pause and an untimed call, the order
reversed every round (ORT's spinning pools corrupt call-by-call interleaving on 2 cores).  Reported:
median and p90, the ratio to the same runtime's fp32, the output error (cosine, max abs) against
fp32 PyTorch on the 32 crops, and the speed gate's decision (``accuracy.speed_gate``, int8 against
the runtime's fp32 artifact, as ``compile`` runs it).

Part 2, trained tiny digits models (every ``training.RECIPES`` entry, short runs: ``TINY_EPOCHS``).
Each is compiled with ``compile(name, "<profile>-int8", weights=..., calib="digits", eval="digits",
force_approx=True)`` on ORT, OpenVINO and ExecuTorch; the contract's own accuracy block
(``manifest.approximation.accuracy``: fp32 and int8 top-1 on the 360 held-out images, agreement) and
its speed gate's decision without the force are reported.

Goals (issue 12) are printed as distances.  Writes ``bench-results/quantize.json``.

    python benchmarks/quantize.py [--quick] [--models efficientformer_l1,...] [--tiny all|none|a,b]
                                  [--min-runs 60] [--min-seconds 2] [--blocks 10] [--threads 2]
                                  [--checkpoints DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# OpenMP spin-waiting makes torch slow on a shared machine (host_latency.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import RESULTS, write_result  # noqa: E402

MODELS = ("efficientformer_l1", "poolformer_s12", "pvt_v2_b0")
# (runtime, precision) -> the shipped profile
PROFILES = {
    ("ort", "fp32"): "host-ort",
    ("ort", "int8"): "host-ort-int8",
    ("openvino", "fp32"): "host-openvino",
    ("openvino", "bf16"): "host-openvino-bf16",
    ("openvino", "int8"): "host-openvino-int8",
    ("executorch", "fp32"): "host-executorch",
    ("executorch", "int8"): "host-executorch-int8",
}
RUNTIMES = ("ort", "openvino", "executorch")
PLAIN_INT8 = {"ort": "plain_ort_int8", "openvino": "plain_nncf_int8", "executorch": "plain_et_int8"}
CALIB_CROPS = 32
# Short training runs (recipe default in the comment) so the whole benchmark stays near 20 min.
TINY_EPOCHS = {
    "efficientformer_tiny": 4,  # 12
    "efficientformer_v2_tiny": 3,  # 8
    "poolformer_tiny": 8,  # 20
    "pvt_v2_tiny": 10,  # 30
    "ecoformer_pvt_v2_tiny": 8,  # 25 softmax + 10 hash (both phases scale: 8 + 3.2)
    "lmuformer_tiny": 10,  # 30
    "spiking_lmuformer_tiny": 12,  # 40
}
QUICK_TINY = ("efficientformer_tiny", "poolformer_tiny")
GOAL_BEST_FP32 = 0.40  # L1 int8 (fastest runtime) / best fp32 peer
GOAL_OV_DEFAULT = 0.65  # L1 int8 (fastest runtime) / plain OpenVINO default
GOAL_DROP = 1.0  # top-1 points


# ------------------------------------------------------------------------------------ profiles


def profile_for(runtime: str, precision: str, threads: int):
    """The shipped profile (with ``threads``), or the fp32 profile with ``precision`` when its file is missing."""
    from edgeformer.device_profiles import load_profile, profile_names, with_precision

    name = PROFILES[(runtime, precision)]
    if name in profile_names():
        prof, note = load_profile(name), ""
    else:
        prof = with_precision(load_profile(PROFILES[(runtime, "fp32")]), precision)
        base = PROFILES[(runtime, "fp32")]
        note = f"profiles/{name}.toml missing: stand-in {prof.name} ({base} with precision={precision})"
    prof = dataclasses.replace(prof, options=dataclasses.replace(prof.options, threads=threads))
    return prof, note


# The plain ORT flow, run in a fresh interpreter: export, then quantize_static with its defaults.
_PLAIN_ORT = """
import sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, onnx, torch
from onnxruntime.quantization import CalibrationDataReader, quantize_static
from edgeformer.sources import load_model

name, out, calib = sys.argv[1:4]
src = load_model(name)  # the same seeded random weights as the benchmark's module
torch.onnx.export(src.module.eval(), tuple(src.graph.example_inputs), out + "/plain.onnx", dynamo=True)
samples = np.load(calib)["x"]
iname = onnx.load(out + "/plain.onnx", load_external_data=False).graph.input[0].name


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{iname: s[None]} for s in samples])

    def get_next(self):
        return next(self.it, None)


def quantize(src):
    quantize_static(src, out + "/plain_int8.onnx", Reader())
    import onnxruntime as ort

    ort.InferenceSession(out + "/plain_int8.onnx", providers=["CPUExecutionProvider"])


try:
    quantize(out + "/plain.onnx")
except Exception as err:  # e.g. PoolFormer: ORT's shape inference gives a QDQ'd GroupNorm output rank 3
    # What ORT's docs tell a user next: quant_pre_process, then quantize_static again.
    first = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    print(f"quantize_static: defaults alone failed ({first}); retrying after quant_pre_process", file=sys.stderr)
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(out + "/plain.onnx", out + "/plain_pre.onnx")
        quantize(out + "/plain_pre.onnx")
    except Exception as err2:
        print(f"quantize_static: {type(err2).__name__}: {err2}".splitlines()[0][:300], file=sys.stderr)
        sys.exit(3)
    open(out + "/plain_int8.fallback", "w").write(first)
"""

# --------------------------------------------------------------------------------- small helpers


def _err(reference, outputs) -> dict:
    import numpy as np

    ref = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in reference])
    out = np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs])
    if not np.isfinite(out).all():
        return {"cosine": None, "max_abs": float("inf"), "finite": False}
    cos = float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out)))
    return {"cosine": cos, "max_abs": float(np.abs(ref - out).max()), "finite": True}


def _flat(out) -> list:
    import numpy as np

    if hasattr(out, "to_tuple"):  # an OpenVINO OVDict
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [o.detach().numpy() if hasattr(o, "detach") else np.asarray(o) for o in out]


def _fail(err: BaseException) -> str:
    """One line: the error, and for a bug (not a UserError) where it was raised."""
    import traceback

    from edgeformer.errors import UserError

    text = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
    frames = traceback.extract_tb(err.__traceback__)
    if frames and not isinstance(err, UserError):
        where = frames[-1]
        text += f" (at {Path(where.filename).name}:{where.lineno})"
    return text


def _small(details: dict, keys=None) -> dict:
    """Scalar manifest facts (placement, int8 op counts) without the long lists."""
    out = {}
    for k, v in (details or {}).items():
        if keys and k not in keys:
            continue
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, dict) and all(isinstance(x, (int, float, str, bool)) for x in v.values()) and len(v) <= 12:
            out[k] = v
    return out


# --------------------------------------------------------------------- the edgeformer artifacts


class Edge:
    """One model's edgeformer artifacts: one export, a rewrite per distinct pipeline, one build per profile."""

    def __init__(self, model: str, threads: int, tmp: Path):
        from edgeformer.compiler import plan

        self.threads, self.tmp = threads, tmp
        prof, _ = profile_for("ort", "fp32", threads)
        self.base = plan(model, prof)
        self.rewrites: list[tuple[object, object]] = []

    def _rewritten(self, p):
        from edgeformer.compiler import rewrite

        for pipeline, rw in self.rewrites:
            if pipeline == p.pipeline:
                return rw
        rw = rewrite(p)
        self.rewrites.append((p.pipeline, rw))
        return rw

    def build(self, runtime: str, precision: str, calibration):
        from edgeformer.artifact import Artifact
        from edgeformer.compiler import Plan, build, resolve_target

        prof, note = profile_for(runtime, precision, self.threads)
        prof, target = resolve_target(prof)
        pipeline = target.default_pipeline(prof).edited(prof.pipeline.add, prof.pipeline.drop, None)
        p = Plan(self.base.source, prof, target, pipeline, self.base.cache_key)
        rw = self._rewritten(p)
        folder = self.tmp / f"{runtime}-{precision}"
        folder.mkdir(parents=True)
        calib = calibration if target.needs_calibration(prof) else None
        if calib is not None:
            calib = dataclasses.replace(
                calib, method=prof.options.calibration_method, mode=prof.options.quantization_mode
            )
        t0 = time.perf_counter()
        built = build(p, rw, folder, calib)
        seconds = time.perf_counter() - t0
        runner = target.load(Artifact(built.folder, built.manifest, prof))
        info = {
            "profile": prof.name,
            "stand_in": note,
            "passes": [r.name for r in rw.records if r.changed],
            "build_s": round(seconds, 1),
            "artifact_bytes": sum(f.bytes for f in built.manifest.files),
            "details": _small(built.result.details),
            "structural_checks": built.result.structural_checks,
            "settings": runner.settings(),
        }
        return runner, info


# ------------------------------------------------------------------------------ the plain flows


def plain_flows(
    model_name: str, module, x, samples: list, threads: int, tmp: Path, want: set[str]
) -> tuple[dict, dict]:
    """Each peer's own default flow on the same module and crops: name -> (callable, info)."""
    runs, infos = {}, {}

    def attempt(name, fn):
        if name not in want:
            return
        t0 = time.perf_counter()
        try:
            run, info = fn()
        except Exception as err:  # noqa: BLE001 - report and go on
            infos[name] = {"failed": _fail(err)}
            logging.getLogger("quantize").warning("%s failed: %s", name, _fail(err))
            return
        info["build_s"] = round(time.perf_counter() - t0, 1)
        runs[name], infos[name] = run, info

    onnx_path, q_path = tmp / "plain.onnx", tmp / "plain_int8.onnx"

    def ort_session(path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda a: session.run(None, {name: a})

    ort_log: dict[str, str] = {}

    def plain_ort():
        # In a fresh interpreter, so nothing of edgeformer's in-process state touches the plain flow.
        import numpy as np

        np.savez(tmp / "calib.npz", x=np.concatenate(samples))
        proc = subprocess.run(
            [sys.executable, "-c", _PLAIN_ORT, model_name, str(tmp), str(tmp / "calib.npz")],
            capture_output=True,
            text=True,
            check=False,
        )
        ort_log["stderr"] = [line for line in proc.stderr.splitlines() if line.startswith("quantize_static:")][-1:]
        ort_log["rc"] = proc.returncode
        if not onnx_path.is_file():
            raise RuntimeError(f"plain export failed: {' | '.join(ort_log['stderr'])}")
        return ort_session(onnx_path), {"what": "torch.onnx.export(dynamo=True) + ORT defaults (fresh process)"}

    def plain_ort_int8():
        if ort_log.get("rc") or not q_path.is_file():
            raise RuntimeError(" | ".join(ort_log.get("stderr") or ["no plain export"]))
        info = {"what": "quantize_static defaults (QDQ, S8S8, per-tensor, MinMax) on the plain export (fresh process)"}
        marker = tmp / "plain_int8.fallback"
        if marker.is_file():
            info["defaults_alone_failed"] = marker.read_text()
            info["what"] += ", after quant_pre_process (defaults alone failed)"
        return ort_session(q_path), info

    ov_model = {}

    def ov_compile(model, config):
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, **config})
        request = compiled.create_infer_request()
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        hint += f", {compiled.get_property('PERFORMANCE_HINT')}, {compiled.get_property('NUM_STREAMS')} stream"
        return (lambda a: request.infer([a])), hint

    def convert():
        if "model" not in ov_model:
            import openvino as ov

            ov_model["model"] = ov.convert_model(module, example_input=x)
        return ov_model["model"]

    def plain_ov_default():
        run, hint = ov_compile(convert(), {})
        return run, {"what": f"ov.convert_model + compile_model(CPU) defaults (runs {hint})", "precision": hint}

    def plain_ov_f32():
        run, hint = ov_compile(convert(), {"INFERENCE_PRECISION_HINT": "f32"})
        return run, {"what": "ov.convert_model + INFERENCE_PRECISION_HINT=f32", "precision": hint}

    def plain_nncf_int8():
        import nncf

        quantized = nncf.quantize(convert(), nncf.Dataset(samples))
        run, hint = ov_compile(quantized, {})
        return run, {"what": f"nncf.quantize defaults on ov.convert_model, CPU defaults (float islands {hint})"}

    def plain_et_int8():
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        m = torch.export.export(module, (x,)).module()
        m = prepare_pt2e(m, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
        with torch.no_grad():
            for s in samples:
                m(torch.from_numpy(s))
        m = convert_pt2e(m)
        prog = to_edge_transform_and_lower(torch.export.export(m, (x,)), partitioner=[XnnpackPartitioner()])
        pte = tmp / "plain_int8.pte"
        pte.write_bytes(prog.to_executorch().buffer)
        runtime = Runtime.get()
        runtime._legacy_module._unsafe_reset_threadpool(threads)
        method = runtime.load_program(pte).load_method("forward")
        return (lambda a: method.execute([torch.from_numpy(a)])), {
            "what": "PT2E XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True)) + "
            "to_edge_transform_and_lower(XnnpackPartitioner), as ExecuTorch's XNNPACK docs"
        }

    attempt("plain_ort", plain_ort)
    attempt("plain_ort_int8", plain_ort_int8)
    attempt("plain_ov_default", plain_ov_default)
    attempt("plain_ov_f32", plain_ov_f32)
    attempt("plain_nncf_int8", plain_nncf_int8)
    attempt("plain_et_int8", plain_et_int8)
    return runs, infos


# --------------------------------------------------------------------------------- part 1: 224²


def bench_model(name: str, args, tmp: Path) -> dict:
    import numpy as np
    import torch

    from edgeformer import accuracy
    from edgeformer.data import load_data
    from edgeformer.latency import LatencyStats, alternate
    from edgeformer.manifest import TensorSpec
    from edgeformer.targets import Calibration

    log = logging.getLogger("quantize")
    t_model = time.perf_counter()
    edge = Edge(name, args.threads, tmp / name)
    graph = edge.base.graph
    module = edge.base.source.module.eval()
    specs = [
        TensorSpec(n, s, str(t.dtype).replace("torch.", ""))
        for n, s, t in zip(graph.input_names, graph.input_shapes(), graph.example_inputs)
    ]
    data = load_data("sample-images", role="calib", inputs=specs, limit=CALIB_CROPS)
    samples = [np.ascontiguousarray(arrays[0]) for arrays, _ in data.batches(1)]
    calibration = Calibration(samples=[[s] for s in samples], source=data.name, sha256=data.sha256, cache_dir=None)
    reference = accuracy.reference_outputs(graph, data, 1)  # fp32 PyTorch (the exported graph) on the crops

    runs: dict[str, object] = {}  # name -> callable(array) -> outputs
    rows: dict[str, dict] = {}
    runners = {}  # edgeformer key -> Runner
    for runtime in RUNTIMES:
        for precision in ("fp32", "bf16", "int8"):
            if (runtime, precision) not in PROFILES:
                continue
            key = f"{runtime}_{precision}"
            log.info("%s: building edgeformer %s", name, key)
            try:
                runner, info = edge.build(runtime, precision, calibration)
            except Exception as err:  # noqa: BLE001 - a target still being finished: report, go on
                rows[key] = {"kind": "edgeformer", "runtime": runtime, "precision": precision, "failed": _fail(err)}
                log.warning("%s %s failed: %s", name, key, _fail(err))
                continue
            runners[key] = runner
            runs[key] = (lambda r: lambda a: r.run([a]))(runner)
            rows[key] = {"kind": "edgeformer", "runtime": runtime, "precision": precision, **info}
    log.info("%s: building the plain flows", name)
    want = (
        set(args.plain.split(","))
        if args.plain != "all"
        else set(PLAIN_INT8.values())
        | {
            "plain_ort",
            "plain_ov_default",
            "plain_ov_f32",
        }
    )
    with torch.no_grad():
        plain_runs, plain_infos = plain_flows(
            name, module, graph.example_inputs[0], samples, args.threads, tmp / name, want
        )
    plain_runtime = {
        "plain_ort": "ort",
        "plain_ort_int8": "ort",
        "plain_ov_default": "openvino",
        "plain_ov_f32": "openvino",
        "plain_nncf_int8": "openvino",
        "plain_et_int8": "executorch",
    }
    for k, info in plain_infos.items():
        rows[k] = {"kind": "plain", "runtime": plain_runtime[k], **info}
    runs.update(plain_runs)

    # output error on the crops, against fp32 PyTorch
    for k, run in list(runs.items()):
        try:
            outs = [_flat(run(s)) for s in samples]
            per_output = [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]
            rows[k]["error_vs_torch_fp32"] = _err(reference, per_output)
        except Exception as err:  # noqa: BLE001
            rows[k]["failed"] = f"run: {_fail(err)}"
            runs.pop(k)

    # the speed gate as compile runs it: int8 against the same runtime's fp32 artifact
    x0 = samples[0]
    gate_pairs = {}
    for runtime in RUNTIMES:
        a, e = f"{runtime}_int8", f"{runtime}_fp32"
        if a in runs and e in runs:
            try:
                gate = accuracy.speed_gate(runners[e], runners[a], [x0], min_speedup=args.min_speedup)
                gate_pairs[runtime] = gate.to_dict()
            except Exception as err:  # noqa: BLE001
                gate_pairs[runtime] = {"failed": _fail(err)}

    # everything of this model, across runtimes, in one alternate call
    log.info("%s: timing %d candidates in alternating blocks", name, len(runs))
    with torch.inference_mode():
        samples_ms = alternate(
            {k: functools.partial(fn, x0) for k, fn in runs.items()},
            min_runs=args.min_runs,
            min_seconds=args.min_seconds,
            blocks=args.blocks,
        )
    for runner in runners.values():
        runner.close()
    for k, s in samples_ms.items():
        st = LatencyStats.from_samples(s)
        rows[k].update({"median_ms": round(st.median_ms, 4), "p90_ms": round(st.p90_ms, 4), "runs": st.runs})
    med = {k: rows[k]["median_ms"] for k in samples_ms}
    for k in samples_ms:
        r = rows[k]
        fp32 = med.get(f"{r['runtime']}_fp32")
        if fp32 and r["kind"] == "edgeformer":
            r["ratio_to_runtime_fp32"] = round(med[k] / fp32, 3)
    peers_fp32 = {k: med[k] for k in ("plain_ort", "plain_ov_f32") if k in med}
    best_peer = min(peers_fp32, key=peers_fp32.get) if peers_fp32 else None
    for k in samples_ms:
        if best_peer:
            rows[k]["ratio_to_best_fp32_peer"] = round(med[k] / med[best_peer], 3)
        if "plain_ov_default" in med:
            rows[k]["ratio_to_plain_ov_default"] = round(med[k] / med["plain_ov_default"], 3)
    for runtime, plain in PLAIN_INT8.items():
        k = f"{runtime}_int8"
        if k in med and plain in med:
            rows[k]["ratio_to_plain_int8"] = round(med[k] / med[plain], 3)
    for runtime, gate in gate_pairs.items():
        rows[f"{runtime}_int8"]["speed_gate"] = gate
        k = f"{runtime}_int8"
        if "passed" in gate and k in med and f"{runtime}_fp32" in med:
            gate["int8_ships"] = gate["passed"]
            gate["int8_slower_in_this_timing"] = med[k] > med[f"{runtime}_fp32"]
    int8 = {k: med[k] for k in (f"{rt}_int8" for rt in RUNTIMES) if k in med}
    fastest = min(int8, key=int8.get) if int8 else None
    return {
        "input_shapes": [list(t.shape) for t in graph.example_inputs],
        "calibration": {"source": data.name, "sha256": data.sha256, "samples": len(data)},
        "rows": rows,
        "best_fp32_peer": best_peer,
        "fastest_int8": fastest,
        "wall_s": round(time.perf_counter() - t_model, 1),
    }


# ---------------------------------------------------------------------------- part 2: tiny models


def _checkpoint(name: str, epochs: float, folder: Path) -> tuple[Path, dict]:
    """Train ``name`` for ``epochs`` (seed 0, 2 threads), or reuse the checkpoint a previous run left."""
    from edgeformer.training import sidecar_path, train

    path = folder / f"{name}-e{epochs:g}-s0.safetensors"
    side = sidecar_path(path)
    if path.is_file() and side.is_file():
        meta = json.loads(side.read_text())
        return path, {"accuracy": meta.get("accuracy"), "seconds": meta.get("seconds"), "reused": True}
    r = train(name, path, epochs=epochs, seed=0, threads=2)
    return path, {"accuracy": r.accuracy, "seconds": round(r.seconds, 1), "steps": r.steps, "reused": False}


def bench_tiny(name: str, epochs: float, args, ckpt_dir: Path, tmp: Path) -> dict:
    from edgeformer.compiler import compile as compile_model

    log = logging.getLogger("quantize")
    t0 = time.perf_counter()
    try:
        weights, trained = _checkpoint(name, epochs, ckpt_dir)
    except Exception as err:  # noqa: BLE001
        return {"epochs": epochs, "failed": f"train: {_fail(err)}"}
    out = {"epochs": epochs, "training": trained, "runtimes": {}}
    for runtime in args.tiny_runtimes.split(","):
        prof, note = profile_for(runtime, "int8", args.threads)
        log.info("%s: compile %s (calib/eval digits, force_approx)", name, prof.name)
        t1 = time.perf_counter()
        try:
            report = compile_model(
                name,
                prof,
                tmp / f"{name}-{runtime}",
                weights=weights,
                calib="digits",
                eval="digits",
                force_approx=True,
                use_cache=False,
            )
        except Exception as err:  # noqa: BLE001 - report and go on
            out["runtimes"][runtime] = {"profile": prof.name, "stand_in": note, "failed": _fail(err)}
            log.warning("%s %s failed: %s", name, prof.name, _fail(err))
            continue
        a = report.manifest.approximation
        acc, speed = a.accuracy, a.speed
        ref, q = acc.get("reference_top1") or {}, acc.get("approx_top1") or {}
        agree = acc.get("agreement") or {}
        out["runtimes"][runtime] = {
            "profile": prof.name,
            "stand_in": note,
            "compile_s": round(time.perf_counter() - t1, 1),
            "fp32_correct": ref.get("correct"),
            "int8_correct": q.get("correct"),
            "n": ref.get("n") or acc.get("samples"),
            "drop_points": acc.get("accuracy_drop_points"),
            "agreement": agree.get("count"),
            "mcnemar_p": (acc.get("mcnemar") or {}).get("p"),
            "cosine": acc.get("cosine"),
            "max_abs_error": acc.get("max_abs_error"),
            "kept_float": len(a.kept_float),
            "shipped_forced": a.shipped,
            "speed": speed,
            # the decision without --force-approx: the gate's own measurement
            "gate_without_force": ("int8" if speed.get("passed") else "fp32")
            if speed.get("measured")
            else "not measured",
            "accuracy_block": acc,
        }
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------ goals


def goals(result: dict) -> list[dict]:
    """Each goal of issue 12 with its measured value and the distance to its bound (> 0: met by)."""
    out = []

    def goal(text, value, bound, *, at_most=True, detail=""):
        if value is None:
            out.append({"goal": text, "value": None, "bound": bound, "met": None, "distance": None, "detail": detail})
            return
        dist = bound - value if at_most else value - bound
        met, value, dist = dist >= 0, round(value, 4), round(dist, 4)
        out.append({"goal": text, "value": value, "bound": bound, "met": met, "distance": dist, "detail": detail})

    l1 = result["models"].get("efficientformer_l1")
    if l1 and l1.get("fastest_int8"):
        rows, k = l1["rows"], l1["fastest_int8"]
        goal(
            f"L1 int8 on the fastest runtime ({k}) / best fp32 peer ({l1['best_fp32_peer']})",
            rows[k].get("ratio_to_best_fp32_peer"),
            GOAL_BEST_FP32,
            detail=f"{rows[k]['median_ms']:.2f} ms vs {rows[l1['best_fp32_peer']]['median_ms']:.2f} ms"
            if l1["best_fp32_peer"]
            else "",
        )
        goal(
            f"L1 int8 on the fastest runtime ({k}) / plain OpenVINO default",
            rows[k].get("ratio_to_plain_ov_default"),
            GOAL_OV_DEFAULT,
            detail=f"{rows[k]['median_ms']:.2f} ms vs {rows['plain_ov_default']['median_ms']:.2f} ms"
            if "median_ms" in rows.get("plain_ov_default", {})
            else "",
        )
    for model, m in result["models"].items():
        for runtime, plain in PLAIN_INT8.items():
            row = m["rows"].get(f"{runtime}_int8", {})
            if "ratio_to_plain_int8" in row:
                goal(
                    f"{model} {runtime} int8 / {plain}",
                    row["ratio_to_plain_int8"],
                    1.0,
                    detail=f"{row['median_ms']:.2f} vs {m['rows'][plain]['median_ms']:.2f} ms"
                    + (
                        " (plain flow after quant_pre_process)" if m["rows"][plain].get("defaults_alone_failed") else ""
                    ),
                )
            elif f"{runtime}_int8" in m["rows"]:
                why = row.get("failed") or m["rows"].get(plain, {}).get("failed") or "not timed"
                goal(f"{model} {runtime} int8 / {plain}", None, 1.0, detail=why)
    for model, t in result.get("tiny", {}).items():
        for runtime, r in t.get("runtimes", {}).items():
            if r.get("drop_points") is not None:
                goal(
                    f"{model} {runtime}: int8 top-1 drop (points)",
                    r["drop_points"],
                    GOAL_DROP,
                    detail=f"{r['int8_correct']}/{r['n']} vs fp32 {r['fp32_correct']}/{r['n']}",
                )
            else:
                why = r.get("failed", "no labels")
                goal(f"{model} {runtime}: int8 top-1 drop (points)", None, GOAL_DROP, detail=why)
    # the speed gate never ships int8 slower than fp32: of the pairs it would ship, the slowest speed-up
    shipped = []
    for model, m in result["models"].items():
        for runtime in RUNTIMES:
            g = m["rows"].get(f"{runtime}_int8", {}).get("speed_gate") or {}
            if g.get("passed"):
                shipped.append((f"{model}/{runtime}", g["speedup"]))
    for model, t in result.get("tiny", {}).items():
        for runtime, r in t.get("runtimes", {}).items():
            s = r.get("speed") or {}
            if s.get("measured") and s.get("passed"):
                shipped.append((f"{model}/{runtime}", s["speedup"]))
    if shipped:
        worst = min(shipped, key=lambda kv: kv[1])
        goal(
            "no int8 shipped slower than fp32: lowest fp32/int8 speed-up among what the gate ships",
            worst[1],
            1.0,
            at_most=False,
            detail=f"{len(shipped)} int8 artifacts would ship; lowest {worst[0]}",
        )
    return out


# ---------------------------------------------------------------------------------------- printing


def _print_model(name: str, m: dict) -> None:
    print(f"\n{name} {m['input_shapes']}  calibration: {m['calibration']['samples']} crops of sample-images")
    print(
        f"{'candidate':<18}{'median':>8}{'p90':>8}{'×rt fp32':>9}{'×best fp32':>11}{'×OV dflt':>9}{'×plain int8':>12}"
        f"{'cosine':>10}{'max abs':>9}  gate"
    )
    for k, r in m["rows"].items():
        if "median_ms" not in r:
            print(f"{k:<18}  {r.get('failed', 'not timed')}")
            continue
        e = r.get("error_vs_torch_fp32") or {}
        g = r.get("speed_gate") or {}
        gate = (
            f"{'ships int8' if g['passed'] else 'ships fp32'} ({g['speedup']:.2f}×)"
            if "passed" in g
            else g.get("failed", "")
        )

        def f(key, width, r=r):
            v = r.get(key)
            return f"{v:>{width}.3f}" if v is not None else f"{'-':>{width}}"

        cos = f"{e['cosine']:.6f}" if e.get("cosine") is not None else "-"
        mx = f"{e['max_abs']:.3g}" if e.get("max_abs") is not None else "-"
        print(
            f"{k:<18}{r['median_ms']:>8.2f}{r['p90_ms']:>8.2f}"
            f"{f('ratio_to_runtime_fp32', 9)}{f('ratio_to_best_fp32_peer', 11)}"
            f"{f('ratio_to_plain_ov_default', 9)}{f('ratio_to_plain_int8', 12)}{cos:>10}{mx:>9}  {gate}"
        )
        if r.get("stand_in"):
            print(f"{'':18}({r['stand_in']})")


def _print_tiny(tiny: dict) -> None:
    print("\ntrained tiny models, digits held-out set (contract accuracy block; --force-approx)")
    print(
        f"{'model':<24}{'ep':>4}{'runtime':>12}{'fp32':>9}{'int8':>9}{'drop pt':>8}{'agree':>9}{'speed-up':>9}"
        "  gate w/o force"
    )
    for name, t in tiny.items():
        if "failed" in t:
            print(f"{name:<24}{t['epochs']:>4g}  {t['failed']}")
            continue
        for runtime, r in t["runtimes"].items():
            if "failed" in r:
                print(f"{name:<24}{t['epochs']:>4g}{runtime:>12}  {r['failed']}")
                continue
            n = r["n"]
            sp = (r.get("speed") or {}).get("speedup")
            print(
                f"{name:<24}{t['epochs']:>4g}{runtime:>12}{r['fp32_correct']:>5}/{n}{r['int8_correct']:>5}/{n}"
                f"{r['drop_points']:>8.2f}{r['agreement']:>5}/{n}{(f'{sp:.2f}×' if sp else '-'):>9}"
                f"  {r['gate_without_force']}"
            )


def _print_goals(gs: list[dict]) -> None:
    print("\ngoals (distance > 0: met by that much)")
    for g in gs:
        if g["value"] is None:
            print(f"  ?     {g['goal']}: not measured ({g['detail']})")
            continue
        rel = "≤" if g["goal"].endswith(")") or "/" in g["goal"] or "drop" in g["goal"] else "≥"
        rel = "≥" if g["goal"].startswith("no int8") else rel
        verdict = "met by" if g["met"] else "MISSED by"
        print(
            f"  {'ok ' if g['met'] else 'MISS'}  {g['goal']} = {g['value']:.3f}; goal {rel} {g['bound']:g}: "
            f"{verdict} {abs(g['distance']):.3f}  [{g['detail']}]"
        )


# -------------------------------------------------------------------------------------------- main


def _load() -> dict:
    path = RESULTS / "quantize.json"
    try:  # a run of some models or some tiny recipes updates their entries and keeps the others
        result = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        result = {}
    result.setdefault("models", {})
    result.setdefault("tiny", {})
    return result


def _save(kind: str, name: str, entry: dict) -> None:
    """Merge one entry into bench-results/quantize.json now (a later crash must not lose it)."""
    result = _load()
    if kind == "tiny":
        old = result["tiny"].get(name) or {}
        if "runtimes" in entry and old.get("epochs") == entry["epochs"]:  # keep the runtimes not re-run
            entry["runtimes"] = {**old.get("runtimes", {}), **entry["runtimes"]}
    result[kind][name] = entry
    write_result("quantize", result)


def _parts(args, models: list[str], tiny: list[str], missing: list[str]) -> None:
    """Run the parts in this process, saving each entry as it is done."""
    today = _dt.date.today().isoformat()
    timing = {"min_runs": args.min_runs, "min_seconds": args.min_seconds, "blocks": args.blocks}
    stamp = {"date": today, "run_id": args.run_id, "threads": args.threads, "missing_profiles": missing}
    with tempfile.TemporaryDirectory(prefix="edgeformer-bench-quantize-") as tmp:
        tmp = Path(tmp)
        for name in models:
            try:
                m = bench_model(name, args, tmp)
            except Exception as err:  # noqa: BLE001 - one model's failure must not lose the others
                logging.getLogger("quantize").exception("%s failed", name)
                m = {"failed": _fail(err)}
            finally:
                shutil.rmtree(tmp / name, ignore_errors=True)
            m.update({**stamp, "timing": timing})
            _save("models", name, m)
            if "failed" not in m:
                _print_model(name, m)
        ckpt_dir = Path(args.checkpoints) if args.checkpoints else tmp / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in tiny:
            t = bench_tiny(name, TINY_EPOCHS.get(name, 5), args, ckpt_dir, tmp / "tiny")
            t.update(stamp)
            _save("tiny", name, t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="L1 only, fewer samples, two tiny models")
    ap.add_argument("--models", help=f"224² models (default: {','.join(MODELS)}; 'none' skips the part)")
    ap.add_argument("--tiny", help="tiny recipes: all (default), none, or a comma list")
    ap.add_argument("--tiny-runtimes", default=",".join(RUNTIMES), help="runtimes for the tiny models")
    ap.add_argument("--plain", default="all", help="plain flows to build: all, or a comma list")
    ap.add_argument("--min-runs", type=int, help="samples per candidate (default 60; quick 30)")
    ap.add_argument("--min-seconds", type=float, help="timed seconds per candidate (default 2; quick 1)")
    ap.add_argument("--blocks", type=int, help="blocks per candidate (default 10; quick 6)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-speedup", type=float, default=1.1, help="the speed gate's bar (profiles' default 1.1)")
    ap.add_argument("--checkpoints", help="folder for the tiny checkpoints, reused when present (default: temp)")
    ap.add_argument(
        "--one-process",
        action="store_true",
        help="run every part in this process (default: one child process per model and per tiny recipe, "
        "so a runtime crashing the interpreter loses only its own entry)",
    )
    ap.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.min_runs = args.min_runs or (30 if args.quick else 60)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (1.0 if args.quick else 2.0)
    args.blocks = args.blocks or (6 if args.quick else 10)
    models = args.models or ("efficientformer_l1" if args.quick else ",".join(MODELS))
    models = [] if models == "none" else [m for m in models.split(",") if m]

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("quantize").setLevel(logging.INFO)
    for noisy in ("torch", "onnxscript", "executorch", "nncf", "onnxruntime", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from edgeformer.device_profiles import profile_names
    from edgeformer.training import RECIPES

    tiny_arg = args.tiny or (",".join(QUICK_TINY) if args.quick else "all")
    tiny = [] if tiny_arg == "none" else list(RECIPES) if tiny_arg == "all" else tiny_arg.split(",")
    missing = [n for n in PROFILES.values() if n not in profile_names()]
    if args.one_process:
        args.run_id = args.run_id or _dt.datetime.now().isoformat(timespec="seconds")
        _parts(args, models, tiny, missing)
        return 0

    t_start = time.perf_counter()
    if missing:
        print(f"profiles not in profiles/ yet (stood in by the fp32 profile + precision): {', '.join(missing)}")
    run_id = _dt.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="edgeformer-bench-quantize-ckpt-") as tmp_ckpt:
        common = [
            "--one-process",
            "--run-id",
            run_id,
            "--threads",
            str(args.threads),
            "--min-runs",
            str(args.min_runs),
            "--min-seconds",
            str(args.min_seconds),
            "--blocks",
            str(args.blocks),
            "--min-speedup",
            str(args.min_speedup),
            "--plain",
            args.plain,
            "--tiny-runtimes",
            args.tiny_runtimes,
            "--checkpoints",
            args.checkpoints or tmp_ckpt,
        ]
        jobs = [("models", m, ["--models", m, "--tiny", "none"]) for m in models]
        jobs += [("tiny", t, ["--models", "none", "--tiny", t]) for t in tiny]
        for kind, name, part in jobs:
            proc = subprocess.run([sys.executable, __file__, *part, *common], check=False)
            entry = _load()[kind].get(name) or {}
            if entry.get("run_id") != run_id:  # the child died before saving its entry
                how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
                failed = {"failed": f"the benchmark process died ({how}) before saving this entry"}
                if kind == "tiny":
                    failed["epochs"] = TINY_EPOCHS.get(name, 5)
                _save(kind, name, {**failed, "date": _dt.date.today().isoformat(), "run_id": run_id})
                print(f"{name}: {failed['failed']}", flush=True)

    from edgeformer.profiling import machine_info

    result = _load()
    for name, m in result["models"].items():
        if "failed" in m:
            print(f"\n{name}: {m['failed']}")
        else:
            _print_model(name, m)
    if result["tiny"]:
        _print_tiny(result["tiny"])
    ok_models = {k: v for k, v in result["models"].items() if "failed" not in v}
    result["goals"] = goals({"models": ok_models, "tiny": result["tiny"]})
    _print_goals(result["goals"])
    result["profiles"] = {f"{rt}_{p}": name for (rt, p), name in PROFILES.items()}
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["wall_s_covers"] = {"models": models, "tiny": tiny, "run_id": run_id}
    result["machine"] = machine_info().to_dict()
    result["method"] = (
        "per 224² model one process, every candidate (all runtimes) in one edgeformer.latency.alternate call "
        "(blocks of calls, 0.1 s pause and one untimed call per block, order reversed every round), batch 1, "
        f"{args.threads} threads everywhere (ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS, "
        "XNNPACK threadpool); ratio = this median / that median (< 1: faster); error against fp32 PyTorch "
        "(the exported graph) on the calibration crops; tiny models: compile(..., calib='digits', eval='digits', "
        "force_approx=True) per runtime, the manifest's approximation block.  Entries of earlier runs of other "
        "models are kept (each has its date and run_id)"
    )
    print(f"\nwall time {result['wall_s'] / 60:.1f} min")
    print(f"wrote {write_result('quantize', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
