"""``edgeformer bundle`` for android-arm64 and ios-arm64 (edgeformer/bundle/mobile.py): what can be
verified on this Linux machine, with real toolchains and no mocks.

There is no Android NDK, SDK (``android.jar``), d8, emulator or device here, and no Swift compiler,
Xcode or Core ML runtime.  So:

- **Android, verified here:** the JNI bridge (``edgeformer_jni.c``, gcc ``-Wall -Wextra -Werror``)
  and the generated Java class (javac ``-Xlint:all -Werror``) are built and *run on the host JVM*
  against the x86_64 build of the same C API, on the bundle's golden data, including the error
  paths (C API failures are Java exceptions, never a crash); the NDK ``CMakeLists.txt`` is
  configured and built with the host compilers (only the ORT library swapped for the x86_64 one);
  ``OrtDirect.java`` compiles against the ORT Android AAR's ``classes.jar``; the layout (one ABI
  folder, ``libonnxruntime.so`` an AArch64 ELF for Bionic), and the asset ``.ort`` (no x86 NCHWc
  nodes) loads in ONNX Runtime and reproduces the golden output.
  **Not verified:** an NDK build, an APK, anything running on Android; the Kotlin class is not
  compiled (no current kotlinc here).
- **iOS: nothing was compiled.**  The Swift wrapper's input/output names and shapes are compared
  with the ``.mlpackage`` spec read with coremltools, and the paths ``Package.swift`` names are
  checked to exist.

The tools (gcc, cmake, javac, java, readelf) are required: a missing one fails these tests.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeformer.bundle import build_bundle, mobile, runtimes
from edgeformer.compiler import compile as compile_model
from edgeformer.errors import UserError
from edgeformer.targets.onnxruntime.quantize import ort_nodes

ATOL = 1e-4


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, (
        f"{name} is not installed: these tests need it (apt-get install openjdk-17-jdk-headless gcc cmake binutils)"
    )
    return path


def _java_home() -> Path:
    home = Path(os.environ.get("JAVA_HOME") or Path(os.path.realpath(_tool("javac"))).parent.parent)
    assert (home / "include" / "jni.h").is_file(), f"no jni.h under {home}/include: install a JDK"
    return home


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _floats(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One portable ORT artifact (android-arm64-ort: no NCHWc nodes, also runs on x86_64) and one
    Core ML artifact, of the tiny PoolFormer."""
    root = tmp_path_factory.mktemp("mobile-artifacts")
    return {
        "ort": compile_model("poolformer_tiny", "android-arm64-ort", root / "ort", use_cache=False).path,
        "coreml": compile_model("poolformer_tiny", "iphone12-coreml", root / "coreml", use_cache=False).path,
    }


@pytest.fixture(scope="module")
def android(artifacts, tmp_path_factory):
    return build_bundle(artifacts["ort"], "android-arm64", tmp_path_factory.mktemp("android") / "bundle").path


@pytest.fixture(scope="module")
def x86(artifacts, tmp_path_factory):
    """The x86_64 bundle of the same artifact, cmake-built: its libedgeformer_model.so is the C API
    the host JVM runs the Android Java code against."""
    out = build_bundle(artifacts["ort"], "linux-x86_64", tmp_path_factory.mktemp("x86") / "bundle").path
    _tool("cmake")
    _run(["cmake", "-S", out, "-B", out / "build", "-DCMAKE_BUILD_TYPE=Release"])
    _run(["cmake", "--build", out / "build", "-j2"])
    assert (out / "build" / "libedgeformer_model.so").is_file()
    return out


