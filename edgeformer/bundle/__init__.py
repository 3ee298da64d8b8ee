"""``edgeformer bundle``: a compiled artifact → a folder an app developer builds into a program.

A bundle holds the model converted for the platform, ``io.json`` (names, shapes, pre- and
post-processing, the streaming block, the runtime), golden data from the Python runtime,
``include/edgeformer.h`` (the versioned C API, the same for every runtime), its implementation for
the artifact's runtime (``src/``), a CMake project with an aarch64 toolchain file whose ``ctest``
runs the example program on the golden data, and the runtime's libraries for the platform
(``lib/``, from the runtime's wheel for that platform, under their SONAMEs).  ``android-arm64``
adds a Gradle module (JNI bridge, Java and Kotlin classes) and ``ios-arm64`` a Swift package
(:mod:`edgeformer.bundle.mobile`).  Nothing is written unless the whole bundle is.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeformer import __version__
from edgeformer.artifact import read_artifact
from edgeformer.bundle import mobile, ort, runtimes
from edgeformer.errors import UserError
from edgeformer.fsutil import atomic_write_json, make_temp_dir, replace_dir
from edgeformer.runtime import load_artifact
from edgeformer.targets import get_target

BUNDLE_VERSION = 1
API_VERSION = 1  # EF_API_VERSION in files/include/edgeformer.h
FILES = runtimes.FILES

# platform -> (runtimes it takes, in preference order; ELF machine of its libraries)
PLATFORMS = {
    "linux-x86_64": (("onnxruntime", "executorch", "openvino", "tvm"), "x86_64"),
    "linux-aarch64": (("onnxruntime", "executorch", "openvino", "tvm"), "aarch64"),
    "android-arm64": (("onnxruntime",), "aarch64"),
    "ios-arm64": (("onnxruntime", "coreml"), "arm64"),
}
_WHY_NOT = {
    ("android-arm64", "executorch"): "ExecuTorch's Android AAR is on Maven Central only, which this tool cannot reach",
    ("android-arm64", "openvino"): "OpenVINO has no Android runtime package",
    ("android-arm64", "tvm"): "TVM's Android runtime must be built from source with the NDK",
    ("ios-arm64", "tvm"): "TVM has no iOS runtime package",
    ("ios-arm64", "openvino"): "OpenVINO has no iOS runtime",
    ("ios-arm64", "executorch"): "ExecuTorch's iOS frameworks come through Swift PM from its own servers",
}
_ELF_MACHINE = {62: "x86_64", 183: "aarch64"}
GOLDEN_ATOL = 1e-4


@dataclass
class Bundle:
    path: Path
    platform: str
    runtime: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes), sorted
    verified: list[str] = field(default_factory=list)  # what was checked while bundling

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.files)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "platform": self.platform,
            "runtime": self.runtime,
            "files": [{"path": p, "bytes": b} for p, b in self.files],
            "total_bytes": self.total_bytes,
            "verified": self.verified,
        }


def elf_machine(path: Path) -> str | None:
    """ "x86_64" / "aarch64" for an ELF file, else None."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return None
    return _ELF_MACHINE.get(int.from_bytes(head[18:20], "little"), f"machine {int.from_bytes(head[18:20], 'little')}")


def build_bundle(artifact: str | Path, platform: str, out: str | Path, *, threads: int | None = None) -> Bundle:
    """Write the bundle of ``artifact`` for ``platform`` to ``out`` (replacing an earlier bundle)."""
    if platform not in PLATFORMS:
        raise UserError(f"unknown platform {platform!r}", f"use one of {', '.join(PLATFORMS)}")
    art = read_artifact(artifact)
    m = art.manifest
    runtime = m.target
    takes, machine = PLATFORMS[platform]
    if runtime not in takes:
        why = _WHY_NOT.get((platform, runtime), f"{platform} bundles take {', '.join(takes)} artifacts")
        raise UserError(
            f"{art.path} is a {runtime} artifact, which {platform} cannot run: {why}",
            f"compile for {' or '.join(takes)} (e.g. --profile host-ort) and bundle that",
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "io.json").exists())):
        raise UserError(f"{out} exists and is not a bundle", "give -o a new folder (or an earlier bundle to replace)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out.name}.", out.parent)
    try:
        bundle = Bundle(out, platform, runtime)
        _write(art, platform, machine, tmp, bundle, threads)
        bundle.files = sorted(
            (str(p.relative_to(tmp)), p.stat().st_size) for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()
        )
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle


