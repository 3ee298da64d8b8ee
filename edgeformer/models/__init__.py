"""The model zoo: a registry of efficient transformer architectures.

Each family lives in its own module and registers :class:`ModelSpec` entries at import.  The
registry imports family modules lazily (by module path) so ``import edgeformer`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeformer.errors import UnknownNameError

# Family modules, imported on first registry access.  Order = listing order of `edgeformer models`.
FAMILY_MODULES: tuple[str, ...] = (
    "edgeformer.models.efficientformer",
    "edgeformer.models.efficientformer_v2",
    "edgeformer.models.poolformer",
    "edgeformer.models.lmuformer",
    "edgeformer.models.pvt_v2",
    "edgeformer.models.ecoformer",
    "edgeformer.models.vit",
)


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry.

    ``build(**kwargs)`` returns a freshly initialised ``nn.Module`` (random weights).
    ``input_shapes`` are the static example input shapes (batch 1) used for export.
    """

    name: str
    family: str
    build: Callable[..., nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]
    paper: str
    description: str = ""
    published_params: float | None = None  # e.g. 12.3e6, from the paper / README
    published_macs: float | None = None  # multiply-accumulates at input_shapes
    # Exact figures for *this* implementation, so `edgeformer models` lists them without building
    # or exporting anything.  Tests check both against the built model and `ir.summary()`.
    params: int | None = None  # sum of numel over model.parameters()
    macs: int | None = None  # total MACs from edgeformer.ir summary at input_shapes
    num_classes: int | None = None
    input_dtypes: tuple[str, ...] = ()  # default float32 for every input
    input_names: tuple[str, ...] = ()  # default "input" / "input_{i}"
    checkpoint_layouts: tuple[str, ...] = ()  # e.g. ("official", "timm")
    tags: tuple[str, ...] = field(default=())

    def example_inputs(self, seed: int = 0, shapes=None) -> tuple[torch.Tensor, ...]:
        """Deterministic example inputs (standard normal) for export and numerics checks."""
        shapes = shapes or self.input_shapes
        gen = torch.Generator().manual_seed(seed)
        dtypes = self.input_dtypes or ("float32",) * len(shapes)
        out = []
        for shape, dt in zip(shapes, dtypes):
            dtype = getattr(torch, dt)
            if dtype.is_floating_point:
                out.append(torch.randn(*shape, generator=gen, dtype=dtype))
            else:
                out.append(torch.randint(0, 2, shape, generator=gen, dtype=dtype))
        return tuple(out)


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; a duplicate name is a bug and raises."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            # A family module that does not exist yet is skipped; any other import error is a bug.
            if err.name != mod:
                raise


def list_models() -> list[ModelSpec]:
    _load_all()
    return list(_REGISTRY.values())


def _normalised(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_spec(name: str) -> ModelSpec:
    """The spec of a zoo name; case and ``-`` vs ``_`` do not matter (``EfficientFormer-L1``)
    when they leave exactly one match."""
    _load_all()
    if name in _REGISTRY:
        return _REGISTRY[name]
    matches = [spec for key, spec in _REGISTRY.items() if _normalised(key) == _normalised(name)]
    if len(matches) == 1:
        return matches[0]
    raise UnknownNameError("model", name, _REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a zoo model in eval mode."""
    return get_spec(name).build(**kwargs).eval()
