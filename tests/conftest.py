"""Suite-wide fixtures: an isolated compile cache, small thread counts, tiny model factories."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """These tests run many small ops; on a shared 2-core machine a second OpenMP thread only
    spin-waits (3-10× slower under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.head(x.mean((2, 3)))

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 4)
            self.b = nn.Linear(5, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    def tiny():
        return Tiny()

    def two_inputs():
        return TwoInputs()

    def not_a_module():
        return {"weights": 1}

    NUMBER = 3
    """
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own compile/tuning cache so tests never see each other's artifacts.
    Runtime downloads for bundles (sha256-pinned or pip-verified wheels) stay in the user's cache."""
    monkeypatch.setenv("EDGEFORMER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    if not os.environ.get("EDGEFORMER_RUNTIME_CACHE"):
        monkeypatch.setenv("EDGEFORMER_RUNTIME_CACHE", str(Path.home() / ".cache" / "edgeformer" / "runtimes"))


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A user's own module file `mymodels.py` importable as `mymodels:tiny` from the working folder."""
    (tmp_path / "mymodels.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys

    sys.modules.pop("mymodels", None)


# Trained tiny digits models for the accuracy tests: short runs of the recipes (accuracy is only
# meaningful on trained weights).  Epochs chosen so each trains in ~10-20 s on 2 cores and
# reaches > 90 % held-out top-1; trained once per session.
TRAINED_EPOCHS = {"poolformer_tiny": 5, "efficientformer_tiny": 5, "lmuformer_tiny": 8, "pvt_v2_tiny": 8, "vit_tiny": 8}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """``trained(name) -> Path`` of a safetensors checkpoint of the tiny model trained on digits."""
    from edgeformer.training import train

    made: dict = {}

    def get(name: str):
        if name not in made:
            out = tmp_path_factory.mktemp(f"trained-{name}") / "model.safetensors"
            result = train(name, out, epochs=TRAINED_EPOCHS.get(name, 4), seed=0, threads=2)
            made[name] = (out, result)
        return made[name][0]

    return get
