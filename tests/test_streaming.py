"""``compile --streaming``: the step artifact, its manifest block, its check on every runtime, the
streaming runner and profile, and the refusals (docs/streaming.md)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeformer.compiler import compile as compile_model
from edgeformer.errors import UserError
from edgeformer.manifest import read_manifest, validate
from edgeformer.models import get_spec
from edgeformer.models.lmuformer import record_spikes
from edgeformer.models.lmuformer.streaming import StepModel, io_name
from edgeformer.profiling import profile_artifact
from edgeformer.runtime import load_artifact
from edgeformer.sources import load_model
from tests.test_cli import assert_user_error, run_cli

TINY = ("lmuformer_tiny", "spiking_lmuformer_tiny")


def _net(name: str, seed: int = 0):
    torch.manual_seed(seed)
    net = get_spec(name).build().eval()
    for m in net.modules():  # live BatchNorm statistics, so LIFs fire on random frames
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 1.5)
    return net


def _stream_torch(step: StepModel, x: torch.Tensor):
    """Drive the PyTorch step over ``x`` (B, T, C) and ``delay`` flushes; the logits after each step."""
    state, outs = step.initial_state(), []
    frames = x.shape[1]
    with torch.no_grad():
        for t in range(frames + step.delay):
            frame = x[:, t] if t < frames else torch.zeros_like(x[:, 0])
            out = step(frame, torch.tensor([float(t >= frames)]), *state)
            state = [out[f"next_{io_name(k)}"] for k, _ in step.states]
            outs.append(out["logits"])
    return outs


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("frames", [1, 3, 8])
def test_the_step_model_streams_to_the_parallel_output(name, frames):
    net = _net(name)
    step = StepModel(net)
    x = torch.randn(1, frames, 8, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        ref = net(x)
        per_token = net.forward_tokens(x)
    outs = _stream_torch(step, x)
    assert torch.allclose(outs[-1], ref, atol=1e-6), (outs[-1] - ref).abs().max()
    # before the flushes the logits cover the tokens whose look-ahead is complete
    if frames > step.delay:
        want = per_token[:, : frames - step.delay].mean(1)
        assert torch.allclose(outs[frames - 1], want, atol=1e-6)


def test_spiking_step_spikes_equal_the_parallel_spikes_at_every_step():
    net = _net("spiking_lmuformer_tiny")
    step = StepModel(net)
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        want, handles = record_spikes(net)
        net(x)
        for h in handles:
            h.remove()
    got: dict[str, list] = {}
    state = step.initial_state()
    step.record_gates = True
    with torch.no_grad():
        for t in range(8 + step.delay):
            frame = x[:, t] if t < 8 else torch.zeros(1, 8)
            out = step(frame, torch.tensor([float(t >= 8)]), *state)
            state = [out[f"next_{io_name(k)}"] for k, _ in step.states]
            for n, gate in step.last_gates.items():
                if bool(gate.reshape(-1)[0]):
                    got.setdefault(n, []).append(out[f"spikes_{io_name(n)}"])
    fired = 0
    for n, seq in want.items():
        stacked = torch.stack(got[n], dim=-1)
        assert torch.equal(stacked, seq[0]), n
        fired += int(seq[0].sum())
    assert fired > 20  # the comparison saw spikes, not only zeros


@pytest.fixture(scope="module")
def ort_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {n: compile_model(n, "host-ort", root / n, streaming=True, use_cache=False).path for n in TINY}


@pytest.mark.parametrize("name", TINY)
def test_the_manifest_streaming_block_is_complete(ort_artifacts, name):
    data = json.loads((ort_artifacts[name] / "manifest.json").read_text())
    validate(data, "manifest")
    s = data["streaming"]
    assert s["frame"] == {"name": "frame", "shape": [1, 8], "dtype": "float32"}
    assert s["flush"]["shape"] == [1] and s["logits"]["shape"] == [1, 10]
    assert s["delay_frames"] == 5 and s["frame_period_ms"] is None
    inputs = {t["name"]: t for t in data["inputs"]}
    outputs = {t["name"]: t for t in data["outputs"]}
    assert set(inputs) == {"frame", "flush", *(st["input"] for st in s["states"])}
    for st in s["states"]:  # every state input has its output, same shape and dtype, initial 0
        assert inputs[st["input"]]["shape"] == outputs[st["output"]]["shape"] == st["shape"]
        assert st["dtype"] == "float32" and st["initial"] == 0.0
    kinds = " ".join(st["state"] for st in s["states"])
    for part in ("steps", "flushes", "#window", "#raw", "logit_sum", "logit_count"):
        assert part in kinds
    assert ("lmu.memory" in kinds) and (("_lif" in kinds) == (name.startswith("spiking")))
    assert s["check"]["status"] == "passed" and s["check"]["frames"] == 8
    if name.startswith("spiking"):
        assert s["spikes"] and s["check"]["spikes"]["mismatched"] == 0
        assert s["check"]["spikes"]["fired"] > 0
        assert s["check"]["spikes"]["lifs"] == len(s["spikes"])


@pytest.mark.parametrize("name", TINY)
def test_onnxruntime_alone_streams_the_artifact_from_its_manifest(ort_artifacts, name):
    """A host with onnxruntime and the manifest, without edgeformer's runner, gets the parallel result."""
    folder = ort_artifacts[name]
    m = json.loads((folder / "manifest.json").read_text())
    s = m["streaming"]
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    state = {st["input"]: np.full(st["shape"], st["initial"], dtype=st["dtype"]) for st in s["states"]}
    nxt = {st["output"]: st["input"] for st in s["states"]}
    out_names = [o.name for o in sess.get_outputs()]
    x = np.random.default_rng(3).standard_normal((1, 8, 8)).astype(np.float32)
    frames = [(x[:, t], 0.0) for t in range(x.shape[1])]
    frames += [(np.zeros(s["frame"]["shape"], np.float32), 1.0)] * s["delay_frames"]
    for frame, flush in frames:
        feed = {**state, s["frame"]["name"]: frame, s["flush"]["name"]: np.array([flush], np.float32)}
        outs = dict(zip(out_names, sess.run(None, feed)))
        state = {nxt[k]: v for k, v in outs.items() if k in nxt}
        logits = outs[s["logits"]["name"]]
    net = load_model(name).module  # the zoo's seeded weights, as compiled
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5)


