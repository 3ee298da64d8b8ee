"""ONNX Runtime target: whole-sample norms run on ORT's blocked (NCHWc) tensors (targets/onnxruntime/blocked.py)."""

from __future__ import annotations

import collections
import platform

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeformer.ir import export
from edgeformer.passes import PassManager
from edgeformer.targets.onnxruntime import export_onnx, optimize_for_host
from edgeformer.targets.onnxruntime.blocked import run_norms_blocked
from edgeformer.targets.onnxruntime.optimize import _ort_subprocess

# ORT writes NCHWc nodes only where MLAS has blocked kernels (x86-64 with AVX2 or AVX-512).
pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="NCHWc needs x86-64")


class NormNet(nn.Module):
    """conv → GN(1, C) → 1x1 conv (+ residual) → GN(1, C) → conv …, then a final GN → mean → head."""

    def __init__(self, ch: int):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.n1, self.n2, self.n3 = (nn.GroupNorm(1, ch, affine=False) for _ in range(3))
        self.fc1, self.fc2 = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)
        self.head = nn.Linear(ch, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.fc1(self.n1(x))
        x = x + self.fc2(torch.relu(self.n2(x)))
        return self.head(self.n3(x).mean((2, 3)))


def _onnx(tmp_path, ch: int):
    torch.manual_seed(0)
    model = NormNet(ch).eval()
    x = torch.randn(1, 3, 12, 12) * 3 + 1
    graph = export(model, (x,), name=f"normnet{ch}")
    graph, _ = PassManager(["lower_group_norm"], options={"lower_group_norm": {"form": "instance_norm"}}).run(graph)
    src = tmp_path / "model.onnx"
    export_onnx(graph, src)
    return src, x.numpy()


def _ops(path):
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_norms_run_on_blocked_tensors_when_channels_fill_whole_blocks(tmp_path):
    src, x = _onnx(tmp_path, 32)
    plain, ours = tmp_path / "plain.onnx", tmp_path / "ours.onnx"
    _ort_subprocess(src, plain, "all", "ONNX")  # what ORT alone makes of it
    report = optimize_for_host(src, ours, "all", fmt="ONNX")

    before, after = _ops(plain), _ops(ours)
    assert before["ReorderOutput"] == 3 and before["ReorderInput"] == 2, before  # ORT blocked the convs
    # n1 feeds fc1 directly and n2 through a ReLU: both now read and write blocked buffers.
    # n3 feeds a ReduceMean in NCHW, so it keeps its reorder and is reported as rejected.
    assert report["norms_on_blocked_layout"] == 2
    assert report["reorders_removed"] == 4
    assert after["ReorderInput"] == 0 and after["ReorderOutput"] == 1
    assert after["InstanceNormalization"] == after["Relu"] + 2 == 3
    assert list(report["rejected"].values()) == [
        "its output does not go back to the blocked layout through one Reshape → ReorderInput"
    ]
    got, want = _run(ours, x), _run(src, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_nothing_changes_when_channels_do_not_fill_blocks(tmp_path):
    src, x = _onnx(tmp_path, 24)  # 24 channels: padded blocks, ORT keeps these convs in NCHW
    ours = tmp_path / "ours.onnx"
    report = optimize_for_host(src, ours, "all", fmt="ONNX")
    assert report["norms_on_blocked_layout"] == 0 and report["reorders_removed"] == 0
    np.testing.assert_allclose(_run(ours, x), _run(src, x), atol=1e-6, rtol=0)


def test_padded_channel_blocks_are_refused(tmp_path):
    """The channel check itself: a blocked tensor whose C is not a multiple of 16 is left alone."""
    src, _ = _onnx(tmp_path, 32)
    plain = tmp_path / "plain.onnx"
    _ort_subprocess(src, plain, "all", "ONNX")
    model = onnx.load(str(plain))
    for node in model.graph.node:
        if node.op_type == "ReorderOutput":
            for a in node.attribute:
                if a.name == "channels":
                    a.i = 24
    report = run_norms_blocked(model)
    assert report.rewritten == []
    assert any("not a multiple of 16" in why for why in report.rejected.values())


def test_norm_whose_flattened_input_has_another_user_is_refused(tmp_path):
    """That user reads NCHW order; handing it the blocked buffer would permute its values."""
    src, _ = _onnx(tmp_path, 32)
    plain = tmp_path / "plain.onnx"
    _ort_subprocess(src, plain, "all", "ONNX")
    model = onnx.load(str(plain))
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    flat = norms[0].input[0]
    model.graph.node.append(onnx.helper.make_node("Identity", [flat], ["flat_copy"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info("flat_copy", onnx.TensorProto.FLOAT, None))
    report = run_norms_blocked(model)
    assert len(report.rewritten) == 1  # only n2 now
    assert "users besides the norm" in report.rejected[norms[0].name]


def test_other_levels_leave_ort_graph_as_is(tmp_path):
    src, _ = _onnx(tmp_path, 32)
    assert optimize_for_host(src, tmp_path / "m.ort", "extended") == {}
    assert (tmp_path / "m.ort").is_file()


def test_host_ort_compile_of_poolformer_runs_its_norms_blocked_and_passes_numerics(tmp_path):
    from edgeformer import compile

    report = compile("poolformer_tiny", "host-ort", tmp_path / "pf")
    m = report.manifest
    layout = m.target_details["ort_blocked_layout"]
    # 11 GroupNorms: every block's two feed blocked convs; the final one feeds the head's mean.
    assert layout["norms_on_blocked_layout"] == 10 and layout["reorders_removed"] == 20
    assert len(layout["rejected"]) == 1
    assert m.numerics.status == "passed" and m.numerics.max_abs_error <= 1e-5
