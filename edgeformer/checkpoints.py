"""Loading pretrained weights: safe file reading, layout conversion and strict matching.

Files are read without running code: ``.safetensors`` through safetensors, ``.pth/.pt/.bin``
only through ``torch.load(weights_only=True)``.  A pickle that references any Python object
beyond tensors and containers (``os.system``, ``argparse.Namespace``, a TorchScript archive) is
refused with a :class:`UserError`; nothing in it is executed.

Layouts.  Our modules use the official repositories' names ("official").  timm renamed them;
the converters below map both ways (exact inverses, no tensor changes):

EfficientFormer (V1)                      timm
  patch_embed.{0,1,3,4}                     stem.{conv1,norm1,conv2,norm2}
  network.{2i}.{j}                          stages.{i}.blocks.{j}   (Flat keeps its index)
  network.{2i-1}.{proj,norm}                stages.{i}.downsample.{conv,norm}
  layer_scale_{1,2}                         ls{1,2}.gamma
  dist_head                                 head_dist

PoolFormer (V1)                           timm (metaformer.py)
  patch_embed.proj                          stem.conv
  network.{2i}.{j}                          stages.{i}.blocks.{j}
  network.{2i-1}.proj                       stages.{i}.downsample.conv
  layer_scale_{1,2}                         layer_scale{1,2}.scale
  norm / head                               head.norm / head.fc

timm's PoolFormer applies ``head.norm`` (a LayerNorm2d) AFTER global pooling, the official model
applies GroupNorm(1, C) over (C, H, W) BEFORE it.  The weights have the same shape and we keep the
official semantics: timm-layout weights load into the official forward, so logits differ slightly
from timm's own forward (means agree, variances differ; timm reports 77.15% vs 77.2% top-1).

``attention_bias_idxs`` (derived from the resolution) and BN ``num_batches_tracked`` (unused in
eval) may be absent from a checkpoint; they are then kept from the model.  When present, the
bias indices must equal the model's, or the checkpoint was trained for another resolution.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from edgeformer.errors import UserError, first_line
from edgeformer.models.efficientformer import EfficientFormer
from edgeformer.models.efficientformer_v2 import EfficientFormerV2
from edgeformer.models.poolformer import PoolFormer

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
WRAPPER_KEYS = ("model", "state_dict", "model_ema")  # checked in this order
LAYOUTS = ("official", "timm")
OPTIONAL_SUFFIXES = ("attention_bias_idxs", "num_batches_tracked")
_SHOW = 3  # keys listed per category in a mismatch error


# ----------------------------------------------------------------------------------- reading


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a weights-only ``.pth/.pt/.bin`` file.

    Unwraps ``{"model": ...}`` (also ``state_dict`` / ``model_ema``).  Any problem — missing,
    corrupt, unknown extension, pickled code — raises a one-line :class:`UserError`.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} not found", "check the path")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file", "pass the weights file itself")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        obj = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        obj = _read_weights_only_pickle(path)
    else:
        raise UserError(
            f"unknown checkpoint extension {path.suffix or '(none)'!r} for {path}",
            f"use {SAFETENSORS_SUFFIX} or a PyTorch state_dict file ({', '.join(PICKLE_SUFFIXES)})",
        )
    return _as_state_dict(obj, str(path))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"checkpoint {path} is not a readable safetensors file ({_first_sentence(err)})",
            "re-download or re-save it",
        ) from None


def _read_weights_only_pickle(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # we report TorchScript / odd pickles ourselves
            warnings.filterwarnings("ignore", message=".*(TorchScript|pickle protocol).*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
        if blocked:
            raise UserError(
                f"refusing to load {path}: it pickles the Python object {blocked.group(1)!r}, and "
                "unpickling objects can run code (nothing was executed; only tensors are loaded)",
                "if you trust the file, re-save just its state_dict with safetensors.torch.save_file "
                "and load the .safetensors file",
            ) from None
        raise UserError(
            f"refusing to load {path}: it is not a weights-only PyTorch checkpoint "
            f"({_detail(err)}); it is corrupt or holds pickled code, and nothing was executed",
            "re-download it, or convert it to .safetensors in a trusted environment",
        ) from None
    except RuntimeError as err:
        if "TorchScript" in str(err):
            raise UserError(
                f"refusing to load {path}: it is a TorchScript archive (code), not a state_dict",
                "save model.state_dict() with safetensors.torch.save_file and load that file",
            ) from None
        raise _corrupt(path, err) from None
    except (EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise _corrupt(path, err) from None


def _corrupt(path: Path, err: BaseException) -> UserError:
    return UserError(
        f"checkpoint {path} is unreadable or corrupt ({_first_sentence(err)})", "re-download or re-save it"
    )


def _first_sentence(err: BaseException) -> str:
    """First sentence of an exception message's first line (or its type name when it has none)."""
    return first_line(err).split(". ")[0].rstrip(".")[:200]


