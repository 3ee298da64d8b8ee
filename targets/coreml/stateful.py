"""Core ML *stateful* streaming step: every state tensor a Core ML state, not an input/output.

:func:`convert_stateful` takes a streaming step model (``forward(frame, flush, *state)`` →
``{"logits", "next_<state>", ["spikes_<lif>"]}``, e.g. the LMUFormer ``StepModel``) and writes an
ML program (``.mlpackage``, ``minimum_deployment_target`` iOS18, the first with states) whose
inputs are only ``frame`` and ``flush`` and whose outputs are ``logits`` (and, for a spiking
model, the spikes).  The app creates the state once (``model.make_state()``) and passes it to
every ``predict``; Core ML updates it in place, so nothing is copied between steps.

How: :class:`StatefulStep` holds each state as a registered buffer ``state_<name>`` and writes the
step's ``next_<name>`` back with ``buffer.copy_`` (the pattern coremltools documents for
stateful models); ``torch.export`` records these as buffer mutations and coremltools turns each
mutated buffer into a ``StateType`` (``read_state`` at the top, ``coreml_update_state`` at the end).

State dtype: **Core ML states are fp16 only** (iOS18 / coremltools 9: the ML program backend raises
"State only support fp16 dtype" for any other; an fp32 buffer given no StateType is cast to fp16 by the
converter, with a warning).  So the buffers are fp16 in torch too: the wrapper reads each state, casts it to fp32,
runs the step and rounds the new state to fp16, which makes :class:`StatefulStep` an exact torch
model of what is *stored* between steps.  ``precision`` picks the arithmetic inside a step:
``fp16`` (Core ML's usual choice, as in the Core ML target) or ``fp32`` (the state is still rounded
to fp16 at the end of every step).  What fp16 storage costs, per kind of state:

- the capped counters (``steps``, ``flushes`` ≤ the look-ahead delay) and 0/1 flags: exact (fp16
  holds every integer up to 2048);
- ``logit_count`` (tokens emitted so far): exact up to 2048; after that ``2048 + 1`` rounds back to
  2048, so the count sticks and ``logits`` (= ``logit_sum / logit_count``) becomes the sum over
  2048 instead of the mean.  Streams longer than 2048 tokens need the app to reset the state;
- ``logit_sum``: one fp16 rounding per token (relative 2⁻¹¹ ≈ 4.9e-4 each, so the error grows with
  the stream; once the sum is large a small logit is rounded away) and it overflows at 65504;
- convolution windows / raw tokens: one rounding of an activation (as fp16 compute would anyway);
- LIF membranes and LMU memories: rounded every step, so the error is carried and compounds; a
  membrane within a rounding step of the threshold can fire one step early or late, after which
  the spike trains (and the outputs) differ from fp32.

Measured in torch (:class:`StatefulStep` against the fp32-state step, randomly initialised tiny
models, 300 random frames + flushes): fp16 storage alone moves the logits by at most 4.3e-4
(``lmuformer_tiny``) and 2.6e-3 (``spiking_lmuformer_tiny``) at |logits| ≈ 0.12, with no spike
flipped out of 273,585; fp16 storage *and* arithmetic (torch CPU half, an approximation of Core
ML's fp16) gives 4.6e-4 and 2.6e-3.  Trained weights and longer streams can do worse.

On Linux the package is validated structurally (Core ML cannot predict here): :func:`convert_stateful`
reads the saved spec back and reports whether every state is a Core ML state of the right name,
shape and dtype, is written by a ``coreml_update_state``, the inputs and outputs are exactly the
app-facing ones, and the specification version is iOS18's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edgeformer.errors import UserError, first_line
from edgeformer.ir import op_name

from .._support import quiet_sdk

log = logging.getLogger(__name__)

DEPLOYMENT_TARGET = "iOS18"  # the first Core ML with model states
STATE_PREFIX = "state_"
_PRECISIONS = ("fp16", "fp32")
_SDK_LOGGERS = ("coremltools",)
_DEBUG_HANDLE_MAP = "executorch_debug_handle_mapping.json"
_UUID_NAMESPACE = uuid.UUID("6f1c3a52-2b8e-4d7e-9c1a-0e5d2f7b8a41")  # as targets/coreml
_MIL_FP16 = 10  # MIL DataType.FLOAT16 in coremltools.proto.MIL_pb2
# ops that move the fp16 state in and out (present at either compute precision)
_STATE_OPS = ("const", "read_state", "write_state", "coreml_update_state", "cast")
# identity ops coremltools has no converter for (as in targets/coreml)
_IDENTITY_OPS = ("aten.alias", "aten.alias_copy", "aten.detach", "aten.detach_copy", "aten.lift_fresh_copy")


def io_name(key: str) -> str:
    """A state key (``stage#window``, ``block.0.attn.lif``) as a tensor name: letters, digits, ``_``
    (the same rule as the step model's ``next_<name>`` outputs)."""
    return "".join(c if c.isalnum() else "_" for c in key)


class StatefulStep(nn.Module):
    """``step`` with its state held in fp16 buffers ``state_<name>`` and updated in place.

    ``forward(frame, flush)`` → ``(logits, *spikes)`` (:attr:`output_names`); each call advances the
    buffers by one step, exactly as the Core ML state advances on each ``predict``.
    """

    def __init__(self, step: nn.Module, states: list[tuple[str, tuple[int, ...]]], frame_shape):
        super().__init__()
        self.step = step.eval()
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.state_keys = [io_name(k) for k, _ in states]
        if len(set(self.state_keys)) != len(self.state_keys):
            raise UserError(
                f"two states have the same tensor name: {sorted(self.state_keys)}",
                "give every state a key that stays distinct with non-alphanumerics replaced by _",
            )
        for key, (_, shape) in zip(self.state_keys, states):
            self.register_buffer(STATE_PREFIX + key, torch.zeros(tuple(shape), dtype=torch.float16))
        # one probe step (from zero state) names the outputs and checks the state contract
        try:
            with torch.no_grad():
                out = self.step(*self.example_inputs(), *(torch.zeros(tuple(s)) for _, s in states))
        except Exception as err:  # noqa: BLE001 - whatever the step raises on a wrong state
            raise UserError(
                f"{type(step).__name__} cannot run one step on the declared states: {first_line(err)}",
                "pass the step model's own states list (step.states) and frame shape",
            ) from err
        if not isinstance(out, dict) or "logits" not in out:
            raise UserError(
                f"{type(step).__name__}.forward must return a dict with 'logits'",
                "pass a streaming step model (forward(frame, flush, *state) -> {'logits', 'next_<state>', ...})",
            )
        for key, (name, shape) in zip(self.state_keys, states):
            nxt = out.get(f"next_{key}")
            if nxt is None:
                raise UserError(f"the step model returns no next_{key} for state {name!r}")
            if tuple(nxt.shape) != tuple(shape):
                raise UserError(
                    f"state {name!r} is declared {tuple(shape)} but the step returns next_{key} {tuple(nxt.shape)}",
                    "pass the step model's own states list (step.states)",
                )
        self.output_names = ["logits", *(k for k in out if k.startswith("spikes_"))]

    def state_names(self) -> list[str]:
        return [STATE_PREFIX + k for k in self.state_keys]

    def example_inputs(self) -> tuple[Tensor, Tensor]:
        return torch.zeros(self.frame_shape), torch.zeros(1)

    def reset(self) -> None:
        for name in self.state_names():
            getattr(self, name).zero_()

    def forward(self, frame: Tensor, flush: Tensor) -> tuple[Tensor, ...]:
        bufs = [getattr(self, name) for name in self.state_names()]
        out = self.step(frame, flush, *(b.to(torch.float32) for b in bufs))
        # The fp16 roundings are made last state first so that, in the graph, the last one feeds the
        # first state update.  coremltools 9's canonicalize_inplace_pattern pass otherwise anchors a
        # moved update on one it has already deleted (KeyError in insert_op_before) whenever the op
        # just before the block of updates feeds a later one: at fp32 compute every step model did.
        new = {key: out[f"next_{key}"].to(torch.float16) for key in reversed(self.state_keys)}
        for key, buf in zip(self.state_keys, bufs):
            buf.copy_(new[key])
        return tuple(out[name] for name in self.output_names)


# ----------------------------------------------------------------------------- graph preparation


def _prepare(program) -> int:
    """ATen dialect for coremltools, in place: drop identity ops and spell boolean ``&`` / ``|`` as
    ``logical_and`` / ``logical_or`` (coremltools 9 has no converter for ``aten.__or__`` and its
    torch.export frontend rejects ``aten.__and__``, though its op registry lists it)."""
    rewrites = {
        torch.ops.aten.__and__.Tensor: torch.ops.aten.logical_and.default,
        torch.ops.aten.__or__.Tensor: torch.ops.aten.logical_or.default,
    }
    changed = 0
    for node in list(program.graph.nodes):
        if node.op != "call_function":
            continue
        if op_name(node.target) in _IDENTITY_OPS:
            node.replace_all_uses_with(node.args[0])
            program.graph.erase_node(node)
            changed += 1
        elif node.target in rewrites and all(
            getattr(getattr(a, "meta", {}).get("val"), "dtype", None) == torch.bool for a in node.args
        ):
            node.target = rewrites[node.target]
            changed += 1
    if changed:
        program.graph_module.recompile()
    return changed


def _unconvertible_ops(program) -> list[str]:
    """IR ops the coremltools torch.export frontend will reject (the check it makes itself)."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind

    missing = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        try:
            kind = node.target.name()
        except AttributeError:
            kind = getattr(node.target, "__name__", str(node.target))
        with warnings.catch_warnings():  # ``in`` is deprecated but is what the frontend checks
            warnings.simplefilter("ignore", DeprecationWarning)
            known = sanitize_op_kind(kind) in _TORCH_OPS_REGISTRY
        if not known:
            missing.add(op_name(node.target))
    return sorted(missing)


@contextlib.contextmanager
def _quiet():
    """coremltools' import-time warnings and progress bars (targets/_support.quiet_sdk), and its
    Python warnings."""
    with quiet_sdk(*_SDK_LOGGERS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fix_package_manifest(package: Path) -> None:
    """Replace coremltools' random item UUIDs in Manifest.json by ones derived from the item paths
    (so the same model gives the same package bytes, as the Core ML target does)."""
    path = package / "Manifest.json"
    data = json.loads(path.read_text())
    entries = data.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(_UUID_NAMESPACE, item["path"])).upper() for old, item in entries.items()}
    data["itemInfoEntries"] = {
        renamed[old]: item for old, item in sorted(entries.items(), key=lambda kv: renamed[kv[0]])
    }
    if data.get("rootModelIdentifier") in renamed:
        data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- reading the spec back


def _array(name: str, arr) -> dict:
    from coremltools.proto import FeatureTypes_pb2

    return {
        "name": name,
        "shape": [int(d) for d in arr.shape],
        "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType),
    }


def _mil_operations(spec) -> list:
    fn = spec.mlProgram.functions["main"]
    return list(fn.block_specializations[fn.opset].operations)


def _updated_states(ops) -> set[str]:
    """Names of the states some op writes: the saved program spells pymil's
    ``coreml_update_state(state, value)`` as ``write_state(input=state, data=value)`` + ``read_state``."""
    written = set()
    for op in ops:
        key = {"write_state": "input", "coreml_update_state": "state"}.get(op.type)
        if key is not None and key in op.inputs:
            written.update(arg.name for arg in op.inputs[key].arguments)
    return written


# ----------------------------------------------------------------------------- the conversion


def convert_stateful(
    step: nn.Module,
    states: list[tuple[str, tuple[int, ...]]],
    out_path: Path,
    *,
    frame_shape,
    precision: str = "fp16",
) -> dict:
    """Write ``step`` as a stateful Core ML ML program at ``out_path`` (a ``.mlpackage``).

    ``states`` is the step's ``(key, shape)`` list in its input order (``step.states``); each becomes
    the Core ML state ``state_<io_name(key)>`` (fp16).  Inputs: ``frame`` (``frame_shape``, fp32)
    and ``flush`` (``(1,)``, fp32); outputs (fp32): ``logits`` and any ``spikes_<lif>``.  Returns
    ``{"checks": {name: bool}, "inputs", "outputs", "states": [{name, shape, dtype}], ...}`` read
    back from the saved package's spec; ``details["structural_problems"]`` lists failed checks.
    """
    if precision not in _PRECISIONS:
        raise UserError(
            f"Core ML stateful precision {precision!r} is not supported",
            'use precision = "fp16" or "fp32" (the state itself is fp16 either way)',
        )
    if not states:
        raise UserError("the step model has no state", "convert it with the plain Core ML target instead")
    import coremltools as ct

    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise UserError(f"a Core ML ML program is saved as a .mlpackage, not {out_path.name}")
    wrapper = StatefulStep(step, states, frame_shape).eval()
    try:
        with torch.no_grad():
            program = torch.export.export(wrapper, wrapper.example_inputs(), strict=False)
        program = program.run_decompositions({})
    except Exception as err:  # noqa: BLE001 - torch.export raises many types
        raise UserError(f"torch.export could not trace the stateful step: {first_line(err)}") from err
    finally:
        wrapper.reset()  # export ran the forward: the buffers must start a stream at zero
    mutated = sorted(program.graph_signature.buffers_to_mutate.values())
    if mutated != sorted(wrapper.state_names()):
        missing = sorted(set(wrapper.state_names()) - set(mutated))
        raise UserError(f"the exported step does not update states {missing} in place")
    rewritten = _prepare(program)
    missing_ops = _unconvertible_ops(program)
    if missing_ops:
        raise UserError(
            f"Core ML (coremltools {ct.__version__}) cannot convert {', '.join(missing_ops)} in the stateful step"
        )
    target = ct.target.iOS18
    state_types = [
        ct.StateType(wrapped_type=ct.TensorType(shape=tuple(shape), dtype=np.float16), name=name)
        for name, (_, shape) in zip(wrapper.state_names(), states)
    ]
    inputs = [
        {"name": "frame", "shape": list(wrapper.frame_shape), "dtype": "FLOAT32"},
        {"name": "flush", "shape": [1], "dtype": "FLOAT32"},
    ]
    try:
        with _quiet():
            mlmodel = ct.convert(
                program,
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                inputs=[ct.TensorType(name=s["name"], shape=tuple(s["shape"]), dtype=np.float32) for s in inputs],
                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in wrapper.output_names],
                states=state_types,
                minimum_deployment_target=target,
                skip_model_load=True,
            )
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the converter raises many types
        raise UserError(
            f"Core ML could not convert the stateful step: {first_line(err)}",
            "run with --debug for the converter's trace",
        ) from err
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(out_path))
    (out_path / _DEBUG_HANDLE_MAP).unlink(missing_ok=True)
    _fix_package_manifest(out_path)

    with _quiet():
        spec = ct.models.MLModel(str(out_path), skip_model_load=True).get_spec()
    got_in = [_array(f.name, f.type.multiArrayType) for f in spec.description.input]
    got_out = [_array(f.name, f.type.multiArrayType) for f in spec.description.output]
    got_states = [_array(f.name, f.type.stateType.arrayType) for f in spec.description.state]
    want_states = [
        {"name": name, "shape": [int(d) for d in shape], "dtype": "FLOAT16"}
        for name, (_, shape) in zip(wrapper.state_names(), states)
    ]
    ops = _mil_operations(spec)
    hist: dict[str, int] = {}
    for op in ops:
        hist[op.type] = hist.get(op.type, 0) + 1
    fp16_compute = sum(
        1 for op in ops if op.type not in _STATE_OPS for o in op.outputs if o.type.tensorType.dataType == _MIL_FP16
    )
    written = _updated_states(ops)
    checks = {
        "spec_loads": bool(spec.WhichOneof("Type") == "mlProgram" and ops),
        "has_states": bool(got_states),
        "state_names_match": [s["name"] for s in got_states] == [s["name"] for s in want_states],
        "state_shapes_match": [s["shape"] for s in got_states] == [s["shape"] for s in want_states],
        "state_dtypes_fp16": bool(got_states) and all(s["dtype"] == "FLOAT16" for s in got_states),
        "every_state_updated": written == {s["name"] for s in want_states},
        "inputs_match": got_in == inputs,
        "no_state_inputs": not any(f["name"].startswith(STATE_PREFIX) for f in got_in),
        "outputs_match": [f["name"] for f in got_out] == wrapper.output_names,
        "no_state_outputs": not any(f["name"].startswith("next_") for f in got_out),
        "output_dtypes_fp32": all(f["dtype"] == "FLOAT32" for f in got_out),
        "deployment_target_matches": spec.specificationVersion == target.value,
        "precision_matches": (fp16_compute > 0) if precision == "fp16" else fp16_compute == 0,
    }
    problems = sorted(k for k, ok in checks.items() if not ok)
    if problems:
        log.warning("coreml stateful structural checks failed: %s", ", ".join(problems))
    details = {
        "checks": checks,
        "inputs": [f["name"] for f in got_in],
        "input_specs": got_in,
        "outputs": [f["name"] for f in got_out],
        "output_specs": got_out,
        "states": got_states,
        "state_keys": {STATE_PREFIX + io_name(k): k for k, _ in states},
        "deployment_target": DEPLOYMENT_TARGET,
        "specification_version": int(spec.specificationVersion),
        "compute_precision": precision,
        "state_dtype": "fp16 (the only dtype Core ML states take)",
        "graph_rewrites": rewritten,
        "mil_ops": sum(n for t, n in hist.items() if t != "const"),
        "mil_op_histogram": dict(sorted(hist.items())),
        "validated": "structurally (read back from the saved spec; Core ML predicts only on macOS)",
    }
    if problems:
        details["structural_problems"] = problems
    return details
