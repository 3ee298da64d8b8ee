"""kv_downsample: keys and values average-pooled over their conv token grid, in both attention
forms, against the formula written out in torch; where it must not fire; the compile contract."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from _helper import tiny_graph
from torch import nn

from edgeformer.cli import main
from edgeformer.passes import PassManager
from edgeformer.passes.kv_downsample import window_counts

NAME = "kv_downsample"


class GridAttention(nn.Module):
    """conv patch embed (h×w grid) → [CLS] → one attention over the tokens → pooled logits.

    ``form`` "sdpa" calls F.scaled_dot_product_attention; "explicit" writes q·kᵀ·scale + bias →
    softmax → ·v with a learned (heads, N, N) bias, as EfficientFormer does."""

    def __init__(self, grid=(6, 6), cls=True, form="sdpa", dim=8, heads=2, **sdpa):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if cls else None
        self.qkv = nn.Linear(dim, 3 * dim)
        self.heads, self.form, self.sdpa = heads, form, sdpa
        n = grid[0] * grid[1] + (1 if cls else 0)
        self.bias = nn.Parameter(torch.randn(heads, n, n)) if form == "explicit" else None

    def tokens(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        return t

    def qkv_heads(self, x):
        t = self.tokens(x)
        b, n, c = t.shape
        return self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        q, k, v = self.qkv_heads(x)
        if self.form == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, **self.sdpa)
        else:
            attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + self.bias
            out = attn.softmax(-1) @ v
        return out.sum(dim=(1, 3))


def pooled_reference(model: GridAttention, x, grid, stride=2, proportional=True):
    """The approximation written out: CLS kept, grid tokens averaged in stride² windows (edge
    windows over what they hold), log(count) added to the pooled keys' scores."""
    q, k, v = model.qkv_heads(x)
    e = 1 if model.cls is not None else 0
    h, w = grid

    def pool(t):  # (b, heads, e + h·w, d) → (b, heads, e + h'·w', d)
        b, nh, _, d = t.shape
        g = t[:, :, e:].transpose(-1, -2).reshape(b * nh, d, h, w)
        p = F.avg_pool2d(g, stride, stride, ceil_mode=True, count_include_pad=False)
        p = p.reshape(b, nh, d, -1).transpose(-1, -2)
        return torch.cat([t[:, :, :e], p], 2)

    k2, v2 = pool(k), pool(v)
    scores = q @ k2.transpose(-2, -1) * q.shape[-1] ** -0.5
    if model.bias is not None:
        grid_bias = model.bias[..., e:].reshape(-1, 1, h, w)
        pooled = F.avg_pool2d(grid_bias, stride, stride, ceil_mode=True, count_include_pad=False)
        scores = scores + torch.cat([model.bias[..., :e], pooled.reshape(*model.bias.shape[:-1], -1)], -1)
    counts = window_counts(h, w, stride)
    if proportional and (e or not bool((counts == counts[0]).all())):
        scores = scores + torch.cat([torch.zeros(e), counts.log()])
    return (scores.softmax(-1) @ v2).sum(dim=(1, 3))


def run_pass(graph, **options):
    manager = PassManager([NAME], options={NAME: options}, check=True, explain=True)
    new, (record,) = manager.run(graph)
    return new, record


@pytest.mark.parametrize(
    ("form", "grid", "cls", "stride"),
    [
        ("sdpa", (6, 6), True, 2),  # ViT: CLS + a grid
        ("sdpa", (5, 7), False, 2),  # odd sides: edge windows hold fewer tokens
        ("explicit", (4, 4), False, 2),  # EfficientFormer: explicit form with a learned bias table
        ("explicit", (6, 6), True, 3),
    ],
)
def test_it_computes_pooled_attention_exactly_as_written_out(form, grid, cls, stride):
    model = GridAttention(grid=grid, cls=cls, form=form)
    shape = (1, 3, 2 * grid[0], 2 * grid[1])
    graph = tiny_graph(model, shape)
    new, rec = run_pass(graph, stride=stride)
    keys = grid[0] * grid[1] + cls
    pooled = cls + math.ceil(grid[0] / stride) * math.ceil(grid[1] / stride)
    (site,) = rec.details["sites"]
    assert rec.matched == 1 and site == {**site, "applied": True, "keys": keys, "new_keys": pooled}
    pools = [n for n in new.program.graph.nodes if "avg_pool2d" in str(n.target)]
    assert len(pools) == 1  # k and v are two slots of one qkv tensor: pooled once, together
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = new.program.module()(x)
        want = pooled_reference(model, x, grid, stride)
        exact = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - exact).abs().max() > 1e-4  # it is an approximation: the outputs moved


