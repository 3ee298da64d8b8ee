"""Load a compiled artifact folder and run it: what an app or a script embeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeformer.device_profiles import Profile, parse_profile
from edgeformer.errors import UserError
from edgeformer.manifest import Manifest, read_manifest
from edgeformer.targets import Runner, Target, get_target


def profile_from_manifest(manifest: Manifest) -> Profile:
    data = {k: v for k, v in manifest.profile.items() if v is not None}
    return parse_profile(data, f"manifest profile {manifest.profile.get('name', '?')}")


@dataclass
class LoadedArtifact:
    path: Path
    manifest: Manifest
    profile: Profile
    target: Target

    def runner(self) -> Runner:
        reason = self.target.can_run_here(self.profile)
        if reason:
            raise UserError(
                f"{self.path} ({self.target.name}) cannot run on this machine: {reason}",
                "run it on the device, or use --remote for TVM artifacts",
            )
        return self.target.load(self.path, self.manifest, self.profile)

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
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


def load_artifact(path: str | Path, *, verify_files: bool = True) -> LoadedArtifact:
    path = Path(path)
    manifest = read_manifest(path, verify_files=verify_files)
    target = get_target(manifest.target)
    reason = target.is_available()
    if reason:
        raise UserError(f"{path} needs the {target.name} runtime: {reason}")
    return LoadedArtifact(path, manifest, profile_from_manifest(manifest), target)