def _write(art, platform: str, machine: str, root: Path, bundle: Bundle, threads: int | None) -> None:
    m = art.manifest
    runtime = m.target
    model_dir = root / "model"
    model_dir.mkdir()
    model_files = _model_files(art, platform, machine, model_dir, bundle)
    streaming = m.streaming
    default_threads = threads or (1 if platform in ("android-arm64", "ios-arm64") else 2)
    golden = _golden(art, root / "golden")
    io = {
        "format": "edgeformer-bundle",
        "version": BUNDLE_VERSION,
        "api_version": API_VERSION,
        "edgeformer_version": __version__,
        "platform": platform,
        "model": {"name": m.model.name, "family": m.model.family, "weights_origin": m.model.weights_origin},
        "runtime": {
            "name": runtime,
            "version": m.runtime_versions.get(_DIST.get(runtime, runtime), ""),
            "files": model_files,
            "threads": default_threads,
            "precision": m.profile.options.precision,
            "compute_units": m.profile.options.compute_units,
        },
        "inputs": [_tensor(s, layout=True) for s in m.inputs],
        "outputs": [_tensor(s) for s in m.outputs],
        "preprocess": _preprocess(m),
        "postprocess": _postprocess(m),
        "streaming": streaming,
        "golden": golden,
        "artifact": {"path": str(art.path.resolve()), "cache_key": m.cache_key, "profile": m.profile.name},
    }
    atomic_write_json(root / "io.json", io)
    if runtime != "coreml":
        _write_c(root, io, runtime)
    rt_files = None
    if platform.startswith("linux-"):
        rt_files = runtimes.collect(runtime, platform, root)
        for lib in rt_files.libs:
            got = elf_machine(root / lib["file"])
            if got != machine:
                raise UserError(
                    f"{lib['file']} is for {got}, not {platform}", "clear the runtime cache and bundle again"
                )
        bundle.verified.append(f"lib/: {len(rt_files.libs)} libraries, every one an ELF for {machine}")
    elif runtime == "onnxruntime":
        runtimes.ort_headers(root / "third_party" / "onnxruntime" / "include")
    if platform == "android-arm64":
        assets = root / "android" / "src" / "main" / "assets"
        assets.mkdir(parents=True)
        for f in model_files:
            shutil.copyfile(root / f, assets / Path(f).name)
        mobile.write_android(root, io, ort_aar=runtimes.ort_aar())
    if platform == "ios-arm64":
        # ONNX Runtime's official iOS xcframework (device, simulator, Mac Catalyst), from the same npm package
        xcf = (
            runtimes.ort_npm_root() / "Plugins" / "iOS~" / "onnxruntime.xcframework"
            if runtime == "onnxruntime"
            else None
        )
        mobile.write_ios(root, io, ort_xcframework=xcf)
    (root / "README.md").write_text(_readme(io, rt_files, bundle))


_DIST = {"tvm": "apache-tvm"}


def _tensor(spec, layout: bool = False) -> dict:
    d = {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}
    if layout and len(spec.shape) == 4:
        d["layout"] = "NCHW"
    return d


