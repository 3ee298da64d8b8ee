"""Load a compiled artifact folder and run it: what an app or a script embeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeformer.artifact import Artifact, read_artifact
from edgeformer.errors import UserError
from edgeformer.targets import Runner, Target, get_target


@dataclass
class LoadedArtifact(Artifact):
    """An :class:`~edgeformer.artifact.Artifact` with its target, ready to run."""

    target: Target | None = None

    def runner(self) -> Runner:
        reason = self.target.can_run_here(self.profile)
        if reason:
            raise UserError(
                f"{self.path} ({self.target.name}) cannot run on this machine: {reason}",
                "run it on the device, or use --remote for TVM artifacts",
            )
        return self.target.load(self)


def load_artifact(path: str | Path, *, verify_files: bool = True) -> LoadedArtifact:
    art = read_artifact(path, verify_files=verify_files)
    target = get_target(art.manifest.target)
    reason = target.is_available()
    if reason:
        raise UserError(f"{art.path} needs the {target.name} runtime: {reason}")
    return LoadedArtifact(art.path, art.manifest, art.profile, target)
