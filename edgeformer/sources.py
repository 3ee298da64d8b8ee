"""Where a model comes from: a zoo name, a ``.pt2`` file, ``package.module:factory``, an
``nn.Module`` or an already exported :class:`edgeformer.ir.Graph`.

:func:`load_model` resolves any of them to the IR plus a description for the manifest.

Input shapes are ``1x3x224x224``, optionally with a dtype: ``1x12:int64`` (float32, float16,
int64, int32, bool).  Example inputs are seeded: standard normal for floating inputs, integers in
[0, 2) for int64/int32 (valid token ids for any vocabulary, and valid indices into any dimension
of size 2 or more), random True/False for bool.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeformer import ir
from edgeformer.checkpoints import load_weights
from edgeformer.errors import UserError, first_line
from edgeformer.manifest import ModelInfo, WeightsInfo, sha256_file
from edgeformer.models import ModelSpec, get_spec
from edgeformer.models.lmuformer.spiking import lif_loops

DTYPES = ("float32", "float16", "int64", "int32", "bool")
INT_RANGE = (0, 2)  # example values of integer inputs: low inclusive, high exclusive
_SHAPE = re.compile(r"^\d+(x\d+)*$")
_NAME = re.compile(r"^[A-Za-z_]\w*$")


class InputShape(tuple):
    """An input's sizes and, when one was given (``1x12:int64``), its dtype.

    It is a tuple of ints, so it compares, prints and joins like the plain tuples callers pass;
    ``dtype`` is None when the shape did not say (float32, or the zoo model's own dtype).
    """

    dtype: str | None

    def __new__(cls, dims, dtype: str | None = None):
        self = super().__new__(cls, (int(d) for d in dims))
        self.dtype = dtype
        return self

    def __reduce__(self):
        return (InputShape, (tuple(self), self.dtype))

    def __repr__(self) -> str:
        return f"InputShape({tuple(self)!r}, dtype={self.dtype!r})"


def parse_shape(text: str) -> InputShape:
    """``1x3x224x224`` → (1, 3, 224, 224); ``1x12:int64`` → (1, 12) with dtype int64."""
    given = text.strip()
    dims, sep, dtype = given.lower().replace(" ", "").partition(":")
    if not _SHAPE.match(dims) or any(int(d) == 0 for d in dims.split("x")) or (sep and dtype not in DTYPES):
        raise UserError(
            f"bad input shape {given!r}",
            f"write it as positive sizes joined by x with an optional dtype ({', '.join(DTYPES)}), "
            "e.g. 1x3x224x224 or 1x12:int64",
        )
    return InputShape(dims.split("x"), dtype if sep else None)


def parse_factory_args(items: Sequence[str] | None) -> dict[str, object]:
    """``["depth=4", "act=gelu"]`` → ``{"depth": 4, "act": "gelu"}``: each value is a Python
    literal (``ast.literal_eval``: numbers, strings, tuples, lists, dicts, True/False/None), else
    the text itself as a string."""
    out: dict[str, object] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _NAME.match(key):
            raise UserError(f"bad --factory-arg {item!r}", "write it as NAME=VALUE, e.g. --factory-arg depth=4")
        if key in out:
            raise UserError(f"--factory-arg {key} is given twice", "pass each argument once")
        try:
            out[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = text
    return out


@dataclass
class ModelSource:
    graph: ir.Graph
    info: ModelInfo  # -> the manifest's model
    module: nn.Module | None = None


def _dtype_of(shape) -> str | None:
    return getattr(shape, "dtype", None)


def _example_inputs(
    shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str | None] | None = None, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Seeded example inputs (see the module docstring for the values of each dtype)."""
    gen = torch.Generator().manual_seed(seed)
    dtypes = list(dtypes) if dtypes else [_dtype_of(s) for s in shapes]
    out = []
    for shape, name in zip(shapes, dtypes):
        dtype = getattr(torch, name or "float32")
        if dtype.is_floating_point:
            out.append(torch.randn(*shape, generator=gen, dtype=dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, tuple(shape), generator=gen).bool())
        else:
            out.append(torch.randint(*INT_RANGE, tuple(shape), generator=gen, dtype=dtype))
    return tuple(out)


def _seeded(build):
    """Build with a fixed seed so random-weight models (and so IR hashes) are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _import_factory(ref: str, factory_args: Mapping[str, object]) -> nn.Module:
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
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing
        raise UserError(
            f"importing {module_name!r} raised {type(err).__name__}: {first_line(err)}",
            "fix the module (run with --debug for its traceback)",
        ) from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r}", "check the factory name after ':'")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if factory_args:
            raise UserError(
                f"{ref} is an nn.Module instance, so --factory-arg has nothing to call",
                "drop --factory-arg, or point at a class or factory function",
            )
        return obj
    if isinstance(obj, type) and issubclass(obj, nn.Module) or callable(obj):
        _check_arguments(ref, obj, factory_args)
        try:
            made = _seeded(lambda: obj(**factory_args))
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's factory failed: one line, not its traceback
            raise UserError(
                f"{ref} raised {type(err).__name__}: {first_line(err)}",
                "fix the factory or its --factory-arg values (run with --debug for the traceback)",
            ) from err
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


def _check_arguments(ref: str, factory, kwargs: Mapping[str, object]) -> None:
    """Refuse unknown arguments and name the missing ones before calling the factory."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: let the call decide
        return
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in named and not takes_any]
    if unknown:
        raise UserError(
            f"{ref} takes no argument {unknown[0]!r}",
            f"its arguments are: {', '.join(named)}" if named else "drop --factory-arg: it takes no arguments",
        )
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise UserError(
            f"{ref} needs argument{s} {', '.join(repr(m) for m in missing)}",
            "pass " + " ".join(f"--factory-arg {m}=VALUE" for m in missing) + " (values are Python literals or text)",
        )


