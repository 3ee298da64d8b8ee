"""``edgeformer tune``: MetaSchedule-tune MODEL for a TVM profile."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json, factory_args, input_shapes

NAME = "tune"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common, model_args], help="MetaSchedule-tune MODEL for a TVM profile")
    p.add_argument("--profile", default="host-tvm")
    p.add_argument("--trials", type=int, help="total trials wanted in the database (default: the profile's)")
    p.add_argument("--work-dir", metavar="DIR", help="tuning database folder (default: per-profile cache)")
    p.add_argument("--passes", metavar="+a,-b", help="add/drop passes (must match the later compile)")
    return p


def run(args) -> int:
    from edgeformer.tuning import tune_model

    result = tune_model(
        args.model,
        args.profile,
        trials=args.trials,
        input_shapes=input_shapes(args),
        weights=args.weights,
        passes=args.passes,
        work_dir=args.work_dir,
        factory_args=factory_args(args),
    )
    if args.json:
        emit_json(result.to_dict())
        return 0
    r = result
    console().print(
        f"tuned {r.model} for {r.profile}: {r.trials} trials over {r.tasks} tasks in "
        f"{r.tuning_time_s:.0f} s; estimated {r.untuned_estimated_ms:.1f} ms untuned → "
        f"{r.estimated_ms:.1f} ms tuned; database {r.database}"
    )
    return 0
