"""Calibration and evaluation data sets: ``--calib SRC`` (inputs only) and ``--eval SRC`` (inputs and labels).

``SRC`` is one of

* ``digits``: scikit-learn's bundled 8×8 digits, split once (stratified, seeded: 80 % train, 20 %
  held-out "test") whatever the training seed; the train split for calibration, the test split
  for evaluation.  Image models see them bilinearly upsampled to 32×32 with the grey channel
  repeated 3×, LMUFormer models as a sequence of 8 rows (tokens) of 8 pixels (channels).  The
  tiny trained models (``edgeformer/training.py``) are trained and scored on this split.
* a ``.npz`` file: ``x`` (N, …) for a single-input model, or one array per model input named as
  the inputs; ``y`` (N,) integer labels (needed for evaluation).
* a folder of images: class-per-subfolder (sorted names → labels 0..K-1), or images directly in
  the folder (unlabelled: calibration only); ``--preprocess resize=256,crop=224,mean=…,std=…``.
* ``sample-images``: random crops of the two photos scikit-learn ships, unlabelled, for range
  calibration of full-size image models when there is no data at hand.

Bad data (a wrong shape or dtype for the model's inputs, labels missing or outside the model's
classes, an empty set, an unreadable file) is a :class:`~edgeformer.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeformer.errors import UserError
from edgeformer.manifest import TensorSpec

SPLIT_SEED = 0  # the digits train/test split never changes with the training seed
TEST_FRACTION = 0.2
IMAGE_SIZE = 32  # digits image models see 3×32×32

ROLES = ("calib", "eval")
DIGITS = "digits"
SAMPLE_IMAGES = "sample-images"
SAMPLE_IMAGES_CROPS = 64
UNLABELLED_NOTE = "unlabelled, for range calibration only"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224  # for image inputs whose height/width are dynamic
KINDS_TEXT = "'digits', a .npz file, a folder of images or 'sample-images'"


# ------------------------------------------------------------------------------------ digits


@lru_cache(maxsize=1)
def _split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise UserError("the digits data set needs scikit-learn", "pip install 'edgeformer[data]'") from err

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y.numpy()
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def _kind(name_or_kind: str) -> str:
    """``image`` / ``sequence`` as given; a model name: LMUFormers take sequences, the others images."""
    if name_or_kind in ("image", "sequence"):
        return name_or_kind
    return "sequence" if "lmuformer" in name_or_kind else "image"


def to_model_input(images: Tensor, kind: str) -> Tensor:
    """8×8 digits in [0, 1] → model input: ``(B, 3, 32, 32)`` images or ``(B, 8, 8)`` sequences."""
    x = (images - 0.5) / 0.5
    if kind == "sequence":
        return x.contiguous()  # rows are tokens, the 8 pixels of a row its channels
    x = F.interpolate(x.unsqueeze(1), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def digits_dataset(family: str, split: str = "test") -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of the fixed digits split for a model name (e.g. ``pvt_v2_tiny``) or an
    input kind (``image`` / ``sequence``). ``split`` is ``train`` or ``test`` (held out)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown digits split {split!r}", "use 'train' or 'test'")
    x_tr, y_tr, x_te, y_te = _split()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return to_model_input(x, _kind(family)), y.clone()


# ----------------------------------------------------------------------------------- the set


@dataclass(eq=False)  # arrays do not compare with ==; compare sha256 instead
class Dataset:
    """A calibration or evaluation set in the model's own input form.

    ``inputs`` holds one array per model input, each ``(N, *per-sample shape)`` in the input's
    dtype; ``labels`` is ``(N,)`` int64, or None when the set is unlabelled (calibration sets are
    always unlabelled: they are inputs only)."""

    name: str  # human label: "digits (test split)", a path, ...
    source: str  # SRC as given
    role: str  # "calib" | "eval"
    inputs: list[np.ndarray]
    labels: np.ndarray | None
    note: str = ""
    input_names: list[str] = field(default_factory=list)  # the model's input names, in order

    def __len__(self) -> int:
        return len(self.inputs[0]) if self.inputs else 0

    @cached_property
    def sha256(self) -> str:
        """sha256 over the input names, shapes, dtypes and bytes, then the labels, in order."""
        h = hashlib.sha256()
        names = self.input_names or [f"input_{i}" for i in range(len(self.inputs))]
        for name, arr in zip(names, self.inputs):
            h.update(f"input {name} {list(arr.shape)} {arr.dtype.str}\n".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        if self.labels is None:
            h.update(b"labels none\n")
        else:
            labels = np.ascontiguousarray(self.labels, dtype=np.int64)
            h.update(f"labels {list(labels.shape)} {labels.dtype.str}\n".encode())
            h.update(labels.tobytes())
        return h.hexdigest()

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """``n`` samples chosen by a seeded permutation, kept in their original order (``n ≥ len``:
        the set itself)."""
        if n < 1:
            raise UserError(f"cannot take {n} samples of {self.name}", "ask for at least 1 sample")
        if n >= len(self):
            return self
        idx = _choose(len(self), n, seed)
        return replace(
            self,
            name=f"{self.name} [{n} of {len(self)}, seed {seed}]",
            inputs=[a[idx] for a in self.inputs],
            labels=None if self.labels is None else self.labels[idx],
        )

    def batches(self, batch_size: int) -> Iterator[tuple[list[np.ndarray], int]]:
        """``(arrays, real)`` per batch of ``batch_size`` samples; the last batch is padded by
        repeating its last sample, ``real`` says how many of its samples are the set's."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            real = min(batch_size, len(self) - start)
            arrays = []
            for a in self.inputs:
                chunk = a[start : start + real]
                if real < batch_size:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
                arrays.append(np.ascontiguousarray(chunk))
            yield arrays, real

    def to_dict(self) -> dict:
        """What the manifest records about the set."""
        return {
            "name": self.name,
            "source": self.source,
            "role": self.role,
            "sha256": self.sha256,
            "samples": len(self),
            "labelled": self.labels is not None,
            "note": self.note,
        }


