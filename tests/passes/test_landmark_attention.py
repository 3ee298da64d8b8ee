"""landmark_attention: Nyström attention over grid-window (or segment) landmarks, in both attention
forms, against the formula written out in torch; the landmark count tuned on the data it is given;
where it must not fire; ONNX Runtime runs what it emits; the compile contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeformer.cli import main
from edgeformer.ir import export
from edgeformer.passes import PassManager
from edgeformer.passes.landmark_attention import CANDIDATES, LandmarkAttention, grid_layout

NAME = "landmark_attention"


class GridAttention(nn.Module):
    """1×1 conv (makes the h×w token grid) → [CLS] → one attention over the tokens; returns the
    attention output itself (b, N, c), so the model's relative error is the node's.

    ``form`` "sdpa" calls F.scaled_dot_product_attention; "explicit" writes q·kᵀ·scale [+ bias] →
    softmax → ·v.  Small q/k weights keep the attention soft, as Nyström needs."""

    def __init__(self, cls=False, form="sdpa", dim=64, heads=2, grid=(16, 16), bias=False, qk_gain=1.0, **sdpa):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.embed = nn.Conv2d(3, dim, 1)
        self.cls = nn.Parameter(torch.randn(1, 1, dim, generator=g)) if cls else None
        self.qkv = nn.Linear(dim, 3 * dim)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.randn(3 * dim, dim, generator=g) * dim**-0.5)
            self.qkv.weight[: 2 * dim] *= qk_gain
        self.heads, self.form, self.sdpa = heads, form, sdpa
        n = grid[0] * grid[1] + (1 if cls else 0)
        self.bias = nn.Parameter(torch.randn(heads, n, n, generator=g)) if bias else None

    def qkv_heads(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        b, n, c = t.shape
        return self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        q, k, v = self.qkv_heads(x)
        if self.form == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, **self.sdpa)
        else:
            attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if self.bias is not None:
                attn = attn + self.bias
            out = attn.softmax(-1) @ v
        return out.transpose(1, 2).flatten(2)


def smooth_images(n, grid=(16, 16), seed=0):
    """Low-frequency images: neighbouring tokens are alike, so window means are good landmarks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, grid[0]), torch.linspace(0, 1, grid[1]), indexing="ij")
    out = []
    for _ in range(n):
        f = torch.rand(3, 2, generator=g) * 4
        p = torch.rand(3, 1, 1, generator=g) * 6
        out.append(torch.sin(f[:, :1, None] * xx + p) + torch.cos(f[:, 1:, None] * yy - p))
    return torch.stack(out)


def graph_of(model, grid=(16, 16)):
    return export(model.eval(), (smooth_images(1, grid),))


def run_pass(graph, data=None, dry_run=False, **options):
    manager = PassManager(
        [NAME], options={NAME: options}, check=True, explain=True, data=data, data_origin="smooth", dry_run=dry_run
    )
    new, (record,) = manager.run(graph)
    return new, record


def nystrom_reference(model: GridAttention, x, grid, sh, sw, iters=6):
    """The approximation written out independently: window-mean landmarks (CLS its own), the
    Newton–Schulz pseudo-inverse, CLS query rows exact."""
    q, k, v = model.qkv_heads(x)
    e = 1 if model.cls is not None else 0
    h, w = grid
    s = q.shape[-1] ** -0.5

    def pool(t):
        b, nh, _, d = t.shape
        g = t[:, :, e:].transpose(-1, -2).reshape(b * nh, d, h, w)
        p = F.avg_pool2d(g, (sh, sw), (sh, sw), ceil_mode=True, count_include_pad=False)
        return torch.cat([t[:, :, :e], p.reshape(b, nh, d, -1).transpose(-1, -2)], 2)

    ql, kl = pool(q), pool(k)
    a = (ql @ kl.transpose(-1, -2) * s).softmax(-1)
    z = a.transpose(-1, -2) / a.sum(-2).amax(-1)[..., None, None]
    eye = torch.eye(a.shape[-1])
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    approx = (q[:, :, e:] @ kl.transpose(-1, -2) * s).softmax(-1) @ (
        z @ ((ql @ k.transpose(-1, -2) * s).softmax(-1) @ v)
    )
    out = torch.cat([F.scaled_dot_product_attention(q[:, :, :e], k, v), approx], 2)
    return out.transpose(1, 2).flatten(2)