def _check_exported_shapes(graph: ir.Graph, what: str, input_shapes) -> None:
    if not input_shapes:
        return
    expected = [list(t.shape) for t in graph.example_inputs]
    if [list(s) for s in input_shapes] != expected:
        raise UserError(
            f"{what} was exported with input shape(s) {expected}; --input-shape differs",
            "re-export with the new shape",
        )
    for s, t in zip(input_shapes, graph.example_inputs):
        want, have = _dtype_of(s), str(t.dtype).replace("torch.", "")
        if want and want != have:
            raise UserError(f"{what} was exported with a {have} input; --input-shape says {want}", "re-export it")


def _exported(graph: ir.Graph, what: str, *, input_shapes, weights, factory_args, dynamic_batch) -> None:
    """The checks for a model that is already exported (a .pt2 or an ir.Graph)."""
    if weights:
        raise UserError(f"--weights cannot be applied to {what}", "load the weights before exporting")
    if factory_args:
        raise UserError(f"--factory-arg cannot be applied to {what}", "pass it when exporting the factory")
    if dynamic_batch and graph.dynamic_shapes() is None:
        raise UserError(f"{what} was exported with static shapes", "re-export it with --dynamic-batch")
    _check_exported_shapes(graph, what, input_shapes)


def load_model(
    ref: str | os.PathLike | nn.Module | ir.Graph,
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    weights: str | os.PathLike | None = None,
    dynamic_batch: bool = False,
    name: str | None = None,
    factory_args: Mapping[str, object] | None = None,
    streaming: bool = False,
    loops: bool = False,
) -> ModelSource:
    """Resolve MODEL (zoo name | file.pt2 | package.module:factory | nn.Module | ir.Graph) to the IR.

    ``input_shapes`` items may be :class:`InputShape` (from :func:`parse_shape`) to carry dtypes.
    ``factory_args`` are keyword arguments for a ``package.module:factory`` (``--factory-arg``).
    ``streaming``: export one step of the model with explicit state (its ``step_model()``,
    edgeformer/streaming.py) instead of the whole window; the source's module is then the step.
    ``loops``: export a spiking model's LIF recurrences as one scan each, not unrolled per token
    (for a target with ``exports_loops``).
    """
    factory_args = dict(factory_args or {})
    if isinstance(ref, ir.Graph):
        _exported(
            ref,
            "an exported ir.Graph",
            input_shapes=input_shapes,
            weights=weights,
            factory_args=factory_args,
            dynamic_batch=dynamic_batch,
        )
        return ModelSource(ref, ModelInfo(name or ref.name, "module", weights_origin="pt2"))
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if isinstance(ref, nn.Module):
        if factory_args:
            raise UserError("--factory-arg applies only to package.module:factory models", "drop it")
        if not input_shapes:
            raise UserError("an nn.Module needs input shapes", "pass input_shapes=[(1, 3, 224, 224)]")
        module = ref
        info = ModelInfo(name or type(ref).__name__, "module", weights_origin="module")
        shapes = list(input_shapes)
        spec = None
    elif str(ref).endswith(".pt2"):
        graph = ir.load(ref)
        _exported(
            graph,
            "a .pt2 export",
            input_shapes=input_shapes,
            weights=weights,
            factory_args=factory_args,
            dynamic_batch=dynamic_batch,
        )
        return ModelSource(graph, ModelInfo(graph.name, "pt2", path=str(ref), weights_origin="pt2"))
    elif str(ref).endswith((".onnx", ".pth", ".pt", ".safetensors", ".ckpt", ".bin")):
        raise UserError(
            f"{ref} is not a model edgeformer can import (MODEL is a zoo name, a .pt2 export "
            "or package.module:factory)",
            "for a checkpoint pass the architecture and --weights FILE; for ONNX export from PyTorch",
        )
    elif ":" in str(ref):
        module = _import_factory(str(ref), factory_args)
        if not input_shapes:
            raise UserError(f"{ref} needs input shapes", "add --input-shape, e.g. --input-shape 1x3x224x224")
        shapes = list(input_shapes)
        info = ModelInfo(name or str(ref).split(":")[-1], "factory", ref=str(ref), weights_origin="module")
        spec = None
    else:
        spec = get_spec(str(ref))
        if factory_args:
            raise UserError(
                "--factory-arg applies only to package.module:factory models",
                f"drop it, or wrap {spec.name}'s builder in a factory of your own",
            )
        if input_shapes and len(input_shapes) != len(spec.input_shapes):
            raise UserError(
                f"{spec.name} takes {len(spec.input_shapes)} input(s), got {len(input_shapes)} --input-shape",
                f"its default is {' '.join(_shape_text(s) for s in spec.input_shapes)}",
            )
        module = _seeded(spec.build)
        shapes = list(input_shapes) if input_shapes else list(spec.input_shapes)
        info = ModelInfo(spec.name, "zoo", family=spec.family)
    if weights:
        w = Path(weights)
        loaded = load_weights(module, w)
        info.weights_origin = "checkpoint"
        info.weights = WeightsInfo(str(w), sha256_file(w), **(loaded if isinstance(loaded, dict) else {}))
    module.eval()
    if streaming:
        return _step_source(module, info, shapes)
    input_names = None
    if spec is not None:
        info.resolution = _adapt_resolution(spec, module, shapes)
        inputs = _zoo_inputs(spec, shapes)
        input_names = list(spec.input_names) or None
    else:
        inputs = _example_inputs(shapes)
    try:
        with lif_loops(loops):
            graph = ir.export(module, inputs, name=info.name, input_names=input_names, dynamic_batch=dynamic_batch)
    except UserError as err:
        if spec is not None and (better := _zoo_shape_error(spec, shapes, module)):
            raise better from err
        raise
    return ModelSource(graph, info, module)