def _model_files(art, platform: str, machine: str, model_dir: Path, bundle: Bundle) -> list[str]:
    """Copy (or convert) the artifact's runtime files for ``platform``; their bundle paths."""
    m = art.manifest
    names = list(dict.fromkeys(f.path.split("/")[0] for f in m.files))  # model.mlpackage/... is one folder
    if m.target == "onnxruntime":
        portable = bool(m.target_details.get("ort_format_portable"))
        dest = model_dir / "model.ort"
        if platform == "linux-x86_64" or portable:
            shutil.copyfile(art.path / "model.ort", dest)
            how = "the artifact's model.ort" + ("" if portable else " (CPU-specific NCHWc layout: x86-64 only)")
        else:
            ort.convert_for_arm(art.path / "model.onnx", dest)
            how = "model.onnx converted for ARM (--target_platform arm: no x86 NCHWc nodes)"
        if platform != "linux-x86_64":
            ort.refuse_x86_layout(dest)  # never an x86-only model on ARM, whatever the manifest says
        (model_dir / "required_operators.config").write_text(ort.required_operators(dest))
        bundle.verified.append(f"model/model.ort: {how}")
        return ["model/model.ort"]
    if m.target == "tvm":
        got = elf_machine(art.path / "model.so")
        if got != machine:
            raise UserError(
                f"{art.path}/model.so is compiled for {got}, not {platform}",
                "compile for a TVM profile of that CPU (e.g. --profile rpi4-tvm for linux-aarch64)",
            )
    main = get_target(m.target).main_file  # first: the file the C host opens (model.xml, not model.bin)
    names = sorted(names, key=lambda n: n != main)
    out = []
    for name in names:
        src = art.path / name
        if src.is_dir():
            shutil.copytree(src, model_dir / name)
        else:
            shutil.copyfile(src, model_dir / name)
        out.append(f"model/{name}")
    return out


def _golden(art, folder: Path) -> dict:
    """``golden/input.bin`` and ``golden/output.bin`` from the artifact's Python runtime: one
    seeded input (the profiling input), or for a streaming artifact a seeded sequence of frames and
    its whole-stream logits.  Where the runtime cannot run here (Core ML off macOS, a TVM library
    for another CPU) only the input is written, and ``reason`` says why."""
    folder.mkdir()
    m = art.manifest
    loaded = load_artifact(art.path)
    why = "Core ML predicts only on macOS" if m.target == "coreml" else loaded.target.can_run_here(art.profile)
    frames = 1
    if m.streaming:
        frames = int(m.streaming.get("check", {}).get("frames") or 8)
        shape = m.streaming["frame"]["shape"]
        seq = np.random.default_rng(0).standard_normal((shape[0], frames, *shape[1:])).astype(np.float32)
        (folder / "input.bin").write_bytes(_f32([np.moveaxis(seq, 1, 0)]))
    else:
        x = art.example_inputs(seed=0)
        (folder / "input.bin").write_bytes(_f32(x))
    out = {"input": "golden/input.bin", "frames": frames, "kind": "stream" if m.streaming else "single"}
    out["atol"] = GOLDEN_ATOL
    if why:
        return {**out, "output": None, "reason": f"no reference output: {why}"}
    if m.streaming:
        y = [loaded.streaming_runner().run(seq)]
    else:
        runner = loaded.runner()
        try:
            y = runner.run(x)
        finally:
            runner.close()
    (folder / "output.bin").write_bytes(_f32(y))
    return {
        **out,
        "output": "golden/output.bin",
        "output_floats": int(sum(np.asarray(v).size for v in y)),
        "reference": f"the {m.target} Python runtime on the artifact, which was checked against PyTorch at compile",
    }


def _f32(arrays) -> bytes:
    return b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)


def _preprocess(m) -> dict | None:
    """The zoo's image preprocessing, for a zoo image model (3-channel NCHW input)."""
    if m.model.source != "zoo" or len(m.inputs) != 1 or len(m.inputs[0].shape) != 4 or m.inputs[0].shape[1] != 3:
        return None
    h = m.inputs[0].shape[2]
    return {
        "resize": round(h * 256 / 224),
        "crop": h,
        "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "color": "RGB",
        "layout": "NCHW",
        "note": "shorter side resized to `resize`, centre crop `crop`, then (x*scale - mean)/std per channel "
        "(the zoo's ImageNet recipe; a model trained otherwise needs its own)",
    }


