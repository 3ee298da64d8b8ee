"""Tuned TVM vs ONNX Runtime on EfficientFormer-L1 (224², batch 1, fp32, 2 threads).

Tunes the model for the ``host-tvm`` profile (MetaSchedule design spaces, see
``targets/tvm/search.py``), compiles it through ``edgeformer.compile`` (numerics checked against
PyTorch), then times the TVM artifact and plain ORT (``torch.onnx.export(ep, dynamo=True)`` →
InferenceSession, same threads) in ONE process with alternating rounds.  Prints the trials, the
tuning time and the TVM/ORT median ratio; the goal is ≤ 1.5.  Writes bench-results/tvm_tuning.json.

``--trials N`` is the total wanted in the cached database: a run tunes only what is missing
(here, from an empty cache: 2,000 trials in 24 minutes gave 1.40x ORT; 5,000 trials 1.30x;
later runs only measure).  ``--more M`` adds M
trials on top.  The JSON records the total trials and tuning time.

    nice -n 10 python benchmarks/tvm_tuning.py [--model efficientformer_l1] [--trials 2500] [--more 0]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, summarize, write_result  # noqa: E402

GOAL = 1.5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientformer_l1")
    ap.add_argument("--profile", default="host-tvm")
    ap.add_argument("--trials", type=int, default=2500, help="total trials wanted in the database")
    ap.add_argument("--more", type=int, default=0, help="extra trials on top of what the database has")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--ops", action="store_true", help="also print the per-op profile of the tuned artifact")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("edgeformer.targets.tvm").setLevel(logging.INFO)

    import onnxruntime as ort
    import torch

    from edgeformer.compiler import compile
    from edgeformer.device_profiles import load_profile
    from edgeformer.runtime import load_artifact
    from edgeformer.sources import load_model
    from edgeformer.targets import get_target
    from edgeformer.targets.onnxruntime import export_onnx
    from edgeformer.targets.tvm import database
    from edgeformer.tuning import workload

    prof = load_profile(args.profile)
    threads = prof.options.threads
    torch.set_num_threads(threads)
    result: dict = {"model": args.model, "profile": prof.name, "threads": threads, "goal_ratio": GOAL}

    tune_s = 0.0
    work = workload(args.model, prof)  # the program compile hands to TVM
    missing = max(0, args.trials - work.tuned_trials()) + args.more
    if missing:
        t0 = time.perf_counter()
        tr = work.tune(trials=missing)
        tune_s = time.perf_counter() - t0
        result["tune_run"] = tr.to_dict()
        print(
            f"tuned {tr.tasks} tasks with {tr.trials} trials in {tr.tuning_time_s:.0f} s "
            f"(estimated {tr.untuned_estimated_ms:.1f} ms untuned -> {tr.estimated_ms:.1f} ms)",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="edgeformer-bench-tvm-") as tmp:
        t0 = time.perf_counter()
        report = compile(args.model, prof, Path(tmp) / "tvm", use_cache=False)
        compile_s = time.perf_counter() - t0
        details = report.manifest.target_details
        db = database.load_database(Path(details["tuning"]["database"])) if details["tuning"]["database"] else None
        history = (db or {}).get("history", [])
        result.update(
            {
                "compile_s": round(compile_s, 1),
                "numerics": {
                    "max_abs_error": report.manifest.numerics.max_abs_error,
                    "cosine": report.manifest.numerics.cosine,
                    "status": report.manifest.numerics.status,
                },
                "tuning": details["tuning"],
                "trials_total": sum(h["trials"] for h in history),
                "tuning_time_total_s": round(sum(h["tuning_time_s"] for h in history), 1),
                "tuning_history": history,
            }
        )
        target = get_target("tvm")
        runner = target.load(load_artifact(report.path))

        source = load_model(args.model)
        inputs = [t.detach().numpy() for t in source.graph.example_inputs]
        onnx_path = Path(tmp) / "plain.onnx"
        export_onnx(source.graph, onnx_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}

        samples = alternate(
            {"tvm_tuned": lambda: runner.run(inputs), "ort_plain": lambda: session.run(None, feed)},
            rounds=args.rounds,
            per_round=args.per_round,
        )
        stats = summarize(samples)
        ratio = stats["tvm_tuned"]["median_ms"] / stats["ort_plain"]["median_ms"]
        result.update(
            {
                "latency": stats,
                "ratio_tvm_over_ort": round(ratio, 3),
                "goal_met": ratio <= GOAL,
                "tune_wall_s_this_run": round(tune_s, 1),
            }
        )
        if args.ops:
            op_profile = runner.profile_ops(inputs, 5)
            result["ops_top"] = [
                {"name": o.name, "type": o.type, "ms": round(o.time_ms, 3), "share": round(o.share, 3)}
                for o in op_profile.ops[:10]
            ]
            result["ops_unexplained_share"] = round(op_profile.unexplained_share, 3)
        runner.close()

    path = write_result("tvm_tuning", result)
    t, o = stats["tvm_tuned"], stats["ort_plain"]
    print(
        f"{args.model}, {threads} threads: tuned TVM median {t['median_ms']:.2f} ms (p90 {t['p90_ms']:.2f}), "
        f"ORT median {o['median_ms']:.2f} ms (p90 {o['p90_ms']:.2f})"
    )
    print(
        f"ratio TVM/ORT = {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}); "
        f"{result['trials_total']} trials, {result['tuning_time_total_s']:.0f} s of tuning in all; "
        f"{details['tuning']['tuned_functions']}/{details['tuning']['tunable_functions']} functions tuned"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
