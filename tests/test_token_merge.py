"""token_merge (ToMe): the matching and size-weighted merge against loops written out, token counts
per block, r = 0, the CLS token, the exported ops (scatter_add only), the host-ort compile checked
against the transformed PyTorch model, PVTv2's attention-only mode, and where it must decline."""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import ir
from edgeformer import token_merge as tm
from edgeformer.models import get_spec
from edgeformer.passes import PassManager, get_pass


def _zoo(name: str) -> nn.Module:
    torch.manual_seed(0)
    return get_spec(name).build().eval()


def _ops(graph: ir.Graph) -> Counter:
    return Counter(ir.op_name(n.target) for n in graph.program.graph.nodes if n.op == "call_function")


def _sdpa_keys(graph: ir.Graph) -> list[int]:
    """The key count of every SDPA in the exported graph, in order."""
    out = []
    for n in graph.program.graph.nodes:
        if n.op == "call_function" and "scaled_dot_product" in ir.op_name(n.target):
            out.append(int(n.args[1].meta["val"].shape[-2]))
    return out


def test_matching_merges_the_most_similar_pairs_by_size_weighted_average():
    """Against the algorithm written out: A = even, B = odd tokens after the prefix; each A picks its
    best B by cosine; the r best edges merge; dst = (Σ x·s) / Σ s; sizes add up."""
    torch.manual_seed(1)
    B, N, C, p, r = 2, 13, 5, 1, 4
    x, metric = torch.randn(B, N, C), torch.randn(B, N, 7)
    size = torch.rand(B, N, 1) + 0.5
    m = tm.bipartite_soft_matching(metric, r, p)
    merged, new_size = m.merge_wavg(x, size)
    assert merged.shape == (B, N - r, C) and new_size.shape == (B, N - r, 1)
    for b in range(B):
        rest = metric[b, p:] / metric[b, p:].norm(dim=-1, keepdim=True)
        a_idx, b_idx = list(range(0, N - p, 2)), list(range(1, N - p, 2))
        best = {i: max(b_idx, key=lambda j: float(rest[i] @ rest[j])) for i in a_idx}
        score = {i: float(rest[i] @ rest[best[i]]) for i in a_idx}
        merged_away = sorted(a_idx, key=lambda i: -score[i])[:r]
        kept = sorted(a_idx, key=lambda i: -score[i])[r:]
        xs, ss = x[b, p:] * size[b, p:], size[b, p:]
        want_rows = [x[b, :p]] + [x[b, p + i][None] for i in kept]
        want_sizes = [size[b, :p]] + [size[b, p + i][None] for i in kept]
        for j in b_idx:
            group = [j] + [i for i in merged_away if best[i] == j]
            s = sum(ss[k] for k in group)
            want_rows.append((sum(xs[k] for k in group) / s)[None])
            want_sizes.append(s[None])
        torch.testing.assert_close(merged[b], torch.cat(want_rows), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new_size[b], torch.cat(want_sizes), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_size.sum(1), size.sum(1))  # no token's weight is lost


def test_unmerge_gives_every_token_the_row_it_was_merged_into():
    torch.manual_seed(2)
    B, N, C, p, r = 2, 12, 3, 1, 4
    m = tm.bipartite_soft_matching(torch.randn(B, N, 4), r, p)
    y = torch.randn(B, N - r, C)
    full = m.unmerge(y)
    assert full.shape == (B, N, C)
    torch.testing.assert_close(full[:, :p], y[:, :p])
    # unmerge ∘ merge of a per-token label: each token lands in a row that holds its own label
    labels = torch.arange(N, dtype=torch.float32).expand(B, N)[..., None]
    one_hot = torch.nn.functional.one_hot(labels[..., 0].long(), N).float()
    back = m.unmerge(m.merge(one_hot))
    assert bool((back.gather(2, labels.long()) == 1).all())


