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


# --------------------------------------------------------------- issue 11: loading, hashing, I/O


def _flip_bytes_in_entry(path, entry_part="/weights/weight_", n=64):
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if entry_part in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))
    return info.filename


def test_load_verifies_the_archive_crcs_and_names_the_entry(graph, tmp_path):
    path = graph.save(tmp_path / "m.pt2")
    entry = _flip_bytes_in_entry(path)
    with pytest.raises(UserError) as e:
        ir.load(path)
    assert entry in str(e.value) and "CRC" in str(e.value) and "edgeformer export" in str(e.value)


def test_hash_is_the_same_for_a_zoo_model_exported_now_and_saved_and_loaded(tmp_path):
    from edgeformer.sources import load_model

    graph = load_model("efficientformer_tiny").graph
    loaded = ir.load(graph.save(tmp_path / "e.pt2"))
    assert loaded.hash() == graph.hash()
    assert ir.load(loaded.save(tmp_path / "again.pt2")).hash() == graph.hash()


def test_hash_ignores_where_the_code_lives(tmp_path, monkeypatch):
    """The same module file in two folders: stack traces and file paths differ, the hash does not."""
    import sys

    from edgeformer.sources import load_model

    source = (
        "import torch\nfrom torch import nn\n\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(3, 4)\n\n"
        "    def forward(self, x):\n        return torch.nn.functional.gelu(self.fc(x))\n\n"
        "def make():\n    return M()\n"
    )
    hashes, traces = [], []
    for folder in (tmp_path / "a", tmp_path / "b" / "deeper"):
        folder.mkdir(parents=True)
        (folder / "moved_model.py").write_text("\n\n" * len(hashes) + source)  # other line numbers too
        monkeypatch.chdir(folder)
        monkeypatch.syspath_prepend(str(folder))
        sys.modules.pop("moved_model", None)
        g = load_model("moved_model:make", input_shapes=[(1, 3)]).graph
        hashes.append(g.hash())
        traces.append("".join(n.meta.get("stack_trace") or "" for n in g.program.graph.nodes))
    sys.modules.pop("moved_model", None)
    assert str(tmp_path / "a") in traces[0] and str(tmp_path / "b") in traces[1]  # they really differ
    assert hashes[0] == hashes[1]


def test_hash_changes_when_one_weight_changes(graph, tmp_path):
    path = graph.save(tmp_path / "m.pt2")
    a, b = ir.load(path), ir.load(path)
    assert a.hash() == b.hash() == graph.hash()
    name = next(iter(b.program.graph_signature.parameters))
    with torch.no_grad():
        b.program.state_dict[name].view(-1)[0] += 1e-3
    assert ir.Graph(b.program, b.name).hash() != a.hash()


def test_dict_and_namedtuple_outputs_keep_their_names(tmp_path):
    import collections

    Pair = collections.namedtuple("Pair", "mean spread")

    class Dict(nn.Module):
        def forward(self, x):
            return {"logits": x * 2, "features": x + 1}

    class Named(nn.Module):
        def forward(self, x):
            return Pair(x.mean(1), x.std(1))

    d = ir.export(Dict(), (torch.ones(1, 3),))
    assert d.output_names == ("logits", "features")
    assert ir.load(d.save(tmp_path / "d.pt2")).output_names == ("logits", "features")
    n = ir.export(Named(), (torch.ones(2, 3),))
    assert n.output_names == ("mean", "spread")
    assert [o["name"] for o in n.summary().outputs] == ["mean", "spread"]
    loaded = ir.load(n.save(tmp_path / "n.pt2"))  # a namedtuple output must not break .pt2 saving
    assert loaded.output_names == ("mean", "spread") and loaded.hash() == n.hash()
    torch.testing.assert_close(loaded.run(), [torch.full((2,), 1.0), torch.zeros(2)])


def test_dynamic_batch_macs_are_per_sample_and_the_batch_dim_is_named(tmp_path):
    torch.manual_seed(0)
    static = ir.export(nn.Linear(3, 2), (torch.ones(1, 3),))
    dyn = ir.export(nn.Linear(3, 2), (torch.ones(4, 3),), dynamic_batch=True)
    s = dyn.summary()
    assert s.total_macs == static.summary().total_macs == 6
    assert s.inputs[0]["shape"] == [-1, 3] and s.dynamic_dims == {"input": {0: "batch"}}
    assert "per sample" in s.format() and "float32[batch, 3]" in s.format()
    assert dyn.dynamic_shapes() == ({0: "batch"},) and static.dynamic_shapes() is None
    assert dyn.input_shapes() == [[-1, 3]] and dyn.output_shapes() == [[-1, 2]]
    loaded = ir.load(dyn.save(tmp_path / "d.pt2"))
    assert loaded.dynamic_shapes() == ({0: "batch"},) and loaded.hash() == dyn.hash()
    assert loaded.replace(loaded.program).dynamic_shapes() == ({0: "batch"},)


def test_export_save_load_and_run_are_quiet(tmp_path, capfd):
    import warnings

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return {"y": self.fc(x)}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = ir.export(Dict(), (torch.ones(2, 3),), dynamic_batch=True)
        loaded = ir.load(g.save(tmp_path / "q.pt2"))
        loaded.run()
        loaded.hash()
        zip_path = tmp_path / "notes.pt2"
        import zipfile

        with zipfile.ZipFile(zip_path, "w") as z:
            z.writestr("hello.txt", "hi")
        with pytest.raises(UserError, match="not a .pt2"):
            ir.load(zip_path)
    assert [str(w.message) for w in caught] == []
    err = capfd.readouterr().err
    assert err == "", err  # torch logs its deserialization traceback to stderr otherwise