SMOKE_TEST = r"""
import ai.edgeformer.EdgeformerException;
import ai.edgeformer.EdgeformerModel;
import java.io.File;
import java.io.FileInputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.util.Arrays;

/** args: ASSETS_DIR WORK_DIR INPUT.bin OUTPUT.bin */
public final class SmokeTest {
    static float[] floats(File f) throws Exception {
        ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(f.toPath())).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[b.remaining() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    public static void main(String[] args) throws Exception {
        File assets = new File(args[0]);
        // what an app does: the assets out to a folder, then open it
        File bundle = EdgeformerModel.copyBundle(p -> new FileInputStream(new File(assets, p)), new File(args[1]));
        float[] in = floats(new File(args[2])), want = floats(new File(args[3]));
        float[][] inputs = new float[EdgeformerModel.INPUT_NAMES.length][];
        int at = 0;
        for (int i = 0; i < inputs.length; i++) {
            int n = EdgeformerModel.size(EdgeformerModel.INPUT_SHAPES[i]);
            inputs[i] = Arrays.copyOfRange(in, at, at + n);
            at += n;
        }
        if (at != in.length) throw new AssertionError("input.bin has " + in.length + " floats, the inputs " + at);
        EdgeformerModel m = new EdgeformerModel(bundle, 1);
        float[][] outs = m.run(inputs);
        double err = 0;
        int k = 0;
        for (float[] o : outs) for (float v : o) err = Math.max(err, Math.abs(v - want[k++]));
        if (k != want.length) throw new AssertionError("outputs have " + k + " floats, output.bin " + want.length);
        System.out.println("runtime " + m.runtime());
        System.out.println("api " + EdgeformerModel.apiVersion());
        System.out.println("input " + m.inputName(0) + " " + Arrays.toString(m.inputShape(0)));
        System.out.println("output " + m.outputName(0) + " " + Arrays.toString(m.outputShape(0)));
        System.out.println("max_abs_error " + err);
        // every failure is a Java exception
        try { m.run(new float[3]); System.out.println("short_input none"); }
        catch (IllegalArgumentException e) { System.out.println("short_input IllegalArgumentException"); }
        try { m.reset(); System.out.println("reset none"); }
        catch (EdgeformerException e) { System.out.println("reset " + e.getStatusName() + " " + e.getStatus()); }
        try { m.step(new float[1]); System.out.println("step none"); }
        catch (EdgeformerException e) { System.out.println("step " + e.getStatusName()); }
        try { m.inputName(99); System.out.println("index none"); }
        catch (IndexOutOfBoundsException e) { System.out.println("index IndexOutOfBoundsException"); }
        m.close();
        m.close();
        try { m.run(inputs); System.out.println("closed none"); }
        catch (IllegalStateException e) { System.out.println("closed IllegalStateException"); }
        try { new EdgeformerModel(new File(bundle, "no-such-folder"), 1); System.out.println("open none"); }
        catch (EdgeformerException e) { System.out.println("open " + e.getStatusName() + " | " + e.getMessage()); }
        System.out.println("SMOKE DONE");
    }
}
"""


def _javac_model(android: Path, classes: Path) -> None:
    """javac the generated Java class with every lint as an error."""
    src = sorted((android / "android" / "src" / "main" / "java" / "ai" / "edgeformer").glob("*.java"))
    assert [p.name for p in src] == ["EdgeformerException.java", "EdgeformerModel.java"]
    _run([_tool("javac"), "-encoding", "UTF-8", "-Xlint:all", "-Werror", "-d", classes, *src])


def _smoke(android: Path, lib_dir: Path, classes: Path, work: Path) -> dict[str, str]:
    (work / "SmokeTest.java").write_text(SMOKE_TEST)
    _run([_tool("javac"), "-cp", classes, "-d", classes, work / "SmokeTest.java"])
    golden = android / "golden"
    r = _run(
        [
            _tool("java"),
            "-Xcheck:jni",
            f"-Djava.library.path={lib_dir}",
            "-cp",
            classes,
            "SmokeTest",
            android / "android" / "src" / "main" / "assets",
            work / "opened",
            golden / "input.bin",
            golden / "output.bin",
        ],
        timeout=300,
    )
    assert "SMOKE DONE" in r.stdout, r.stdout + r.stderr
    assert "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr  # -Xcheck:jni is silent on correct JNI use
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in r.stdout.splitlines() if " " in line}