def test_merging_removes_r_tokens_per_block_with_static_shapes():
    model = _zoo("vit_tiny")
    x = get_spec("vit_tiny").example_inputs()
    merged, report = tm.apply(copy.deepcopy(model), r=8, example_inputs=x)
    assert report["applied"] and report["mode"] == "block" and report["prefix_tokens"] == 1
    assert [(b["tokens_in"], b["tokens_out"]) for b in report["blocks"]] == [(257, 249), (249, 241), (241, 233)]
    assert (report["tokens_in"], report["tokens_out"]) == (257, 233)
    assert merged(*x).shape == model(*x).shape == (1, 10)
    graph = ir.export(merged, x)
    assert _sdpa_keys(graph) == [257, 249, 241]  # static: every shape is a constant of the graph
    assert all(isinstance(d, int) for t in graph.output_shapes() for d in t)
    # the state_dict is the original model's: same keys, same tensors
    assert list(merged.state_dict()) == list(model.state_dict())
    # r clips at half the mergeable tokens
    _, big = tm.apply(copy.deepcopy(model), r=200, example_inputs=x)
    assert [b["r"] for b in big["blocks"] if b["status"] == "merged"] == [128, 64, 32]


def test_r_zero_is_the_original_model_and_an_unmerging_wrapper_is_exact():
    model = _zoo("vit_tiny")
    x = torch.randn(2, 3, 32, 32)
    same, report = tm.apply(copy.deepcopy(model), r=0)
    assert not report["applied"] and report["reason"] == "r = 0: nothing to merge"
    torch.testing.assert_close(same(x), model(x), rtol=0, atol=1e-6)
    # the wrapper's own attention (fused qkv, SDPA, proportional mask) at r = 0 is the block's
    wrapped = copy.deepcopy(model)
    state = tm._State()
    n = len(wrapped.blocks)
    for i in range(n):
        wrapped.blocks[i] = tm.TokenMergeBlock(wrapped.blocks[i], 0, 1, state, first=i == 0, last=i == n - 1)
    torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=1e-6)


def test_the_cls_token_is_never_merged():
    """A CLS token identical to a patch token (the most similar pair there is) stays first, alone."""
    torch.manual_seed(3)
    B, N, C = 1, 9, 4
    metric = torch.randn(B, N, C)
    metric[:, 0] = metric[:, 2]  # CLS == an A token: the best match if it were allowed
    x = torch.randn(B, N, C)
    for r in (1, 2, 4):
        m = tm.bipartite_soft_matching(metric, r, prefix=1)
        merged, size = m.merge_wavg(x, None)
        assert torch.equal(merged[:, 0], x[:, 0]) and float(size[0, 0, 0]) == 1.0
    model = _zoo("vit_tiny")
    merged_model, report = tm.apply(copy.deepcopy(model), r=16, example_inputs=(torch.randn(1, 3, 32, 32),))
    assert report["prefix_tokens"] == 1
    # the head reads token 0, which is still the CLS token: the output is the CLS head's
    feats = merged_model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 257 - 3 * 16, 48)


def test_the_exported_graph_scatters_with_add_only():
    model, x = _zoo("vit_tiny"), get_spec("vit_tiny").example_inputs()
    merged, _ = tm.apply(copy.deepcopy(model), r=4, example_inputs=x)
    ops = _ops(ir.export(merged, x))
    assert ops["aten.scatter_add"] == 6, ops  # x·s and s, once per block
    assert not [op for op in ops if "scatter_reduce" in op or "index_reduce" in op or op == "aten.scatter"]
    pvt, px = _zoo("pvt_v2_tiny"), get_spec("pvt_v2_tiny").example_inputs()
    ops = _ops(ir.export(tm.apply(copy.deepcopy(pvt), r=4, example_inputs=px)[0], px))
    assert ops["aten.scatter_add"] and not [op for op in ops if "reduce" in op and "scatter" in op]


