"""Streaming artifacts: one step of a model with explicit state (``edgeformer compile --streaming``).

A streamable ``nn.Module`` offers ``step_model()``: an ``nn.Module`` for one step whose
``forward(frame, flush, *state)`` returns ``{"logits": …, "next_<state>": …}`` (and, for a spiking
model, ``"spikes_<lif>"``), with ``states`` (``(key, shape)`` in input order), ``delay`` (frames of
look-ahead), ``example_inputs()``, ``input_names()``, ``initial_state()`` and ``net`` (the parallel
model it steps).  The LMUFormer zoo models have one
(:class:`edgeformer.models.lmuformer.streaming.StepModel`).

This module builds the manifest's ``streaming`` block (what a host needs to drive the artifact and
nothing more) and the numerics check every streaming compile runs: ``T`` frames and ``delay``
flushes through the artifact on the target's runtime, the last logits against the parallel model
on the same frames, and for a spiking model every spike at every step against the parallel form's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from edgeformer.manifest import TensorSpec
from edgeformer.models.lmuformer import record_spikes
from edgeformer.models.lmuformer.streaming import io_name
from edgeformer.numerics import compare
from edgeformer.runtime import StreamingRunner
from edgeformer.targets import Runner

CHECK_FRAMES = 128  # frames the numerics check streams (fewer when the model's window is shorter)


def block(step: nn.Module, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], frame_period_ms) -> dict:
    """The manifest's ``streaming`` block, from the exported step's input and output specs."""
    ins = {s.name: s for s in inputs}
    outs = {s.name: s for s in outputs}

    def spec(s: TensorSpec) -> dict:
        return {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}

    states = []
    for key, _ in step.states:
        i, o = ins[f"state_{io_name(key)}"], outs[f"next_{io_name(key)}"]
        states.append({"state": key, "input": i.name, "output": o.name, "shape": list(i.shape), "dtype": i.dtype})
        states[-1]["initial"] = 0.0
    spikes = [s.name for s in outputs if s.name.startswith("spikes_")]
    return {
        "frame": spec(ins["frame"]),
        "flush": {
            **spec(ins["flush"]),
            "use": "0 with each frame; at the end of a stream, delay_frames steps with 1 (the frame is "
            "ignored) emit the last tokens; then reset every state to its initial value",
        },
        "logits": {
            **spec(outs["logits"]),
            "use": "mean of the per-token logits emitted so far: the first T - delay_frames tokens after T "
            "frames, all T (equal to the parallel model on those frames) after the flushes",
        },
        "states": states,
        "spikes": spikes,
        "delay_frames": int(step.delay),
        "frame_period_ms": frame_period_ms,
        "check": None,
    }


def _spiking_inputs(net: nn.Module, noise: torch.Tensor):
    """Frames that make the spiking model fire: ``noise`` scaled by whichever of 1, 2, 4, 8, 16 makes
    the most LIFs spike, then the most spikes (random weights rarely reach the threshold at scale
    1), with the parallel model's logits and spikes on them."""
    best = None
    for scale in (1.0, 2.0, 4.0, 8.0, 16.0):
        with torch.no_grad():
            spikes, handles = record_spikes(net)
            try:
                logits = net(noise * scale).numpy()
            finally:
                for h in handles:
                    h.remove()
        firing = (sum(bool(seq[0].any()) for seq in spikes.values()), sum(int(seq[0].sum()) for seq in spikes.values()))
        if best is None or firing > best[0]:
            best = (firing, scale, noise * scale, logits, spikes)
    return best[1:]


def check(runner: Runner, streaming: dict, inputs, outputs, step: nn.Module, tolerances: dict, frames: int = 0):
    """Stream ``frames`` seeded random frames and ``delay`` flushes through ``runner``; compare the
    last logits with the parallel model and, for a spiking model, every spike at every step.
    Returns the ``check`` record (``status`` "passed" or "failed", with the reason)."""
    net = step.net
    frames = frames or min(int(getattr(net, "seq_len", CHECK_FRAMES)), CHECK_FRAMES)
    batch, channels = streaming["frame"]["shape"]
    noise = torch.randn(batch, frames, channels, generator=torch.Generator().manual_seed(0))
    scale, x, reference, want_spikes = _spiking_inputs(net, noise) if step.spiking else (1.0, noise, None, {})
    if reference is None:
        with torch.no_grad():
            reference = net(x).numpy()
    stream = StreamingRunner(runner, streaming, inputs, outputs)
    torch_state = list(step.initial_state())
    got_spikes: dict[str, list[np.ndarray]] = {}
    step.record_gates = True
    try:
        for t in range(frames + step.delay):
            frame = x[:, t].numpy() if t < frames else np.zeros((batch, channels), np.float32)
            if t < frames:
                logits = stream.push(frame)
            else:
                logits = stream.flush_step()
            if step.spiking:  # which LIFs counted this step: the PyTorch step on the same inputs
                with torch.no_grad():
                    out = step(torch.from_numpy(frame), torch.tensor([float(t >= frames)]), *torch_state)
                torch_state = [out[f"next_{io_name(k)}"] for k, _ in step.states]
                for name, gate in step.last_gates.items():
                    if bool(gate.reshape(-1)[0]):
                        got_spikes.setdefault(name, []).append(stream.spikes[f"spikes_{io_name(name)}"])
    finally:
        step.record_gates = False
    report = compare([reference], [logits], **{**tolerances, "names": ["logits"]})
    record = {
        "frames": frames,
        "flush_steps": int(step.delay),
        "inputs": "seeded standard-normal frames" + (f" times {scale:g}" if scale != 1 else ""),
        "logits": {"status": report.status, "max_abs_error": report.max_abs_error, "reason": report.reason},
        "status": report.status,
        "reason": report.reason,
    }
    if step.spiking:
        compared = fired = mismatched = 0
        bad = []
        for name, seq in want_spikes.items():
            ref = seq[0].numpy()  # (B, C, N)
            got = np.stack(got_spikes.get(name, []), axis=-1) if got_spikes.get(name) else np.zeros((batch, 0, 0))
            if got.shape != ref.shape:
                bad.append(f"{name}: {got.shape[-1]} steps, the parallel form {ref.shape[-1]} tokens")
                continue
            compared += ref.size
            fired += int(ref.sum())
            wrong = int((got != ref).sum())
            mismatched += wrong
            if wrong:
                bad.append(f"{name}: {wrong} spikes differ")
        record["spikes"] = {"lifs": len(want_spikes), "compared": compared, "fired": fired, "mismatched": mismatched}
        if bad:
            record["status"] = "failed"
            record["reason"] = "; ".join([record["reason"], *bad[:3]]) if record["reason"] else "; ".join(bad[:3])
    return record