def _check_smoke(out: dict[str, str], io: dict) -> None:
    assert out["runtime"].startswith("onnxruntime ")
    assert out["api"] == str(io["api_version"])
    assert out["input"] == f"{io['inputs'][0]['name']} {io['inputs'][0]['shape']}"
    assert out["output"] == f"{io['outputs'][0]['name']} {io['outputs'][0]['shape']}"
    assert float(out["max_abs_error"]) <= ATOL, out
    assert out["short_input"] == "IllegalArgumentException"
    assert out["reset"] == "EF_ERR_NOT_STREAMING 4" and out["step"] == "EF_ERR_NOT_STREAMING"
    assert out["index"] == "IndexOutOfBoundsException" and out["closed"] == "IllegalStateException"
    assert out["open"].startswith("EF_ERR_IO | EF_ERR_IO: ") and "no-such-folder" in out["open"]


def _gcc_jni(android: Path, x86: Path, lib_dir: Path) -> None:
    """The Android bundle's edgeformer_jni.c, gcc -Wall -Wextra -Werror, linked against the x86_64
    bundle's libedgeformer_model.so."""
    jdk = _java_home()
    jni = android / "android" / "src" / "main" / "cpp" / "edgeformer_jni.c"
    lib_dir.mkdir()
    _run(
        [
            _tool("gcc"),
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            "-shared",
            "-fPIC",
            f"-I{jdk / 'include'}",
            f"-I{jdk / 'include' / 'linux'}",
            f"-I{x86 / 'include'}",
            jni,
            f"-L{x86 / 'build'}",
            "-ledgeformer_model",
            f"-Wl,-rpath,{x86 / 'build'}",
            "-o",
            lib_dir / "libedgeformer_jni.so",
        ]
    )


def test_jni_bridge_and_java_class_run_on_the_host_jvm_on_golden_data(android, x86, tmp_path):
    """gcc -Wall -Wextra -Werror on edgeformer_jni.c against the x86_64 libedgeformer_model.so, the
    Java class from the Android bundle, the assets copied out by copyBundle: golden within 1e-4."""
    lib_dir = tmp_path / "lib"
    _gcc_jni(android, x86, lib_dir)
    classes = tmp_path / "classes"
    _javac_model(android, classes)
    out = _smoke(android, lib_dir, classes, tmp_path)
    _check_smoke(out, json.loads((android / "io.json").read_text()))
    # copyBundle put the assets back where ef_open looks for them
    assert (tmp_path / "opened" / "model" / "model.ort").read_bytes() == (android / "model" / "model.ort").read_bytes()


STREAM_TEST = r"""
import ai.edgeformer.EdgeformerModel;
import java.io.File;
import java.io.FileInputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.util.Arrays;

/** args: ASSETS_DIR WORK_DIR FRAMES.bin LOGITS.bin: the golden stream, twice (reset between). */
public final class StreamTest {
    static float[] floats(File f) throws Exception {
        ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(f.toPath())).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[b.remaining() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    public static void main(String[] args) throws Exception {
        File assets = new File(args[0]);
        File bundle = EdgeformerModel.copyBundle(p -> new FileInputStream(new File(assets, p)), new File(args[1]));
        float[] frames = floats(new File(args[2])), want = floats(new File(args[3]));
        try (EdgeformerModel m = new EdgeformerModel(bundle, 1)) {
            int n = m.frameSize();
            System.out.println("streaming " + m.isStreaming() + " " + EdgeformerModel.STREAMING);
            System.out.println("sizes " + n + " " + m.logitsSize() + " " + m.delayFrames());
            for (int pass = 0; pass < 2; pass++) {
                m.reset();
                int steps = 0;
                for (int at = 0; at + n <= frames.length; at += n, steps++)
                    m.step(Arrays.copyOfRange(frames, at, at + n));
                float[][] tail = m.flush();
                float[] last = tail[tail.length - 1];
                double err = 0;
                for (int i = 0; i < want.length; i++) err = Math.max(err, Math.abs(last[i] - want[i]));
                System.out.println("pass" + pass + " " + steps + " " + tail.length + " " + err);
            }
            try { m.step(new float[n + 1]); System.out.println("bad_frame none"); }
            catch (IllegalArgumentException e) { System.out.println("bad_frame IllegalArgumentException"); }
        }
        System.out.println("STREAM DONE");
    }
}
"""


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    """A streaming artifact (lmuformer_tiny --streaming, portable .ort) bundled for android-arm64
    and linux-x86_64 (cmake-built)."""
    root = tmp_path_factory.mktemp("mobile-stream")
    art = compile_model("lmuformer_tiny", "android-arm64-ort", root / "art", streaming=True, use_cache=False).path
    android = build_bundle(art, "android-arm64", root / "android").path
    x86 = build_bundle(art, "linux-x86_64", root / "x86").path
    _run(["cmake", "-S", x86, "-B", x86 / "build", "-DCMAKE_BUILD_TYPE=Release"])
    _run(["cmake", "--build", x86 / "build", "-j2"])
    return android, x86