def test_without_proportional_the_pooled_keys_get_no_count_bias():
    model = GridAttention(grid=(6, 6), cls=True)
    graph = tiny_graph(model, (1, 3, 12, 12))
    new, _ = run_pass(graph, proportional=False)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            new.program.module()(x), pooled_reference(model, x, (6, 6), proportional=False), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (GridAttention(is_causal=True), "is_causal"),
        (GridAttention(grid=(1, 1), cls=True), "smaller than the stride"),
    ],
)
def test_it_does_not_fire_where_pooling_keys_changes_what_attention_means(model, reason):
    graph = tiny_graph(model, (1, 3, 2 * 6, 2 * 6) if reason == "is_causal" else (1, 3, 2, 2))
    new, rec = run_pass(graph)
    assert rec.matched == 0 and not rec.changed and new is graph
    assert any(reason in line for line in rec.details["explain"]), rec.details["explain"]


class BoolMasked(GridAttention):
    def forward(self, x):
        q, k, v = self.qkv_heads(x)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum(dim=(1, 3))


class Sequence(nn.Module):
    """Attention over a token sequence no conv made (a text or audio model): no grid to pool on."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_it_does_not_fire_on_a_boolean_mask_or_without_a_conv_grid():
    _, rec = run_pass(tiny_graph(BoolMasked(), (1, 3, 12, 12)))
    assert rec.matched == 0 and any("boolean attention mask" in line for line in rec.details["explain"])
    _, rec = run_pass(tiny_graph(Sequence(), (1, 16, 8)))
    assert rec.matched == 0 and any("no conv output grid" in line for line in rec.details["explain"]), rec.details
    _, rec = run_pass(tiny_graph(GridAttention(), (1, 3, 12, 12)), min_keys=64)
    assert rec.matched == 0 and any("min_keys 64" in line for line in rec.details["explain"])


def test_compile_runs_the_contract_with_the_exact_twin_as_reference(tmp_path, capsys):
    """vit_tiny on random weights, every site forced (min_share 0): the accuracy block says
    agreement is not meaningful, the error and speed gates run, each site records its share, its
    measured speed-up and its own error, and the pass options reach the pipeline."""
    out = tmp_path / "kv"
    argv = ["compile", "vit_tiny", "--passes", "+kv_downsample", "--pass-option", "kv_downsample.stride=4"]
    argv += ["--pass-option", "kv_downsample.min_share=0", "--min-speedup", "0", "-o", str(out), "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    a = manifest["approximation"]
    assert a["kind"] == "passes kv_downsample" and a["shipped"] == "approximate"
    assert a["accuracy"]["cosine"] is not None and a["gates"][0]["name"] == "error"
    assert any("random weights" in n for n in a["accuracy"]["notes"]), a["accuracy"]["notes"]
    assert a["speed"]["measured"] and a["speed"]["exact_median_ms"] > 0
    assert len(a["sites"]) == 3 and all(s["applied"] for s in a["sites"]), a["sites"]
    for site in a["sites"]:
        assert site["share_from"] == "profile" and 0 < site["share"] < 1, site
        assert site["measured_speedup"] > 0 and -1 <= site["cosine"] <= 1 and site["max_abs_error"] >= 0, site
    rec = next(p for p in manifest["passes"] if p["name"] == NAME)
    assert not rec["exact"] and rec["matched"] == 3
    assert {s["new_keys"] for s in rec["details"]["sites"]} == {1 + 16}  # 1 + 4x4 at stride 4
    assert manifest["numerics"]["atol"] is None  # bounded by the contract's gates, not fp32 [numerics]


def test_a_site_below_min_share_is_declined_and_the_exact_artifact_ships(tmp_path, capsys):
    """vit_tiny's attention is under 10 % of its ORT time per block: every site is declined with its
    share, and the exact artifact ships, saying so."""
    out = tmp_path / "kv"
    argv = ["compile", "vit_tiny", "--passes", "+kv_downsample", "--pass-option", "kv_downsample.min_share=0.5"]
    assert main([*argv, "-o", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    a = manifest["approximation"]
    assert a["shipped"] == "exact" and a["reason"].startswith("every attention site was declined"), a["reason"]
    assert len(a["sites"]) == 3 and not any(s["applied"] for s in a["sites"])
    assert all("< min_share 50%" in s["reason"] and s["share"] < 0.5 for s in a["sites"]), a["sites"]
    assert not any(p["name"] == NAME for p in manifest["passes"])  # the shipped artifact is the exact one


def test_the_site_driver_judges_the_chosen_sites_together():
    from edgeformer.sites import decide

    sites = [{"node": f"n{i}", "source": f"b{i}", "applied": True, "keys": 4, "new_keys": 1} for i in range(3)]
    shares = {"b0": 0.09, "b1": 0.15, "b2": 0.15}
    d = decide(NAME, sites, shares, "profile", min_share=0.10, min_speedup=1.1)
    assert [x.applied for x in d] == [False, True, True]
    assert "9.0% < min_share" in d[0].reason and "predicted 1.290x" in d[1].reason  # 1 / (1 - 2·0.15·0.75)
    d = decide(NAME, sites, shares, "profile", min_share=0.10, min_speedup=1.5)
    assert not any(x.applied for x in d) and "together predict 1.290x" in d[1].reason
    d = decide(NAME, sites, shares, "profile", min_share=0.10, min_speedup=0)
    assert all(x.applied for x in d) and d[0].reason == "forced (min_speedup = 0)"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pass-option", "kv_downsample.stride=4"], "not in the pipeline"),
        (["--passes", "+kv_downsample", "--pass-option", "kv_downsample.strid=4"], "strid"),
        (["--passes", "+kv_downsample", "--pass-option", "kv_downsample.stride=two"], "expects int"),
        (["--passes", "+kv_downsample", "--pass-option", "stride=2"], "PASS.KEY=VALUE"),
    ],
)
def test_bad_pass_options_are_one_line_and_exit_2(extra, message, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compile", "vit_tiny", *extra, "-o", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_on_trained_pvt_v2_tiny_the_contract_reports_the_true_accuracy_of_the_pooled_model(trained, tmp_path):
    """Trained pvt_v2_tiny, every site forced: the accuracy block's top-1 figures are those of the
    exact and the rewritten IR run in PyTorch on the 360 held-out images, and the pass keeps top-1
    agreement ≥ 95 % (its declared error on this model; 30 epochs: 353 → 351, 354/360 agree)."""
    from edgeformer.compiler import compile as compile_model
    from edgeformer.sources import load_model
    from edgeformer.training import digits_dataset

    weights = trained("pvt_v2_tiny")
    report = compile_model(
        "pvt_v2_tiny", "host-ort", tmp_path / "kv", weights=weights, passes="+kv_downsample",
        pass_options={NAME: {"min_share": 0}}, min_speedup=0, calib="digits", eval="digits",
        max_accuracy_drop=100,
    )  # fmt: skip
    block = report.manifest.approximation.accuracy
    graph = load_model("pvt_v2_tiny", weights=weights).graph
    pooled, _ = PassManager([NAME], check=False).run(graph)
    x, y = digits_dataset("pvt_v2_tiny", "test")
    with torch.no_grad():
        ref = torch.func.vmap(graph.program.module())(x.unsqueeze(1)).squeeze(1).argmax(-1)
        got = torch.func.vmap(pooled.program.module())(x.unsqueeze(1)).squeeze(1).argmax(-1)
    assert block["reference_top1"]["correct"] == int((ref == y).sum())
    assert block["approx_top1"]["correct"] == int((got == y).sum())
    assert block["agreement"]["count"] == int((got == ref).sum()) >= 0.95 * len(y), block["agreement"]
    matched = [s for s in report.manifest.approximation.sites if s["details"]["applied"]]
    assert len(matched) == 3 and all(s["applied"] and s["cosine"] is not None for s in matched)  # stage 4: 1x1
