"""Where a model comes from: shapes with dtypes, an ``ir.Graph`` as MODEL, factory arguments, and
one-line errors for factories that raise, need arguments or trace a data-dependent branch."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import edgeformer
from edgeformer.errors import UserError
from edgeformer.sources import InputShape, load_model, parse_shape

FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tokens(nn.Module):
        def __init__(self, vocab=2, width=4):
            super().__init__()
            self.emb = nn.Embedding(vocab, width)  # only ids 0 and 1 are valid

        def forward(self, ids, mask):
            return self.emb(ids) * mask.unsqueeze(-1)

    def sized(width, bias=True):
        return nn.Linear(3, width, bias=bias)

    def raises():
        raise RuntimeError("cannot find the config\\nmore detail")

    class Branchy(nn.Module):
        def forward(self, x):
            if x.mean() > 0:
                return x.relu()
            return x
    """
)


@pytest.fixture
def factories(user_models):
    (user_models / "src_models.py").write_text(FACTORIES)
    yield user_models
    import sys

    sys.modules.pop("src_models", None)


def test_parse_shape_takes_an_optional_dtype():
    s = parse_shape("1x12:int64")
    assert s == (1, 12) and isinstance(s, InputShape) and s.dtype == "int64"
    assert parse_shape("2x3").dtype is None and parse_shape(" 1X3 : Float16 ").dtype == "float16"
    for dt in ("float32", "float16", "int64", "int32", "bool"):
        assert parse_shape(f"4:{dt}").dtype == dt
    for bad in ("1x12:int8", "1x12:", ":int64", "1x0:int64", "1x12:int64:x"):
        with pytest.raises(UserError, match="bad input shape") as e:
            parse_shape(bad)
        assert "float32, float16, int64, int32, bool" in str(e.value), str(e.value)


def test_integer_and_bool_inputs_get_valid_example_values(factories):
    src = load_model("src_models:Tokens", input_shapes=[parse_shape("2x12:int64"), parse_shape("2x12:bool")])
    ids, mask = src.graph.example_inputs
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert int(ids.min()) >= 0 and int(ids.max()) <= 1  # documented range [0, 2)
    assert src.graph.summary().inputs[0] == {"name": "ids", "shape": [2, 12], "dtype": "int64"}
    half = load_model(nn.Linear(3, 2).half(), input_shapes=[parse_shape("1x3:float16")])
    assert half.graph.example_inputs[0].dtype == torch.float16


def test_pt2_checks_the_dtype_too(factories, tmp_path):
    src = load_model("src_models:Tokens", input_shapes=[parse_shape("1x4:int64"), parse_shape("1x4:bool")])
    path = src.graph.save(tmp_path / "t.pt2")
    assert load_model(str(path), input_shapes=[parse_shape("1x4:int64"), parse_shape("1x4:bool")]).graph
    with pytest.raises(UserError, match="int32"):
        load_model(str(path), input_shapes=[parse_shape("1x4:int32"), parse_shape("1x4:bool")])


def test_load_model_and_compile_accept_an_exported_graph(tmp_path):
    torch.manual_seed(0)
    graph = edgeformer.export(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), (torch.randn(1, 4),), name="seq")
    src = load_model(graph)
    assert src.graph is graph and src.info.name == "seq"
    with pytest.raises(UserError, match="--weights"):
        load_model(graph, weights=tmp_path / "w.safetensors")
    report = edgeformer.compile(graph, "host-ort", tmp_path / "art")
    assert report.manifest.numerics.status == "passed"
    assert report.manifest.ir_hash == graph.hash()


def test_factory_args_are_passed_and_checked(factories):
    src = load_model("src_models:sized", input_shapes=[(1, 3)], factory_args={"width": 5, "bias": False})
    assert src.graph.summary().parameters == 15
    with pytest.raises(UserError, match=r"needs argument 'width'.*--factory-arg width="):
        load_model("src_models:sized", input_shapes=[(1, 3)])
    with pytest.raises(UserError, match="no argument 'depth'"):
        load_model("src_models:sized", input_shapes=[(1, 3)], factory_args={"width": 2, "depth": 3})
    with pytest.raises(UserError, match="only to package.module:factory"):
        load_model("efficientformer_tiny", factory_args={"width": 2})


def test_a_factory_that_raises_is_one_user_error(factories):
    with pytest.raises(UserError) as e:
        load_model("src_models:raises", input_shapes=[(1, 3)])
    assert "src_models:raises raised RuntimeError: cannot find the config" in str(e.value)
    assert "\n" not in str(e.value)


def test_data_dependent_branch_points_to_torch_cond(factories):
    with pytest.raises(UserError) as e:
        load_model("src_models:Branchy", input_shapes=[(1, 3)])
    msg = str(e.value)
    assert "data-dependent" in msg and "torch.cond" in msg and "src_models.py" in msg and "\n" not in msg, msg