def _postprocess(m) -> dict | None:
    if m.streaming or len(m.outputs) != 1 or len(m.outputs[0].shape) != 2:
        return None
    return {"softmax": True, "classes": m.outputs[0].shape[1], "labels": None}


def _write_c(root: Path, io: dict, runtime: str) -> None:
    """The C API and its implementation; on Linux also the CMake project, example and tools (the
    Android and iOS builds compile ``src/`` from their own Gradle/NDK and Swift packages)."""
    for sub in ("include", "src"):
        (root / sub).mkdir(exist_ok=True)
    shutil.copyfile(FILES / "include" / "edgeformer.h", root / "include" / "edgeformer.h")
    for name in ("edgeformer.cpp", "backend.hpp", f"backend_{runtime}.cpp"):
        shutil.copyfile(FILES / "src" / name, root / "src" / name)
    (root / "src" / "bundle_info.cpp").write_text(bundle_info_cpp(io))
    if not io["platform"].startswith("linux-"):
        return
    for sub in ("examples", "cmake", "tools"):
        (root / sub).mkdir(exist_ok=True)
    shutil.copyfile(FILES / "examples" / "example.c", root / "examples" / "example.c")
    shutil.copyfile(FILES / "CMakeLists.txt", root / "CMakeLists.txt")
    shutil.copyfile(FILES / "cmake" / f"runtime_{runtime}.cmake", root / "cmake" / "runtime.cmake")
    shutil.copyfile(FILES / "cmake" / "aarch64-linux-gnu.cmake", root / "cmake" / "aarch64-linux-gnu.cmake")
    for name in ("run-aarch64.sh", "arm64_cpuinfo"):
        shutil.copyfile(FILES / "tools" / name, root / "tools" / name)
    (root / "tools" / "run-aarch64.sh").chmod(0o755)
    processor = {"linux-x86_64": "x86_64|AMD64", "linux-aarch64": "aarch64|arm64"}.get(io["platform"], ".*")
    (root / "cmake" / "bundle.cmake").write_text(
        "# Written by edgeformer bundle.\n"
        f'set(EF_RUNTIME {runtime})\nset(EF_PLATFORM {io["platform"]})\nset(EF_PROCESSOR "{processor}")\n'
        f"set(EF_GOLDEN_ATOL {GOLDEN_ATOL})\n"
    )


def _c_str(s: str) -> str:
    return json.dumps(s)  # a valid C string literal for the ASCII names edgeformer writes


