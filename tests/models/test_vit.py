"""Plain ViTs (DeiT-Tiny/Small, ViT-S/16, the tiny digits ViT): timm's keys and shapes, attention,
the position table at other resolutions, export."""

from __future__ import annotations

import pytest
import torch

from edgeformer import ir
from edgeformer.checkpoints import load_weights
from edgeformer.models import build_model, get_spec
from edgeformer.models.vit import Attention, deit_small, deit_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

# timm's VisionTransformer state dict (class-token pooling, no fc_norm, no layer scale), written out
# from timm's module names: a checkpoint with exactly these keys and shapes loads strictly.
TIMM_BLOCK_KEYS = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)  # fmt: skip


def timm_shapes(dim: int, depth: int, tokens: int = 197, patch: int = 16, classes: int = 1000) -> dict:
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, tokens, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "head.weight": (classes, dim),
        "head.bias": (classes,),
    }
    block_shapes = [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,),
                    (dim,), (dim,), (4 * dim, dim), (4 * dim,), (dim, 4 * dim), (dim,)]  # fmt: skip
    per_block = dict(zip(TIMM_BLOCK_KEYS, block_shapes))
    for i in range(depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in per_block.items()})
    return shapes


@pytest.mark.parametrize(
    ("name", "dim", "params"),
    [("deit_tiny", 192, 5_717_416), ("deit_small", 384, 22_050_664), ("vit_small", 384, 22_050_664)],
)
def test_imagenet_vits_have_timms_keys_shapes_and_parameter_counts(name, dim, params):
    model = build_model(name)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == timm_shapes(dim, 12)
    assert sum(p.numel() for p in model.parameters()) == params == get_spec(name).params


def test_a_timm_layout_checkpoint_loads_strictly_and_a_wrong_one_is_refused():
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in timm_shapes(192, 12).items()}
    model = deit_tiny()
    info = load_weights(model, sd, name="deit_tiny")
    assert info["num_tensors"] == 152
    assert torch.equal(model.blocks[11].attn.qkv.weight, sd["blocks.11.attn.qkv.weight"])
    from edgeformer.errors import UserError

    with pytest.raises(UserError, match="missing keys"):
        load_weights(deit_tiny(), {k: v for k, v in sd.items() if k != "head.bias"})
    with pytest.raises(UserError, match="shape mismatch"):
        load_weights(deit_small(), sd)


def test_attention_is_softmax_over_all_tokens_with_timms_qkv_layout():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2).eval()
    x = torch.randn(2, 10, 16)
    qkv = attn.qkv(x).reshape(2, 10, 3, 2, 8)  # (3, heads, head_dim) on the last axis
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    weights = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 16))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=0)


def test_the_head_reads_the_cls_token_after_the_final_norm():
    torch.manual_seed(0)
    model = build_model("vit_tiny")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 257, 48)  # 16×16 patches of 2 px + CLS
        torch.testing.assert_close(model(x), model.head(feats[:, 0]))


def test_set_grid_resamples_the_position_table_and_keeps_the_cls_row():
    torch.manual_seed(0)
    model = deit_tiny().eval()
    with torch.no_grad():  # a table constant over the grid stays constant under bicubic resampling
        model.pos_embed[:, 1:] = torch.linspace(-1, 1, 192)
    cls = model.pos_embed[:, :1].clone()
    model.set_grid(384, 384)
    assert model.pos_embed.shape == (1, 1 + 24 * 24, 192) and model.grid == (24, 24)
    assert torch.equal(model.pos_embed[:, :1], cls)
    torch.testing.assert_close(model.pos_embed[0, 1:], torch.linspace(-1, 1, 192).expand(576, 192))
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)
    before = model.pos_embed
    model.set_grid(384, 384)  # the same grid: nothing changes
    assert model.pos_embed is before
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.set_grid(390, 384)


@pytest.mark.parametrize("name", ["vit_tiny", "deit_tiny"])
def test_macs_from_the_ir_equal_the_registered_figure_and_attention_is_sdpa(name):
    spec = get_spec(name)
    graph = ir.export(spec.build(), spec.example_inputs())
    assert graph.summary().total_macs == spec.macs
    sdpa = [n for n in graph.program.graph.nodes if "scaled_dot_product_attention" in str(n.target)]
    assert len(sdpa) == spec.build().depth
    if spec.published_macs:
        assert abs(spec.macs - spec.published_macs) / spec.published_macs < 0.05


def test_a_zoo_vit_at_another_input_shape_resamples_its_table_and_says_so(tmp_path):
    from edgeformer.compiler import compile as compile_model
    from edgeformer.errors import UserError
    from edgeformer.sources import load_model

    src = load_model("vit_tiny", input_shapes=[(1, 3, 24, 24)])
    assert src.info.resolution.startswith("position table resampled bicubically from 16x16 to 12x12"), src.info
    assert src.graph.input_shapes() == [[1, 3, 24, 24]]
    assert load_model("vit_tiny").info.resolution is None
    with pytest.raises(UserError, match="cannot run at 23x24.*multiple of the patch size 2"):
        load_model("vit_tiny", input_shapes=[(1, 3, 23, 24)])
    report = compile_model("vit_tiny", "host-ort", tmp_path / "a", input_shapes=[(1, 3, 24, 24)])
    assert report.manifest.numerics.status == "passed"
    assert "12x12" in report.manifest.to_dict()["model"]["resolution"]
