"""Tiny digits training: the fixed split, a few steps per recipe, atomic checkpoints, errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from edgeformer import training
from edgeformer.errors import UserError
from edgeformer.models import build_model
from edgeformer.training import RECIPES, digits_dataset, evaluate, load_trained, save_weights, sidecar_path, train

# many small ops: one torch thread (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_split_is_fixed_stratified_and_held_out():
    x_tr, y_tr = digits_dataset("image", "train")
    x_te, y_te = digits_dataset("image", "test")
    assert (len(y_tr), len(y_te)) == (1437, 360)
    assert torch.equal(digits_dataset("pvt_v2_tiny", "test")[1], y_te)  # same split every call
    counts = torch.bincount(y_te, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    seq_tr, _ = digits_dataset("sequence", "train")
    seq_te, _ = digits_dataset("sequence", "test")
    overlap = (seq_te.flatten(1).unsqueeze(1) == seq_tr.flatten(1).unsqueeze(0)).all(-1)
    assert overlap.any(1).float().mean() < 0.02  # held out (digits has a few duplicate images)


def test_digits_inputs_are_32x32_images_or_8_token_sequences():
    assert digits_dataset("image", "test")[0].shape == (360, 3, 32, 32)
    assert digits_dataset("lmuformer_tiny", "test")[0].shape == (360, 8, 8)


def test_evaluate_infers_the_input_kind_from_the_model():
    for name in ("lmuformer_tiny", "pvt_v2_tiny"):
        acc = evaluate(build_model(name))
        assert 0.0 <= acc <= 1.0


def test_train_raises_user_error_for_an_unknown_model_name():
    with pytest.raises(UserError, match="pvt_v2_tiny"):
        train("pvt_v2_tinny", "unused.safetensors")


def test_train_raises_user_error_for_an_unwritable_out_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        train("lmuformer_tiny", blocker / "model.safetensors", max_steps=1)


def test_checkpoint_is_written_to_a_temp_file_fsynced_and_renamed_in_the_same_folder(tmp_path, monkeypatch):
    renames, syncs = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(training.os, "replace", lambda s, d: (renames.append((s, d)), real_replace(s, d))[1])
    monkeypatch.setattr(training.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[1])
    out = tmp_path / "m.safetensors"
    save_weights(torch.nn.Linear(2, 2), out, {"model": "x"})
    assert [os.path.dirname(s) for s, _ in renames] == [str(tmp_path)] * 2
    assert [d for _, d in renames] == [out, sidecar_path(out)]
    assert len(syncs) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.json"]


def test_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(training.os, "replace", broken)
    with pytest.raises(OSError):
        save_weights(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_train_sets_the_thread_count_for_the_run_and_restores_it(tmp_path, monkeypatch):
    seen = []
    real_fit = training._fit
    monkeypatch.setattr(training, "_fit", lambda *a, **k: (seen.append(torch.get_num_threads()), real_fit(*a, **k))[1])
    train("lmuformer_tiny", tmp_path / "m.safetensors", max_steps=2, threads=2)
    assert seen == [2] and torch.get_num_threads() == 1


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_few_training_steps_lower_the_loss_and_the_checkpoint_loads_back(name, tmp_path):
    out = tmp_path / f"{name}.safetensors"
    result = train(name, out, max_steps=12, seed=0, threads=1)
    assert result.steps == 12 and len(result.losses) == 12
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["model"] == name and meta["accuracy"] == result.accuracy and meta["steps"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, sidecar_path(out).name])
    model = load_trained(out)
    assert evaluate(model) == result.accuracy