def _choose(total: int, n: int, seed: int) -> np.ndarray:
    """The first ``n`` of a seeded permutation of ``range(total)``, sorted."""
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


# ------------------------------------------------------------------------------ preprocessing


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: shorter side resized to ``resize``, centre crop ``crop``, then
    ``(x/255 − mean) / std`` per channel.  None: the model's default (resize = round(H·256/224),
    crop = H, ImageNet mean/std)."""

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


_PREPROCESS_KEYS = ("resize", "crop", "mean", "std")
_PREPROCESS_FIX = "write e.g. --preprocess resize=256,crop=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225"


def parse_preprocess(text: str) -> Preprocess:
    """``resize=256,crop=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225`` (any subset; a
    one-value mean/std applies to every channel)."""
    values: dict[str, list[str]] = {}
    key = None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token:
            key, _, value = (s.strip() for s in token.partition("="))
            if key not in _PREPROCESS_KEYS:
                raise UserError(f"unknown --preprocess key {key!r} in {text!r}", f"use {', '.join(_PREPROCESS_KEYS)}")
            if key in values:
                raise UserError(f"--preprocess gives {key} twice in {text!r}", _PREPROCESS_FIX)
            values[key] = [value]
        elif key is not None:
            values[key].append(token)  # mean=0.485,0.456,0.406: the values run on after the key
        else:
            raise UserError(f"cannot read --preprocess {text!r} at {token!r}", _PREPROCESS_FIX)
    out: dict = {}
    for k in ("resize", "crop"):
        if k in values:
            v = ",".join(values[k])
            if not v.isdigit() or int(v) < 1:
                raise UserError(
                    f"--preprocess {k} must be a positive whole number of pixels, got {v!r}", _PREPROCESS_FIX
                )
            out[k] = int(v)
    for k in ("mean", "std"):
        if k in values:
            try:
                out[k] = tuple(float(v) for v in values[k])
            except ValueError:
                raise UserError(
                    f"--preprocess {k} must be numbers, got {','.join(values[k])!r}", _PREPROCESS_FIX
                ) from None
    if "std" in out and any(s <= 0 for s in out["std"]):
        raise UserError(f"--preprocess std must be positive, got {out['std']}", _PREPROCESS_FIX)
    if "resize" in out and "crop" in out and out["crop"] > out["resize"]:
        raise UserError(
            f"--preprocess crop={out['crop']} is larger than resize={out['resize']}", "crop at most the resized size"
        )
    return Preprocess(**out)


# ---------------------------------------------------------------------------------- load_data


PROBE = "random inputs"


def probe_inputs(example_inputs: Sequence[Tensor], input_names: Sequence[str], n: int = 8, seed: int = 0) -> Dataset:
    """The data an approximation is judged on when no --calib/--eval was given: the model's example
    inputs and ``n - 1`` seeded draws like them (standard normal for float inputs, uniform over the
    example's range for integer ones), unlabelled.  Output error and agreement only: random inputs
    say nothing about accuracy."""
    gen = torch.Generator().manual_seed(seed)
    arrays = []
    for ex in example_inputs:
        draws = [ex.detach()]
        for _ in range(n - 1):
            if ex.dtype.is_floating_point:
                draws.append(torch.randn(ex.shape, generator=gen, dtype=torch.float32).to(ex.dtype))
            else:
                lo, hi = int(ex.min()), int(ex.max())
                draws.append(torch.randint(lo, hi + 1, ex.shape, generator=gen, dtype=ex.dtype))
        arrays.append(torch.cat(draws).numpy())
    return Dataset(
        name=f"{PROBE} (no --calib/--eval: the example inputs and {n - 1} seeded draws like them)",
        source=PROBE,
        role="calib",
        inputs=arrays,
        labels=None,
        note="errors against the exact model only; pass --eval with labelled data to measure accuracy",
        input_names=list(input_names),
    )


def load_data(
    src: str | os.PathLike,
    *,
    role: str,
    inputs: Sequence[TensorSpec],
    num_classes: int | None = None,
    preprocess: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """The data set ``src`` (see the module docstring) for a model with ``inputs`` (batch dimension
    included; -1 = dynamic) and ``num_classes`` outputs.  ``role`` is ``calib`` (inputs only: labels
    are dropped) or ``eval`` (labels required, checked against ``num_classes``).  ``limit`` keeps that
    many samples (a seeded choice; for ``sample-images`` the number of crops)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not inputs:
        raise ValueError("the model has no inputs")
    if limit is not None and limit < 1:
        raise UserError(f"a data limit of {limit} leaves no samples", "give a limit of at least 1, or none")
    source = os.fspath(src)
    inputs = list(inputs)
    pre = parse_preprocess(preprocess) if preprocess else None
    if source == DIGITS:
        _no_preprocess(source, pre)
        ds = _load_digits(role, inputs)
    elif source == SAMPLE_IMAGES:
        ds = _load_sample_images(role, inputs, pre, limit or SAMPLE_IMAGES_CROPS, seed)
    else:
        path = Path(source)
        if path.is_dir():
            ds = _load_folder(path, source, role, inputs, num_classes, pre, limit, seed)
        elif path.is_file() and path.suffix.lower() == ".npz":
            _no_preprocess(source, pre)
            ds = _load_npz(path, source, role, inputs)
        elif path.exists():
            raise UserError(f"data source {source} is not a .npz file or a folder", f"use {KINDS_TEXT}")
        else:
            raise UserError(f"no data source {source!r}: no such file or folder", f"use {KINDS_TEXT}")
    if len(ds) == 0:
        raise UserError(f"data set {ds.name} is empty", "give a source with at least one sample")
    _check_finite(ds)
    if role == "calib":
        ds = replace(ds, labels=None)
    else:
        _check_labels(ds, num_classes)
    if limit is not None and source != SAMPLE_IMAGES:
        ds = ds.subset(limit, seed)
    return ds


def _no_preprocess(source: str, pre: Preprocess | None) -> None:
    if pre is not None:
        raise UserError(
            f"--preprocess does not apply to {source}: it is for image folders and sample-images",
            "leave --preprocess out",
        )


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join("?" if d < 0 else str(d) for d in shape) if shape else "scalar"


def _fits(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(e < 0 or s == e for s, e in zip(shape, expected))


def _input_text(inputs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {_shape_text(t.shape)} {t.dtype}" for t in inputs)


def _np_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        raise UserError(
            f"model input {spec.name!r} is {spec.dtype}, which --calib/--eval data cannot provide",
            "feed the model float32/float16 or integer inputs",
        ) from None


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


def _image_input(inputs: Sequence[TensorSpec], source: str) -> tuple[TensorSpec, int, int]:
    """The single ``(B, 3, H, W)`` float input (H, W: -1 when dynamic) or a UserError."""
    shape = list(inputs[0].shape)
    if len(inputs) != 1 or len(shape) != 4 or shape[1] not in (3, -1) or not _is_float(_np_dtype(inputs[0])):
        raise UserError(
            f"{source} provides 3-channel images but the model takes {_input_text(inputs)}",
            "give a .npz with arrays named as the model's inputs",
        )
    return inputs[0], shape[2], shape[3]


def _load_digits(role: str, inputs: list[TensorSpec]) -> Dataset:
    spec = inputs[0]
    kind = None
    if len(inputs) == 1 and _is_float(_np_dtype(spec)):
        if _fits([1, 3, IMAGE_SIZE, IMAGE_SIZE], spec.shape):
            kind = "image"
        elif _fits([1, 8, 8], spec.shape):
            kind = "sequence"
    if kind is None:
        raise UserError(
            f"digits provides 3×{IMAGE_SIZE}×{IMAGE_SIZE} images or 8×8 sequences but the model takes "
            f"{_input_text(inputs)}",
            "use --calib sample-images for 224×224 image models, or a .npz with the model's inputs",
        )
    split = "train" if role == "calib" else "test"
    x, y = digits_dataset(kind, split)
    return Dataset(
        name=f"digits ({split} split)",
        source=DIGITS,
        role=role,
        inputs=[x.numpy().astype(_np_dtype(spec), copy=False)],
        labels=y.numpy().astype(np.int64, copy=False),
        input_names=[spec.name],
    )


def _normalise(pre: Preprocess | None) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray((pre and pre.mean) or IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray((pre and pre.std) or IMAGENET_STD, dtype=np.float32)
    for what, v in (("mean", mean), ("std", std)):
        if len(v) not in (1, 3):
            raise UserError(f"--preprocess {what} has {len(v)} values for 3-channel images", "give 1 or 3 values")
    return mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)


def _output_size(h: int, w: int, pre: Preprocess | None) -> tuple[int, int]:
    """The model's image height and width; a dynamic one from ``--preprocess crop`` (default 224).
    A crop that disagrees with a fixed size is an error."""
    crop = pre.crop if pre else None
    if crop is not None and any(d >= 0 and d != crop for d in (h, w)):
        raise UserError(
            f"--preprocess crop={crop} gives {crop}×{crop} images but the model takes {_shape_text([h, w])}",
            f"leave crop out or use crop={h if h >= 0 else w}",
        )
    fallback = crop or DEFAULT_IMAGE_SIZE
    return (h if h >= 0 else fallback), (w if w >= 0 else fallback)


def _pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise UserError("image data needs Pillow", "pip install 'edgeformer[data]'") from err
    return Image


def _to_array(img, mean: np.ndarray, std: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An RGB PIL image → ``(3, H, W)`` normalised."""
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((x - mean) / std).astype(dtype, copy=False)


@lru_cache(maxsize=1)
def _sample_photos() -> tuple[np.ndarray, ...]:
    _pil()
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as err:
        raise UserError("sample-images needs scikit-learn", "pip install 'edgeformer[data]'") from err
    return tuple(load_sample_images().images)


def _load_sample_images(role: str, inputs: list[TensorSpec], pre: Preprocess | None, crops: int, seed: int) -> Dataset:
    if role == "eval":
        raise UserError(
            f"sample-images has no labels: it is {UNLABELLED_NOTE}",
            "evaluate with --eval digits, a .npz with labels y, or a class-per-subfolder image folder",
        )
    spec, h, w = _image_input(inputs, SAMPLE_IMAGES)
    out_h, out_w = _output_size(h, w, pre)
    mean, std = _normalise(pre)
    dtype = _np_dtype(spec)
    Image = _pil()
    photos = _sample_photos()
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(crops):
        photo = photos[int(rng.integers(len(photos)))]
        ph, pw = photo.shape[:2]
        # torchvision's RandomResizedCrop: area 30–100 %, aspect ratio 3/4–4/3 (log-uniform)
        for _attempt in range(10):
            area = ph * pw * rng.uniform(0.3, 1.0)
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
            if 0 < cw <= pw and 0 < ch <= ph:
                break
        else:
            ch = cw = min(ph, pw)
        top, left = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
        img = Image.fromarray(photo[top : top + ch, left : left + cw]).resize((out_w, out_h), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        samples.append(_to_array(img, mean, std, dtype))
    return Dataset(
        name=f"{SAMPLE_IMAGES} ({crops} random crops; {UNLABELLED_NOTE})",
        source=SAMPLE_IMAGES,
        role=role,
        inputs=[np.stack(samples)],
        labels=None,
        note=UNLABELLED_NOTE,
        input_names=[spec.name],
    )


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _load_folder(
    folder: Path,
    source: str,
    role: str,
    inputs: list[TensorSpec],
    num_classes: int | None,
    pre: Preprocess | None,
    limit: int | None,
    seed: int,
) -> Dataset:
    spec, h, w = _image_input(inputs, f"image folder {source}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files, labels = [], []
        for label, cls in enumerate(classes):
            found = _images_in(folder / cls, recursive=True)
            files += found
            labels += [label] * len(found)
        labels_arr: np.ndarray | None = np.asarray(labels, dtype=np.int64)
    else:
        if role == "eval":
            raise UserError(
                f"image folder {source} has no class subfolders, so its images are unlabelled",
                "evaluate with a class-per-subfolder folder (one subfolder per class), or use it with --calib",
            )
        files, labels_arr = _images_in(folder, recursive=False), None
    if role == "eval" and num_classes is not None and len(classes) > num_classes:
        raise UserError(
            f"image folder {source} has {len(classes)} class subfolders but the model has {num_classes} classes",
            f"keep at most {num_classes} subfolders, named so that their sorted order is the model's class order",
        )
    if not files:
        raise UserError(
            f"image folder {source} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
            "put images in it, one subfolder per class for --eval",
        )
    if limit is not None and limit < len(files):  # choose before decoding: as Dataset.subset would
        idx = _choose(len(files), limit, seed)
        files = [files[i] for i in idx]
        labels_arr = None if labels_arr is None else labels_arr[idx]
    out_h, out_w = _output_size(h, w, pre)
    resize = (pre.resize if pre else None) or round(min(out_h, out_w) * 256 / 224)
    if resize < max(out_h, out_w):
        raise UserError(
            f"--preprocess resize={resize} is smaller than the model's {out_h}×{out_w} crop",
            f"use resize ≥ {max(out_h, out_w)}",
        )
    mean, std = _normalise(pre)
    dtype = _np_dtype(spec)
    Image = _pil()
    samples = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise UserError(
                f"cannot read image {path}: {' '.join(str(err).split()) or type(err).__name__}",
                "remove or replace the file",
            ) from None
        scale = resize / min(img.size)
        size = (max(out_w, round(img.width * scale)), max(out_h, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR)
        left, top = (img.width - out_w) // 2, (img.height - out_h) // 2
        img = img.crop((left, top, left + out_w, top + out_h))
        samples.append(_to_array(img, mean, std, dtype))
    if classes:
        name = f"{source} ({len(classes)} classes)"
    else:
        name = source
    return Dataset(
        name=name,
        source=source,
        role=role,
        inputs=[np.stack(samples)],
        labels=labels_arr,
        note="" if classes else "unlabelled",
        input_names=[spec.name],
    )


def _load_npz(path: Path, source: str, role: str, inputs: list[TensorSpec]) -> Dataset:
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise UserError(
                f"{source} is a single array, not a .npz archive", "save it with numpy.savez(path, x=..., y=...)"
            )
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - np.load raises OSError, ValueError, BadZipFile, EOFError...
        raise UserError(f"cannot load {source}: {' '.join(str(err).split())}", "save it with numpy.savez") from None
    with npz:
        names = [t.name for t in inputs]
        if len(inputs) == 1 and names[0] not in npz.files:
            keys = ["x"]
        else:
            keys = names
        missing = [k for k in keys if k not in npz.files]
        if missing:
            if len(inputs) > 1 and "x" in npz.files:
                problem = f"{source} has one array 'x' but the model has several inputs ({', '.join(names)})"
                fix = "several inputs must be named: save one array per input, named as the inputs"
            else:
                held = ", ".join(npz.files) or "nothing"
                problem = f"{source} has no array {', '.join(repr(k) for k in missing)} (it holds {held})"
                if keys == ["x"]:
                    fix = f"save the input as x (or {names[0]})"
                else:
                    fix = f"save one array per model input, named {', '.join(names)}"
            raise UserError(problem, fix)
        arrays = [_npz_array(npz, k, source) for k in keys]
        labels = _npz_array(npz, "y", source) if "y" in npz.files else None
    out = []
    for key, arr, spec in zip(keys, arrays, inputs):
        out.append(_conform(arr, key, spec, source))
    n = len(out[0])
    for key, arr in zip(keys, out):
        if len(arr) != n:
            raise UserError(
                f"{source}: {keys[0]} has {n} samples but {key} has {len(arr)}", "give every input the same N"
            )
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n:
            raise UserError(
                f"{source}: labels y have shape {_shape_text(labels.shape)}, expected ({n},) for {n} samples",
                "save y as one integer label per sample",
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{source}: labels y are {labels.dtype}, not integers", "save y as an integer array")
        labels = labels.astype(np.int64)
    elif role == "eval":
        raise UserError(
            f"{source} has no labels y, which --eval needs",
            "add y (N,) integer labels to the .npz, or use it with --calib (inputs only)",
        )
    return Dataset(name=source, source=source, role=role, inputs=out, labels=labels, input_names=names)


def _npz_array(npz, key: str, source: str) -> np.ndarray:
    try:
        return npz[key]
    except Exception as err:  # noqa: BLE001 - object arrays (pickles), truncated members
        raise UserError(
            f"cannot load array {key!r} from {source}: {' '.join(str(err).split())}",
            "save plain numeric arrays (no Python objects)",
        ) from None


def _conform(arr: np.ndarray, key: str, spec: TensorSpec, source: str) -> np.ndarray:
    """``arr`` checked against the model input ``spec`` and cast to its dtype."""
    want = _np_dtype(spec)
    per_sample = list(spec.shape[1:])
    if arr.ndim == 0 or not _fits(arr.shape[1:], per_sample):
        got = _shape_text(arr.shape[1:]) if arr.ndim else "a scalar"
        raise UserError(
            f"{source}: {key} has per-sample shape {got} (array {_shape_text(arr.shape)}) "
            f"but model input {spec.name!r} takes {_shape_text(per_sample)}",
            f"save {key} as (N, {', '.join('?' if d < 0 else str(d) for d in per_sample)})",
        )
    if _is_float(want):
        ok = _is_float(arr.dtype)
    elif want == np.bool_:
        ok = arr.dtype == np.bool_
    else:
        ok = np.issubdtype(arr.dtype, np.integer) and _fits_integers(arr, want)
    if not ok:
        raise UserError(
            f"{source}: {key} is {arr.dtype} but model input {spec.name!r} is {spec.dtype}",
            f"save {key} as {spec.dtype}",
        )
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _fits_integers(arr: np.ndarray, want: np.dtype) -> bool:
    if arr.size == 0 or np.can_cast(arr.dtype, want):
        return True
    info = np.iinfo(want)
    return bool(arr.min() >= info.min and arr.max() <= info.max)


def _check_finite(ds: Dataset) -> None:
    for name, arr in zip(ds.input_names, ds.inputs):
        if _is_float(arr.dtype) and not np.isfinite(arr).all():
            raise UserError(f"data set {ds.name}: input {name!r} holds NaN or infinite values", "clean the data")


def _check_labels(ds: Dataset, num_classes: int | None) -> None:
    if ds.labels is None:
        raise UserError(f"data set {ds.name} is unlabelled", "--eval needs labels; use --calib for unlabelled data")
    if num_classes is None or len(ds.labels) == 0:
        return
    low, high = int(ds.labels.min()), int(ds.labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise UserError(
            f"data set {ds.name} has label {bad}, outside the model's {num_classes} classes (0..{num_classes - 1})",
            "evaluate with data whose labels are the model's classes",
        )
