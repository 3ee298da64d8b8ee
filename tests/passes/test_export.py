"""Rewritten programs (new folded parameters, bias maps, lowered norms) still export and run.

``torch.export.save``/``load`` is covered by every pass test; this checks the other way weights
leave: ``torch.onnx.export(ep, dynamo=True)`` into ONNX Runtime.
"""

from __future__ import annotations

import pytest
from _helper import assert_close, randomize

from edgeformer.ir import export
from edgeformer.models import build_model, get_spec
from edgeformer.targets import get_target

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["poolformer_tiny", "efficientformer_tiny", "lmuformer_tiny"])
def test_rewritten_zoo_program_exports_to_onnx_and_matches_in_ort(name, tmp_path):
    import torch

    from edgeformer.targets.onnxruntime import export_onnx

    graph = export(randomize(build_model(name)), get_spec(name).example_inputs(), name=name)
    new, records = get_target("onnxruntime").pipeline.manager(check=False).run(graph)
    assert sum(r.params_folded for r in records) > 0
    export_onnx(new, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), graph.example_inputs)}
    got = [torch.from_numpy(o) for o in sess.run(None, feeds)]
    assert_close(graph.run(), got, 1e-4)  # ORT's own kernels differ from PyTorch's by ~1e-6
