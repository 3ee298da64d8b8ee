"""Multiplies and additions of one forward pass of any model, and their energy.

:func:`count_mul_add` counts with forward hooks:

* ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` leaves: ``k`` products and ``k − 1`` additions per
  output, plus one for a bias;
* any module that computes something outside its child modules reports it itself through a method
  ``_extra_mul_add(inputs, output) -> (mul, add)`` (e.g. the attention products of PVTv2's
  ``SRAttention``, the hashing and Hamming attention of EcoFormer's ``EcoFormerAttention``).

Normalisation, activations, softmax/exp and residual adds are not counted, as in the usual MAC
counters. :attr:`CostReport.energy_pj` is ``3.7 pJ·mul + 0.9 pJ·add`` (45 nm fp32, EcoFormer's
``get_energy.py`` model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

MUL_PJ, ADD_PJ = 3.7, 0.9  # 45 nm energy per fp32 multiply / add, as in EcoFormer's get_energy.py


@dataclass
class CostReport:
    """Multiplies and additions of one forward pass, and the energy under EcoFormer's model."""

    mul: int
    add: int
    by_module: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def energy_pj(self) -> float:
        return MUL_PJ * self.mul + ADD_PJ * self.add

    def format(self) -> str:
        return f"mul {self.mul / 1e9:.3f} B, add {self.add / 1e9:.3f} B, energy {self.energy_pj / 1e9:.3f} B pJ"


def _linear_cost(mod: nn.Linear, inputs, output) -> tuple[int, int]:
    rows = inputs[0].numel() // mod.in_features
    outs = rows * mod.out_features
    return outs * mod.in_features, outs * (mod.in_features - 1) + (outs if mod.bias is not None else 0)


def _conv_cost(mod: nn.Conv1d | nn.Conv2d, inputs, output) -> tuple[int, int]:
    per_out = (mod.in_channels // mod.groups) * int(torch.tensor(mod.kernel_size).prod())
    outs = output.numel()
    return outs * per_out, outs * (per_out - 1) + (outs if mod.bias is not None else 0)


_LEAF_COSTS = {nn.Linear: _linear_cost, nn.Conv1d: _conv_cost, nn.Conv2d: _conv_cost}


@torch.no_grad()
def count_mul_add(model: nn.Module, *inputs: Tensor) -> CostReport:
    """Count multiplies and additions of ``model(*inputs)`` with forward hooks.

    Linear/Conv: ``k`` products and ``k − 1`` additions per output, plus one for a bias.
    Modules with an ``_extra_mul_add(inputs, output)`` method add their own non-module ops
    (attention products, hashing). Normalisation, activations, softmax/exp and residual adds are
    not counted, as in the usual MAC counters.
    """
    by_module: dict[str, tuple[int, int]] = {}

    def make_hook(name: str, fn):
        def hook(mod, args, out):
            mul, add = fn(mod, args, out)
            prev = by_module.get(name, (0, 0))
            by_module[name] = (prev[0] + mul, prev[1] + add)

        return hook

    handles = []
    for name, mod in model.named_modules():
        fn = _LEAF_COSTS.get(type(mod))
        if fn is None and hasattr(mod, "_extra_mul_add"):
            fn = type(mod)._extra_mul_add
        if fn is not None:
            handles.append(mod.register_forward_hook(make_hook(name, fn)))
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return CostReport(
        mul=sum(m for m, _ in by_module.values()), add=sum(a for _, a in by_module.values()), by_module=by_module
    )


__all__ = ["ADD_PJ", "MUL_PJ", "CostReport", "count_mul_add"]
