"""A compiled artifact folder as one value: its path, its manifest and the device profile it was
compiled for.

This is what a target's ``load``, ``profile_ops`` and ``profile_remote`` take, and what
:func:`edgeformer.runtime.load_artifact` returns (with the target attached).  It lives on the ground
floor so targets can take it without reaching up into the orchestration layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeformer.device_profiles import DeviceProfile
from edgeformer.errors import UserError
from edgeformer.manifest import Manifest, read_manifest


@dataclass
class Artifact:
    path: Path
    manifest: Manifest
    profile: DeviceProfile

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Seeded inputs of the manifest's shapes and dtypes (what profiling times)."""
        rng = np.random.default_rng(seed)
        out = []
        for spec in self.manifest.inputs:
            dtype = np.dtype(spec.dtype)
            if np.issubdtype(dtype, np.floating):
                out.append(rng.standard_normal(spec.shape).astype(dtype))
            else:
                out.append(rng.integers(0, 2, spec.shape).astype(dtype))
        return out

    def check_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        if len(inputs) != len(self.manifest.inputs):
            raise UserError(f"the model takes {len(self.manifest.inputs)} input(s), got {len(inputs)}")
        for spec, x in zip(self.manifest.inputs, inputs):
            if list(x.shape) != list(spec.shape):
                raise UserError(
                    f"input {spec.name} has shape {list(x.shape)}, the artifact was compiled for {spec.shape}",
                    "recompile with --input-shape",
                )


def read_artifact(path: str | Path, *, verify_files: bool = True) -> Artifact:
    """The artifact at ``path`` (manifest validated, every file's sha256 checked)."""
    path = Path(path)
    manifest = read_manifest(path, verify_files=verify_files)
    return Artifact(path, manifest, manifest.profile)