def test_jni_streaming_steps_through_the_golden_stream_on_the_host_jvm(streaming, tmp_path):
    """step() per golden frame, flush() (the delay frames), reset(), twice: the last logits equal the
    whole-sequence golden logits within 1e-4 both times, through the JNI bridge."""
    android, x86 = streaming
    io = json.loads((android / "io.json").read_text())
    lib_dir = tmp_path / "lib"
    _gcc_jni(android, x86, lib_dir)
    classes = tmp_path / "classes"
    _javac_model(android, classes)
    (tmp_path / "StreamTest.java").write_text(STREAM_TEST)
    _run([_tool("javac"), "-cp", classes, "-d", classes, tmp_path / "StreamTest.java"])
    golden = android / "golden"
    r = _run(
        [
            _tool("java"),
            "-Xcheck:jni",
            f"-Djava.library.path={lib_dir}",
            "-cp",
            classes,
            "StreamTest",
            android / "android" / "src" / "main" / "assets",
            tmp_path / "opened",
            golden / "input.bin",
            golden / "output.bin",
        ],
        timeout=300,
    )
    assert "STREAM DONE" in r.stdout and "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr
    out = {line.split(" ", 1)[0]: line.split(" ", 1)[1].split() for line in r.stdout.splitlines() if " " in line}
    s = io["streaming"]
    frame_size = int(np.prod(s["frame"]["shape"]))
    assert out["streaming"] == ["true", "true"]
    assert out["sizes"] == [str(frame_size), str(int(np.prod(s["logits"]["shape"]))), str(s["delay_frames"])]
    for p in ("pass0", "pass1"):
        steps, flushes, err = out[p]
        assert int(steps) == io["golden"]["frames"] and int(flushes) == s["delay_frames"]
        assert float(err) <= ATOL, out
    assert out["bad_frame"] == ["IllegalArgumentException"]