def step_module(module: nn.Module, what: str, batch: int = 1) -> nn.Module:
    """``module.step_model(batch)``, or one clear error naming what a streamable module offers."""
    make = getattr(module, "step_model", None)
    if not callable(make):
        raise UserError(
            f"{what} cannot be compiled --streaming: it offers no step interface (a step_model() method "
            "returning one step with explicit state inputs and outputs, as lmuformer and spiking_lmuformer do)",
            "compile it without --streaming, or give the module a step_model() (docs/streaming.md)",
        )
    step = make(batch)
    missing = [a for a in ("states", "delay", "example_inputs", "input_names", "net") if not hasattr(step, a)]
    if missing:
        raise UserError(
            f"{what}.step_model() lacks {', '.join(missing)}: not the step interface --streaming exports",
            "see docs/streaming.md for what a step model provides",
        )
    return step.eval()


def _step_source(module: nn.Module, info: ModelInfo, shapes: list) -> ModelSource:
    """One step of ``module`` (``step_model()``) exported with its frame, flush and state inputs;
    the batch is the first dimension of the (window) input shape."""
    step = step_module(module, info.name, batch=int(shapes[0][0]) if shapes and shapes[0] else 1)
    if len(shapes) != 1 or len(shapes[0]) != 3:
        raise UserError(
            f"--streaming takes one (batch, frames, channels) input shape, got {' '.join(map(_shape_text, shapes))}",
            "pass --input-shape 1x128x128 (the window the parallel model takes)",
        )
    if shapes[0][2] != step.frame_shape()[1]:
        raise UserError(
            f"{info.name} streams frames of {step.frame_shape()[1]} channels, the input shape has {shapes[0][2]}",
            "keep the model's channel count in --input-shape",
        )
    # the verify step starts from a live state (every stage and the tail past their look-ahead)
    inputs = tuple(step.example_inputs(frames=int(step.delay) + 3))
    graph = ir.export(step, inputs, name=info.name, input_names=step.input_names())
    return ModelSource(graph, info, step)