def _detail(err: BaseException) -> str:
    """The informative line of torch's multi-line weights-only error."""
    m = re.search(r"Unsupported [^\n]*", str(err))
    return m.group(0).strip()[:200] if m else _first_sentence(err)


def _as_state_dict(obj: object, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(
            f"{where} does not hold a state_dict (found {type(obj).__name__})",
            "save model.state_dict() (optionally as {'model': state_dict})",
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(
            f"{where} is not a flat state_dict: {len(bad)} entries are not tensors ({_first(bad)})",
            "save model.state_dict() (optionally as {'model': state_dict})",
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


# ------------------------------------------------------------------------------------ layouts


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return "timm" when keys use timm's ``stem.`` / ``stages.`` prefixes, else "official"."""
    if any(k.startswith(("stem.", "stages.")) for k in state_dict):
        return "timm"
    return "official"


_EF_STEM = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_EF_STEM_INV = {v: k for k, v in _EF_STEM.items()}


def _ef_to_timm(key: str) -> str:
    if m := re.match(r"patch_embed\.(\d)\.(.*)", key):
        key = f"stem.{_EF_STEM.get(m[1], m[1])}.{m[2]}"
    key = _network_to_stages(key, {"proj": "conv", "norm": "norm"})
    key = re.sub(r"layer_scale_(\d)", r"ls\1.gamma", key)
    return re.sub(r"^dist_head\.", "head_dist.", key)


def _ef_from_timm(key: str) -> str:
    if m := re.match(r"stem\.(conv1|norm1|conv2|norm2)\.(.*)", key):
        key = f"patch_embed.{_EF_STEM_INV[m[1]]}.{m[2]}"
    key = _stages_to_network(key, {"conv": "proj", "norm": "norm"})
    key = re.sub(r"ls(\d)\.gamma", r"layer_scale_\1", key)
    return re.sub(r"^head_dist\.", "dist_head.", key)


def _pf_to_timm(key: str) -> str:
    key = re.sub(r"^patch_embed\.proj\.", "stem.conv.", key)
    key = _network_to_stages(key, {"proj": "conv"})
    key = re.sub(r"layer_scale_(\d)", r"layer_scale\1.scale", key)
    key = re.sub(r"^norm\.", "head.norm.", key)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


def _pf_from_timm(key: str) -> str:
    key = re.sub(r"^stem\.conv\.", "patch_embed.proj.", key)
    key = _stages_to_network(key, {"conv": "proj"})
    key = re.sub(r"layer_scale(\d)\.scale", r"layer_scale_\1", key)
    key = re.sub(r"^head\.norm\.", "norm.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


def _network_to_stages(key: str, down_names: dict[str, str]) -> str:
    m = re.match(r"network\.(\d+)\.(.*)", key)
    if not m:
        return key
    n, rest = int(m[1]), m[2]
    if n % 2 == 0:
        return f"stages.{n // 2}.blocks.{rest}"
    child, _, tail = rest.partition(".")
    return f"stages.{(n + 1) // 2}.downsample.{down_names.get(child, child)}.{tail}"


def _stages_to_network(key: str, down_names: dict[str, str]) -> str:
    if m := re.match(r"stages\.(\d+)\.blocks\.(.*)", key):
        return f"network.{2 * int(m[1])}.{m[2]}"
    if m := re.match(r"stages\.(\d+)\.downsample\.(\w+)\.(.*)", key):
        return f"network.{2 * int(m[1]) - 1}.{down_names.get(m[2], m[2])}.{m[3]}"
    return key


# family → (official→timm, timm→official) key maps
_CONVERTERS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "efficientformer": (_ef_to_timm, _ef_from_timm),
    "poolformer": (_pf_to_timm, _pf_from_timm),
}


def official_to_timm(state_dict: Mapping[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Rename an official-layout state dict to timm names (``family``: efficientformer | poolformer)."""
    to_timm, _ = _converter(family)
    return {to_timm(k): v for k, v in state_dict.items()}


def timm_to_official(state_dict: Mapping[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Rename a timm-layout state dict to the official names used by our modules."""
    _, from_timm = _converter(family)
    return {from_timm(k): v for k, v in state_dict.items()}


def _converter(family: str):
    try:
        return _CONVERTERS[family]
    except KeyError:
        raise UserError(
            f"no timm layout conversion for model family {family!r}",
            f"timm checkpoints are supported for {', '.join(_CONVERTERS)}; use an official checkpoint",
        ) from None


def model_family(model: nn.Module) -> str | None:
    """The checkpoint family of a zoo model (None for anything else)."""
    for cls, family in (
        (EfficientFormer, "efficientformer"),
        (EfficientFormerV2, "efficientformer_v2"),
        (PoolFormer, "poolformer"),
    ):
        if isinstance(model, cls):
            return family
    return None


# ------------------------------------------------------------------------------------ loading


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    layout: str = "auto",
    name: str | None = None,
) -> dict:
    """Load weights strictly: every checkpoint tensor is consumed and every shape checked.

    ``layout`` is "auto" (detect), "official" or "timm".  Missing, unexpected or mis-shaped keys
    raise ONE :class:`UserError` listing counts and the first few keys.  Returns
    ``{"layout", "num_tensors", "source"}``.
    """
    if layout not in ("auto", *LAYOUTS):
        raise UserError(f"unknown checkpoint layout {layout!r}", f"use auto, {', '.join(LAYOUTS)}")
    if isinstance(path_or_state_dict, Mapping):
        source = None
        sd = _as_state_dict(path_or_state_dict, "the given state_dict")
    else:
        source = str(path_or_state_dict)
        sd = load_state_dict_file(path_or_state_dict)
    name = name or getattr(model, "zoo_name", None) or type(model).__name__
    detected = detect_layout(sd)
    layout = detected if layout == "auto" else layout
    if layout == "timm":
        family = model_family(model)
        if family is None:
            raise UserError(f"no timm layout conversion for {name}", "use a checkpoint in the model's own names")
        sd = timm_to_official(sd, family)

    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: ckpt {_fmt(sd[k].shape)} vs model {_fmt(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    ]
    mismatched += [
        f"{k}: different attention resolution"
        for k in sd
        if k.endswith("attention_bias_idxs")
        and k in own
        and sd[k].shape == own[k].shape
        and not torch.equal(sd[k].long(), own[k])
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch ({_first(mismatched)})")
        raise UserError(
            f"checkpoint does not match {name}: " + ", ".join(parts),
            f"check the model size and the checkpoint layout (used {layout}, detected {detected})",
        )
    full = {**{k: v for k, v in own.items() if k not in sd}, **sd}
    model.load_state_dict(full, strict=True)
    log.info("loaded %d tensors into %s (%s layout) from %s", len(sd), name, layout, source or "state_dict")
    return {"layout": layout, "num_tensors": len(sd), "source": source}


def _fmt(shape: torch.Size) -> str:
    return str(tuple(shape))


def _first(items: list[str]) -> str:
    head = ", ".join(items[:_SHOW])
    return head + ", …" if len(items) > _SHOW else head