def test_ndk_cmakelists_builds_the_jni_library_with_the_host_compilers(android, x86, tmp_path):
    """The Android module's own CMakeLists.txt (bundle src/ + bridge → libedgeformer_jni.so), with
    the host's gcc instead of the NDK and the x86_64 ORT library instead of jniLibs': it builds and
    the host JVM runs it on the golden data.  (The NDK toolchain itself is not available here.)"""
    jdk = _java_home()
    cpp = android / "android" / "src" / "main" / "cpp"
    build = tmp_path / "build"
    _run(
        [
            "cmake",
            "-S",
            cpp,
            "-B",
            build,
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DEF_ORT_LIBRARY={x86 / 'lib' / 'libonnxruntime.so.1'}",
            f"-DCMAKE_C_FLAGS=-I{jdk / 'include'} -I{jdk / 'include' / 'linux'}",
        ]
    )
    _run(["cmake", "--build", build, "-j2"])
    classes = tmp_path / "classes"
    _javac_model(android, classes)
    _check_smoke(_smoke(android, build, classes, tmp_path), json.loads((android / "io.json").read_text()))
    # without an ORT library where the NDK build looks for it, configuring fails with the fix
    r = subprocess.run(
        ["cmake", "-S", str(cpp), "-B", str(tmp_path / "b2"), "-DEF_ORT_LIBRARY=/nonexistent/libonnxruntime.so"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "unzip jni/arm64-v8a/libonnxruntime.so" in r.stderr


def test_java_class_compiles_at_java_8_level_for_android(android, tmp_path):
    """Android's minSdk 24 toolchain takes Java 8 sources: the generated class uses no newer API."""
    src = sorted((android / "android" / "src" / "main" / "java" / "ai" / "edgeformer").glob("*.java"))
    _run(
        [
            _tool("javac"),
            "--release",
            "8",
            "-encoding",
            "UTF-8",
            "-Xlint:all",
            "-Xlint:-options",
            "-Werror",
            "-d",
            tmp_path,
            *src,
        ]
    )


def test_ort_direct_example_compiles_against_the_aar_classes_jar(android, tmp_path):
    """OrtDirect.java (ai.onnxruntime, no JNI of ours) against the real ORT Android Java API: the
    classes.jar of the official AAR that runtimes.ort_aar() fetches (pinned by sha256)."""
    import zipfile

    with zipfile.ZipFile(runtimes.ort_aar()) as z:
        (tmp_path / "classes.jar").write_bytes(z.read("classes.jar"))
    example = next((android / "android" / "examples").rglob("OrtDirect.java"))
    _run(
        [
            _tool("javac"),
            "-encoding",
            "UTF-8",
            "-Xlint:all",
            "-Werror",
            "-cp",
            tmp_path / "classes.jar",
            "-d",
            tmp_path / "out",
            example,
        ]
    )
    assert (tmp_path / "out" / "ai" / "edgeformer" / "examples" / "OrtDirect.class").is_file()
    text = example.read_text()
    io = json.loads((android / "io.json").read_text())
    assert f'MODEL_ASSET = "{Path(io["runtime"]["files"][0]).name}"' in text
    assert (android / "android" / "src" / "main" / "assets" / Path(io["runtime"]["files"][0]).name).is_file()


def test_android_layout_abi_folder_and_aarch64_bionic_runtime(android):
    main = android / "android" / "src" / "main"
    assert sorted(p.name for p in (main / "jniLibs").iterdir()) == ["arm64-v8a"]
    so = main / "jniLibs" / "arm64-v8a" / "libonnxruntime.so"
    head = so.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # ELF, 64-bit
    assert int.from_bytes(head[18:20], "little") == 183  # e_machine EM_AARCH64
    dyn = _run([_tool("readelf"), "-d", so]).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn))
    assert {"libc.so", "liblog.so"} <= needed and "libc.so.6" not in needed  # Android's Bionic, not glibc
    for rel in (
        "cpp/edgeformer_jni.c",
        "cpp/CMakeLists.txt",
        "java/ai/edgeformer/EdgeformerModel.java",
        "java/ai/edgeformer/EdgeformerException.java",
        "kotlin/ai/edgeformer/Edgeformer.kt",
    ):
        assert (main / rel).is_file(), rel
    readme = (android / "android" / "README.md").read_text()
    for line in (
        "minSdk = 24",
        'abiFilters += "arm64-v8a"',
        'path = file("src/main/cpp/CMakeLists.txt")',
        "com.microsoft.onnxruntime:onnxruntime-android:",
        "sha256",
    ):
        assert line in readme, line
    # the paths the NDK CMakeLists.txt reads, relative to it
    cmake = (main / "cpp" / "CMakeLists.txt").read_text()
    assert '"${CMAKE_CURRENT_SOURCE_DIR}/../../../.."' in cmake
    assert sorted((android / "src").glob("*.cpp")) and (android / "include" / "edgeformer.h").is_file()
    assert (android / "third_party" / "onnxruntime" / "include" / "onnxruntime_c_api.h").is_file()


