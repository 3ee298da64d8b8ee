"""Load a compiled artifact folder and run it: what an app or a script embeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

    def streaming_runner(self, state: dict | None = None) -> StreamingRunner:
        """A :class:`StreamingRunner` for a streaming artifact (``compile --streaming``)."""
        if not self.manifest.streaming:
            raise UserError(
                f"{self.path} is not a streaming artifact (its manifest has no streaming block)",
                "compile it with --streaming",
            )
        m = self.manifest
        return StreamingRunner(self.runner(), m.streaming, m.inputs, m.outputs, state)


def load_artifact(path: str | Path, *, verify_files: bool = True) -> LoadedArtifact:
    art = read_artifact(path, verify_files=verify_files)
    target = get_target(art.manifest.target)
    reason = target.is_available()
    if reason:
        raise UserError(f"{art.path} needs the {target.name} runtime: {reason}")
    return LoadedArtifact(art.path, art.manifest, art.profile, target)


class StreamingRunner:
    """Drive a streaming artifact (``compile --streaming``) frame by frame, carrying its state.

    ``push(frame)`` feeds one frame ``(B, C_in)`` and returns the logits so far; ``flush()`` runs the
    ``delay_frames`` flush steps and returns the logits of the whole stream (the parallel model's
    output on every frame pushed); ``reset()`` zeroes the state for the next stream; ``run(frames)``
    is reset, every frame of ``(B, T, C_in)``, flush.  ``spikes`` holds the last step's spike
    outputs of a spiking model.  Built from the manifest's ``streaming`` block alone.
    """

    def __init__(self, runner: Runner, streaming: dict, inputs, outputs, state: dict | None = None):
        self.runner, self.block = runner, streaming
        self.input_names = [s.name for s in inputs]
        self.output_names = [s.name for s in outputs]
        self.frame_name, self.flush_name = streaming["frame"]["name"], streaming["flush"]["name"]
        self.frame_shape = tuple(streaming["frame"]["shape"])
        self.frame_dtype = np.dtype(streaming["frame"]["dtype"])
        self.states = {s["input"]: s for s in streaming["states"]}
        self.next_of = {s["output"]: s["input"] for s in streaming["states"]}
        self.spikes: dict[str, np.ndarray] = {}
        self.reset()
        if state is not None:
            self.set_state(state)

    @property
    def delay(self) -> int:
        return int(self.block["delay_frames"])

    def reset(self) -> None:
        """Every state to its initial value (the start of a new stream)."""
        self.state = {
            name: np.full(s["shape"], s.get("initial", 0.0), dtype=np.dtype(s["dtype"]))
            for name, s in self.states.items()
        }

    def set_state(self, state: dict) -> None:
        """Replace state tensors (keyed by input name or state key), checking each shape and dtype."""
        by_key = {s["state"]: name for name, s in self.states.items()}
        for key, value in state.items():
            name = key if key in self.states else by_key.get(key)
            if name is None:
                raise UserError(
                    f"state {key!r} is not a state of this artifact", f"its states: {', '.join(sorted(by_key))}"
                )
            value = np.asarray(value)
            want = self.states[name]
            if list(value.shape) != list(want["shape"]):
                raise UserError(
                    f"state {want['state']} has shape {list(value.shape)}, the artifact expects {want['shape']}",
                    "pass the state the artifact returned (manifest streaming.states), or reset()",
                )
            self.state[name] = value.astype(np.dtype(want["dtype"]), copy=False)

    def _step(self, frame: np.ndarray, flush: float) -> np.ndarray:
        feed = dict(self.state)
        feed[self.frame_name] = frame
        feed[self.flush_name] = np.full(self.block["flush"]["shape"], flush, dtype=np.float32)
        outs = self.runner.run([feed[n] for n in self.input_names])
        logits = None
        for name, value in zip(self.output_names, outs):
            value = np.asarray(value)
            if name in self.next_of:
                self.state[self.next_of[name]] = value
            elif name == self.block["logits"]["name"]:
                logits = value
            elif name.startswith("spikes_"):
                self.spikes[name] = value
        return logits

    def push(self, frame) -> np.ndarray:
        frame = np.asarray(frame, dtype=self.frame_dtype)
        if frame.shape != self.frame_shape:
            raise UserError(
                f"a frame has shape {list(frame.shape)}, the artifact streams frames of {list(self.frame_shape)}",
                "push one frame (batch, channels) at a time; recompile with --input-shape for another size",
            )
        return self._step(frame, 0.0)

    def flush_step(self) -> np.ndarray:
        return self._step(np.zeros(self.frame_shape, self.frame_dtype), 1.0)

    def flush(self) -> np.ndarray:
        logits = None
        for _ in range(self.delay):
            logits = self.flush_step()
        return logits

    def run(self, frames) -> np.ndarray:
        frames = np.asarray(frames, dtype=self.frame_dtype)
        self.reset()
        for t in range(frames.shape[1]):
            self.push(frames[:, t])
        logits = self.flush()
        self.reset()
        return logits

    def close(self) -> None:
        self.runner.close()