def rel_error(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize(("form", "cls"), [("sdpa", False), ("sdpa", True), ("explicit", False), ("explicit", True)])
def test_it_computes_nystrom_attention_as_written_out_and_close_to_exact(form, cls):
    model = GridAttention(cls=cls, form=form)
    graph = graph_of(model)
    new, rec = run_pass(graph, landmarks=16)
    (site,) = rec.details["sites"]
    assert rec.matched == 1 and site["applied"], rec.details["explain"]
    assert site == {**site, "queries": 256 + cls, "keys": 256 + cls, "landmarks": 16 + cls, "extra": int(cls)}
    assert "4x4 windows of 4x4 over the 16x16 grid" in site["layout"]
    ops = [str(n.target) for n in new.program.graph.nodes if n.op == "call_function"]
    assert sum("avg_pool2d" in o for o in ops) == 2 and not any("linalg" in o for o in ops)
    sdpas = sum("scaled_dot_product" in o for o in ops)
    assert sdpas == ((2 + cls) if form == "sdpa" else 0)  # the explicit form stays explicit
    for x in (graph.example_inputs[0], smooth_images(1, seed=3)):
        with torch.no_grad():
            got, exact = new.program.module()(x), model(x)
            want = nystrom_reference(model, x, (16, 16), 4, 4)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert F.cosine_similarity(got.flatten(), exact.flatten(), dim=0) >= 0.99
        assert 1e-4 < rel_error(got, exact) < 0.1  # an approximation, and a good one on smooth inputs
        if cls:
            torch.testing.assert_close(got[:, 0], exact[:, 0], atol=1e-5, rtol=1e-5)  # CLS rows stay exact
    with torch.no_grad():  # the reported error is the node's, on the data it was given
        x = graph.example_inputs[0]
        assert site["error"] == pytest.approx(rel_error(new.program.module()(x), model(x)), rel=1e-3, abs=1e-6)
    assert site["measured_on"] == rec.details["data"] == "the example inputs (random)"  # no data given


def test_without_a_grid_the_landmarks_are_segment_means():
    class Sequence(nn.Module):
        def forward(self, x):  # (1, 2, 512, 8) tokens no conv made
            return F.scaled_dot_product_attention(x, x * 0.5, x)

    t = torch.linspace(0, 6, 512)
    x = torch.stack([torch.sin(t * (i + 1) / 4) for i in range(16)], -1).reshape(1, 2, 512, 8)
    graph = export(Sequence().eval(), (x,))
    new, rec = run_pass(graph, landmarks=32)
    (site,) = rec.details["sites"]
    assert site["applied"] and site["layout"] == "32 segments" and site["landmarks"] == 32
    with torch.no_grad():
        got, exact = new.program.module()(x), Sequence()(x)
    assert F.cosine_similarity(got.flatten(), exact.flatten(), dim=0) >= 0.99
    assert site["error"] == pytest.approx(rel_error(got, exact), rel=1e-3)
    _, rec = run_pass(graph, landmarks=48)  # 512 tokens do not split into 48 segments
    assert rec.matched == 0 and any("divide into none of [48]" in ln for ln in rec.details["explain"])


def test_the_landmark_count_is_tuned_on_the_data():
    """landmarks 0: every candidate's error is measured on the data; the smallest within max_error
    is kept, else the smallest within 10 % of the best error; more landmarks are more accurate here."""
    model = GridAttention(cls=True)
    graph = graph_of(model)
    data = [(x[None],) for x in smooth_images(4, seed=7)]
    _, rec = run_pass(graph, data=data)
    (site,) = rec.details["sites"]
    errors = {int(m): e for m, e in site["errors"].items()}
    assert sorted(errors) == [16, 36]  # 16 (4x4 windows), 32 (3x3 windows: 36); 1 + 64 > 257 // 4
    assert errors[36] < errors[16]
    ok = [m for m, e in errors.items() if e <= max(0.05, 1.1 * min(errors.values()))]
    assert site["landmarks"] == 1 + min(ok)
    _, rec = run_pass(graph, data=data, max_error=0.0)  # none is good enough: the fewest near the best
    (site,) = rec.details["sites"]
    assert errors[36] < errors[16] / 1.1 and site["landmarks"] == 1 + 36
    assert site["error"] == pytest.approx(errors[36], abs=1e-6)


def test_the_drivers_dry_run_reports_a_provisional_count_without_measuring():
    _, rec = run_pass(graph_of(GridAttention(grid=(32, 32)), (32, 32)), dry_run=True)
    (site,) = rec.details["sites"]
    assert site["applied"] and site["landmarks"] == 64 and site["error"] is None
    assert "not measured" in site["measured_on"]
    assert LandmarkAttention.predicted_speedup(site) > 1


def test_predicted_speedup_counts_the_attention_products():
    site = {"queries": 4096, "keys": 4096, "features": 64, "value_features": 64, "landmarks": 64, "extra": 0}
    g = LandmarkAttention.predicted_speedup({**site, "pinv_iters": 6})
    exact = 4096 * 4096 * 128
    nys = 64 * 4096 * 128 * 2 + 64 * 64 * 128 + 6 * 4 * 64**3
    assert g == pytest.approx(exact / nys) and g > 20
    assert grid_layout(1, 14, 14, 64).m == 49 and set(CANDIDATES) == {16, 32, 64, 128}


class BoolMasked(GridAttention):
    def forward(self, x):
        q, k, v = self.qkv_heads(x)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CrossAttention(GridAttention):
    def forward(self, x):
        q, k, v = self.qkv_heads(x)
        return F.scaled_dot_product_attention(q, k[:, :, ::2], v[:, :, ::2])


@pytest.mark.parametrize(
    ("model", "options", "reason"),
    [
        (GridAttention(is_causal=True), {}, "is_causal"),
        (BoolMasked(), {}, "boolean attention mask"),
        (GridAttention(form="explicit", bias=True), {}, "Nyström cannot carry it"),
        (GridAttention(grid=(8, 8)), {}, "64 keys < min_keys 256"),
        (CrossAttention(), {"min_keys": 0}, "256 queries and 128 keys"),
        (GridAttention(), {"landmarks": 128}, "predict no gain"),  # the 128³ pinv costs more than 256² scores
        (GridAttention(), {"method": "agent"}, "not built"),
    ],
)
def test_it_does_not_fire_where_it_cannot_or_cannot_pay(model, options, reason):
    grid = (8, 8) if reason.startswith("64 keys") else (16, 16)
    graph = graph_of(model, grid)
    new, rec = run_pass(graph, **options)
    assert rec.matched == 0 and not rec.changed and new is graph
    assert any(reason in line for line in rec.details["explain"]), rec.details["explain"]
    assert all(not s["applied"] and reason in s["reason"] for s in rec.details["sites"])


def test_onnx_runtime_runs_what_it_emits(tmp_path):
    from edgeformer.artifact import Artifact
    from edgeformer.compiler import plan, rewrite, with_pass_options

    model = GridAttention(cls=True).eval()
    x = smooth_images(1)
    p = plan(model, "host-ort", input_shapes=[tuple(x.shape)], passes=f"+{NAME}")
    p.pipeline = with_pass_options(p.pipeline, {NAME: {"min_share": 0.0, "landmarks": 16}})
    rw = rewrite(p, check=False)
    rec = next(r for r in rw.records if r.name == NAME)
    assert rec.matched == 1 and not rec.exact
    (tmp_path / "ort").mkdir()
    p.target.compile(rw.graph, p.profile, tmp_path / "ort")
    runner = p.target.load(Artifact(tmp_path / "ort", None, p.profile))
    got = np.asarray(runner.run([x.numpy()])[0])
    with torch.no_grad():
        want = rw.graph.program.module()(x).numpy()
        exact = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    cos = float((got * exact).sum() / (np.linalg.norm(got) * np.linalg.norm(exact)))
    assert cos >= 0.99


def test_compile_runs_the_contract_with_the_pass_forced_on_vit_tiny(tmp_path, capsys):
    """vit_tiny (1 CLS + 14x14 tokens) on random weights, every site forced: the driver's dry run
    and the fitted run agree on the sites, each applied site records its tuned landmarks and error."""
    out = tmp_path / "la"
    argv = ["compile", "vit_tiny", "--passes", f"+{NAME}", "--pass-option", f"{NAME}.min_keys=0"]
    argv += ["--pass-option", f"{NAME}.min_share=0", "--min-speedup", "0", "-o", str(out), "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    a = manifest["approximation"]
    assert a["kind"] == f"passes {NAME}" and a["shipped"] == "approximate"
    assert len(a["sites"]) == 3 and all(s["applied"] for s in a["sites"]), a["sites"]
    rec = next(p for p in manifest["passes"] if p["name"] == NAME)
    assert not rec["exact"] and rec["matched"] == 3
    for site in rec["details"]["sites"]:
        assert site["extra"] == 1 and str(site["landmarks"] - 1) in site["errors"] and site["errors"]
        assert 0 <= site["error"] < math.inf and site["measured_on"] == rec["details"]["data"]


def test_on_trained_vit_tiny_it_keeps_top1_agreement_on_held_out_digits(trained):
    """The tiny ViT trained 8 epochs (257 tokens, 3 blocks), its landmark count tuned on 32 training
    images: top-1 agreement with the exact model on the 360 held-out images ≥ 95 % (measured
    353/360 at 37 landmarks, a 6x6 pooled grid + CLS; 30 epochs: see docs/benchmarks.md)."""
    from edgeformer.data import digits_dataset
    from edgeformer.sources import load_model

    graph = load_model("vit_tiny", weights=trained("vit_tiny")).graph
    x, y = digits_dataset("vit_tiny", "test")
    xt, _ = digits_dataset("vit_tiny", "train")
    calib = [(xt[i : i + 1],) for i in range(32)]
    new, (rec,) = PassManager([NAME], check=False, data=calib, data_origin="32 training images").run(graph)
    assert rec.matched == 3 and rec.details["data"] == "32 training images"
    with torch.no_grad():
        ref = torch.func.vmap(graph.program.module())(x.unsqueeze(1)).squeeze(1).argmax(-1)
        got = torch.func.vmap(new.program.module())(x.unsqueeze(1)).squeeze(1).argmax(-1)
    assert int((got == ref).sum()) >= 0.95 * len(y), int((got == ref).sum())
