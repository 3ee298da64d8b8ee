"""Tiny trained models on scikit-learn's bundled digits (no download).

The 1,797 8×8 digits are split once, stratified and seeded (80 % train / 20 % held-out "test"),
whatever the training seed. Image models see them bilinearly upsampled to 32×32 with the grey
channel repeated 3×; LMUFormer models see each image as a sequence of 8 rows (tokens) of 8 pixels
(channels): input ``(B, 8, 8)``.

``train(name, out_path)`` runs a recipe, writes the weights with safetensors atomically (temp file
in the same folder, fsync, ``os.replace``) and a JSON sidecar (``<out>.json``) with the accuracy
and configuration; :func:`load_trained` builds the zoo model and loads them back. The held-out
split (:func:`digits_dataset`, :func:`evaluate`) is the evaluation set approximating passes use;
the split itself lives in :mod:`edgeformer.data` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeformer.checkpoints import load_state_dict_file
from edgeformer.data import (  # noqa: F401 - the digits split moved to edgeformer.data; importable from here
    IMAGE_SIZE,
    SPLIT_SEED,
    TEST_FRACTION,
    _split,
    digits_dataset,
    to_model_input,
)
from edgeformer.errors import UnknownNameError, UserError
from edgeformer.fsutil import atomic_write_bytes, atomic_write_json
from edgeformer.models import build_model, get_spec
from edgeformer.models.ecoformer import fit_hashes, set_attention_mode
from edgeformer.models.lmuformer import LMUFormer, SpikingLMUFormer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How one tiny model is trained (AdamW, linear warm-up then cosine, label smoothing).

    ``hash_epochs`` > 0 (EcoFormer, as officially: softmax first, then hashing) means: ``epochs``
    with shared-QK softmax attention, fit the hashes on ``hash_fit_samples`` training images, then
    ``hash_epochs`` with the binarized attention (straight-through gradients) at
    ``hash_finetune_lr``."""

    model: str
    kind: str  # "image" or "sequence"
    epochs: int
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    label_smoothing: float = 0.1
    hash_epochs: int = 0
    hash_finetune_lr: float = 5e-4
    hash_lr: float = 5e-4  # KSH learning rate (the official 5e-4)
    hash_iters: int = 100  # KSH SGD iterations per bit (official)
    hash_fit_samples: int = 64


RECIPES: dict[str, Recipe] = {
    r.model: r
    for r in (
        # Epochs sized to the < 3 min budget on 2 shared cores (measured ms/step under load:
        # EfficientFormerV2 ~690, EfficientFormer ~380, PoolFormer ~130, PVTv2 ~75).
        Recipe("efficientformer_tiny", "image", epochs=12),
        Recipe("efficientformer_v2_tiny", "image", epochs=8),
        Recipe("poolformer_tiny", "image", epochs=20),
        Recipe("pvt_v2_tiny", "image", epochs=30),
        Recipe("ecoformer_pvt_v2_tiny", "image", epochs=25, hash_epochs=10),
        Recipe("lmuformer_tiny", "sequence", epochs=30),
        Recipe("spiking_lmuformer_tiny", "sequence", epochs=40),
        Recipe("vit_tiny", "image", epochs=30),  # 94.4 % in 104 s (2 threads, EPYC, 2026-12-03)
    )
}


@dataclass
class TrainResult:
    model: str
    accuracy: float  # held-out ("test") accuracy
    seconds: float
    steps: int
    epochs: float
    seed: int
    out_path: str
    sidecar_path: str
    params: int
    losses: list[float] = field(default_factory=list)  # training loss per optimiser step
    notes: dict = field(default_factory=dict)

    def to_dict(self, with_losses: bool = False) -> dict:
        d = asdict(self)
        if not with_losses:
            d.pop("losses")
        return d


# ------------------------------------------------------------------------------------- the data


def _model_kind(model: nn.Module) -> str:
    return "sequence" if isinstance(model, (LMUFormer, SpikingLMUFormer)) else "image"


