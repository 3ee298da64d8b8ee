"""Core ML stateful streaming step: every StepModel state a Core ML state (fp16), I/O frame/flush."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer.errors import UserError
from edgeformer.models import get_spec
from edgeformer.models.lmuformer.streaming import StepModel, io_name

ct = pytest.importorskip("coremltools")

from edgeformer.targets.coreml.stateful import StatefulStep, convert_stateful  # noqa: E402


def _step(name: str) -> StepModel:
    torch.manual_seed(0)
    return StepModel(get_spec(name).build().eval())


@pytest.fixture(scope="module", params=["lmuformer_tiny", "spiking_lmuformer_tiny"])
def converted(request, tmp_path_factory):
    step = _step(request.param)
    path = tmp_path_factory.mktemp("coreml_stateful") / f"{request.param}.mlpackage"
    details = convert_stateful(step, step.states, path, frame_shape=step.frame_shape())
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return step, details, spec


def test_every_state_is_a_core_ml_state(converted):
    step, details, spec = converted
    states = list(spec.description.state)
    assert [s.name for s in states] == [f"state_{io_name(k)}" for k, _ in step.states]
    assert [tuple(s.type.stateType.arrayType.shape) for s in states] == [tuple(shape) for _, shape in step.states]
    fp16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    assert all(s.type.stateType.arrayType.dataType == fp16 for s in states)
    assert [s["name"] for s in details["states"]] == [s.name for s in states]


def test_inputs_are_frame_and_flush_only(converted):
    step, details, spec = converted
    inputs = {f.name: tuple(f.type.multiArrayType.shape) for f in spec.description.input}
    assert inputs == {"frame": step.frame_shape(), "flush": (1,)}
    assert [f.name for f in spec.description.input] == ["frame", "flush"] == details["inputs"]


def test_outputs_are_logits_and_spikes(converted):
    step, details, spec = converted
    outputs = [f.name for f in spec.description.output]
    assert outputs[0] == "logits"
    spikes = [n for n in outputs if n.startswith("spikes_")]
    assert len(spikes) == len(step.lifs) and outputs == ["logits", *spikes]
    assert step.spiking == bool(spikes)
    assert not any(n.startswith("next_") for n in outputs)


def test_deployment_target_and_checks(converted):
    _, details, spec = converted
    assert spec.specificationVersion == ct.target.iOS18.value
    assert details["deployment_target"] == "iOS18"
    assert details["checks"] and all(details["checks"].values()), details["checks"]
    assert "structural_problems" not in details


def test_wrapper_keeps_fp16_state_in_buffers():
    """Torch side: each call advances the buffers to the step's next state rounded to fp16."""
    step = _step("lmuformer_tiny")
    wrapper = StatefulStep(step, step.states, step.frame_shape())
    torch.manual_seed(1)
    state = step.initial_state()
    with torch.no_grad():
        for t in range(step.delay + 2):
            frame, flush = torch.randn(step.frame_shape()), torch.tensor([1.0 if t > step.delay else 0.0])
            ref = step(frame, flush, *[s.half().float() for s in state])
            (logits,) = wrapper(frame, flush)
            torch.testing.assert_close(logits, ref["logits"])
            state = [ref[f"next_{io_name(k)}"] for k, _ in step.states]
            for (k, _), want in zip(step.states, state):
                assert torch.equal(getattr(wrapper, f"state_{io_name(k)}"), want.half())


def test_wrong_state_shape_fails(tmp_path):
    step = _step("lmuformer_tiny")
    key, shape = step.states[-1]
    states = [*step.states[:-1], (key, (*shape, 2))]
    with pytest.raises(UserError, match="declared"):
        convert_stateful(step, states, tmp_path / "m.mlpackage", frame_shape=step.frame_shape())
    assert not (tmp_path / "m.mlpackage").exists()


def test_unknown_precision_fails(tmp_path):
    step = _step("lmuformer_tiny")
    with pytest.raises(UserError, match="precision 'int8'"):
        convert_stateful(step, step.states, tmp_path / "m.mlpackage", frame_shape=step.frame_shape(), precision="int8")


class _Accumulate(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("acc", torch.zeros(1, 4))

    def forward(self, x):
        self.acc.copy_(self.acc + x)
        return self.acc * 2


def test_core_ml_rejects_fp32_state():
    """Why the states are fp16: coremltools 9 refuses any other state dtype (revisit if this fails)."""
    program = torch.export.export(_Accumulate().eval(), (torch.zeros(1, 4),)).run_decompositions({})
    with pytest.raises(ValueError, match="fp16"):
        ct.convert(
            program,
            convert_to="mlprogram",
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=(1, 4), dtype=np.float32), name="acc")],
            minimum_deployment_target=ct.target.iOS18,
            skip_model_load=True,
        )