def _zoo_inputs(spec: ModelSpec, shapes: list) -> tuple[torch.Tensor, ...]:
    given = [_dtype_of(s) for s in shapes]
    if any(given):  # --input-shape 1x12:int64 overrides the spec's dtype for that input
        own = list(spec.input_dtypes) or ["float32"] * len(shapes)
        return _example_inputs(shapes, [g or o for g, o in zip(given, own)])
    if spec.input_dtypes or spec.input_shapes == tuple(shapes):
        return spec.example_inputs(shapes=shapes)
    return _example_inputs(shapes)


def _adapt_resolution(spec: ModelSpec, module: nn.Module, shapes: list) -> str | None:
    """Adapt a zoo model whose tables depend on the resolution (a ViT's position table,
    EfficientFormer's attention biases) to the image size of ``shapes`` through its
    ``adapt_to(height, width)``; returns what was done, for the manifest (None: nothing to do)."""
    adapt = getattr(module, "adapt_to", None)
    if adapt is None or len(shapes[0]) != 4 or tuple(shapes[0])[2:] == tuple(spec.input_shapes[0])[2:]:
        return None
    height, width = (int(d) for d in tuple(shapes[0])[2:])
    try:
        return adapt(height, width)
    except ValueError as err:
        default = "x".join(str(d) for d in spec.input_shapes[0][2:])
        raise UserError(
            f"{spec.name} cannot run at {height}x{width}: {err}", f"choose such a size (its default is {default})"
        ) from None


def _zoo_shape_error(spec: ModelSpec, shapes: list, module: nn.Module) -> UserError | None:
    """A zoo model with a fixed-size attention-bias table traced at another resolution."""
    other = any(tuple(s)[1:] != tuple(d)[1:] for s, d in zip(shapes, spec.input_shapes))
    fixed = any(n.endswith("attention_bias_idxs") for n, _ in module.named_buffers())
    if not (other and fixed):
        return None
    default = " ".join(_shape_text(s) for s in spec.input_shapes)
    given = " ".join(_shape_text(s) for s in shapes)
    return UserError(
        f"{spec.name}'s attention-bias table is fixed at the resolution it was built for (input {default}), "
        f"so it cannot run at {given}",
        f"use --input-shape {default} (only the batch size may change)",
    )


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)