def bundle_info_cpp(io: dict) -> str:
    """``src/bundle_info.cpp``: io.json as the C++ table the library reads (no JSON parser in C)."""

    def tensors(ts):
        return ",\n".join(f"      {{{_c_str(t['name'])}, {{{', '.join(str(d) for d in t['shape'])}}}}}" for t in ts)

    lines = [
        "// Written by edgeformer bundle from io.json: the model's inputs, outputs and streaming states.",
        '#include "backend.hpp"',
        "",
        "namespace ef {",
        "const BundleInfo& bundle_info() {",
        "  static const BundleInfo info = [] {",
        "    BundleInfo b;",
        f"    b.runtime = {_c_str(io['runtime']['name'])};",
        f"    b.model_file = {_c_str(io['runtime']['files'][0])};",
        f"    b.default_threads = {int(io['runtime']['threads'])};",
        f"    b.precision = {_c_str(io['runtime']['precision'])};",
        f"    b.inputs = {{\n{tensors(io['inputs'])}}};",
        f"    b.outputs = {{\n{tensors(io['outputs'])}}};",
    ]
    s = io.get("streaming")
    if s:
        in_idx = {t["name"]: i for i, t in enumerate(io["inputs"])}
        out_idx = {t["name"]: i for i, t in enumerate(io["outputs"])}
        lines += [
            f"    b.frame_input = {in_idx[s['frame']['name']]};",
            f"    b.flush_input = {in_idx[s['flush']['name']]};",
            f"    b.logits_output = {out_idx[s['logits']['name']]};",
            f"    b.delay_frames = {int(s['delay_frames'])};",
            "    b.states = {"
            + ", ".join(
                f"{{{in_idx[x['input']]}, {out_idx[x['output']]}, {float(x['initial'])!r}f}}" for x in s["states"]
            )
            + "};",
        ]
    lines += ["    return b;", "  }();", "  return info;", "}", "}  // namespace ef", ""]
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _readme(io: dict, rt_files, bundle: Bundle) -> str:
    name, platform, runtime = io["model"]["name"], io["platform"], io["runtime"]["name"]
    lines = [
        f"# {name} for {platform} ({runtime} {io['runtime']['version']})",
        "",
        f"Written by `edgeformer bundle` {io['edgeformer_version']} from the artifact `{io['artifact']['path']}`",
        f"(profile {io['artifact']['profile']}).  `io.json` lists the inputs, outputs, pre- and post-processing.",
        "",
    ]
    if platform in ("android-arm64", "ios-arm64"):
        folder = platform.split("-")[0]
        what = "a Gradle module: JNI bridge, Java and Kotlin classes" if folder == "android" else "a Swift package"
        lines += [
            "## Build and run",
            "",
            f"`{folder}/README.md` has the steps ({what}).",
            "`include/edgeformer.h` and `src/` are the C API and its implementation that build compiles;",
            "`golden/` holds one input and its expected output (raw float32) to check an app against.",
            "",
        ]
    elif runtime != "coreml":
        lines += ["## Build and run", "", "```sh"]
        if platform == "linux-aarch64":
            lines += [
                "# on the board (cmake, g++), or cross-compiled here and run under qemu-user:",
                "cmake -S . -B build -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake",
            ]
        else:
            lines += ["cmake -S . -B build"]
        lines += [
            "cmake --build build",
            "ctest --test-dir build --output-on-failure   # the example on golden/, within 1e-4",
            "```",
            "",
            "`build/example . INPUT.bin OUTPUT.bin [GOLDEN.bin] [--repeat N]` runs any raw float32 input;",
            "`cmake --install build --prefix DIR` installs the library, header, example and runtime libraries.",
            "",
            "The C API is `include/edgeformer.h` (version "
            f"{API_VERSION}): `ef_open`, `ef_num_inputs`/`ef_input_name`/`ef_input_shape`, `ef_run`, `ef_close`"
            + (", and `ef_step`/`ef_reset` for this streaming model." if io["streaming"] else "."),
            "",
        ]
    if rt_files:
        lines += ["## Runtime libraries (lib/)", ""]
        lines += [f"- `{x['file']}`: {_mb(x['bytes'])}, from {x['from']}" for x in rt_files.libs]
        lines += [f"- total {_mb(sum(x['bytes'] for x in rt_files.libs))}", ""]
        lines += [f"- {s}" for s in rt_files.sources] + [""]
    if runtime == "onnxruntime":
        lines += [
            "## A smaller ONNX Runtime",
            "",
            "`model/required_operators.config` lists the operators of `model/model.ort`.  A reduced build",
            "(`./build.sh --minimal_build --include_ops_by_config model/required_operators.config` from the",
            "ONNX Runtime sources) runs this model in a fraction of the full library's size.",
            "",
        ]
    if io["streaming"]:
        s = io["streaming"]
        lines += [
            "## Streaming",
            "",
            f"Each `ef_step` takes one frame of {s['frame']['shape']} floats; after the last frame call it "
            f"{s['delay_frames']} times with flush = 1: the logits then equal the whole-sequence model.",
            "`golden/input.bin` holds a sequence of frames and `golden/output.bin` its whole-sequence logits.",
            "",
        ]
    if bundle.verified:
        lines += ["## Checked while bundling", ""] + [f"- {v}" for v in bundle.verified] + [""]
    return "\n".join(lines)
