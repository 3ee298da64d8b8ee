"""The IR: ``torch.export``'s ExportedProgram (ATen, training IR) with static shapes.

High-level ops (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``, ``aten.layer_norm``,
``aten.group_norm``, ``aten.avg_pool2d``, ``aten.scaled_dot_product_attention``) stay whole so
passes can match them; every target runs its own decompositions.

This module owns export, ``.pt2`` save/load, the content hash that keys the compile cache, the
readable summary (ops, shapes, histogram, parameters, MACs) and :func:`run`, the reference every
numerical check compares against.

The IR hash (:func:`canonical_hash`) is a digest of what defines the computation, not of the
``.pt2`` bytes: the graph's structure (ops, arguments normalised against each op's schema, nodes
by position rather than name), every value's dtype and shape (symbolic sizes renamed in order of
appearance), the signature, the I/O names and dynamic-dimension names, and every weight's bytes.
It leaves out what records where the code lives or how it was traced (stack traces, source files
and lines, ``nn_module_stack``, ``source_fn_stack``, node names, example input values), so a zoo
name, its saved ``.pt2`` and the same code in another checkout share one hash.

torch.export's own noise around export/save/load (pytree FutureWarnings, fake-tensor traces and
graph dumps it logs to stderr) is hidden: the one-line :class:`UserError` says what went wrong.
``--debug`` (logging at DEBUG) shows torch's logs again.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sympy
import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.export import ExportedProgram

from edgeformer.errors import UserError, first_line
from edgeformer.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_META_FILE = "edgeformer.json"  # extra file inside the .pt2 zip: name, I/O names, dim names
BATCH = "batch"  # the name of the dynamic batch dimension (ONNX dim_param, manifest, summary)


@contextlib.contextmanager
def quiet_torch(*, capture_export_log: bool = False) -> Iterator[list[logging.LogRecord]]:
    """Hide torch's FutureWarnings/DeprecationWarnings and the warnings it logs to stderr.

    torch installs its own stderr handlers (``torch._logging``), so the CLI's logging setup does
    not reach them; this lifts the ``torch`` logger above CRITICAL for the call.  With
    ``capture_export_log`` the ``torch.export`` logger's records (e.g. the traceback
    ``torch.export.load`` logs before raising a generic error) are collected in the yielded list
    instead.  At DEBUG level nothing is hidden.
    """
    records: list[logging.LogRecord] = []
    with warnings_hidden():
        if log.isEnabledFor(logging.DEBUG):
            yield records
            return
        torch_log, export_log = logging.getLogger("torch"), logging.getLogger("torch.export")
        saved = torch_log.level, export_log.level, list(export_log.handlers)
        torch_log.setLevel(logging.CRITICAL + 1)
        if capture_export_log:
            export_log.setLevel(logging.WARNING)
            export_log.handlers = [_Collect(records)]
        try:
            yield records
        finally:
            torch_log.setLevel(saved[0])
            if capture_export_log:
                export_log.setLevel(saved[1])
                export_log.handlers = saved[2]


@contextlib.contextmanager
def warnings_hidden() -> Iterator[None]:
    """torch.export / pytree deprecation notices (e.g. ``isinstance(treespec, LeafSpec)``) are
    about torch's internals, not the user's model."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Graph:
    """An exported program plus the little edgeformer needs beside it.

    ``dim_names`` names dynamic dimensions by position, ``{(input index, axis): "batch"}``, so the
    names survive passes that re-trace the program (its symbols may be renamed, positions stay).
    """

    program: ExportedProgram
    name: str = "model"
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    dim_names: dict[tuple[int, int], str] = field(default_factory=dict)
    _hash: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.input_names:
            self.input_names = tuple(_user_input_names(self.program))
        if not self.output_names:
            self.output_names = _output_names(self.program)

    @property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        args, kwargs = self.program.example_inputs or ((), {})
        if kwargs:
            raise UserError("models with keyword-only inputs are not supported", "pass tensors positionally")
        return tuple(args)

    def replace(self, program: ExportedProgram) -> Graph:
        """The same graph identity (name, I/O names, dim names) around a rewritten program."""
        return Graph(program, self.name, self.input_names, self.output_names, dict(self.dim_names))

    def serialize(self) -> bytes:
        buf = io.BytesIO()
        meta = {
            "name": self.name,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
        }
        if self.dim_names:
            meta["dim_names"] = [[k, axis, n] for (k, axis), n in sorted(self.dim_names.items())]
        with quiet_torch():
            torch.export.save(self.program, buf, extra_files={_META_FILE: json.dumps(meta, sort_keys=True)})
        return buf.getvalue()

    def hash(self) -> str:
        """The canonical IR hash (see the module docstring and :func:`canonical_hash`)."""
        if self._hash is None:
            self._hash = canonical_hash(self)
        return self._hash

    def input_shapes(self) -> list[list[int]]:
        """The user inputs' shapes; a dynamic dimension is -1."""
        return [_shape(n) or [] for n in _user_input_nodes(self.program)]

    def output_shapes(self) -> list[list[int]]:
        """The tensor outputs' shapes; a dynamic dimension is -1."""
        return [_shape(a) or [] for a in _output_nodes(self.program)]

    def dynamic_dims(self) -> list[dict[int, str]]:
        """Per user input, ``{axis: name}`` of its dynamic dimensions (named, else the symbol)."""
        out = []
        for k, node in enumerate(_user_input_nodes(self.program)):
            val = node.meta.get("val")
            dims = {}
            for axis, d in enumerate(getattr(val, "shape", ())):
                if not isinstance(d, int):
                    dims[axis] = self.dim_names.get((k, axis)) or str(d)
            out.append(dims)
        return out

    def dynamic_shapes(self) -> tuple[dict[int, str], ...] | None:
        """``({0: "batch"},)`` style names of the dynamic dimensions, or None for a static graph.

        This is what ``torch.onnx.export(ep, dynamic_shapes=...)`` takes to name the ONNX
        inputs' ``dim_param`` (without it they are torch's symbols, e.g. ``s31``).
        """
        dims = self.dynamic_dims()
        return tuple(dims) if any(dims) else None

    def save(self, path: str | os.PathLike) -> Path:
        return save(self, path)

    def summary(self) -> Summary:
        return summary(self)

    def run(self, inputs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        return run(self, self.example_inputs if inputs is None else inputs)


def _user_input_names(ep: ExportedProgram) -> list[str]:
    names = list(ep.graph_signature.user_inputs)
    return names if names else ["input"]


def _user_input_nodes(ep: ExportedProgram) -> list:
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    return [placeholders[n] for n in ep.graph_signature.user_inputs if n in placeholders]


def _output_nodes(ep: ExportedProgram) -> list:
    """The user outputs' nodes (buffer mutations excluded), in order."""
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    flat = [a for a in pytree.tree_flatten(out_node.args[0])[0] if hasattr(a, "meta")]
    user = set(ep.graph_signature.user_outputs)
    return [a for a in flat if a.name in user] if user else flat


def _default_output_names(n: int) -> tuple[str, ...]:
    return ("output",) if n == 1 else tuple(f"output_{i}" for i in range(n))


def _output_names(ep: ExportedProgram) -> tuple[str, ...]:
    """Names from the output pytree (dict keys, namedtuple/dataclass fields, joined with '.'),
    else ``output`` / ``output_{i}`` for a tensor or a tuple of tensors."""
    n = len(ep.graph_signature.user_outputs)
    spec = getattr(ep.call_spec, "out_spec", None)
    if spec is None or spec.num_leaves != n:
        return _default_output_names(n)
    return _names_from_spec(spec) or _default_output_names(n)


def _names_from_spec(spec) -> tuple[str, ...] | None:
    try:
        with warnings_hidden():
            rebuilt = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
            paths = [p for p, _ in pytree.tree_flatten_with_path(rebuilt)[0]]
    except Exception:  # noqa: BLE001 - an output type we cannot rebuild: positional names
        return None
    if all(isinstance(k, pytree.SequenceKey) for p in paths for k in p):
        return None  # a tensor, or (nested) tuples of them: output / output_{i}
    names = []
    for path in paths:
        parts = []
        for depth, key in enumerate(path):
            if isinstance(key, pytree.MappingKey):
                parts.append(str(key.key))
            elif isinstance(key, pytree.GetAttrKey):
                parts.append(key.name)
            elif isinstance(key, pytree.SequenceKey):
                parts.append(f"output_{key.idx}" if depth == 0 else str(key.idx))
            else:
                parts.append(str(key))
        names.append(".".join(parts) or "output")
    return tuple(names) if len(set(names)) == len(names) else None


def _spec_serializable(spec) -> bool:
    try:
        with warnings_hidden():
            pytree.treespec_dumps(spec)
    except Exception:  # noqa: BLE001 - NotImplementedError for an unregistered namedtuple, others
        return False
    return True


# ---------------------------------------------------------------------------------------- export


def export(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    *,
    name: str = "model",
    input_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
) -> Graph:
    """Export an ``nn.Module`` in eval mode to the IR (static shapes unless ``dynamic_batch``).

    ``dynamic_batch`` makes dimension 0 of every input one symbol named ``batch`` (1 to 1024).
    torch.export specialises a size-1 example to the constant 1, so a batch-1 example is traced
    at batch 2 (its rows repeated); the graph's example inputs then have batch 2.

    Outputs are named from the output pytree: dict keys and namedtuple fields (a namedtuple
    output is flattened to a tuple so the ``.pt2`` can be saved and loaded without its class).
    """
    if not isinstance(model, nn.Module):
        raise UserError(
            f"expected a torch.nn.Module, got {type(model).__name__}",
            "make the factory return an nn.Module instance",
        )
    model = model.eval()
    args = tuple(example_inputs)
    dynamic_shapes = None
    dim_names: dict[tuple[int, int], str] = {}
    if dynamic_batch:
        batch = torch.export.Dim(BATCH, min=1, max=1024)
        dynamic_shapes = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() else None for a in args)
        dim_names = {(k, 0): BATCH for k, s in enumerate(dynamic_shapes) if s}
        if any(isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == 1 for a in args):
            args = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() else a for a in args)
    ep = _trace(model, args, dynamic_shapes, name)
    output_names = None
    if not _spec_serializable(ep.call_spec.out_spec):
        output_names = _output_names(ep)
        ep = _trace(model, args, dynamic_shapes, name, flatten_outputs=True)
    graph = Graph(ep, name=name, output_names=output_names or (), dim_names=dim_names)
    if input_names:
        if len(input_names) != len(graph.input_names):
            raise UserError(f"{len(input_names)} input names given for {len(graph.input_names)} inputs")
        graph.input_names = tuple(input_names)
    return graph