def test_the_streaming_runner_and_profile(ort_artifacts, tmp_path):
    folder = ort_artifacts["spiking_lmuformer_tiny"]
    art = load_artifact(folder)
    stream = art.streaming_runner()
    x = np.random.default_rng(4).standard_normal((1, 8, 8)).astype(np.float32)
    net = load_model("spiking_lmuformer_tiny").module
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(stream.run(x), ref, atol=1e-5)
    np.testing.assert_allclose(stream.run(x), ref, atol=1e-5)  # run() resets: the same again
    stream.close()
    report = profile_artifact(folder, min_runs=20, min_seconds=0.05, output=tmp_path / "p.json", frame_period_ms=8)
    s = json.loads((tmp_path / "p.json").read_text())["streaming"]
    assert s == report.streaming
    assert s["frame_period_ms"] == 8 and s["frame_period_origin"] == "--frame-period-ms"
    assert 0 < s["frame_ms"]["median"] <= s["frame_ms"]["p90"] <= s["frame_ms"]["p99"]
    assert s["real_time_factor"] == pytest.approx(s["frame_ms"]["median"] / 8)
    assert s["reset_ms"] >= 0 and s["frames"] >= 20


def test_a_state_of_the_wrong_shape_is_one_clear_error(ort_artifacts, tmp_path, capsys):
    art = load_artifact(ort_artifacts["lmuformer_tiny"])
    st = art.manifest.streaming["states"][2]  # the first window, (1, 8, 2)
    with pytest.raises(UserError, match=r"has shape \[1, 3\], the artifact expects"):
        art.streaming_runner({st["state"]: np.zeros((1, 3), np.float32)})
    bad = tmp_path / "state.npz"
    np.savez(bad, **{st["input"]: np.zeros((4,), np.float32)})
    assert_user_error(capsys, ["profile", str(ort_artifacts["lmuformer_tiny"]), "--state", str(bad)], "has shape [4]")
    with pytest.raises(UserError, match="a frame has shape"):
        art.streaming_runner().push(np.zeros((1, 9), np.float32))