def test_android_asset_model_is_an_arm_ort_that_loads_and_matches_golden(android):
    import onnxruntime as ort

    assets = android / "android" / "src" / "main" / "assets"
    io = json.loads((android / "io.json").read_text())
    assert json.loads((assets / "io.json").read_text()) == io
    model = assets / "model.ort"
    assert not [n for n in ort_nodes(model) if n[0] == "com.microsoft.nchwc"]  # no x86 layout nodes
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [t["name"] for t in io["inputs"]]
    assert [o.name for o in session.get_outputs()] == [t["name"] for t in io["outputs"]]
    x = _floats(android / "golden" / "input.bin").reshape(io["inputs"][0]["shape"])
    y = session.run(None, {io["inputs"][0]["name"]: x})[0]
    np.testing.assert_allclose(y.ravel(), _floats(android / "golden" / "output.bin"), atol=ATOL, rtol=0)


def test_java_and_kotlin_constants_come_from_io_json(android):
    io = json.loads((android / "io.json").read_text())
    java = (android / "android" / "src" / "main" / "java" / "ai" / "edgeformer" / "EdgeformerModel.java").read_text()
    kotlin = (android / "android" / "src" / "main" / "kotlin" / "ai" / "edgeformer" / "Edgeformer.kt").read_text()
    x, y = io["inputs"][0], io["outputs"][0]
    assert f'INPUT_NAMES = {{"{x["name"]}"}}' in java and f'OUTPUT_NAMES = {{"{y["name"]}"}}' in java
    assert "INPUT_SHAPES = {{" + ", ".join(f"{d}L" for d in x["shape"]) + "}}" in java
    assert (
        "INPUT_SHAPES: List<LongArray> = listOf(longArrayOf(" + ", ".join(f"{d}L" for d in x["shape"]) + "))" in kotlin
    )
    assert f'OUTPUT_NAMES: List<String> = listOf("{y["name"]}")' in kotlin
    assert 'BUNDLE_FILES = {"io.json", "model/model.ort"}' in java and 'ASSET_FILES = {"io.json", "model.ort"}' in java


def test_write_android_is_deterministic_and_works_without_the_aar(android, tmp_path):
    io = json.loads((android / "io.json").read_text())
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        mobile.write_android(root, io, ort_aar=None)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert not (a / "android" / "src" / "main" / "jniLibs" / "arm64-v8a").exists()
    readme = (a / "android" / "README.md").read_text()
    version = io["runtime"]["version"]
    assert f"com.microsoft.onnxruntime:onnxruntime-android:{version}" in readme and "unzip -j" in readme
    # with the AAR, the generated sources are the same bytes as in the built bundle
    for rel in ("src/main/cpp/edgeformer_jni.c", "src/main/java/ai/edgeformer/EdgeformerModel.java"):
        assert (a / "android" / rel).read_bytes() == (android / "android" / rel).read_bytes()


def test_write_android_refuses_what_it_cannot_wrap(android, tmp_path):
    io = json.loads((android / "io.json").read_text())
    bad = [
        (dict(io, platform="linux-x86_64"), "not android-arm64"),
        (dict(io, runtime=dict(io["runtime"], name="executorch")), "ONNX Runtime only"),
        (dict(io, inputs=[dict(io["inputs"][0], dtype="int64")]), "float32 tensors only"),
        (dict(io, inputs=[dict(io["inputs"][0], shape=[-1, 3, 32, 32])]), "fixed positive sizes"),
    ]
    for broken, words in bad:
        with pytest.raises(UserError, match=words):
            mobile.write_android(tmp_path / "x", broken, ort_aar=None)
    (tmp_path / "not.aar").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read the ONNX Runtime AAR"):
        mobile.write_android(tmp_path / "y", io, ort_aar=tmp_path / "not.aar")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------------------- iOS