def _trace(model: nn.Module, args: tuple, dynamic_shapes, name: str, *, flatten_outputs: bool = False):
    forward = model.__dict__.get("forward")
    if flatten_outputs:  # an instance attribute, so FQNs and module paths stay the model's own
        inner = model.forward

        @functools.wraps(inner)
        def flat_forward(*a, **kw):
            return tuple(pytree.tree_leaves(inner(*a, **kw)))

        model.forward = flat_forward
    # torch.export prints the partial graph of a failed trace straight to sys.stderr; what was
    # printed is shown again after a good trace (the model's own prints), logged after a failure.
    printed = io.StringIO()
    hide = contextlib.nullcontext() if log.isEnabledFor(logging.DEBUG) else contextlib.redirect_stderr(printed)
    try:
        with quiet_torch(), torch.no_grad(), hide:
            ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as err:  # noqa: BLE001 - whatever tracing the user's forward raises is about the model
        log.debug("torch.export printed: %s", printed.getvalue())
        raise _trace_error(err, name, args) from err
    else:
        if printed.getvalue():
            sys.stderr.write(printed.getvalue())
        return ep
    finally:
        if flatten_outputs:
            if forward is None:
                del model.forward
            else:
                model.forward = forward


# "The following call raised this error:\n  File "/x/m.py", line 9, in forward\n    if x.sum() > 0:"
_CALL_SITE = re.compile(r'File "([^"]+)", line (\d+), in \S+\n\s+(.+)')