def test_pvt_v2_attention_only_mode_keeps_n_at_every_block_boundary():
    model, x = _zoo("pvt_v2_tiny"), get_spec("pvt_v2_tiny").example_inputs()
    merged, report = tm.apply(copy.deepcopy(model), r=4, example_inputs=x)
    assert report["applied"] and report["mode"] == "attention" and report["prefix_tokens"] == 0
    rows = {b["block"]: b for b in report["blocks"]}
    assert rows["block1.0"]["tokens_in"] == rows["block1.0"]["tokens_out"] == 64
    assert rows["block1.0"]["attention_tokens"] == 60 and rows["block3.0"]["attention_tokens"] == 2
    assert rows["block4.0"]["status"] == "declined" and "too few" in rows["block4.0"]["reason"]
    seen = []
    hooks = [
        blk.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape, out.shape)))
        for name, blk in merged.named_modules()
        if isinstance(blk, tm.TokenMergeAttentionBlock)
    ]
    y = merged(*x)
    for h in hooks:
        h.remove()
    assert y.shape == model(*x).shape and len(seen) == 4 and all(a == b for a, b in seen)
    # the keys of the stage-1 attention come from the full 8×8 grid (sr 2: 16 keys); queries merged
    graph = ir.export(merged, x)
    q_rows = [int(n.args[0].meta["val"].shape[-2]) for n in graph.program.graph.nodes if n.op == "call_function"
              and "scaled_dot_product" in ir.op_name(n.target)]  # fmt: skip
    assert _sdpa_keys(graph) == [16, 12, 2, 1] and q_rows == [60, 12, 2, 1]
    # a ViT in attention mode keeps its 257 tokens too
    vit, vx = _zoo("vit_tiny"), get_spec("vit_tiny").example_inputs()
    _, vrep = tm.apply(copy.deepcopy(vit), r=8, mode="attention", example_inputs=vx)
    assert [(b["tokens_in"], b["tokens_out"], b["attention_tokens"]) for b in vrep["blocks"]] == [(257, 257, 249)] * 3


class PlainCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class OddBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y)[0]
        return x + self.mlp(self.norm2(x))


class OddTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([OddBlock(), OddBlock()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_it_declines_with_a_reason_where_it_cannot_apply():
    _, rep = tm.apply(PlainCnn(), r=4)
    assert not rep["applied"] and "no list of attention blocks" in rep["reason"]
    _, rep = tm.apply(OddTransformer(), r=4)
    assert not rep["applied"] and "neither softmax attention with a fused qkv" in rep["reason"], rep["reason"]
    _, rep = tm.apply(_zoo("pvt_v2_tiny"), r=4, mode="block")
    assert not rep["applied"] and "4 block lists" in rep["reason"] and "mode=attention" in rep["reason"]
    vit = _zoo("vit_tiny")
    _, rep = tm.apply(vit, r=4, mode="block", prefix_tokens=0)
    assert not rep["applied"] and "class token" in rep["reason"]
    assert not any(isinstance(b, tm.TokenMergeBlock) for b in vit.blocks)  # declined: nothing changed
    with pytest.raises(ValueError, match="mode"):
        tm.apply(_zoo("vit_tiny"), r=4, mode="everywhere")


def test_the_pass_declines_without_a_module_and_on_a_cnn(tmp_path):
    from edgeformer.compiler import plan, rewrite

    graph = ir.export(_zoo("vit_tiny"), get_spec("vit_tiny").example_inputs())  # no compiler hook: a .pt2
    out, records = PassManager(["token_merge"], options={"token_merge": {"r": 4}}).run(graph)
    assert out is graph and not records[0].changed and "carries none" in records[0].details["reason"]
    p = plan(PlainCnn(), "host-ort", input_shapes=[(1, 3, 8, 8)], passes="+token_merge")
    assert p.pipeline.names[0] == "token_merge"  # a model transform runs first
    rec = rewrite(p).records[0]
    assert rec.name == "token_merge" and not rec.changed and "no list of attention blocks" in rec.details["reason"]
    with pytest.raises(Exception, match="mode"):
        get_pass("token_merge")(mode="everywhere")


def test_compile_on_host_ort_matches_the_transformed_pytorch_model(tmp_path):
    """compile(passes="+token_merge", r = 2): the contract runs against the exact twin, the record
    says what merged, the cache key follows r, and the ONNX model computes the merged PyTorch model."""
    import onnxruntime as ort

    from edgeformer.compiler import compile as compile_model
    from edgeformer.compiler import plan
    from edgeformer.sources import load_model

    out = tmp_path / "tome"
    rep = compile_model(
        "vit_tiny", "host-ort", out, passes="+token_merge", pass_options={"token_merge": {"r": 2}}, min_speedup=0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["approximation"]["kind"] == "passes token_merge"
    assert manifest["approximation"]["shipped"] == "approximate", manifest["approximation"]["reason"]
    rec = next(p for p in manifest["passes"] if p["name"] == "token_merge")
    assert rec["changed"] and rec["matched"] == 3 and rec["details"]["tokens_out"] == 257 - 3 * 2
    assert rec["op_delta"]["aten.scatter_add"] == 6 and not rep.cached

    source = load_model("vit_tiny")  # the same seeded build the compile exported
    merged, _ = tm.apply(copy.deepcopy(source.module), r=2)
    x = source.graph.example_inputs
    with torch.no_grad():
        want = merged(*x).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[0].numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the exact model differs (tokens were merged), and r is in the cache key
    with torch.no_grad():
        assert not np.allclose(source.module(*x).numpy(), want, atol=1e-7)
    keys = {r: plan("vit_tiny", "host-ort", passes="+token_merge", pass_options={"token_merge": {"r": r}}).cache_key
            for r in (2, 4)}  # fmt: skip
    assert keys[2] != keys[4]


def test_the_cli_reaches_it_with_pass_options(user_models, capsys):
    """``--passes +token_merge --pass-option token_merge.r=8`` on a CNN (conftest's mymodels:tiny):
    the compile does not crash; nothing was merged, so the exact artifact ships and says why."""
    from edgeformer.cli import main

    out = user_models / "cnn"
    argv = ["compile", "mymodels:tiny", "--input-shape", "1x3x8x8", "--passes", "+token_merge"]
    argv += ["--pass-option", "token_merge.r=8", "--pass-option", "token_merge.mode=attention", "-o", str(out)]
    assert main([*argv, "--force-approx", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    a = manifest["approximation"]
    assert a["kind"] == "passes token_merge" and a["shipped"] == "exact"
    assert (
        a["reason"].startswith("nothing was approximated (token_merge:")
        and "no list of attention blocks" in a["reason"]
    )


def test_on_trained_models_merging_keeps_top1_agreement_on_held_out_digits(trained):
    """Trained vit_tiny (8 epochs, block mode, r = 16: 257 → 209 tokens) and pvt_v2_tiny (8 epochs,
    attention-only mode, r = 8): top-1 agreement with the exact model on the 360 held-out images
    ≥ 97 % (measured 360/360 on vit_tiny)."""
    from edgeformer.compiler import plan
    from edgeformer.data import digits_dataset

    for name, options in (("vit_tiny", {"r": 16}), ("pvt_v2_tiny", {"r": 8})):
        p = plan(name, "host-ort", weights=trained(name), passes="+token_merge", pass_options={"token_merge": options})
        merged, records = p.pipeline.manager(check=False).run(p.graph)
        rec = next(r for r in records if r.name == "token_merge")
        assert rec.changed, rec.details
        x, y = digits_dataset(name, "test")
        with torch.no_grad():
            ref = torch.func.vmap(p.graph.program.module())(x.unsqueeze(1)).squeeze(1).argmax(-1)
            got = torch.func.vmap(merged.program.module())(x.unsqueeze(1)).squeeze(1).argmax(-1)
        assert int((got == ref).sum()) >= 0.97 * len(y), (name, int((got == ref).sum()))
