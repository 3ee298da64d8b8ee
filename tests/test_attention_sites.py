"""The attention approximations on a user's own module (nn.MultiheadAttention over a conv grid), the
driver's site table in the compile report, and an approximating pass that rewrites nothing: the
exact artifact ships and says why."""

from __future__ import annotations

import io

import torch
from rich.console import Console
from torch import nn

from edgeformer.compiler import compile as compile_model
from edgeformer.passes import PassManager
from edgeformer.report.text import compile_summary
from edgeformer.sources import load_model


class UserMha(nn.Module):
    """A user's model: conv patch embed → nn.MultiheadAttention over the 8×8 grid → linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        out, _ = self.mha(t, t, t, need_weights=False)
        return self.head(out.mean(1))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_the_passes_match_a_users_multihead_attention_and_find_its_grid():
    torch.manual_seed(0)
    graph = load_model(UserMha().eval(), input_shapes=[(1, 3, 32, 32)]).graph
    for name, options, check in (
        ("kv_downsample", {}, lambda s: (s["keys"], s["new_keys"]) == (64, 16)),  # 8x8 grid → 4x4
        ("linear_attention", {}, lambda s: s["order"] == "linear" and s["keys"] == 64),
    ):
        new, (rec,) = PassManager([name], options={name: options}, check=False).run(graph)
        (site,) = rec.details["sites"]
        assert rec.matched == 1 and site["applied"] and site["source"] == "mha" and check(site), site
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            a, b = graph.program.module()(x), new.program.module()(x)
        assert torch.isfinite(b).all() and not torch.equal(a, b)


def test_compile_prints_the_site_table_and_ships_exact_when_a_pass_rewrites_nothing(tmp_path):
    """linear_attention forced on the user's MHA model: the report's site table names the site,
    its verdict, share, speed-ups and own error; token_merge on a CNN rewrites nothing, so the exact
    artifact ships with the pass's reason instead of timing two identical artifacts."""
    torch.manual_seed(0)
    report = compile_model(
        UserMha().eval(), "host-ort", tmp_path / "la", input_shapes=[(1, 3, 32, 32)], passes="+linear_attention",
        pass_options={"linear_attention": {"min_share": 0}}, min_speedup=0,
    )  # fmt: skip
    a = report.manifest.approximation
    (site,) = a.sites
    assert site["applied"] and site["source"] == "mha" and site["cosine"] is not None and site["share"] > 0
    buf = io.StringIO()
    compile_summary(report, Console(file=buf, width=250))
    text = buf.getvalue()
    assert "attention sites" in text and "linear_attention" in text and "applied" in text, text
    assert "forced (min_speedup = 0)" in text

    report = compile_model(
        Cnn().eval(), "host-ort", tmp_path / "tm", input_shapes=[(1, 3, 16, 16)], passes="+token_merge"
    )
    a = report.manifest.approximation
    assert a.shipped == "exact" and a.reason.startswith("nothing was approximated (token_merge:"), a.reason
    assert not a.speed["measured"]
