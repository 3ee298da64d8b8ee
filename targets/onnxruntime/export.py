"""IR → ONNX with the dynamo exporter (``torch.onnx.export(ep, dynamo=True)``).

An op the exporter has no conversion for becomes one :class:`~edgeformer.errors.UnsupportedOpError`
naming the op and where it sits in the model, through the helper every target shares.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edgeformer.errors import UserError, first_line

from .._support import unsupported_op_error

# "No ONNX function found for <OpOverload(op='prims.lgamma', ...)>", or aten::x / aten.x.default
_OP = re.compile(r"OpOverload\(op='([\w.]+)'|(aten[.:]{1,2}[\w.]+|[\w]+::[\w.]+)")
_UNSUPPORTED = ("No decomposition", "not supported", "Unsupported", "DispatchError", "registered")


def export_onnx(graph, path: Path, *, opset: int | None = None) -> None:
    """Write ``graph`` as ONNX to ``path``; unsupported ops become one clear UserError."""
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    kwargs = {"opset_version": opset} if opset else {}
    try:
        program = torch.onnx.export(
            graph.program,
            tuple(graph.example_inputs),
            dynamo=True,
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            optimize=True,
            verbose=False,
            report=False,
            **kwargs,
        )
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; translate them
        op = unsupported_op(str(err))
        if op:
            raise unsupported_op_error(
                graph,
                "ONNX export",
                [op],
                "rewrite that part of the model, or pick a target that supports it (see `edgeformer targets`)",
            ) from err
        raise UserError(f"ONNX export failed: {first_line(err)}", "run with --debug for the exporter's trace") from err
    program.save(str(path), external_data=False)


def unsupported_op(msg: str) -> str | None:
    """The op an exporter message says has no conversion (``aten.lgamma.default``), else None."""
    m = _OP.search(msg)
    if m and (any(word in msg for word in _UNSUPPORTED) or "no onnx" in msg.lower()):
        return (m.group(1) or m.group(2)).replace("::", ".")
    return None
