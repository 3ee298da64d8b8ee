"""Calibration and evaluation sets (edgeformer/data.py): every source kind, determinism, bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeformer import data, training
from edgeformer.data import Dataset, Preprocess, load_data, parse_preprocess
from edgeformer.errors import UserError
from edgeformer.manifest import TensorSpec

IMAGE32 = [TensorSpec("pixels", [1, 3, 32, 32], "float32")]
SEQ = [TensorSpec("tokens", [1, 8, 8], "float32")]
IMAGE16 = [TensorSpec("x", [1, 3, 16, 16], "float32")]
TWO = [TensorSpec("a", [1, 6], "float32"), TensorSpec("b", [1, 5], "float32")]


def _png(path, color, size=(20, 14)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _error(match: str):
    return pytest.raises(UserError, match=match)


# -------------------------------------------------------------------------------------- digits


def test_digits_eval_is_exactly_the_training_test_split():
    ds = load_data("digits", role="eval", inputs=IMAGE32, num_classes=10)
    x, y = training.digits_dataset("pvt_v2_tiny", "test")
    assert ds.name == "digits (test split)" and ds.role == "eval" and ds.input_names == ["pixels"]
    assert len(ds.inputs) == 1 and ds.inputs[0].dtype == np.float32
    assert np.array_equal(ds.inputs[0], x.numpy()) and np.array_equal(ds.labels, y.numpy())
    assert ds.labels.dtype == np.int64 and len(ds) == 360


def test_digits_sequences_and_the_train_split_for_calibration():
    ds = load_data("digits", role="eval", inputs=SEQ, num_classes=10)
    x, y = training.digits_dataset("lmuformer_tiny", "test")
    assert np.array_equal(ds.inputs[0], x.numpy()) and np.array_equal(ds.labels, y.numpy())
    calib = load_data("digits", role="calib", inputs=[TensorSpec("t", [-1, 8, 8], "float32")])
    assert calib.name == "digits (train split)" and len(calib) == 1437 and calib.labels is None
    assert np.array_equal(calib.inputs[0], training.digits_dataset("sequence", "train")[0].numpy())


def test_digits_moved_but_stays_importable_from_training():
    assert training.digits_dataset is data.digits_dataset and training.to_model_input is data.to_model_input
    assert (training.SPLIT_SEED, training.TEST_FRACTION, training.IMAGE_SIZE) == (0, 0.2, 32)
    assert torch.equal(data.digits_dataset("lmuformer_tiny")[0], data.digits_dataset("sequence")[0])
    assert data.digits_dataset("poolformer_tiny")[0].shape == (360, 3, 32, 32)


def test_digits_rejects_other_input_shapes_and_labels_beyond_the_classes():
    with _error(r"digits provides 3×32×32 images or 8×8 sequences but the model takes x 1×3×224×224.*sample-images"):
        load_data("digits", role="calib", inputs=[TensorSpec("x", [1, 3, 224, 224], "float32")])
    with _error("digits provides"):
        load_data("digits", role="eval", inputs=TWO, num_classes=10)
    with _error(r"label 9, outside the model's 4 classes \(0..3\)"):
        load_data("digits", role="eval", inputs=IMAGE32, num_classes=4)
    with _error("--preprocess does not apply to digits"):
        load_data("digits", role="eval", inputs=IMAGE32, preprocess="crop=32")


# ----------------------------------------------------------------------------------------- npz


def test_npz_single_input_casts_floats_and_reads_labels(tmp_path):
    f = tmp_path / "d.npz"
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16))  # float64
    np.savez(f, x=x, y=np.array([0, 1, 2, 1, 0], dtype=np.int32))
    ds = load_data(f, role="eval", inputs=IMAGE16, num_classes=3)
    assert ds.name == ds.source == str(f) and ds.inputs[0].dtype == np.float32 and ds.labels.dtype == np.int64
    assert np.allclose(ds.inputs[0], x) and ds.labels.tolist() == [0, 1, 2, 1, 0]
    named = tmp_path / "named.npz"  # the input's own name also works for a single input
    np.savez(named, x=x.astype(np.float32))
    assert load_data(named, role="calib", inputs=IMAGE16).sha256 == load_data(f, role="calib", inputs=IMAGE16).sha256


def test_npz_multi_input_by_name_and_its_errors(tmp_path):
    f = tmp_path / "two.npz"
    np.savez(f, a=np.ones((4, 6), np.float32), b=np.zeros((4, 5), np.float32), y=np.arange(4))
    ds = load_data(f, role="eval", inputs=TWO, num_classes=4)
    assert [a.shape for a in ds.inputs] == [(4, 6), (4, 5)] and ds.input_names == ["a", "b"]
    x_only = tmp_path / "x.npz"
    np.savez(x_only, x=np.ones((4, 6), np.float32))
    with _error(r"one array 'x' but the model has several inputs \(a, b\).*several inputs must be named"):
        load_data(x_only, role="calib", inputs=TWO)
    half = tmp_path / "half.npz"
    np.savez(half, a=np.ones((4, 6), np.float32))
    with _error(r"has no array 'b' \(it holds a\).*named a, b"):
        load_data(half, role="calib", inputs=TWO)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, a=np.ones((4, 6), np.float32), b=np.ones((3, 5), np.float32))
    with _error("a has 4 samples but b has 3"):
        load_data(uneven, role="calib", inputs=TWO)


def test_npz_bad_shapes_dtypes_labels_and_files(tmp_path):
    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    good = np.zeros((3, 3, 16, 16), np.float32)
    with _error(r"x has per-sample shape 3×8×8 \(array 3×3×8×8\) but model input 'x' takes 3×16×16"):
        load_data(npz("s.npz", x=np.zeros((3, 3, 8, 8), np.float32)), role="calib", inputs=IMAGE16)
    with _error("x is int64 but model input 'x' is float32"):
        load_data(npz("i.npz", x=np.zeros((3, 3, 16, 16), np.int64)), role="calib", inputs=IMAGE16)
    with _error("x is bool but model input 'x' is float32"):
        load_data(npz("b.npz", x=np.zeros((3, 3, 16, 16), bool)), role="calib", inputs=IMAGE16)
    with _error(r"has no labels y, which --eval needs.*--calib"):
        load_data(npz("nolabels.npz", x=good), role="eval", inputs=IMAGE16, num_classes=3)
    with _error("labels y are float64, not integers"):
        load_data(npz("fy.npz", x=good, y=np.zeros(3)), role="eval", inputs=IMAGE16, num_classes=3)
    with _error(r"labels y have shape 2, expected \(3,\)"):
        load_data(npz("ny.npz", x=good, y=np.zeros(2, np.int64)), role="eval", inputs=IMAGE16, num_classes=3)
    with _error(r"label 5, outside the model's 3 classes"):
        load_data(npz("big.npz", x=good, y=np.array([0, 5, 1])), role="eval", inputs=IMAGE16, num_classes=3)
    with _error("label -1, outside"):
        load_data(npz("neg.npz", x=good, y=np.array([0, -1, 1])), role="eval", inputs=IMAGE16, num_classes=3)
    with _error("is empty"):
        load_data(npz("empty.npz", x=np.zeros((0, 3, 16, 16), np.float32)), role="calib", inputs=IMAGE16)
    with _error("NaN or infinite"):
        load_data(npz("nan.npz", x=np.full((3, 3, 16, 16), np.nan, np.float32)), role="calib", inputs=IMAGE16)
    with _error("cannot load array 'x'.*no Python objects"):
        load_data(npz("obj.npz", x=np.array([{"a": 1}], dtype=object)), role="calib", inputs=IMAGE16)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with _error(r"cannot load .*junk\.npz"):
        load_data(tmp_path / "junk.npz", role="calib", inputs=IMAGE16)


def test_npz_integer_and_dynamic_inputs(tmp_path):
    f = tmp_path / "ids.npz"
    np.savez(f, ids=np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    ids = [TensorSpec("ids", [-1, -1], "int64")]
    ds = load_data(f, role="calib", inputs=ids)
    assert ds.inputs[0].dtype == np.int64 and ds.inputs[0].shape == (2, 3)
    with _error("x is float32 but model input 'ids' is int64"):
        np.savez(tmp_path / "f.npz", x=np.ones((2, 3), np.float32))
        load_data(tmp_path / "f.npz", role="calib", inputs=ids)


# --------------------------------------------------------------------------------- image folders


def test_class_folder_labels_sorted_subfolders_and_preprocesses(tmp_path):
    _png(tmp_path / "cat" / "a.png", (255, 0, 0))
    _png(tmp_path / "cat" / "b.PNG", (250, 0, 0))
    _png(tmp_path / "dog" / "c.jpg", (0, 0, 255), size=(40, 60))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_data(tmp_path, role="eval", inputs=IMAGE16, num_classes=5)
    assert ds.inputs[0].shape == (3, 3, 16, 16) and ds.inputs[0].dtype == np.float32
    assert ds.labels.tolist() == [0, 0, 1] and "2 classes" in ds.name
    red = (1.0 - 0.485) / 0.229  # ImageNet normalisation of a pure red pixel
    assert np.allclose(ds.inputs[0][0, 0], red, atol=1e-5)
    plain = load_data(tmp_path, role="eval", inputs=IMAGE16, preprocess="resize=16,crop=16,mean=0.5,std=0.5")
    assert np.allclose(plain.inputs[0][0, 0], 1.0, atol=1e-5) and np.allclose(plain.inputs[0][0, 1], -1.0, atol=1e-5)
    calib = load_data(tmp_path, role="calib", inputs=IMAGE16)
    assert calib.labels is None and np.array_equal(calib.inputs[0], ds.inputs[0])
    dynamic = load_data(
        tmp_path, role="calib", inputs=[TensorSpec("x", [1, 3, -1, -1], "float32")], preprocess="crop=24"
    )
    assert dynamic.inputs[0].shape == (3, 3, 24, 24)


def test_unlabelled_folder_is_for_calibration_only(tmp_path):
    _png(tmp_path / "1.png", (10, 20, 30))
    _png(tmp_path / "2.webp", (40, 50, 60))
    ds = load_data(tmp_path, role="calib", inputs=IMAGE16)
    assert len(ds) == 2 and ds.labels is None and ds.to_dict()["labelled"] is False
    with _error(r"has no class subfolders, so its images are unlabelled.*--calib"):
        load_data(tmp_path, role="eval", inputs=IMAGE16, num_classes=3)


def test_folder_errors(tmp_path):
    bad = tmp_path / "bad"
    _png(bad / "a" / "ok.png", (1, 2, 3))
    (bad / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with _error(r"cannot read image .*broken\.jpg.*remove or replace"):
        load_data(bad, role="eval", inputs=IMAGE16, num_classes=2)
    many = tmp_path / "many"
    for cls in "abc":
        _png(many / cls / "x.png", (1, 2, 3))
    with _error("has 3 class subfolders but the model has 2 classes"):
        load_data(many, role="eval", inputs=IMAGE16, num_classes=2)
    (tmp_path / "empty").mkdir()
    with _error("holds no images"):
        load_data(tmp_path / "empty", role="calib", inputs=IMAGE16)
    with _error(r"provides 3-channel images but the model takes tokens 1×8×8 float32"):
        load_data(many, role="calib", inputs=SEQ)
    with _error(r"crop=24 gives 24×24 images but the model takes 16×16"):
        load_data(many, role="calib", inputs=IMAGE16, preprocess="crop=24")
    with _error("resize=8 is smaller than the model's 16×16 crop"):
        load_data(many, role="calib", inputs=IMAGE16, preprocess="resize=8")
    with _error("mean has 2 values"):
        load_data(many, role="calib", inputs=IMAGE16, preprocess="mean=0.5,0.5")


def test_folder_limit_matches_subset(tmp_path):
    for i in range(6):
        _png(tmp_path / f"c{i % 2}" / f"{i}.png", (i * 40, 0, 0))
    full = load_data(tmp_path, role="eval", inputs=IMAGE16, num_classes=2)
    limited = load_data(tmp_path, role="eval", inputs=IMAGE16, num_classes=2, limit=3, seed=1)
    sub = full.subset(3, seed=1)
    assert len(limited) == 3 and np.array_equal(limited.inputs[0], sub.inputs[0])
    assert np.array_equal(limited.labels, sub.labels)


# ------------------------------------------------------------------------------- sample-images


def test_sample_images_random_crops_unlabelled_and_seeded():
    ds = load_data("sample-images", role="calib", inputs=IMAGE16, limit=6)
    assert ds.inputs[0].shape == (6, 3, 16, 16) and ds.labels is None
    assert ds.name == "sample-images (6 random crops; unlabelled, for range calibration only)"
    assert ds.note == "unlabelled, for range calibration only" == ds.to_dict()["note"]
    assert ds.sha256 == load_data("sample-images", role="calib", inputs=IMAGE16, limit=6).sha256
    assert ds.sha256 != load_data("sample-images", role="calib", inputs=IMAGE16, limit=6, seed=1).sha256
    assert len(load_data("sample-images", role="calib", inputs=[TensorSpec("x", [1, 3, 8, 8], "float32")])) == 64
    unit = load_data("sample-images", role="calib", inputs=IMAGE16, limit=2, preprocess="mean=0,std=1")
    assert 0.0 <= unit.inputs[0].min() and unit.inputs[0].max() <= 1.0


def test_sample_images_is_not_for_evaluation_nor_for_sequences():
    with _error(r"sample-images has no labels: it is unlabelled, for range calibration only.*--eval digits"):
        load_data("sample-images", role="eval", inputs=IMAGE16, num_classes=10)
    with _error("sample-images provides 3-channel images but the model takes tokens"):
        load_data("sample-images", role="calib", inputs=SEQ)


# ------------------------------------------------------------------------------- the Dataset


def _toy(n=5) -> Dataset:
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return Dataset("toy", "toy.npz", "eval", [x, -x], np.arange(n), input_names=["a", "b"])


def test_subset_is_seeded_ordered_and_named():
    ds = _toy(10)
    sub = ds.subset(4, seed=3)
    assert len(sub) == 4 and sub.name == "toy [4 of 10, seed 3]"
    assert sub.labels.tolist() == sorted(sub.labels.tolist())  # original order kept
    assert np.array_equal(sub.inputs[0][:, 0] / 2, sub.labels) and np.array_equal(sub.inputs[1], -sub.inputs[0])
    assert sub.sha256 == ds.subset(4, seed=3).sha256 != ds.subset(4, seed=4).sha256
    assert ds.subset(10) is ds and ds.subset(99) is ds
    with _error("at least 1"):
        ds.subset(0)


def test_batches_pad_the_last_one_by_repeating_its_last_sample():
    out = list(_toy(5).batches(2))
    assert [real for _, real in out] == [2, 2, 1]
    assert all(a.shape == (2, 2) for arrays, _ in out for a in arrays)
    last, _ = out[-1]
    assert last[0].tolist() == [[8, 9], [8, 9]] and last[1].tolist() == [[-8, -9], [-8, -9]]
    assert [real for _, real in _toy(4).batches(4)] == [4]


def test_sha256_covers_names_values_and_labels_and_to_dict():
    ds = _toy()
    assert ds.sha256 == _toy().sha256 and len(ds.sha256) == 64
    renamed = Dataset("toy", "toy.npz", "eval", ds.inputs, ds.labels, input_names=["a", "c"])
    unlabelled = Dataset("toy", "toy.npz", "eval", ds.inputs, None, input_names=["a", "b"])
    changed = _toy()
    changed.inputs[0][0, 0] = 99
    assert len({ds.sha256, renamed.sha256, unlabelled.sha256, changed.sha256}) == 4
    assert ds.to_dict() == {
        "name": "toy", "source": "toy.npz", "role": "eval", "sha256": ds.sha256, "samples": 5,
        "labelled": True, "note": "",
    }  # fmt: skip


# ------------------------------------------------------------------------------ sources, options


def test_unknown_sources_and_limits(tmp_path):
    with _error(r"no data source 'digitz': no such file or folder.*'digits', a \.npz file, a folder of images"):
        load_data("digitz", role="calib", inputs=IMAGE32)
    (tmp_path / "d.csv").write_text("1,2")
    with _error(r"is not a \.npz file or a folder.*sample-images"):
        load_data(tmp_path / "d.csv", role="calib", inputs=IMAGE32)
    with _error("leaves no samples"):
        load_data("digits", role="calib", inputs=IMAGE32, limit=0)
    assert len(load_data("digits", role="calib", inputs=IMAGE32, limit=7)) == 7


def test_parse_preprocess():
    p = parse_preprocess("resize=256, crop=224, mean=0.485,0.456,0.406, std=0.229,0.224,0.225")
    assert p == Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert parse_preprocess("crop=32") == Preprocess(crop=32)
    for text, match in [
        ("size=3", "unknown --preprocess key 'size'"),
        ("crop=abc", "crop must be a positive whole number"),
        ("crop=0", "crop must be a positive whole number"),
        ("mean=a,b,c", "mean must be numbers"),
        ("std=0.5,0", "std must be positive"),
        ("resize=100,crop=200", "crop=200 is larger than resize=100"),
        ("crop=3,crop=4", "gives crop twice"),
        ("224", "cannot read --preprocess"),
    ]:
        with _error(match):
            parse_preprocess(text)


def test_every_error_is_one_line_with_a_fix(tmp_path):
    cases = [
        lambda: load_data("nope", role="calib", inputs=IMAGE32),
        lambda: load_data("sample-images", role="eval", inputs=IMAGE16),
        lambda: load_data("digits", role="calib", inputs=TWO),
    ]
    for case in cases:
        with pytest.raises(UserError) as info:
            case()
        assert info.value.fix and "\n" not in str(info.value) and info.value.exit_code == 2