@torch.no_grad()
def evaluate(model: nn.Module, split: str = "test", family: str | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on the digits split (input kind inferred from the model unless
    ``family`` names it)."""
    x, y = digits_dataset(family or _model_kind(model), split)
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(y)


# -------------------------------------------------------------------------------------- training


def _build(name: str) -> nn.Module:
    try:
        get_spec(name)
    except UserError as err:
        raise UserError(
            f"model {name!r} has a digits recipe but is not in the zoo yet", "install/update edgeformer"
        ) from err
    return build_model(name)


def _check_writable(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(
            f"cannot write to {out.parent}: {err.strerror or err}", "choose a writable output path"
        ) from err
    if out.is_dir():
        raise UserError(f"output path {out} is a directory", "give a file name such as model.safetensors")


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model.state_dict()`` as safetensors, atomically, plus ``<path>.json`` if metadata."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors))
    if metadata is not None:
        atomic_write_json(sidecar_path(path), metadata)
    return path


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_trained(path: str | os.PathLike) -> nn.Module:
    """Build the zoo model named in ``<path>.json`` and load the safetensors weights (strict)."""
    path = Path(path)
    meta_file = sidecar_path(path)
    if not meta_file.exists():
        raise UserError(f"no sidecar {meta_file} next to {path}", "train with edgeformer.training.train")
    meta = json.loads(meta_file.read_text())
    model = _build(meta["model"])
    model.load_state_dict(load_state_dict_file(path), strict=True)
    return model.eval()


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _fit(
    model: nn.Module, x: Tensor, y: Tensor, recipe: Recipe, epochs: float, max_steps: int | None,
    gen: torch.Generator, losses: list[float],
) -> int:  # fmt: skip
    per_epoch = math.ceil(len(y) / recipe.batch_size)
    total = max(1, round(epochs * per_epoch))
    if max_steps is not None:
        total = min(total, max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    model.train()
    step = 0
    while step < total:
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), recipe.batch_size):
            if step >= total:
                break
            idx = perm[i : i + recipe.batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, recipe.lr)
            out = model(x[idx])
            # EfficientFormer(V2) return (head, dist_head) in train mode; without a teacher both
            # heads learn the labels (eval averages them).
            outs = out if isinstance(out, (tuple, list)) else (out,)
            loss = sum(F.cross_entropy(o, y[idx], label_smoothing=recipe.label_smoothing) for o in outs) / len(outs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
    model.eval()
    return step


def train(
    family_or_model_name: str,
    out_path: str | os.PathLike,
    *,
    epochs: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    threads: int | None = 2,
) -> TrainResult:
    """Train a tiny zoo model on digits and save it; see :data:`RECIPES` for the names.

    ``epochs`` overrides the recipe's (for EcoFormer it scales both phases); ``max_steps`` caps
    the optimiser steps (split 2:1 between EcoFormer's softmax and hash phases, and also capping
    the KSH iterations per hash bit). ``threads`` is set for the run and restored afterwards.
    """
    recipe = RECIPES.get(family_or_model_name)
    if recipe is None:
        raise UnknownNameError("trainable model", family_or_model_name, RECIPES)
    out = Path(out_path)
    _check_writable(out)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(recipe, out, epochs, max_steps, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _train(recipe: Recipe, out: Path, epochs: float | None, max_steps: int | None, seed: int) -> TrainResult:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model = _build(recipe.model)
    x, y = digits_dataset(recipe.kind, "train")
    scale = 1.0 if epochs is None else epochs / recipe.epochs
    losses: list[float] = []
    notes: dict = {}
    if recipe.hash_epochs:
        first = None if max_steps is None else max(1, (2 * max_steps) // 3)
        set_attention_mode(model, "softmax")
        steps = _fit(model, x, y, recipe, recipe.epochs * scale, first, gen, losses)
        notes["softmax_phase_accuracy"] = evaluate(model, "test", recipe.kind)
        set_attention_mode(model, "hash")
        notes["hash_before_fit_accuracy"] = evaluate(model, "test", recipe.kind)
        sample = x[torch.randperm(len(y), generator=gen)[: recipe.hash_fit_samples]]
        iters = recipe.hash_iters if max_steps is None else min(recipe.hash_iters, max_steps)
        reports = fit_hashes(model.eval(), sample, lr=recipe.hash_lr, iters=iters, generator=gen)
        notes["hash_bits_accepted"] = {k: r.accepted_bits for k, r in reports.items()}
        notes["hash_after_fit_accuracy"] = evaluate(model, "test", recipe.kind)
        rest = None if max_steps is None else max(0, max_steps - steps)
        if rest != 0:
            finetune = replace(recipe, lr=recipe.hash_finetune_lr)
            steps += _fit(model, x, y, finetune, recipe.hash_epochs * scale, rest, gen, losses)
    else:
        steps = _fit(model, x, y, recipe, recipe.epochs * scale, max_steps, gen, losses)
    accuracy = evaluate(model, "test", recipe.kind)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    per_epoch = math.ceil(len(y) / recipe.batch_size)
    result = TrainResult(
        model=recipe.model, accuracy=accuracy, seconds=seconds, steps=steps, epochs=steps / per_epoch,
        seed=seed, out_path=str(out), sidecar_path=str(sidecar_path(out)), params=params, losses=losses,
        notes=notes,
    )  # fmt: skip
    meta = {
        **result.to_dict(),
        "recipe": asdict(recipe),
        "dataset": {"name": "sklearn digits", "split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION,
                    "train": len(y), "test": len(digits_dataset(recipe.kind, "test")[1]), "kind": recipe.kind},
        "torch": torch.__version__,
    }  # fmt: skip
    save_weights(model, out, meta)
    log.info("trained %s: %.1f%% in %.1fs (%d steps)", recipe.model, 100 * accuracy, seconds, steps)
    return result
