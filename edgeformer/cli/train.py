"""``edgeformer train``: train a tiny zoo model on scikit-learn's digits."""

from __future__ import annotations

import argparse

from edgeformer.cli._common import console, emit_json

NAME = "train"


def add_parser(subparsers, common, model_args) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, parents=[common], help="train a tiny zoo model on scikit-learn's digits")
    p.add_argument("family", help="model name, e.g. poolformer_tiny")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> int:
    from edgeformer.training import train

    result = train(args.family, args.out, epochs=args.epochs, seed=args.seed)
    data = result.to_dict() if hasattr(result, "to_dict") else vars(result)
    if args.json:
        emit_json(data)
    else:
        console().print(", ".join(f"{k}={v}" for k, v in data.items()))
    return 0
