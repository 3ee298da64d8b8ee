"""IR → Relax → ``model.so``: the TVM compile path shared by ``compile`` and ``tune``.

The exported program is imported with ``relax.frontend.torch.from_exported_program``; weights
become constants inside the library, so ``model.so`` is the whole artifact and takes only the
user inputs.  ``lower`` is the one sequence of passes (legalize, fuse, mark weights layout-free)
that both tuning and compiling run, so the tuning database's workload keys match at compile time.
Everything here imports tvm inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
from pathlib import Path

from edgeformer.errors import UserError, first_line

from .._support import unsupported_op_error
from .fast_math import fast_math

log = logging.getLogger(__name__)

LIBRARY = "model.so"


# ----------------------------------------------------------------------------------------- target


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or 1
    except ImportError:  # pragma: no cover - psutil ships with the tvm extra
        import os

        return os.cpu_count() or 1


def target_dict(profile) -> dict:
    """The profile's TVM target with host-dependent values filled in (sorted keys).

    ``mcpu = "native"`` (or no target at all) means this machine's CPU as LLVM names it, and
    ``num-cores`` defaults to the profile's threads, so tuned schedules split work for them.
    """
    opts = profile.options
    tgt = dict(opts.tvm_target) if opts.tvm_target else {"kind": "llvm", "mcpu": "native"}
    if tgt.get("kind", "llvm") == "llvm" and tgt.get("mcpu") == "native":
        import tvm

        tgt["mcpu"] = str(tvm.get_global_func("target.llvm_get_system_cpu")())
    if "num-cores" not in tgt and tgt.get("kind", "llvm") == "llvm":
        tgt["num-cores"] = opts.threads or _physical_cores()
    return dict(sorted(tgt.items()))


def host_dict(profile) -> dict | None:
    return dict(sorted(profile.options.tvm_host.items())) if profile.options.tvm_host else None


def make_target(profile):
    import tvm

    tgt, host = target_dict(profile), host_dict(profile)
    try:
        return tvm.target.Target(tgt, host=tvm.target.Target(host) if host else None)
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types for bad targets
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(
            f"profile {profile.name}: invalid TVM target {json.dumps(tgt)}: {first}",
            "fix [options] tvm_target in the profile (a dict like {kind='llvm', mcpu='...'})",
        ) from err


def target_arch(profile) -> str:
    """CPU architecture the library runs on: the triple's first part, or this machine's."""
    triple = target_dict(profile).get("mtriple") or (host_dict(profile) or {}).get("mtriple")
    return triple.split("-")[0] if triple else platform.machine()


def is_cross(profile) -> bool:
    return _norm_arch(target_arch(profile)) != _norm_arch(platform.machine())


def _norm_arch(arch: str) -> str:
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch.lower(), arch.lower())


# ----------------------------------------------------------------------------------------- import


def check_supported(graph, program) -> None:
    """Raise UnsupportedOpError naming every op of ``graph`` whose decomposition (``program``) the
    TVM frontend cannot convert, and where each sits in the model."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    known = ExportedProgramImporter().convert_map
    missing = set()
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target.__name__ in known:
            continue
        # Name the op as the user's IR has it: the one that was decomposed into this node.
        orig = node.meta.get("original_aten") or node.target
        missing.add(f"aten.{orig.__name__.split('.')[0]}")
    if missing:
        raise unsupported_op_error(
            graph,
            "TVM's PyTorch frontend",
            missing,
            "rewrite that part of the model, or pick another target (see `edgeformer targets`)",
        )


def import_graph(graph):
    """The Relax module of the IR with weights as parameters: ``(mod, params)``."""
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        program = graph.program.run_decompositions()
    check_supported(graph, program)
    try:
        mod = from_exported_program(program, keep_params_as_input=True, run_ep_decomposition=False)
    except Exception as err:  # noqa: BLE001 - converter failures come in many types
        raise UserError(
            f"TVM's PyTorch frontend failed on {graph.name}: {first_line(err)}",
            "run with --debug for the trace, or pick another target",
        ) from err
    mod, params = relax.frontend.detach_params(mod)
    return mod, params.get("main", [])


def workload_key(mod, target) -> str:
    """sha256 of the Relax program without weight values, the target and the TVM version.

    Tuning depends on shapes and ops, not on weights, so the same architecture with other
    weights reuses its database.  A strong hash, never TVM's 64-bit structural hash alone.
    """
    import tvm

    blob = {"relax": mod.script(show_meta=False), "target": str(target), "tvm": tvm.__version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def bind(mod, params):
    """Weights → constants, so the library needs no parameter file and folding sees them."""
    from tvm import relax

    mod = relax.transform.BindParams("main", dict(zip(_param_vars(mod), params)))(mod)
    func = mod["main"].without_attr("num_input")
    mod["main"] = func
    return mod


def _param_vars(mod):
    func = mod["main"]
    num_input = int(func.attrs["num_input"])
    return func.params[num_input:]


# ------------------------------------------------------------------------------------------ lower


def lower(mod, target):
    """Decompose, use vectorisable GELU/erf, legalize and fuse into TIR functions: the workloads
    tuning sees.

    Weights and constants are marked layout-free, so tuned schedules may pre-pack them; the
    packing then folds into the constants at build time.
    """
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            fast_math(),  # vectorisable GELU/erf/tanh instead of scalar libm calls (fast_math.py)
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ]
    )
    with target, tvm.transform.PassContext(opt_level=3):
        return seq(mod)


def build(mod, target, tuned: bool = False):
    """Lowered (and possibly tuned) module → Relax executable."""
    import tvm
    from tvm import relax

    def finish(m, _ctx):
        passes = []
        if tuned:
            # Weight re-layouts chosen by tuning become separate functions on constants, which
            # FoldConstant evaluates once here instead of on every inference.
            passes += [
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.FoldConstant(),
                relax.transform.DeadCodeElimination(),
            ]
        # The CPU backend's lowering and finalization (tvm.relax.backend.cpu_generic.pipeline).
        passes += [
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
        ]
        return tvm.transform.Sequential(passes)(m)

    pipeline = tvm.transform.module_pass(finish, opt_level=0, name="edgeformer_tvm_finish")
    with target, tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target, relax_pipeline=pipeline)


def export(executable, path: Path, cross_compiler: str = "") -> None:
    """``export_library``, linking with the profile's cross compiler when it has one."""
    kwargs = {}
    if cross_compiler:
        from tvm.support import cc

        if shutil.which(cross_compiler) is None:
            raise UserError(
                f"cross compiler {cross_compiler} not found on PATH",
                "install it (Debian: apt-get install gcc-aarch64-linux-gnu, or `make cross-toolchain`)",
            )
        kwargs["fcompile"] = cc.cross_compiler(cross_compiler)
    executable.export_library(str(path), **kwargs)


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (62 = x86-64, 183 = AArch64)."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
