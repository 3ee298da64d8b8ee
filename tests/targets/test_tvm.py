"""TVM target: compile + numerics, tuning database, cross-compilation, per-op profile, errors,
and ``edgeformer.tuning`` tuning the very graph ``compile`` builds.

Every test needs apache-tvm; CI always has it, so a missing install fails here (no skips).
The model is tiny and tuning uses a handful of trials: the real tuning is the benchmark's job.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeformer import compiler, ir, tuning
from edgeformer.artifact import Artifact
from edgeformer.device_profiles import load_profile, parse_profile
from edgeformer.errors import UnsupportedOpError, UserError
from edgeformer.passes._pipeline import Pipeline
from edgeformer.targets import get_target
from edgeformer.targets.tvm import TvmTarget, database
from edgeformer.targets.tvm import build as tb

EM_AARCH64 = 183


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(self.norm(x.mean((2, 3))))


class Odd(nn.Module):
    def forward(self, x):
        return torch.special.erfcx(x) * 2


class WithOdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), Odd())

    def forward(self, x):
        return self.block(x)


def _graph(model=None, shape=(1, 3, 8, 8), name="small"):
    torch.manual_seed(0)
    model = (model or Small()).eval()
    if hasattr(model, "bn"):  # non-trivial running stats, so the folded constants matter
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return ir.export(model, (torch.randn(*shape),), name=name)


def _host(threads: int = 1):
    return parse_profile(
        {
            "name": "test-host-tvm",
            "target": "tvm",
            "options": {"threads": threads, "tvm_target": {"kind": "llvm", "mcpu": "native"}},
        },
        "test profile",
    )


def _compile(graph, profile, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    return get_target("tvm").compile(graph, profile, out_dir)


def _artifact(out_dir, profile):
    """A folder ``TvmTarget.compile`` wrote (no manifest: the target reads only the path and profile)."""
    return Artifact(Path(out_dir), None, profile)


def _run(out_dir, profile, inputs):
    runner = get_target("tvm").load(_artifact(out_dir, profile))
    try:
        return runner.run(inputs)
    finally:
        runner.close()


def test_compile_matches_pytorch_within_1e4_and_says_untuned(tmp_path, caplog):
    graph, prof = _graph(), _host()
    with caplog.at_level(logging.WARNING, logger="edgeformer.targets.tvm"):
        result = _compile(graph, prof, tmp_path / "a")
    assert result.files == ["model.so"]
    assert result.details["tuning"]["status"] == "untuned"
    assert any("no TVM tuning database" in r.message for r in caplog.records)
    # The target only knows the graph's name ("small"), not how the user named the model (a zoo
    # name, file.pt2, module:factory): it must not print `edgeformer tune small`, which fails.
    warning = next(r.getMessage() for r in caplog.records if "no TVM tuning database" in r.message)
    for text in (result.details["tuning"]["message"], warning):
        assert "edgeformer tune small" not in text and "\n" not in text
        assert "run `edgeformer tune` with the same MODEL, --input-shape and --weights as this compile" in text
        assert "--profile test-host-tvm" in text
    ref = ir.run(graph, graph.example_inputs)[0].numpy()
    out = _run(tmp_path / "a", prof, [graph.example_inputs[0].numpy()])[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4


def test_compile_is_deterministic(tmp_path):
    graph, prof = _graph(), _host()
    _compile(graph, prof, tmp_path / "a")
    _compile(graph, prof, tmp_path / "b")
    assert (tmp_path / "a/model.so").read_bytes() == (tmp_path / "b/model.so").read_bytes()


class Mlp(nn.Module):
    """Big enough that any tiled schedule beats the naive loops, so a few trials always help."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(256, 256)
        self.fc2 = nn.Linear(256, 64)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_tune_writes_database_that_compile_applies(tmp_path):
    graph, prof = _graph(Mlp(), shape=(64, 256), name="mlp"), _host()
    target = get_target("tvm")
    before = target.cache_options(prof)["tuning_database"]
    assert target.tuned_trials(graph, prof) == 0
    result = target.tune(graph, prof, trials=6)
    db_path = database.database_path(prof, result.workload)
    assert result.database == str(db_path) and db_path.is_file()
    assert db_path.is_relative_to(os.environ["EDGEFORMER_CACHE_DIR"])  # the per-profile cache root
    assert db_path.parent.parent.name == prof.name
    raw = db_path.read_text()
    data = json.loads(raw)
    assert data["format"] == database.DB_FORMAT and data["history"][-1]["trials"] == 6
    assert raw == json.dumps(data, indent=1, sort_keys=True) + "\n"  # the format databases always had
    assert target.tuned_trials(graph, prof) == 6
    assert result.trials == 6 and result.tasks >= 2
    # Compile finds the database, applies what it has, and still matches PyTorch.
    compiled = _compile(graph, prof, tmp_path / "tuned")
    tuning_info = compiled.details["tuning"]
    assert tuning_info["status"] in (
        "tuned",
        f"partly tuned ({tuning_info['tuned_functions']} of {tuning_info['tunable_functions']} functions)",
    )
    assert tuning_info["tuned_functions"] > 0 and tuning_info["database"] == str(db_path)
    assert tuning_info["tuned_functions"] == sum(len(r["functions"]) for r in data["records"].values())
    ref = ir.run(graph, graph.example_inputs)[0].numpy()
    out = _run(tmp_path / "tuned", prof, [graph.example_inputs[0].numpy()])[0]
    assert np.abs(out - ref).max() < 1e-4
    # The compile cache key moves with the database, so a pre-tuning artifact is not reused.
    assert get_target("tvm").cache_options(prof)["tuning_database"] not in (None, before)
    # A second run continues from the database.
    again = target.tune(graph, prof, trials=2)
    assert again.continued and len(again.runs) == 2 and target.tuned_trials(graph, prof) == 8


