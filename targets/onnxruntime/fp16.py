"""fp16: the exported graph converted to float16 compute, its inputs and outputs left float32.

``onnxruntime.transformers.float16.convert_float_to_float16`` (ONNX Runtime's own converter) turns
every float tensor, initializer and ``Cast`` of the graph into float16 and, with
``keep_io_types=True``, puts a Cast after each graph input and before each output, so the
artifact takes and returns float32 as the manifest's I/O specs say.  Ops in ``OP_BLOCK_LIST``
stay float32 (the converter's default list: ML-domain and index-like ops).

Nothing else is blocked, on purpose: ONNX Runtime's CPU provider runs a node it has no fp16 kernel
for by casting around it (the casts are written into ``model.ort``), so blocking those ops here
would only make ``model.onnx`` fp32 for devices whose runtime does have fp16 kernels (arm64 builds
with NEON fp16).  What each file then computes in is read back from the files
(:mod:`.graph_facts`) and recorded in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path


def op_block_list() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(DEFAULT_OP_BLOCK_LIST)


def convert_to_fp16(path: Path) -> dict:
    """Rewrite the ONNX model at ``path`` in place to fp16 compute with fp32 I/O; what was done."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.ERROR)
    model = onnx.load(str(path), load_external_data=False)
    blocked = op_block_list()
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    onnx.save(converted, str(path))
    kept = sorted({n.op_type for n in converted.graph.node if n.op_type in blocked})
    return {
        "converter": f"onnxruntime.transformers.float16.convert_float_to_float16 (onnxruntime {ort.__version__})",
        "keep_io_types": True,
        "ops_kept_fp32": kept,  # op types of this graph the block list kept in fp32
    }
