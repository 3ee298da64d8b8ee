"""Does the depthwise-conv form of the pool mixer (``fold_pool_mixer dw_conv``) pay for ORT int8?

ORT's QLinearAveragePool is slow, so ORT's int8 pipeline takes the pool mixer as a depthwise conv
(``OnnxRuntimeTarget.default_pipeline``).  This times fp32 and int8, each with the fp32 pipeline's
form (``branch_convs``) and with ``dw_conv``, side by side in one ``latency.alternate`` call
(224², batch 1, 2 threads, calibrated on 32 ``sample-images`` crops, random weights: errors only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402


def bench(name: str, tmp: Path) -> dict:
    from edgeformer import latency
    from edgeformer.artifact import Artifact
    from edgeformer.compiler import plan, rewrite
    from edgeformer.data import load_data
    from edgeformer.device_profiles import load_profile
    from edgeformer.manifest import TensorSpec
    from edgeformer.targets import Calibration, get_target

    target = get_target("onnxruntime")
    fp32, int8 = load_profile("host-ort"), load_profile("host-ort-int8")
    runs, outs, facts, ds = {}, {}, {}, None
    for key, prof, form in [
        ("fp32", fp32, {"branch_convs": True}),
        ("fp32_dw", fp32, {"dw_conv": True}),
        ("int8_branch", int8, {"branch_convs": True}),
        ("int8_dw", int8, {"dw_conv": True}),
    ]:
        p = plan(name, prof)
        p.pipeline = type(p.pipeline)(p.pipeline.names, {**p.pipeline.options, "fold_pool_mixer": form})
        graph = rewrite(p).graph
        if ds is None:
            specs = [TensorSpec(n, s, "float32") for n, s in zip(graph.input_names, graph.input_shapes())]
            ds = load_data("sample-images", role="calib", inputs=specs, limit=32)
        calib = None
        if prof.options.precision == "int8":
            calib = Calibration([[ds.inputs[0][i : i + 1]] for i in range(len(ds))], ds.name, ds.sha256)
        (tmp / key).mkdir(parents=True)
        result = target.compile(graph, prof, tmp / key, calibration=calib)
        facts[key] = result.details.get("quantization", {}).get("int8_ops")
        runner = target.load(Artifact(tmp / key, None, prof))
        outs[key] = np.concatenate([runner.run([ds.inputs[0][i : i + 1]])[0] for i in range(8)])
        x = ds.inputs[0][:1]
        runs[key] = lambda r=runner, x=x: r.run([x])
    ref = outs["fp32"]
    cos = {k: float((o * ref).sum() / np.linalg.norm(o) / np.linalg.norm(ref)) for k, o in outs.items()}
    samples = latency.alternate(runs, min_runs=60, min_seconds=3, blocks=12)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    for k in med:
        print(f"{name:20s} {k:12s} {med[k]:7.2f} ms  ×fp32 {med[k] / med['fp32']:.3f}  cosine {cos[k]:.6f}")
    return {"median_ms": med, "cosine_vs_fp32": cos, "int8_ops": facts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientformer_l1,poolformer_s12")
    args = ap.parse_args(argv)
    result = {}
    with tempfile.TemporaryDirectory(prefix="edgeformer-bench-pool-mixer-") as tmp:
        for name in args.models.split(","):
            result[name] = bench(name, Path(tmp) / name)
    print(f"wrote {write_result('int8_pool_mixer', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