def test_tune_refuses_a_cross_profile():
    with pytest.raises(UserError, match="only tunes for this CPU"):
        get_target("tvm").tune(_graph(), load_profile("rpi4-tvm"), trials=1)


def test_tune_model_refuses_a_profile_of_another_target():
    with pytest.raises(UserError, match="profile host-ort uses target onnxruntime; only TVM profiles are tuned") as err:
        tuning.tune_model("poolformer_tiny", "host-ort", trials=1)
    assert "--profile host-tvm" in str(err.value)


class GroupNormNet(nn.Module):
    """An affine-free GroupNorm(1, C): ``lower_group_norm`` rewrites it in the form its options say."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8, affine=False)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


def test_tuning_tunes_the_graph_compile_builds_with_the_targets_pass_options(tmp_path, monkeypatch):
    """Tuning once re-ran the pipeline without the target's pass options: the day TVM had one, it
    tuned another graph than compile built, and the database (keyed by it) never applied."""
    torch.manual_seed(0)
    model, shapes, prof = GroupNormNet().eval(), [(1, 3, 8, 8)], _host()
    default = TvmTarget.pipeline
    assert "lower_group_norm" in default.names and not default.options
    monkeypatch.setattr(TvmTarget, "pipeline", Pipeline(default.names, {"lower_group_norm": {"form": "instance_norm"}}))

    tuned, built = [], []
    monkeypatch.setattr(TvmTarget, "tune", lambda self, graph, profile, **kw: tuned.append(graph))

    class Built(Exception):
        pass

    def compile_stub(self, graph, profile, out_dir, calibration=None):
        built.append(graph)
        raise Built

    monkeypatch.setattr(TvmTarget, "compile", compile_stub)
    tuning.tune_model(model, prof, trials=1, input_shapes=shapes)
    with pytest.raises(Built):
        compiler.compile(model, prof, tmp_path / "out", input_shapes=shapes, use_cache=False)
    monkeypatch.setattr(TvmTarget, "pipeline", default)
    plain = tuning.workload(model, prof, input_shapes=shapes).graph

    def key(graph):  # the database's workload key
        return tb.workload_key(tb.import_graph(graph)[0], tb.make_target(prof))

    (graph,), (compiled,) = tuned, built
    assert graph.hash() == compiled.hash() and key(graph) == key(compiled)
    assert "aten.instance_norm" in graph.summary().histogram and "aten.layer_norm" in plain.summary().histogram
    assert plain.hash() != graph.hash() and key(plain) != key(graph)  # the option does change the graph


def test_cross_compiled_library_is_an_aarch64_elf(tmp_path):
    prof = load_profile("rpi4-tvm")
    result = _compile(_graph(), prof, tmp_path / "rpi")
    assert tb.elf_machine(tmp_path / "rpi/model.so") == EM_AARCH64
    assert result.details["arch"] == "aarch64" and result.details["cross_compiler"] == "aarch64-linux-gnu-gcc"
    assert "--remote" in get_target("tvm").can_run_here(prof)


def test_per_op_profile_has_ops_shares_and_remainder(tmp_path):
    graph, prof = _graph(), _host()
    _compile(graph, prof, tmp_path / "a")
    p = get_target("tvm").profile_ops(_artifact(tmp_path / "a", prof), [graph.example_inputs[0].numpy()], 3)
    assert p.runtime == "tvm" and p.runs == 3 and p.end_to_end_ms > 0
    kernels = [o for o in p.ops if not o.name.startswith("vm.builtin.")]
    assert kernels and any("conv2d" in o.type for o in kernels)
    assert all(0 <= o.share for o in p.ops) and p.ops == sorted(p.ops, key=lambda o: (-o.time_ms, o.name))
    assert p.explained_ms == pytest.approx(sum(o.time_ms for o in p.ops))
    assert p.unexplained_ms == pytest.approx(p.end_to_end_ms - p.explained_ms)
    assert p.by_type and p.notes


class _FakeVM:
    """A Relax VM stand-in for ``TvmRunner.profile_ops``: one op per call, whose duration (ms) on
    the k-th call made with the instrument hook is ``hooked(k)``, read off a fake clock."""

    def __init__(self, clock, hooked, plain_ms=1.0, dispatch_ms=0.1):
        self.clock, self.hooked, self.plain_ms, self.dispatch_ms = clock, hooked, plain_ms, dispatch_ms
        self.instrument, self.hooked_calls = None, 0

    def set_instrument(self, fn):
        self.instrument = fn

    def main(self, *args):
        if self.instrument is None:
            self.clock.advance(self.plain_ms)
            return
        ms = self.hooked(self.hooked_calls)
        self.hooked_calls += 1
        self.clock.advance(self.dispatch_ms)
        self.instrument(None, "fused_conv2d_add_relu", True, None)
        self.clock.advance(ms)
        self.instrument(None, "fused_conv2d_add_relu", False, None)


class _FakeClock:
    def __init__(self):
        self.ns = 0

    def advance(self, ms):
        self.ns += round(ms * 1e6)

    def perf_counter_ns(self):
        return self.ns


def _fake_runner(monkeypatch, hooked, **kw):
    from edgeformer.targets.tvm import runner as tr

    clock = _FakeClock()
    monkeypatch.setattr(tr, "time", clock)
    vm = _FakeVM(clock, hooked, **kw)
    r = object.__new__(tr.TvmRunner)
    r.vm, r._main, r._tensors = vm, vm.main, lambda inputs: list(inputs)
    return r, vm


def test_per_op_profile_takes_medians_so_one_slow_run_does_not_move_it(monkeypatch):
    """Small models: one preempted run in five made the mean 20x the typical op time."""
    slow = {3}  # the 4th profiled run took 100 ms instead of 1 ms
    r, vm = _fake_runner(monkeypatch, lambda k: 100.0 if k in slow else 1.0)
    p = r.profile_ops([np.zeros(1, "float32")], 5)
    (op,) = p.ops
    assert op.time_ms == pytest.approx(1.0) and op.calls == 1
    assert p.end_to_end_ms == pytest.approx(1.1)  # median end to end: the op plus the dispatch
    assert p.unexplained_ms == pytest.approx(0.1)
    assert any("median" in n for n in p.notes)


def test_per_op_profile_discards_a_warm_up_run_with_the_hook(monkeypatch):
    """The first run with the instrument hook is slow (the hook's own first calls): not profiled."""
    r, vm = _fake_runner(monkeypatch, lambda k: 50.0 if k == 0 else 2.0)
    p = r.profile_ops([np.zeros(1, "float32")], 1)
    assert p.runs == 1 and vm.hooked_calls == 2
    assert p.ops[0].time_ms == pytest.approx(2.0) and p.end_to_end_ms == pytest.approx(2.1)


def test_op_medians_aggregate_per_run_totals():
    """Per run, an op's calls add up; across runs, the median per op and of end to end."""
    from edgeformer.targets.tvm.runner import aggregate_runs

    runs = [  # symbol -> (total ns in the run, calls in the run)
        {"a": (2_000_000, 2), "b": (1_000_000, 1)},
        {"a": (2_200_000, 2), "b": (900_000, 1)},
        {"a": (90_000_000, 2), "b": (1_100_000, 1)},  # the outlier run
    ]
    ops, e2e = aggregate_runs(runs, [3.5, 3.6, 95.0])
    assert ops == {"a": (pytest.approx(2.2), 2), "b": (pytest.approx(1.0), 1)}
    assert e2e == pytest.approx(3.6)


def test_unsupported_op_names_the_op_and_its_module(tmp_path):
    graph = _graph(WithOdd(), shape=(2, 4), name="odd")
    with pytest.raises(UnsupportedOpError, match=r"special_erfcx.*block\.1") as err:
        _compile(graph, _host(), tmp_path / "x")
    assert err.value.exit_code == 2


def test_op_type_names_fused_kernels():
    from edgeformer.targets.tvm.runner import op_type

    assert op_type("fused_conv2d3_add2_relu1") == "conv2d+add+relu"
    assert op_type("fused_avg_pool2d1_subtract5") == "avg_pool2d+subtract"
    assert op_type("layer_norm") == "layer_norm"
    assert op_type("vm.builtin.alloc_storage") == "vm.builtin.alloc_storage"


def _in_fresh_process(tmp_path, tail: str, env: dict | None = None) -> str:
    """In a new Python process: compile the small graph for 2 threads, then run ``tail`` (which sees
    ``t`` = this module, ``g``, ``out`` and ``before`` = the affinity at start); its last line."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this check needs at least 2 usable cores")
    code = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import test_tvm as t\n"
        "from pathlib import Path\n"
        "before = os.sched_getaffinity(0)\n"
        "g = t._graph()\nout = Path(sys.argv[2])\n"
        "t._compile(g, t._host(threads=2), out)\n" + tail
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_running_tvm_leaves_the_process_cpu_affinity_alone(tmp_path):
    """TVM pins its calling thread to one core unless told not to; ORT sessions made afterwards
    then inherited that one-core mask and ran 3.6x slower (9 ms → 31.6 ms on EfficientFormer-L1)."""
    tail = (
        "t._run(out, t._host(threads=2), [x.numpy() for x in g.example_inputs])\n"
        "print(sorted(before) == sorted(os.sched_getaffinity(0)))\n"
    )
    assert _in_fresh_process(tmp_path, tail) == "True", "TVM changed the process's CPU affinity"


def test_thread_pool_has_the_profiles_threads_on_a_machine_without_smt(tmp_path):
    """TVM sizes its pool from half the logical CPUs on x86 (it assumes hyper-threading), and
    ``config_threadpool`` can only shrink it: on a 2-vCPU machine every kernel ran on ONE thread
    (tuned L1 34 ms instead of 17.7 ms).  A fresh process, no TVM_NUM_THREADS in its environment."""
    tail = (
        "from edgeformer.targets import get_target\n"
        "r = get_target('tvm').load(t._artifact(out, t._host(threads=2)))\n"
        "r.run([x.numpy() for x in g.example_inputs])\n"
        "print(r.settings()['runtime_threads'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    assert _in_fresh_process(tmp_path, tail, env) == "2"


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        h = self.fc(x) * 4  # wide range: the approximations are clamped at |x| = 4 and 9
        return nn.functional.gelu(h) + torch.tanh(h) + torch.erf(h)


def test_gelu_erf_tanh_use_the_vectorisable_forms_and_stay_within_1e5(tmp_path):
    """Scalar libm ``erff`` took 8.6 of 21 ms of tuned L1; the fast forms must not cost accuracy."""
    graph = _graph(Activations(), shape=(64, 16), name="acts")
    prof = _host()
    target, mod, _ = database.prepare(graph, prof)
    script = mod.script()
    assert "T.erf(" not in script and "T.tanh(" not in script, "a scalar libm call is left"
    _compile(graph, prof, tmp_path / "a")
    x = torch.randn(64, 16) * 3
    (got,) = _run(tmp_path / "a", prof, [x.numpy()])
    want = graph.run([x])[0].detach().numpy()
    assert np.abs(got - want).max() < 1e-5 * max(1.0, float(np.abs(want).max()))