def test_a_model_without_a_step_interface_is_refused(tmp_path, capsys):
    out = tmp_path / "a"
    assert_user_error(capsys, ["compile", "poolformer_tiny", "--streaming", "-o", str(out)], "offers no step interface")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_streaming_on_a_profile_that_cannot_stream_is_refused(tmp_path, capsys):
    out = tmp_path / "a"
    argv = ["compile", "lmuformer_tiny", "--streaming", "--profile", "host-ort-int8", "-o", str(out)]
    assert_user_error(capsys, argv, "--streaming on profile host-ort-int8", "fp32")
    assert_user_error(
        capsys, ["compile", "lmuformer_tiny", "--frame-period-ms", "10", "-o", str(out)], "needs --streaming"
    )
    assert not out.exists()


@pytest.mark.parametrize("profile", ["host-openvino", "host-executorch", "host-tvm"])
def test_every_runtime_compiles_and_checks_the_step(profile, tmp_path):
    name = "spiking_lmuformer_tiny" if profile == "host-openvino" else "lmuformer_tiny"
    report = compile_model(name, profile, tmp_path / "a", streaming=True, use_cache=False, frame_period_ms=10)
    check = report.manifest.streaming["check"]
    assert check["status"] == "passed", check
    assert report.manifest.streaming["frame_period_ms"] == 10
    assert report.manifest.numerics.status == "passed"
    if name.startswith("spiking"):
        assert check["spikes"]["mismatched"] == 0 and check["spikes"]["fired"] > 0


def test_the_trained_tiny_model_streams_with_its_weights(trained, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "compile", "lmuformer_tiny", "--weights", str(trained("lmuformer_tiny")), "--streaming",
        "-o", str(tmp_path / "a"), "--json",
    )  # fmt: skip
    assert code == 0, err
    m = read_manifest(tmp_path / "a")
    assert m.model.weights_origin == "checkpoint" and m.streaming["check"]["status"] == "passed"


def test_core_ml_gets_a_stateful_model_validated_structurally(tmp_path):
    report = compile_model("spiking_lmuformer_tiny", "iphone12-coreml", tmp_path / "a", streaming=True, use_cache=False)
    m = report.manifest
    assert m.streaming["check"]["status"] == "skipped" and "macOS" in m.streaming["check"]["reason"]
    assert "Core ML states" in m.streaming["note"]
    checks = m.structural_checks
    for key in ("has_states", "state_names_match", "state_shapes_match", "every_state_updated", "no_state_inputs"):
        assert checks[key], key
    assert m.target_details["deployment_target"] == "iOS18"
    assert len(m.target_details["states"]) == len(m.streaming["states"])
    assert m.target_details["inputs"] == ["frame", "flush"]


def test_lif_recurrences_export_as_one_scan_each_with_the_same_spikes():
    """The whole-window spiking model: one scan per LIF instead of ~6 nodes per token (the compile
    that took minutes), the same outputs and spikes; a target without scans gets the unrolled form."""
    from edgeformer import ir
    from edgeformer.models.lmuformer.spiking import lif_loops

    net = _net("spiking_lmuformer_tiny")
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(5)) * 4
    unrolled = ir.export(net, (x,), name="u")
    with lif_loops():
        looped = ir.export(net, (x,), name="l")
    nodes = [n for n in looped.program.graph.nodes if n.op == "call_function"]
    lifs = sum(1 for m in net.modules() if type(m).__name__ == "LIF")
    assert sum("scan" in str(n.target) for n in nodes) == lifs
    assert len(nodes) < len([n for n in unrolled.program.graph.nodes if n.op == "call_function"]) / 2
    assert torch.equal(ir.run(looped, (x,))[0], ir.run(unrolled, (x,))[0])
    with torch.no_grad():
        spikes, handles = record_spikes(net)
        with lif_loops():  # eager: the Python loop (the scan is for export only)
            net(x)
        for h in handles:
            h.remove()
    assert sum(int(s[0].sum()) for s in spikes.values()) > 0


@pytest.mark.parametrize("profile,form", [("host-ort", "one scan"), ("host-openvino", "unrolled")])
def test_the_manifest_says_how_the_recurrence_was_exported(profile, form, tmp_path):
    report = compile_model("spiking_lmuformer_tiny", profile, tmp_path / "a", use_cache=False)
    assert form in report.manifest.target_details["recurrence"]
    assert report.manifest.numerics.status == "passed"