def _trace_error(err: Exception, name: str, args: tuple) -> UserError:
    text = str(err)
    shapes = ", ".join(_shape_text(a) for a in args if isinstance(a, torch.Tensor))
    if "data-dependent" in text:
        tail = text.split("The following call raised this error:")[-1]
        site = _CALL_SITE.search(tail)
        where = f" at {site[1]}:{site[2]} (`{site[3].strip()}`)" if site else ""
        return UserError(
            f"torch.export could not trace {name}: its forward has data-dependent control flow{where}, "
            "a Python branch on a tensor's value",
            "express the branch with torch.cond (or torch.where for a per-element choice), or remove it",
        )
    return UserError(
        f"torch.export could not trace {name} with input shape(s) {shapes}: {first_line(err)}",
        "check --input-shape matches what the model expects (run with --debug for the trace)",
    )


def _shape_text(t: torch.Tensor) -> str:
    dims = "x".join(map(str, t.shape))
    return dims if t.dtype == torch.float32 else f"{dims}:{str(t.dtype).replace('torch.', '')}"


# ------------------------------------------------------------------------------------- save/load


def save(graph: Graph, path: str | os.PathLike) -> Path:
    """Write ``.pt2`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    data = graph.serialize()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist", "create it or choose another -o")
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}", "choose a writable output path") from err
    return path


def load(path: str | os.PathLike) -> Graph:
    """Load a ``.pt2`` written by :func:`save` (or any ``torch.export.save`` file).

    The archive is checked first: a zip that holds no exported program, and any entry whose
    CRC-32 does not match (a damaged weight would otherwise load, and the numerics check would
    compare the damaged program with itself), are refused naming the problem.
    """
    path = Path(path)
    fix = "re-create it with `edgeformer export`"
    if not path.is_file():
        raise UserError(f"IR file {path} does not exist", "check the path, or create it with `edgeformer export`")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a valid .pt2 export (not a zip archive)", fix)
    _check_archive(path)
    extra = {_META_FILE: ""}
    with quiet_torch(capture_export_log=True) as records:
        try:
            ep = torch.export.load(path, extra_files=extra)
        except Exception as err:  # noqa: BLE001 - any failure to parse is a corrupt user file
            raise UserError(f"{path} is not a valid .pt2 export ({_load_failure(err, records)})", fix) from err
    try:
        meta = json.loads(extra[_META_FILE]) if extra.get(_META_FILE) else {}
    except ValueError as err:
        raise UserError(f"{path} is not a valid .pt2 export (its {_META_FILE} is not JSON)", fix) from err
    return Graph(
        ep,
        name=meta.get("name", path.stem),
        input_names=tuple(meta.get("input_names", ())),
        output_names=tuple(meta.get("output_names", ())),
        dim_names={(int(k), int(axis)): str(n) for k, axis, n in meta.get("dim_names", ())},
    )


def _check_archive(path: Path) -> None:
    """Refuse a zip that is no torch.export program, or whose entries fail their CRC-32."""
    fix = "re-create it with `edgeformer export`"
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            program = "version" in names or any(  # "version" at the top: torch 2.7's layout
                n.endswith("/archive_format") or ("/models/" in n and n.endswith(".json")) for n in names
            )
            if not program:
                raise UserError(
                    f"{path} is a zip archive but not a .pt2 export: it holds no exported program (models/*.json)",
                    "pass a file written by `edgeformer export` or torch.export.save",
                )
            for info in infos:
                try:
                    with z.open(info) as f:
                        while f.read(1 << 20):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise UserError(
                        f"{path} is corrupt: archive entry {info.filename} fails its CRC check ({first_line(err)})",
                        fix,
                    ) from err
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path} is not a valid .pt2 export ({first_line(err)})", fix) from err


_ENFORCE = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")
_IMPROVE = re.compile(r"\s*\(Could this error message be improved\?.*$")


def _load_failure(err: Exception, records: list[logging.LogRecord]) -> str:
    """The real cause: torch.export.load logs it, then raises 'check the warnings above'."""
    for record in records:
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            break
    detail = _IMPROVE.sub("", _ENFORCE.sub("", first_line(err)))
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


# ------------------------------------------------------------------------------------------- run


def run(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run the IR in PyTorch: the reference for every numerical check."""
    return runner(graph)(inputs)


