"""Shared graph surgery for passes: an editable copy of an ExportedProgram.

Every pass works on an :class:`Editor`, never on the program it was given: the PassManager compares
the program before and after, so the input must stay untouched.  The editor copies the FX graph
(node metadata shared, fake tensors included) and the state dict shallowly (tensors shared until a
pass rebinds them), and :meth:`Editor.finish` rebuilds a validated ExportedProgram: dead nodes and
unused parameters/buffers removed, the graph signature regenerated from the placeholders.

It also carries what every pass reports: ``matched``, ``params_folded`` and the ``explain`` lines
("matched conv2d_3 + batch_norm_2 (network.1.proj/norm)", "rejected conv2d_7: ...").  Passes
never count ``params_folded`` themselves: every folded tensor is stored through one method, which
counts it (a new parameter from :meth:`Editor.add_param`, or one :meth:`Editor.tensor_arg`
overwrites in place).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

import torch
from torch import fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.export import ExportedProgram
from torch.export.graph_signature import (
    ExportGraphSignature,
    InputKind,
    InputSpec,
    TensorArgument,
)
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from edgeformer.ir import Graph, op_name, source_path

_CONST_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def is_op(node, *names: str) -> bool:
    """``node`` is a call to one of the ATen ops ``names`` (e.g. ``"aten.conv2d"``)."""
    return isinstance(node, fx.Node) and node.op == "call_function" and op_name(node.target) in names


def arg(node: fx.Node, name: str):
    """Argument ``name`` of an ATen call, positional, keyword or the schema default."""
    schema = node.target._schema
    for i, a in enumerate(schema.arguments):
        if a.name == name:
            if i < len(node.args):
                return node.args[i]
            if name in node.kwargs:
                return node.kwargs[name]
            return a.default_value if a.has_default_value() else None
    raise KeyError(f"{op_name(node.target)} has no argument {name!r}")


def set_arg(node: fx.Node, name: str, value) -> None:
    schema = node.target._schema
    idx = [a.name for a in schema.arguments].index(name)
    if name in node.kwargs:
        node.update_kwarg(name, value)
        return
    args = list(node.args)
    while len(args) <= idx:  # fill defaults up to the slot
        a = schema.arguments[len(args)]
        args.append(a.default_value if a.has_default_value() else None)
    args[idx] = value
    node.args = tuple(args)


def describe(*nodes: fx.Node) -> str:
    """``conv2d_3 + batch_norm_2 (network.1.proj/norm)`` for explain lines."""
    names = " + ".join(n.name for n in nodes)
    srcs = list(dict.fromkeys(s for s in (source_path(n) for n in nodes) if s))
    if len(srcs) <= 1:
        return f"{names} ({srcs[0]})" if srcs else names
    prefix = srcs[0]
    for s in srcs[1:]:
        while prefix and not (s == prefix or s.startswith(prefix + ".")):
            prefix = prefix.rsplit(".", 1)[0] if "." in prefix else ""
    tails = [s[len(prefix) + 1 :] if prefix else s for s in srcs]
    tails = [t for t in tails if t]
    return f"{names} ({prefix + '.' if prefix and tails else prefix}{'/'.join(tails)})"


def shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(s if isinstance(s, int) else -1 for s in val.shape) if isinstance(val, torch.Tensor) else None


def strip_permutes(node: fx.Node) -> tuple[fx.Node, list[int]]:
    """``(base, perm)`` with ``node == base.permute(perm)``, looking through transpose/permute."""
    rank = len(shape(node) or ())
    perm = list(range(rank))
    while is_op(node, "aten.transpose", "aten.permute"):
        if is_op(node, "aten.transpose"):
            d0, d1 = arg(node, "dim0") % rank, arg(node, "dim1") % rank
            step = list(range(rank))
            step[d0], step[d1] = d1, d0
        else:
            step = [d % rank for d in arg(node, "dims")]
        perm = [step[d] for d in perm]  # node = prev.permute(step); prev = base.permute(p) ...
        node = arg(node, "self")
    return node, perm


class Editor:
    """An editable copy of ``graph.program``; see the module docstring."""

    def __init__(self, graph: Graph):
        self.source_graph = graph
        ep = graph.program
        self.ep = ep
        new = fx.Graph()
        copies: dict[fx.Node, fx.Node] = {}
        out = new.graph_copy(ep.graph, copies)
        new.output(out)
        self.gm = fx.GraphModule(ep.graph_module, new)
        self.graph = new
        self.state = dict(ep.state_dict)
        self.constants = dict(ep.constants)
        # graph_copy may rename a placeholder (``input`` → ``input_1``): key specs by the copy's names
        by_name = {old.name: copies[old].name for old in ep.graph.nodes if old.op == "placeholder"}
        self._renamed = {k: v for k, v in by_name.items() if k != v}
        self.specs = {}
        for spec in ep.graph_signature.input_specs:
            spec = copy.copy(spec)
            if isinstance(spec.arg, TensorArgument):
                spec.arg = TensorArgument(by_name[spec.arg.name])
            self.specs[spec.arg.name] = spec
        self.output_specs = [copy.copy(s) for s in ep.graph_signature.output_specs]
        vals = [n.meta.get("val") for n in new.nodes if n.op == "placeholder"]
        self.fake_mode = detect_fake_mode(vals) or FakeTensorMode()
        self._const: dict[fx.Node, torch.Tensor | None] = {}
        self.matched = 0
        self.params_folded = 0
        self.touched = False  # changed without a match (dead-code removal)
        self.explain: list[str] = []
        # Nodes already dead on arrival stay for fold_constants to remove, so each pass's record
        # counts only what that pass made dead.
        self._dead_on_arrival = set(new.nodes) - _live(new)

    # ------------------------------------------------------------------------------ reporting

    def match(self, *nodes: fx.Node, note: str = "") -> None:
        self.matched += 1
        self.explain.append(f"matched {describe(*nodes)}{': ' + note if note else ''}")

    def reject(self, node: fx.Node, reason: str) -> None:
        self.explain.append(f"rejected {describe(node)}: {reason}")

    # ------------------------------------------------------------------------------ constants

    def kind(self, node) -> InputKind | None:
        spec = self.specs.get(node.name) if isinstance(node, fx.Node) and node.op == "placeholder" else None
        return spec.kind if spec else None

    def const(self, node) -> torch.Tensor | None:
        """The value of ``node`` when it depends only on parameters/buffers/constants, else None."""
        if not isinstance(node, fx.Node):
            return None
        if node in self._const:
            return self._const[node]
        value = None
        if node.op == "placeholder" and self.kind(node) in _CONST_KINDS:
            target = self.specs[node.name].target
            value = self.state[target] if target in self.state else self.constants.get(target)
        elif node.op == "get_attr":
            value = getattr(self.gm, node.target, None)
        elif (
            node.op == "call_function"
            and not node.is_impure()
            and node.meta.get("val") is not None
            and torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ())
        ):
            leaves = [a for a in node.all_input_nodes]
            vals = [self.const(a) for a in leaves]
            if all(v is not None for v in vals):
                env = dict(zip(leaves, vals))
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
                with torch.no_grad():
                    value = node.target(*args, **kwargs)
        if isinstance(value, torch.Tensor):
            value = value.detach()
        else:
            value = None
        self._const[node] = value
        return value

    # ------------------------------------------------------------------------------ new nodes

    def _fake(self, t: torch.Tensor):
        return self.fake_mode.from_tensor(t, static_shapes=True)

    def _set_meta(self, node: fx.Node, val, like: fx.Node | None) -> None:
        node.meta["val"] = val
        if isinstance(val, torch.Tensor):
            node.meta["tensor_meta"] = _extract_tensor_metadata(val)
        if like is not None:
            for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "torch_fn"):
                if key in like.meta:
                    node.meta[key] = like.meta[key]

    def _store(self, target: str, tensor: torch.Tensor, *, param: bool) -> torch.Tensor:
        """Store a folded tensor under ``target`` and count it in ``params_folded``.

        The one place a pass's folded values enter the program (a new parameter or constant from
        :meth:`add_param`, a parameter :meth:`tensor_arg` overwrites in place), so the count is one
        per tensor a pass writes.
        """
        tensor = tensor.detach().contiguous()
        if param:
            value = self.state[target] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            value = self.constants[target] = tensor
        self.params_folded += 1
        return value

    def add_param(self, hint: str, tensor: torch.Tensor) -> fx.Node:
        """A new PARAMETER (integer: CONSTANT_TENSOR) placeholder named after ``hint``, holding ``tensor``.

        Counts as one folded parameter (``params_folded``); callers do not count it again.
        """
        target = hint
        i = 0
        while target in self.state or target in self.constants:
            i += 1
            target = f"{hint}_folded" if i == 1 else f"{hint}_folded{i}"
        is_param = tensor.is_floating_point() or tensor.is_complex()
        # keep export's placeholder order: parameters, buffers, constants, user inputs
        kinds = (InputKind.PARAMETER,) if is_param else _CONST_KINDS
        first_after = next(n for n in self.graph.nodes if n.op != "placeholder" or self.kind(n) not in kinds)
        name = ("p_" if is_param else "c_") + re.sub(r"\W", "_", target)
        with self.graph.inserting_before(first_after):
            node = self.graph.placeholder(name)
        # folded weights stay parameters (named, in the state dict, ONNX initializers); integer
        # tables cannot be parameters
        value = self._store(target, tensor, param=is_param)
        kind = InputKind.PARAMETER if is_param else InputKind.CONSTANT_TENSOR
        self.specs[node.name] = InputSpec(kind, TensorArgument(node.name), target)
        self._set_meta(node, self._fake(value), None)
        self._const[node] = value.detach()
        return node

    def tensor_arg(self, user: fx.Node, name: str, tensor: torch.Tensor, hint: str) -> None:
        """Give ``user``'s argument ``name`` the value ``tensor``.

        A parameter used by ``user`` alone is overwritten in place (same state-dict key, so the
        folded weight keeps its readable name); a shared one, a derived value or a missing bias
        gets a new parameter.  Either way it counts as one folded parameter.
        """
        old = arg(user, name)
        tensor = tensor.detach().to(self._dtype_of(user, old, tensor)).contiguous()
        if (
            isinstance(old, fx.Node)
            and self.kind(old) == InputKind.PARAMETER
            and len(old.users) == 1
            and shape(old) == tuple(tensor.shape)
        ):
            target = self.specs[old.name].target
            self._store(target, tensor, param=True)
            self._const[old] = tensor
            self._set_meta(old, self._fake(tensor), None)
        else:
            target = self.specs[old.name].target if isinstance(old, fx.Node) and old.name in self.specs else hint
            set_arg(user, name, self.add_param(target if target else hint, tensor))

    @staticmethod
    def _dtype_of(user, old, tensor) -> torch.dtype:
        if isinstance(old, fx.Node) and isinstance(old.meta.get("val"), torch.Tensor):
            return old.meta["val"].dtype
        val = user.meta.get("val")
        return val.dtype if isinstance(val, torch.Tensor) else tensor.dtype

    def call(
        self, target, args: tuple, kwargs: dict | None = None, *, before: fx.Node, like: fx.Node | None = None
    ) -> fx.Node:
        """Insert ``target(*args)`` before ``before``, with fake-tensor metadata."""
        kwargs = kwargs or {}
        with self.graph.inserting_before(before):
            node = self.graph.call_function(target, args, kwargs)
        fargs, fkwargs = fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
        with self.fake_mode:
            val = target(*fargs, **fkwargs)
        self._set_meta(node, val, like or before)
        return node

    def replace(self, old: fx.Node, new: fx.Node) -> None:
        old.replace_all_uses_with(new)

    # ------------------------------------------------------------------------------ finish

    def dead_code(self, *, everything: bool = False) -> int:
        """Remove unused pure nodes and unused parameters/buffers/constants; count what went.

        Only what this edit made dead, unless ``everything`` (fold_constants).
        """
        removed = 0
        mutated = {s.target for s in self.output_specs if s.target is not None}
        for node in reversed(list(self.graph.nodes)):
            if node.users or node.op == "output" or (node in self._dead_on_arrival and not everything):
                continue
            if node.op == "call_function" and not node.is_impure():
                self.graph.erase_node(node)
                removed += 1
            elif node.op == "placeholder" and self.kind(node) in _CONST_KINDS:
                target = self.specs[node.name].target
                if target in mutated:
                    continue
                self.graph.erase_node(node)
                removed += 1
                del self.specs[node.name]
                self._const.pop(node, None)
                live = {s.target for s in self.specs.values()}
                if target not in live:
                    self.state.pop(target, None)
                    self.constants.pop(target, None)
        return removed

    def finish(self) -> Graph:
        """A new validated Graph from the edited copy."""
        self.dead_code()
        self.graph.lint()
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        input_specs = [self.specs[n.name] for n in placeholders]
        out_node = next(n for n in self.graph.nodes if n.op == "output")
        outs = list(_flat(out_node.args[0]))
        output_specs = []
        for spec, node in zip(self.output_specs, outs):
            spec = copy.copy(spec)
            if isinstance(spec.arg, TensorArgument) and isinstance(node, fx.Node):
                spec.arg = TensorArgument(node.name)
            output_specs.append(spec)
        signature = ExportGraphSignature(input_specs, output_specs)
        call_graph = [copy.copy(e) for e in self.ep.module_call_graph]
        if call_graph and call_graph[0].signature is not None:
            user_outs = [s.arg for s in output_specs if s.kind.name == "USER_OUTPUT"]
            sig = call_graph[0].signature = copy.copy(call_graph[0].signature)
            if len(sig.outputs) == len(user_outs):
                sig.outputs = [copy.copy(a) for a in user_outs]
            sig.inputs = [
                TensorArgument(self._renamed[a.name])
                if isinstance(a, TensorArgument) and a.name in self._renamed
                else a
                for a in sig.inputs
            ]
        self.gm.recompile()
        program = ExportedProgram(
            root=self.gm,
            graph=self.graph,
            graph_signature=signature,
            state_dict=self.state,
            range_constraints=copy.deepcopy(self.ep.range_constraints),
            module_call_graph=call_graph,
            example_inputs=self.ep.example_inputs,
            constants=self.constants,
            verifiers=self.ep.verifiers,
        )
        return self.source_graph.replace(program)


def _live(graph: fx.Graph) -> set[fx.Node]:
    """Nodes the outputs or a side effect depend on."""
    todo = [n for n in graph.nodes if n.op == "output" or (n.op == "call_function" and n.is_impure())]
    live: set[fx.Node] = set()
    while todo:
        n = todo.pop()
        if n not in live:
            live.add(n)
            todo.extend(n.all_input_nodes)
    return live


def _flat(x) -> Iterable:
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flat(y)
    else:
        yield x


__all__ = ["Editor", "arg", "describe", "is_op", "set_arg", "shape", "strip_permutes"]