@pytest.fixture(scope="module")
def ios(artifacts, tmp_path_factory):
    return build_bundle(artifacts["coreml"], "ios-arm64", tmp_path_factory.mktemp("ios") / "bundle").path


def _swift_list(text: str, name: str):
    m = re.search(rf"static let {name}: \[[^\]]+\]+ = (\[.*\])\n", text)
    assert m, name
    return json.loads(m.group(1))


def _package_paths(package: str) -> list[str]:
    return re.findall(r'path: "([^"]+)"', package)


def test_ios_coreml_swift_wrapper_matches_the_mlpackage_spec(ios):
    """NOTHING WAS COMPILED: no Swift compiler, Xcode or Core ML here.  This checks that the names
    and shapes the generated Swift wrapper uses equal the .mlpackage's spec (read with coremltools),
    the compute units come from io.json, and the paths Package.swift names exist."""
    import coremltools as ct

    spec = ct.models.MLModel(str(ios / "model" / "model.mlpackage"), skip_model_load=True).get_spec()
    swift = (ios / "ios" / "Sources" / "EdgeformerModel" / "EdgeformerModel.swift").read_text()
    assert _swift_list(swift, "inputNames") == [i.name for i in spec.description.input]
    assert _swift_list(swift, "inputShapes") == [list(i.type.multiArrayType.shape) for i in spec.description.input]
    assert _swift_list(swift, "outputNames") == [o.name for o in spec.description.output]
    assert _swift_list(swift, "outputShapes") == [list(o.type.multiArrayType.shape) for o in spec.description.output]
    io = json.loads((ios / "io.json").read_text())
    units = mobile.COMPUTE_UNITS[io["runtime"]["compute_units"]]
    assert f"defaultComputeUnits: MLComputeUnits = {units}" in swift
    for call in (
        "MLModel.compileModel(at:",
        "MLModel(contentsOf:",
        "MLMultiArray(shape:",
        "configuration.computeUnits",
    ):
        assert call in swift, call
    package = (ios / "ios" / "Package.swift").read_text()
    assert package.startswith("// swift-tools-version:5.7") and ".iOS(.v16)" in package
    paths = _package_paths(package)
    assert paths == ["Sources/EdgeformerModel"]
    assert all((ios / "ios" / p).is_dir() for p in paths)
    assert "nothing here was compiled" in (ios / "ios" / "README.md").read_text().lower()


def test_ios_onnxruntime_package_names_existing_paths(artifacts, tmp_path):
    """NOTHING WAS COMPILED.  An ORT iOS bundle: the C target (bundle src + header + module map)
    and the Swift target exist, and so does the official xcframework the bundle ships (from the
    pinned npm package) at the path the binaryTarget names."""
    root = build_bundle(artifacts["ort"], "ios-arm64", tmp_path / "bundle").path
    ios = root / "ios"
    package = (ios / "Package.swift").read_text()
    paths = _package_paths(package)
    assert paths == [mobile.IOS_ORT_XCFRAMEWORK, "Sources/EdgeformerC", "Sources/EdgeformerModel"]
    assert all((ios / p).is_dir() for p in paths)
    assert (ios / mobile.IOS_ORT_XCFRAMEWORK / "Info.plist").is_file()
    c = ios / "Sources" / "EdgeformerC"
    assert (c / "include" / "edgeformer.h").read_bytes() == (root / "include" / "edgeformer.h").read_bytes()
    assert 'header "edgeformer.h"' in (c / "include" / "module.modulemap").read_text()
    assert sorted(p.name for p in c.glob("*.cpp")) == sorted(p.name for p in (root / "src").glob("*.cpp"))
    # each ORT header the sources include is forwarded to the xcframework's framework-style header,
    # which exists in the real ios-arm64 slice (the npm package runtimes.py fetches; not copied here)
    shims = sorted(p.name for p in (c / "ort").iterdir())
    assert "onnxruntime_c_api.h" in shims and shims == mobile.ort_headers_included(root / "src")
    xcframework = runtimes.ort_npm_root() / "Plugins" / "iOS~" / "onnxruntime.xcframework"
    plist = plistlib.loads((xcframework / "Info.plist").read_bytes())
    slice_ = next(x for x in plist["AvailableLibraries"] if x["LibraryIdentifier"] == "ios-arm64")
    assert slice_["SupportedArchitectures"] == ["arm64"] and "SupportedPlatformVariant" not in slice_
    framework_headers = xcframework / "ios-arm64" / slice_["LibraryPath"] / "Headers"
    for name in shims:
        assert (c / "ort" / name).read_text().endswith(f"#include <onnxruntime/{name}>\n")
        assert (framework_headers / name).is_file(), name
    io = json.loads((root / "io.json").read_text())
    swift = (ios / "Sources" / "EdgeformerModel" / "EdgeformerModel.swift").read_text()
    assert _swift_list(swift, "inputNames") == [t["name"] for t in io["inputs"]]
    assert _swift_list(swift, "outputShapes") == [t["shape"] for t in io["outputs"]]
    for call in ("import EdgeformerC", "ef_open(", "ef_run(", "ef_close(", "ef_step(", "ef_reset("):
        assert call in swift, call