def runner(graph: Graph) -> Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]:
    """``run`` for many calls: the program is unlifted into a module once (that takes far longer
    than a tiny model's forward)."""
    expected = len(graph.example_inputs)
    with warnings_hidden():
        module = graph.program.module()

    def call(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != expected:
            raise UserError(f"{graph.name} takes {expected} input(s), got {len(inputs)}")
        with warnings_hidden(), torch.no_grad():
            out = module(*inputs)
        flat, _ = pytree.tree_flatten(out)
        return [t for t in flat if isinstance(t, torch.Tensor)]

    return call


# ------------------------------------------------------------------------------------------ hash


def canonical_hash(graph: Graph) -> str:
    """sha256 of what defines the computation; see the module docstring for what is left out.

    Included: the graph's nodes in order (kind, op, arguments bound to the op schema with
    defaults filled in, other nodes referenced by position, dtypes and shapes of every value,
    sub-graphs of control-flow ops), the signature (what each placeholder and output is, and
    which parameter or buffer it binds), the symbolic ranges, the I/O and dim names, and each
    parameter, buffer and constant as name, dtype, shape and the sha256 of its bytes.
    Not included: node names, stack traces, source files/lines, ``nn_module_stack`` (its class
    paths move with the code), ``source_fn_stack``/``torch_fn``/``from_node``, the output pytree's
    Python classes (flat outputs are what targets compile; their names are included), the
    example input values, and the graph's display name.
    """
    c = _Canonical()
    ep = graph.program
    h = hashlib.sha256(b"edgeformer-ir-hash/1\n")

    def put(item) -> None:
        h.update(json.dumps(item, sort_keys=True, separators=(",", ":"), default=str).encode())
        h.update(b"\n")

    for line in c.graph_lines(ep.graph, ep.graph_module):
        put(line)
    position = {n.name: i for i, n in enumerate(ep.graph.nodes)}
    sig = ep.graph_signature
    for spec in sig.input_specs:
        arg = spec.arg
        put(["in", spec.kind.name, position.get(getattr(arg, "name", None)), spec.target, spec.persistent])
    for spec in sig.output_specs:
        put(["out", spec.kind.name, spec.target])
    put(["ranges", sorted([c.sym(s), str(r.lower), str(r.upper)] for s, r in ep.range_constraints.items())])
    put(["io", list(graph.input_names), list(graph.output_names)])
    put(["dims", sorted([k, axis, n] for (k, axis), n in graph.dim_names.items())])
    tensors = {f"state:{k}": v for k, v in ep.state_dict.items()}
    tensors.update({f"const:{k}": v for k, v in (getattr(ep, "constants", None) or {}).items()})
    for key in sorted(tensors):
        put(["tensor", key, *c.tensor(tensors[key])])
    return h.hexdigest()


class _Canonical:
    """Location-free renderings of graph values; symbols renamed d0, d1, ... as they appear."""

    def __init__(self) -> None:
        self.symbols: dict[str, str] = {}

    def sym(self, expr) -> str:
        expr = sympy.sympify(expr)
        rename = {}
        for s in sorted(expr.free_symbols, key=str):
            new = self.symbols.setdefault(str(s), f"d{len(self.symbols)}")
            rename[s] = sympy.Symbol(new, **s.assumptions0)
        return str(expr.xreplace(rename))

    def dim(self, d):
        return int(d) if isinstance(d, int) else self.sym(d.node.expr)

    def value(self, v):
        if isinstance(v, torch.Tensor):
            return ["T", str(v.dtype), [self.dim(d) for d in v.shape]]
        if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return ["S", self.sym(v.node.expr)]
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return ["f", repr(v)]
        return ["?", type(v).__name__]

    def arg(self, a, position: dict):
        if isinstance(a, fx.Node):
            return ["%", position[a]]
        if isinstance(a, (list, tuple)):
            return [self.arg(x, position) for x in a]
        if isinstance(a, dict):
            return [[str(k), self.arg(v, position)] for k, v in sorted(a.items(), key=lambda kv: str(kv[0]))]
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return ["S", self.sym(a.node.expr)]
        if isinstance(a, (torch.dtype, torch.device, torch.layout, torch.memory_format, enum.Enum)):
            return str(a)
        if isinstance(a, float):
            return ["f", repr(a)]  # exact, and 1.0 stays apart from 1
        if a is None or isinstance(a, (bool, int, str)):
            return a
        if isinstance(a, slice):
            return ["slice", self.arg(a.start, position), self.arg(a.stop, position), self.arg(a.step, position)]
        if isinstance(a, torch.Tensor):
            return ["const", *self.tensor(a)]
        return ["?", type(a).__qualname__]

    def call_args(self, node, position: dict):
        target = node.target
        schema = getattr(target, "_schema", None) if isinstance(target, torch._ops.OpOverload) else None
        if schema is None:
            return [self.arg(list(node.args), position), self.arg(dict(node.kwargs), position)]
        bound = []
        for i, a in enumerate(schema.arguments):  # positional or keyword, given or default: one form
            if i < len(node.args) and not a.kwarg_only:
                v = node.args[i]
            elif a.name in node.kwargs:
                v = node.kwargs[a.name]
            else:
                v = a.default_value if a.has_default_value() else None
            bound.append([a.name, self.arg(v, position)])
        return bound

    def graph_lines(self, g: fx.Graph, owner: nn.Module):
        position = {n: i for i, n in enumerate(g.nodes)}
        for n in g.nodes:
            val = self.value(n.meta.get("val"))
            if n.op == "placeholder":
                yield ["placeholder", val]
            elif n.op == "output":
                yield ["output", self.arg(n.args, position)]
            elif n.op == "get_attr":
                attr = _get_attr(owner, str(n.target))
                if isinstance(attr, fx.GraphModule):
                    yield ["get_attr", str(n.target), list(self.graph_lines(attr.graph, attr))]
                elif isinstance(attr, torch.Tensor):
                    yield ["get_attr", str(n.target), self.tensor(attr)]
                else:
                    yield ["get_attr", str(n.target), type(attr).__name__]
            else:
                yield [n.op, _target_name(n.target), self.call_args(n, position), val]

    @staticmethod
    def tensor(t) -> list:
        if not isinstance(t, torch.Tensor):
            return [type(t).__name__]
        t = t.detach()
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            return [str(t.dtype), list(t.shape), repr(t.layout)]
        flat = t.cpu().contiguous().reshape(-1).view(torch.uint8)
        return [str(t.dtype), list(t.shape), hashlib.sha256(flat.numpy()).hexdigest()]


def _get_attr(owner: nn.Module, target: str):
    obj = owner
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # aten.linear.default
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', type(target).__name__)}"


# --------------------------------------------------------------------------------------- summary


@dataclass
class NodeInfo:
    index: int
    name: str
    op: str  # e.g. "aten.conv2d"
    shape: list[int] | None
    dtype: str | None
    macs: int
    source: str  # module path the node came from, e.g. "network.0.0.mlp.fc1"


@dataclass
class Summary:
    name: str
    ir_hash: str
    inputs: list[dict]
    outputs: list[dict]
    nodes: list[NodeInfo]
    histogram: dict[str, int]
    parameters: int
    buffers: int
    total_macs: int
    # input name → {axis: name} of its dynamic dimensions; {} for a static graph
    dynamic_dims: dict[str, dict[int, str]] = field(default_factory=dict)
    # how MACs were counted when sizes are symbolic: per sample (batch 1), other dims at the example
    macs_note: str = ""

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_flops"] = self.total_flops
        return d

    def format(self, *, max_nodes: int | None = None) -> str:
        """The readable dump used by ``inspect`` and ``--dump-ir``."""
        note = f" {self.macs_note}" if self.macs_note else ""
        lines = [
            f"# {self.name}  ir hash {self.ir_hash[:16]}",
            f"# parameters {self.parameters:,}  buffers {self.buffers:,}  "
            f"MACs {self.total_macs:,} ({self.total_macs / 1e9:.3f} G){note}",
        ]
        for io_ in self.inputs:
            lines.append(f"input  {io_['name']}: {io_['dtype']}{self._dims(io_)}")
        nodes = self.nodes if max_nodes is None else self.nodes[:max_nodes]
        for n in nodes:
            macs = f"  macs={n.macs:,}" if n.macs else ""
            src = f"  # {n.source}" if n.source else ""
            lines.append(f"{n.index:4d} {n.name:<28} {n.op:<42} {n.shape}{macs}{src}")
        if max_nodes is not None and len(self.nodes) > max_nodes:
            lines.append(f"     ... {len(self.nodes) - max_nodes} more nodes")
        for io_ in self.outputs:
            lines.append(f"output {io_['name']}: {io_['dtype']}{io_['shape']}")
        lines.append("# op histogram")
        for op, count in sorted(self.histogram.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{count:6d}  {op}")
        return "\n".join(lines)

    def _dims(self, io_: dict) -> str:
        named = self.dynamic_dims.get(io_["name"], {})
        shape = io_["shape"] or []
        if not named:
            return str(io_["shape"])
        return "[" + ", ".join(named.get(i, str(d)) for i, d in enumerate(shape)) + "]"


def op_name(target) -> str:
    """``torch.ops.aten.conv2d.default`` → ``aten.conv2d``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::')[-1]}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"{target._qualified_op_name.replace('::', '.')}"
    return getattr(target, "__name__", str(target))


def _shape(node, sizes: dict | None = None) -> list[int] | None:
    """A node's shape; a symbolic dimension is -1, or its value under ``sizes`` (symbol → int)."""
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if not isinstance(val, torch.Tensor):
        return None
    return [int(s) if isinstance(s, int) else _evaluate(s, sizes) for s in val.shape]


def _evaluate(dim, sizes: dict | None) -> int:
    if not sizes:
        return -1
    try:
        expr = dim.node.expr
        if not expr.free_symbols <= sizes.keys():
            return -1
        return int(expr.xreplace(sizes))
    except (TypeError, ValueError, AttributeError):
        return -1


def _dtype(node) -> str | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return str(val.dtype).replace("torch.", "") if isinstance(val, torch.Tensor) else None


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def node_macs(node, sizes: dict | None = None) -> int:
    """Multiply-accumulates of one node (conv, linear, matmul/bmm/mm/addmm, SDPA); 0 otherwise.

    Symbolic sizes count only when ``sizes`` binds them (see :func:`summary`), else 0.
    """
    if node.op != "call_function":
        return 0
    op = op_name(node.target)
    out = _shape(node, sizes)
    if out is None or any(s < 0 for s in out):
        return 0

    def arg_shape(i):
        if len(node.args) > i and hasattr(node.args[i], "meta"):
            shape = _shape(node.args[i], sizes)
            return None if shape is None or any(s < 0 for s in shape) else shape
        return None

    if op in (
        "aten.conv1d",
        "aten.conv2d",
        "aten.conv3d",
        "aten.convolution",
        "aten._convolution",
        "aten.conv_transpose1d",
        "aten.conv_transpose2d",
    ):
        w = arg_shape(1)
        if w is None:
            return 0
        transposed = op.startswith("aten.conv_transpose") or (
            op in ("aten.convolution", "aten._convolution") and bool(node.args[6])
        )
        if transposed:  # every input element is multiplied by (C_out/groups)·k
            x = arg_shape(0)
            return _numel(x) * w[1] * math.prod(w[2:])
        return _numel(out) * w[1] * math.prod(w[2:])  # w = (C_out, C_in/groups, *k)
    if op == "aten.linear":
        w = arg_shape(1)
        return _numel(out) * w[1] if w else 0
    if op in ("aten.matmul", "aten.mm", "aten.bmm"):
        a = arg_shape(0)
        return _numel(out) * a[-1] if a else 0
    if op in ("aten.addmm", "aten.baddbmm"):
        a = arg_shape(1)
        return _numel(out) * a[-1] if a else 0
    if op in ("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu"):
        q, k, v = arg_shape(0), arg_shape(1), arg_shape(2)
        if not (q and k and v):
            return 0
        batch = math.prod(q[:-2])
        L, E, S, Ev = q[-2], q[-1], k[-2], v[-1]
        return batch * L * S * E + batch * L * S * Ev  # q·kᵀ and attn·v
    return 0


def source_path(node) -> str:
    """The dotted path of the module a node came from (``network.0.1.mlp.fc1``), or ''.

    Read from the innermost entry of the node's ``nn_module_stack``; "" when the node has none
    (placeholders, nodes a pass inserted without copying metadata, objects that are not nodes).
    """
    stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    # "L['self'].network[0][1].mlp" style paths from some torch versions → dotted
    return path.replace("L['self'].", "").replace("][", ".").replace("[", ".").replace("]", "")


def _symbolic_sizes(graph: Graph) -> tuple[dict, str]:
    """Values for the symbolic input sizes MACs are counted at, and a note saying so.

    A dynamic batch (dimension 0 of an input) counts as 1, so a dynamic-batch graph reports MACs
    per sample, the figure a static batch-1 export gives; any other dynamic dimension counts at
    its size in the example inputs.
    """
    try:
        examples = graph.example_inputs
    except UserError:
        examples = ()
    sizes: dict = {}
    per_sample = False
    for k, node in enumerate(_user_input_nodes(graph.program)):
        val = node.meta.get("val")
        for axis, d in enumerate(getattr(val, "shape", ())):
            expr = getattr(getattr(d, "node", None), "expr", None)
            if isinstance(expr, sympy.Symbol) and expr not in sizes:
                if axis == 0:
                    sizes[expr], per_sample = 1, True
                elif k < len(examples) and isinstance(examples[k], torch.Tensor):
                    sizes[expr] = int(examples[k].shape[axis])
    if not sizes:
        return {}, ""
    note = "per sample (dynamic batch counted at 1)" if per_sample else "at the example input sizes"
    return sizes, note


def summary(graph: Graph) -> Summary:
    ep = graph.program
    sig = ep.graph_signature
    state = ep.state_dict
    params = sum(state[n].numel() for n in sig.parameters if n in state)
    buffers = sum(state[n].numel() for n in sig.buffers if n in state)
    constants = getattr(ep, "constants", {}) or {}
    params += sum(t.numel() for t in constants.values() if isinstance(t, torch.Tensor) and t.is_floating_point())
    inputs = [
        {"name": io_name, "shape": _shape(n), "dtype": _dtype(n)}
        for io_name, n in zip(graph.input_names, _user_input_nodes(ep))
    ]
    outputs = [
        {"name": nm, "shape": _shape(a), "dtype": _dtype(a)} for nm, a in zip(graph.output_names, _output_nodes(ep))
    ]
    sizes, note = _symbolic_sizes(graph)
    nodes: list[NodeInfo] = []
    hist: Counter[str] = Counter()
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        op = op_name(n.target)
        hist[op] += 1
        nodes.append(NodeInfo(len(nodes), n.name, op, _shape(n), _dtype(n), node_macs(n, sizes), source_path(n)))
    dims = {nm: d for nm, d in zip(graph.input_names, graph.dynamic_dims()) if d}
    return Summary(
        name=graph.name,
        ir_hash=graph.hash(),
        inputs=inputs,
        outputs=outputs,
        nodes=nodes,
        histogram=dict(sorted(hist.items())),
        parameters=params,
        buffers=buffers,
        total_macs=sum(n.macs for n in nodes),
        dynamic_dims=dims,
        macs_note=note,
    )
