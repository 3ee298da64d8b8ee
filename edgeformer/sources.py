"""Where a model comes from: a zoo name, a ``.pt2`` file, or ``package.module:factory``.

:func:`load_model` resolves any of them to the IR plus a description for the manifest.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeformer import ir
from edgeformer.checkpoints import load_weights
from edgeformer.errors import UserError
from edgeformer.manifest import ModelInfo, WeightsInfo, sha256_file
from edgeformer.models import get_spec

_SHAPE = re.compile(r"^\d+(x\d+)*$")


def parse_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` → (1, 3, 224, 224)."""
    text = text.strip().lower()
    if not _SHAPE.match(text) or any(int(d) == 0 for d in text.split("x")):
        raise UserError(f"bad input shape {text!r}", "write it as positive sizes joined by x, e.g. 1x3x224x224")
    return tuple(int(d) for d in text.split("x"))


@dataclass
class ModelSource:
    graph: ir.Graph
    info: ModelInfo  # -> the manifest's model
    module: nn.Module | None = None


def _example_inputs(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=gen) for s in shapes)


def _seeded(build):
    """Build with a fixed seed so random-weight models (and so IR hashes) are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _import_factory(ref: str) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise UserError(f"bad model reference {ref!r}", "write it as package.module:factory")
    if os.getcwd() not in sys.path:  # a user's own module in the working folder
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise UserError(
            f"cannot import module {module_name!r} ({err})",
            "check the name and that it is importable from the current folder or PYTHONPATH",
        ) from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r}", "check the factory name after ':'")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, type) and issubclass(obj, nn.Module) or callable(obj):
        made = _seeded(obj)
        if isinstance(made, nn.Module):
            return made
        raise UserError(
            f"{ref} returned a {type(made).__name__}, not a torch.nn.Module",
            "make the factory return an nn.Module instance",
        )
    raise UserError(
        f"{ref} is a {type(obj).__name__}, not an nn.Module or a factory",
        "point at an nn.Module instance, class or factory function",
    )


def load_model(
    ref: str | nn.Module,
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    weights: str | os.PathLike | None = None,
    dynamic_batch: bool = False,
    name: str | None = None,
) -> ModelSource:
    """Resolve MODEL (zoo name | file.pt2 | package.module:factory | an nn.Module) to the IR."""
    if isinstance(ref, nn.Module):
        if not input_shapes:
            raise UserError("an nn.Module needs input shapes", "pass input_shapes=[(1, 3, 224, 224)]")
        module = ref
        info = ModelInfo(name or type(ref).__name__, "module", weights_origin="module")
        shapes = list(input_shapes)
    elif str(ref).endswith(".pt2"):
        if weights:
            raise UserError("--weights cannot be applied to a .pt2 export", "load the weights before exporting")
        graph = ir.load(ref)
        if input_shapes:
            expected = [list(t.shape) for t in graph.example_inputs]
            if [list(s) for s in input_shapes] != expected:
                raise UserError(
                    f"{ref} was exported with input shape(s) {expected}; --input-shape differs",
                    "re-export with the new shape",
                )
        return ModelSource(graph, ModelInfo(graph.name, "pt2", path=str(ref), weights_origin="pt2"))
    elif str(ref).endswith((".onnx", ".pth", ".pt", ".safetensors", ".ckpt", ".bin")):
        raise UserError(
            f"{ref} is not a model edgeformer can import (MODEL is a zoo name, a .pt2 export "
            "or package.module:factory)",
            "for a checkpoint pass the architecture and --weights FILE; for ONNX export from PyTorch",
        )
    elif ":" in str(ref):
        module = _import_factory(str(ref))
        if not input_shapes:
            raise UserError(f"{ref} needs input shapes", "add --input-shape, e.g. --input-shape 1x3x224x224")
        shapes = list(input_shapes)
        info = ModelInfo(name or str(ref).split(":")[-1], "factory", ref=str(ref), weights_origin="module")
    else:
        spec = get_spec(str(ref))
        module = _seeded(spec.build)
        shapes = list(input_shapes) if input_shapes else list(spec.input_shapes)
        info = ModelInfo(spec.name, "zoo", family=spec.family)
        if input_shapes and len(input_shapes) != len(spec.input_shapes):
            raise UserError(
                f"{spec.name} takes {len(spec.input_shapes)} input(s), got {len(input_shapes)} --input-shape",
                f"its default is {' '.join('x'.join(map(str, s)) for s in spec.input_shapes)}",
            )
    if weights:
        w = Path(weights)
        loaded = load_weights(module, w)
        info.weights_origin = "checkpoint"
        info.weights = WeightsInfo(str(w), sha256_file(w), **(loaded if isinstance(loaded, dict) else {}))
    module.eval()
    inputs = _example_inputs(shapes)
    input_names = None
    if info.source == "zoo":
        spec = get_spec(info.name)
        if spec.input_dtypes or spec.input_shapes == tuple(shapes):
            inputs = spec.example_inputs(shapes=shapes)
        input_names = list(spec.input_names) or None
    graph = ir.export(module, inputs, name=info.name, input_names=input_names, dynamic_batch=dynamic_batch)
    return ModelSource(graph, info, module)