def test_write_ios_refuses_what_it_cannot_wrap(android, tmp_path):
    io = json.loads((android / "io.json").read_text())
    io = dict(io, platform="ios-arm64", runtime=dict(io["runtime"], name="coreml", files=["model/model.mlpackage"]))
    for broken, words in [
        (dict(io, runtime=dict(io["runtime"], name="tvm")), "not tvm"),
        (dict(io, runtime=dict(io["runtime"], compute_units="GPU_MAYBE")), "compute units"),
        (dict(io, platform="android-arm64"), "not ios-arm64"),
        (dict(io, outputs=[dict(io["outputs"][0], dtype="float16")]), "float32 tensors only"),
    ]:
        with pytest.raises(UserError, match=words):
            mobile.write_ios(tmp_path, broken)
    assert not (tmp_path / "ios").exists()


def test_java_string_constants_survive_awkward_names(android, tmp_path):
    """Names with quotes, backslashes, '$', control and non-ASCII characters compile (javac) and
    keep their value (MODEL_NAME is a compile-time constant: read without loading the JNI library)."""
    io = json.loads((android / "io.json").read_text())
    awkward = 'a"b\\c$d\ne\u00e9\u4e2d\U0001f600'
    io = dict(io, model=dict(io["model"], name=awkward), inputs=[dict(io["inputs"][0], name=awkward)])
    mobile.write_android(tmp_path / "b", io, ort_aar=None)
    src = sorted((tmp_path / "b" / "android" / "src" / "main" / "java" / "ai" / "edgeformer").glob("*.java"))
    (tmp_path / "Show.java").write_text(
        "public final class Show { public static void main(String[] a) throws Exception {\n"
        '  java.io.PrintStream out = new java.io.PrintStream(System.out, true, "UTF-8");\n'
        "  out.print(ai.edgeformer.EdgeformerModel.MODEL_NAME); } }\n"
    )
    _run(
        [
            _tool("javac"),
            "-encoding",
            "UTF-8",
            "-Xlint:all",
            "-Werror",
            "-d",
            tmp_path / "c",
            *src,
            tmp_path / "Show.java",
        ]
    )
    r = subprocess.run([_tool("java"), "-cp", str(tmp_path / "c"), "Show"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == awkward
    kotlin = (
        tmp_path / "b" / "android" / "src" / "main" / "kotlin" / "ai" / "edgeformer" / "Edgeformer.kt"
    ).read_text()
    assert 'MODEL_NAME: String = "a\\"b\\\\c\\$d\\u000ae\\u00e9\\u4e2d\\ud83d\\ude00"' in kotlin
