"""The IR: export keeps high-level ops, save/load/hash, reference run, summary and MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeformer import ir
from edgeformer.errors import UserError


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 16)
        self.conv1d = nn.Conv1d(8, 6, 5, padding=2)

    def forward(self, x):
        x = self.bn(self.dw(self.conv(x)))
        x = x + (self.pool(x) - x)
        t = self.ln(x.flatten(2).transpose(1, 2))  # (1, 36, 8)
        q = self.fc(t).view(1, 36, 2, 8).transpose(1, 2)  # (1, 2, 36, 8)
        a = F.scaled_dot_product_attention(q, q, q)  # (1, 2, 36, 8)
        s = torch.bmm(t.transpose(1, 2), t)  # (1, 8, 8) with k = 36
        m = torch.matmul(a, a.transpose(-1, -2))  # (1, 2, 36, 36) with k = 8
        c = self.conv1d(t.transpose(1, 2))  # (1, 6, 36)
        return a.sum() + s.sum() + m.sum() + c.sum()


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return ir.export(Mixed(), (torch.randn(1, 4, 6, 6),), name="mixed")


def test_export_keeps_high_level_ops(graph):
    hist = graph.summary().histogram
    for op in (
        "aten.conv2d",
        "aten.batch_norm",
        "aten.avg_pool2d",
        "aten.layer_norm",
        "aten.linear",
        "aten.scaled_dot_product_attention",
        "aten.conv1d",
    ):
        assert hist.get(op, 0) >= 1, f"{op} was decomposed: {sorted(hist)}"


def test_export_puts_model_in_eval_mode():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9)).train()
    g = ir.export(m, (torch.ones(1, 4),))
    out1, out2 = g.run()[0], g.run()[0]
    assert torch.equal(out1, out2)
    assert torch.allclose(out1, m.eval()(torch.ones(1, 4)))


def test_summary_macs_match_hand_computed_values(graph):
    s = graph.summary()
    by_op = {}
    for n in s.nodes:
        by_op.setdefault(n.op, []).append(n.macs)
    assert by_op["aten.conv2d"] == [36 * 8 * 4 * 9, 36 * 8 * 1 * 9]  # dense, then depthwise (C_in/groups = 1)
    assert by_op["aten.linear"] == [36 * 16 * 8]
    assert by_op["aten.scaled_dot_product_attention"] == [2 * 36 * 36 * 8 * 2]  # q·kᵀ + attn·v
    assert by_op["aten.bmm"] == [8 * 8 * 36]
    assert by_op["aten.matmul"] == [2 * 36 * 36 * 8]
    assert by_op["aten.conv1d"] == [6 * 36 * 8 * 5]
    assert s.total_macs == sum(sum(v) for v in by_op.values())
    assert s.total_flops == 2 * s.total_macs


def test_summary_reports_shapes_parameters_and_sources(graph):
    s = graph.summary()
    assert s.parameters == sum(p.numel() for p in Mixed().parameters())
    conv = next(n for n in s.nodes if n.op == "aten.conv2d")
    assert conv.shape == [1, 8, 6, 6] and conv.source == "conv"
    assert s.inputs == [{"name": "x", "shape": [1, 4, 6, 6], "dtype": "float32"}]
    text = s.format()
    assert "aten.scaled_dot_product_attention" in text and "# op histogram" in text


def test_save_load_round_trip_keeps_hash_outputs_and_names(graph, tmp_path):
    path = graph.save(tmp_path / "m.pt2")
    loaded = ir.load(path)
    assert loaded.hash() == graph.hash()
    assert loaded.name == "mixed" and loaded.input_names == ("x",)
    torch.testing.assert_close(ir.run(loaded, graph.example_inputs), ir.run(graph, graph.example_inputs))


def test_hash_is_deterministic_and_changes_with_weights():
    def make(seed):
        torch.manual_seed(seed)
        return ir.export(nn.Linear(3, 2), (torch.ones(1, 3),))

    assert make(0).hash() == make(0).hash()
    assert make(0).hash() != make(1).hash()


def test_run_matches_eager():
    torch.manual_seed(0)
    m = Mixed().eval()
    x = torch.randn(1, 4, 6, 6)
    g = ir.export(m, (x,))
    torch.testing.assert_close(g.run([x])[0], m(x), atol=1e-6, rtol=0)


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ir.load(tmp_path / "nope.pt2")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a valid .pt2"):
        ir.load(bad)


def test_save_is_atomic_when_folder_missing(graph, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        graph.save(tmp_path / "missing" / "m.pt2")
    assert not (tmp_path / "missing").exists()


def test_dynamic_batch_export_accepts_other_batch_sizes():
    g = ir.export(nn.Linear(3, 2), (torch.ones(2, 3),), dynamic_batch=True)
    assert g.run([torch.ones(5, 3)])[0].shape == (5, 2)
