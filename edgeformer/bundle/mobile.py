"""The Android and iOS parts of an edgeformer bundle, generated from the bundle's io.json.

``write_android(root, io, ort_aar=...)`` writes ``root/android/``: a JNI bridge over the bundle's C
API (``include/edgeformer.h``) with its NDK ``CMakeLists.txt``, a Java class and a Kotlin class
with the model's input/output names and shapes as constants, a Java example that calls
``ai.onnxruntime`` directly (no JNI of ours), the ORT runtime library for arm64-v8a (taken from the
official ORT Android AAR when one is given, else the README names its Gradle coordinates) and a
README with the Gradle lines.  The model files go to ``src/main/assets/`` under their base
names: the bundle builder copies them there (``android_assets(io)`` gives the mapping); this
module writes only ``io.json`` there.

``write_ios(root, io)`` writes ``root/ios/``: a Swift package with a wrapper generated from
io.json, over Core ML (``MLModel``, one ``MLMultiArray`` per input, compute units from the
profile) for a ``coreml`` bundle, or over the C API (a C target with a module map, plus a
``binaryTarget`` for ``onnxruntime.xcframework``) for an ``onnxruntime`` bundle, and a README.

Both are deterministic (the same io.json gives the same bytes) and refuse anything they cannot
wrap with one :class:`~edgeformer.errors.UserError` line.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path

from edgeformer.errors import UserError
from edgeformer.fsutil import atomic_write_bytes

ANDROID_PLATFORM = "android-arm64"
IOS_PLATFORM = "ios-arm64"
ANDROID_ABI = "arm64-v8a"
ANDROID_MIN_SDK = 24  # the official ORT Android AAR's minSdkVersion
JAVA_PACKAGE = "ai.edgeformer"
ORT_GRADLE = "com.microsoft.onnxruntime:onnxruntime-android"
ORT_AAR_LIBRARY = f"jni/{ANDROID_ABI}/libonnxruntime.so"
ELF_MACHINE_AARCH64 = 183
IOS_ORT_XCFRAMEWORK = "Frameworks/onnxruntime.xcframework"  # relative to ios/
ANDROID_RUNTIMES = ("onnxruntime",)
IOS_RUNTIMES = ("coreml", "onnxruntime")
COMPUTE_UNITS = {
    "ALL": ".all",
    "CPU_ONLY": ".cpuOnly",
    "CPU_AND_GPU": ".cpuAndGPU",
    "CPU_AND_NE": ".cpuAndNeuralEngine",
}
_FIX = "bundle a float32 artifact with fixed shapes (compile with --profile android-arm64-ort or iphone12-coreml)"


# ----------------------------------------------------------------------------------- helpers


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode() if isinstance(text, str) else text)


def _runtime(io: dict) -> dict:
    runtime = io.get("runtime")
    if not isinstance(runtime, dict) or not isinstance(runtime.get("name"), str):
        raise UserError("io.json has no runtime name", "rebuild the bundle with edgeformer bundle")
    return runtime


def _tensors(io: dict, key: str) -> list[tuple[str, list[int]]]:
    """The (name, shape) of each input or output, after checking the wrappers can carry it."""
    kind = key[:-1]
    items = io.get(key)
    if not isinstance(items, list) or not items:
        raise UserError(f"io.json lists no {key}", "rebuild the bundle with edgeformer bundle")
    out: list[tuple[str, list[int]]] = []
    for t in items:
        name = t.get("name") if isinstance(t, dict) else None
        if not isinstance(name, str) or not name:
            raise UserError(f"io.json has an {kind} without a name", "rebuild the bundle with edgeformer bundle")
        if t.get("dtype") != "float32":
            raise UserError(
                f"{kind} {name!r} is {t.get('dtype')}: the mobile wrappers carry float32 tensors only", _FIX
            )
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        ):
            raise UserError(f"{kind} {name!r} has shape {shape}: the mobile wrappers need fixed positive sizes", _FIX)
        if any(name == n for n, _ in out):
            raise UserError(f"io.json names two {key} {name!r}", "rebuild the bundle with edgeformer bundle")
        out.append((name, list(shape)))
    return out


def _size(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _streaming(io: dict) -> dict | None:
    s = io.get("streaming")
    return s if isinstance(s, dict) and s else None


def _check_platform(io: dict, platform: str) -> None:
    got = io.get("platform")
    if got != platform:
        raise UserError(
            f"io.json is for platform {got!r}, not {platform}", f"build the bundle with --platform {platform}"
        )


def _java_str(s: str) -> str:
    """A Java string literal (no unicode escapes: javac would decode them before lexing)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)  # the file is UTF-8 (javac -encoding UTF-8, Gradle's default)
    return '"' + "".join(out) + '"'


def _kotlin_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\$':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\u{u:04x}" for u in _utf16(ch))
    return '"' + "".join(out) + '"'


def _swift_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def _utf16(ch: str) -> list[int]:
    b = ch.encode("utf-16-be")
    return [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]


def _c_comment(s: str) -> str:
    return re.sub(r"[^ -~]", "?", s).replace("*/", "* /")


def _elf_machine(data: bytes) -> int | None:
    """The ELF header's e_machine, or None when ``data`` is not an ELF file."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    return int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")


def _ort_library_version(data: bytes) -> str | None:
    m = re.search(rb"VERS_(\d+\.\d+\.\d+)", data)
    return m.group(1).decode() if m else None


def android_assets(io: dict) -> list[tuple[str, str]]:
    """(bundle path, asset name) of each file an app needs at run time: ``android/src/main/assets/``
    holds each bundle file under its base name (io.json is written here, the model files are
    copied by the builder); ``EdgeformerModel.copyBundle`` puts them back at their bundle paths
    in a folder ``ef_open`` can read."""
    files = ["io.json", *[f for f in _runtime(io).get("files") or [] if f != "io.json"]]
    pairs = [(f, Path(f).name) for f in files]
    names = [a for _, a in pairs]
    if len(set(names)) != len(names):
        raise UserError(f"two bundle files share an asset name: {files}", "rebuild the bundle with edgeformer bundle")
    return pairs


# ----------------------------------------------------------------------------------- Android


def write_android(root: Path, io: dict, *, ort_aar: Path | None) -> None:
    """Write ``root/android/`` for an ``android-arm64`` bundle (see the module docstring)."""
    root = Path(root)
    _check_platform(io, ANDROID_PLATFORM)
    runtime = _runtime(io)
    if runtime["name"] not in ANDROID_RUNTIMES:
        raise UserError(
            f"android-arm64 bundles wrap ONNX Runtime only, not {runtime['name']}",
            "compile with --profile android-arm64-ort and bundle that artifact",
        )
    inputs, outputs = _tensors(io, "inputs"), _tensors(io, "outputs")
    for name, shape in inputs + outputs:
        if _size(shape) > 2**31 - 1:
            raise UserError(f"tensor {name!r} has {_size(shape)} elements: a Java float[] holds at most 2^31-1", _FIX)
    ort = None
    if ort_aar is not None:
        ort = _read_aar_library(Path(ort_aar))
    android = root / "android"
    main = android / "src" / "main"
    if ort is not None:
        _write(main / "jniLibs" / ANDROID_ABI / "libonnxruntime.so", ort["data"])
    android_assets(io)  # refuses clashing asset names
    _write(main / "assets" / "io.json", json.dumps(io, indent=2, sort_keys=True) + "\n")
    _write(main / "cpp" / "edgeformer_jni.c", JNI_SOURCE)
    _write(main / "cpp" / "CMakeLists.txt", _ndk_cmake(io))
    java = main / "java" / "ai" / "edgeformer"
    _write(java / "EdgeformerModel.java", _java_model(io, inputs, outputs))
    _write(java / "EdgeformerException.java", JAVA_EXCEPTION)
    _write(main / "kotlin" / "ai" / "edgeformer" / "Edgeformer.kt", _kotlin_model(io, inputs, outputs))
    _write(
        android / "examples" / "ort-direct" / "ai" / "edgeformer" / "examples" / "OrtDirect.java",
        _ort_direct(io, inputs, outputs),
    )
    _write(android / "README.md", _android_readme(io, ort))


def _read_aar_library(aar: Path) -> dict:
    try:
        with zipfile.ZipFile(aar) as z:
            data = z.read(ORT_AAR_LIBRARY)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(
            f"cannot read the ONNX Runtime AAR {aar}: {e}", "pass the official onnxruntime-android .aar"
        ) from None
    except KeyError:
        raise UserError(f"{aar} has no {ORT_AAR_LIBRARY}", "pass the official onnxruntime-android .aar") from None
    machine = _elf_machine(data)
    if machine != ELF_MACHINE_AARCH64:
        raise UserError(
            f"{aar}!{ORT_AAR_LIBRARY} is not an AArch64 ELF library (e_machine {machine})",
            "pass the official onnxruntime-android .aar",
        )
    return {
        "data": data,
        "aar": aar.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "version": _ort_library_version(data),
    }


def _java_shape_rows(items: list[tuple[str, list[int]]]) -> str:
    return ", ".join("{" + ", ".join(f"{d}L" for d in shape) + "}" for _, shape in items)


def _describe(io: dict) -> str:
    model = io.get("model") or {}
    runtime = _runtime(io)
    name, weights = model.get("name", "?"), model.get("weights_origin", "?")
    return f"model {name} ({weights} weights), runtime {runtime['name']} {runtime.get('version', '')}".strip()


def _prepost_lines(io: dict) -> list[str]:
    lines = []
    pre, post = io.get("preprocess"), io.get("postprocess")
    if pre:
        lines.append("Pre-processing (io.json): " + json.dumps(pre, sort_keys=True))
    if post:
        lines.append("Post-processing (io.json): " + json.dumps(post, sort_keys=True))
    return [_c_comment(line) for line in lines]


def _java_model(io: dict, inputs, outputs) -> str:
    runtime = _runtime(io)
    stream = _streaming(io)
    files = ", ".join(_java_str(f) for f, _ in android_assets(io))
    assets = ", ".join(_java_str(a) for _, a in android_assets(io))
    threads = int(runtime.get("threads") or 0)
    prepost = "".join(f" * <p>{line}\n" for line in _prepost_lines(io))
    softmax = bool((io.get("postprocess") or {}).get("softmax"))
    return f"""// Generated by edgeformer bundle from io.json ({_c_comment(_describe(io))}). Do not edit.
package {JAVA_PACKAGE};

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Arrays;

/**
 * The bundle's model through its C API (libedgeformer_jni.so: the bundle's library plus a JNI
 * bridge).  Inputs and outputs are dense row-major float arrays, in the order of the constants
 * below.  Not thread-safe across instances' shared state: every method of one instance is
 * synchronized; use one instance per thread for parallel work.
 *
{prepost} */
public final class EdgeformerModel implements AutoCloseable {{
    public static final String MODEL_NAME = {_java_str(str((io.get("model") or {}).get("name", "")))};
    public static final String RUNTIME = {_java_str(runtime["name"])};
    public static final String RUNTIME_VERSION = {_java_str(str(runtime.get("version", "")))};
    public static final int API_VERSION = {int(io.get("api_version", 1))};
    /** Threads used when the constructor gets 0 (io.json runtime.threads). */
    public static final int DEFAULT_THREADS = {threads};
    /** The files copyBundle extracts: ASSET_FILES[i] of src/main/assets/ to BUNDLE_FILES[i]. */
    public static final String[] ASSET_FILES = {{{assets}}};
    public static final String[] BUNDLE_FILES = {{{files}}};
    public static final String[] INPUT_NAMES = {{{", ".join(_java_str(n) for n, _ in inputs)}}};
    public static final long[][] INPUT_SHAPES = {{{_java_shape_rows(inputs)}}};
    public static final String[] OUTPUT_NAMES = {{{", ".join(_java_str(n) for n, _ in outputs)}}};
    public static final long[][] OUTPUT_SHAPES = {{{_java_shape_rows(outputs)}}};
    /** A streaming bundle: step() and reset() work; run() runs the raw step graph. */
    public static final boolean STREAMING = {"true" if stream else "false"};
    /** io.json's postprocess asks for a softmax over the logits (see softmax()). */
    public static final boolean SOFTMAX = {"true" if softmax else "false"};

    static {{
        System.loadLibrary("edgeformer_jni");
    }}

    private long handle;

    /**
     * Opens the bundle folder (the one holding io.json and model/) with numThreads intra-op
     * threads (0: DEFAULT_THREADS).  On Android, copyBundle() the assets to a folder first.
     */
    public EdgeformerModel(File bundleDir, int numThreads) throws EdgeformerException {{
        if (bundleDir == null) throw new NullPointerException("bundleDir");
        if (numThreads < 0) throw new IllegalArgumentException("numThreads must be >= 0, got " + numThreads);
        handle = nativeOpen(bundleDir.getAbsolutePath(), numThreads);
        try {{
            checkSignature();
        }} catch (RuntimeException e) {{
            close();
            throw e;
        }}
    }}

    public EdgeformerModel(File bundleDir) throws EdgeformerException {{
        this(bundleDir, 0);
    }}

    /** Opens an asset; on Android: {{@code path -> context.getAssets().open(path)}}. */
    public interface AssetOpener {{
        InputStream open(String path) throws IOException;
    }}

    /**
     * Copies ASSET_FILES from the app's assets to BUNDLE_FILES under destDir (e.g. new File(
     * context.getFilesDir(), "edgeformer")) and returns destDir, ready for the constructor.
     */
    public static File copyBundle(AssetOpener assets, File destDir) throws IOException {{
        byte[] buffer = new byte[1 << 16];
        for (int i = 0; i < BUNDLE_FILES.length; i++) {{
            File dest = new File(destDir, BUNDLE_FILES[i]);
            File parent = dest.getParentFile();
            if (parent != null && !parent.isDirectory() && !parent.mkdirs())
                throw new IOException("cannot create " + parent);
            File tmp = new File(dest.getPath() + ".part");
            try (InputStream in = assets.open(ASSET_FILES[i]); OutputStream out = new FileOutputStream(tmp)) {{
                for (int n; (n = in.read(buffer)) > 0; ) out.write(buffer, 0, n);
            }}
            if (!tmp.renameTo(dest)) {{
                if (!dest.delete() || !tmp.renameTo(dest)) throw new IOException("cannot write " + dest);
            }}
        }}
        return destDir;
    }}

    /** Element count of a shape. */
    public static int size(long[] shape) {{
        long n = 1;
        for (long d : shape) n *= d;
        return (int) n;
    }}

    /** Runs once: inputs[i] has size(INPUT_SHAPES[i]) floats; returns one array per output. */
    public synchronized float[][] run(float[]... inputs) throws EdgeformerException {{
        long h = open();
        if (inputs == null || inputs.length != INPUT_NAMES.length)
            throw new IllegalArgumentException("expected " + INPUT_NAMES.length + " inputs "
                    + Arrays.toString(INPUT_NAMES) + ", got " + (inputs == null ? 0 : inputs.length));
        for (int i = 0; i < inputs.length; i++) {{
            int want = size(INPUT_SHAPES[i]);
            if (inputs[i] == null || inputs[i].length != want)
                throw new IllegalArgumentException("input " + INPUT_NAMES[i] + " needs " + want + " floats "
                        + Arrays.toString(INPUT_SHAPES[i]) + ", got "
                        + (inputs[i] == null ? "null" : String.valueOf(inputs[i].length)));
        }}
        float[][] outputs = new float[OUTPUT_NAMES.length][];
        for (int i = 0; i < outputs.length; i++) outputs[i] = new float[size(OUTPUT_SHAPES[i])];
        nativeRun(h, inputs, outputs);
        return outputs;
    }}

    /** Streaming: feeds one frame (frameSize() floats) and returns the logits (logitsSize()). */
    public synchronized float[] step(float[] frame) throws EdgeformerException {{
        long h = open();
        if (frame == null) throw new NullPointerException("frame");
        float[] logits = new float[(int) nativeLogitsSize(h)];
        nativeStep(h, frame, false, logits);
        return logits;
    }}

    /** Streaming: the delayFrames() flush steps that end a stream; returns their logits. */
    public synchronized float[][] flush() throws EdgeformerException {{
        long h = open();
        float[][] out = new float[(int) nativeDelayFrames(h)][];
        for (int i = 0; i < out.length; i++) {{
            out[i] = new float[(int) nativeLogitsSize(h)];
            nativeStep(h, null, true, out[i]);
        }}
        return out;
    }}

    /** Streaming: starts the next stream (the states go back to their initial values). */
    public synchronized void reset() throws EdgeformerException {{
        nativeReset(open());
    }}

    public synchronized boolean isStreaming() {{ return nativeIsStreaming(open()); }}
    public synchronized int frameSize() {{ return (int) nativeFrameSize(open()); }}
    public synchronized int logitsSize() {{ return (int) nativeLogitsSize(open()); }}
    public synchronized int delayFrames() {{ return (int) nativeDelayFrames(open()); }}

    /** What the loaded library reports (checked against the constants when opening). */
    public synchronized int numInputs() {{ return nativeNumInputs(open()); }}
    public synchronized int numOutputs() {{ return nativeNumOutputs(open()); }}
    public synchronized String inputName(int i) {{ return nativeInputName(open(), i); }}
    public synchronized String outputName(int i) {{ return nativeOutputName(open(), i); }}
    public synchronized long[] inputShape(int i) {{ return nativeInputShape(open(), i); }}
    public synchronized long[] outputShape(int i) {{ return nativeOutputShape(open(), i); }}
    /** For example "onnxruntime 1.31.1". */
    public synchronized String runtime() {{ return nativeRuntime(open()); }}

    /** The C API version of libedgeformer_jni.so. */
    public static int apiVersion() {{ return nativeApiVersion(); }}

    /** Softmax over a logits vector (numerically stable). */
    public static float[] softmax(float[] logits) {{
        float max = Float.NEGATIVE_INFINITY;
        for (float v : logits) max = Math.max(max, v);
        double sum = 0;
        float[] out = new float[logits.length];
        for (int i = 0; i < logits.length; i++) {{
            out[i] = (float) Math.exp(logits[i] - max);
            sum += out[i];
        }}
        for (int i = 0; i < out.length; i++) out[i] = (float) (out[i] / sum);
        return out;
    }}

    @Override
    public synchronized void close() {{
        if (handle != 0) {{
            nativeClose(handle);
            handle = 0;
        }}
    }}

    private long open() {{
        if (handle == 0) throw new IllegalStateException("EdgeformerModel is closed");
        return handle;
    }}

    private void checkSignature() {{
        long h = open();
        if (nativeNumInputs(h) != INPUT_NAMES.length || nativeNumOutputs(h) != OUTPUT_NAMES.length)
            throw new IllegalStateException("the bundle's library has " + nativeNumInputs(h) + " inputs and "
                    + nativeNumOutputs(h) + " outputs; this class was generated for " + INPUT_NAMES.length + " and "
                    + OUTPUT_NAMES.length);
        for (int i = 0; i < INPUT_NAMES.length; i++)
            checkTensor("input " + i, INPUT_NAMES[i], INPUT_SHAPES[i], nativeInputName(h, i),
                    nativeInputShape(h, i));
        for (int i = 0; i < OUTPUT_NAMES.length; i++)
            checkTensor("output " + i, OUTPUT_NAMES[i], OUTPUT_SHAPES[i], nativeOutputName(h, i),
                    nativeOutputShape(h, i));
    }}

    private static void checkTensor(String what, String name, long[] shape, String gotName, long[] gotShape) {{
        if (!name.equals(gotName) || !Arrays.equals(shape, gotShape))
            throw new IllegalStateException(what + " of the bundle's library is " + gotName + " "
                    + Arrays.toString(gotShape) + "; this class was generated for " + name + " "
                    + Arrays.toString(shape));
    }}

    private static native int nativeApiVersion();
    private static native long nativeOpen(String bundleDir, int numThreads) throws EdgeformerException;
    private static native void nativeClose(long handle);
    private static native String nativeRuntime(long handle);
    private static native int nativeNumInputs(long handle);
    private static native int nativeNumOutputs(long handle);
    private static native String nativeInputName(long handle, int index);
    private static native String nativeOutputName(long handle, int index);
    private static native long[] nativeInputShape(long handle, int index);
    private static native long[] nativeOutputShape(long handle, int index);
    private static native void nativeRun(long handle, float[][] inputs, float[][] outputs) throws EdgeformerException;
    private static native boolean nativeIsStreaming(long handle);
    private static native long nativeFrameSize(long handle);
    private static native long nativeLogitsSize(long handle);
    private static native long nativeDelayFrames(long handle);
    private static native void nativeReset(long handle) throws EdgeformerException;
    private static native void nativeStep(long handle, float[] frame, boolean flush, float[] logits)
            throws EdgeformerException;
}}
"""


JAVA_EXCEPTION = f"""// Generated by edgeformer bundle. Do not edit.
package {JAVA_PACKAGE};

/** A failure reported by the bundle's C API: its ef_status and its message. */
public class EdgeformerException extends Exception {{
    private static final long serialVersionUID = 1L;
    private final int status;
    private final String statusName;

    public EdgeformerException(int status, String statusName, String message) {{
        super(statusName + ": " + message);
        this.status = status;
        this.statusName = statusName;
    }}

    /** The ef_status value (EF_ERR_IO = 2, EF_ERR_RUNTIME = 3, ...). */
    public int getStatus() {{
        return status;
    }}

    /** "EF_ERR_IO", "EF_ERR_RUNTIME", ... */
    public String getStatusName() {{
        return statusName;
    }}
}}
"""


def _kotlin_model(io: dict, inputs, outputs) -> str:
    def shapes(items):
        return ", ".join("longArrayOf(" + ", ".join(f"{d}L" for d in shape) + ")" for _, shape in items)

    return f"""// Generated by edgeformer bundle from io.json ({_c_comment(_describe(io))}). Do not edit.
package {JAVA_PACKAGE}

import java.io.File
import java.io.InputStream

/**
 * Kotlin face of [EdgeformerModel] (the JNI bridge over the bundle's C API).
 *
 * ```
 * val dir = Edgeformer.copyAssets({{ context.assets.open(it) }}, File(context.filesDir, "edgeformer"))
 * Edgeformer(dir).use {{ model -> val logits = model.run(input)[0] }}
 * ```
 */
class Edgeformer(bundleDir: File, threads: Int = 0) : AutoCloseable {{
    private val model = EdgeformerModel(bundleDir, threads)

    companion object {{
        const val MODEL_NAME: String = {_kotlin_str(str((io.get("model") or {}).get("name", "")))}
        val INPUT_NAMES: List<String> = listOf({", ".join(_kotlin_str(n) for n, _ in inputs)})
        val INPUT_SHAPES: List<LongArray> = listOf({shapes(inputs)})
        val OUTPUT_NAMES: List<String> = listOf({", ".join(_kotlin_str(n) for n, _ in outputs)})
        val OUTPUT_SHAPES: List<LongArray> = listOf({shapes(outputs)})
        const val STREAMING: Boolean = {"true" if _streaming(io) else "false"}

        /** Extracts the bundle's assets to [destDir]; returns it, ready for the constructor. */
        fun copyAssets(open: (String) -> InputStream, destDir: File): File =
            EdgeformerModel.copyBundle({{ path -> open(path) }}, destDir)
    }}

    /** One array per input, in [INPUT_NAMES] order; returns one array per output. */
    fun run(vararg inputs: FloatArray): List<FloatArray> = model.run(*inputs).toList()

    /** Inputs by name; returns the outputs by name. */
    fun run(inputs: Map<String, FloatArray>): Map<String, FloatArray> {{
        val missing = INPUT_NAMES.filter {{ it !in inputs }}
        require(missing.isEmpty()) {{ "missing inputs $missing; the model takes $INPUT_NAMES" }}
        val outputs = model.run(*Array(INPUT_NAMES.size) {{ inputs.getValue(INPUT_NAMES[it]) }})
        return OUTPUT_NAMES.zip(outputs.toList()).toMap()
    }}

    /** Streaming bundles: one frame in, logits out. */
    fun step(frame: FloatArray): FloatArray = model.step(frame)

    /** Streaming bundles: the flush steps that end a stream. */
    fun flush(): List<FloatArray> = model.flush().toList()

    /** Streaming bundles: start the next stream. */
    fun reset() = model.reset()

    val runtime: String get() = model.runtime()

    override fun close() = model.close()
}}
"""


def _ort_direct(io: dict, inputs, outputs) -> str:
    runtime = _runtime(io)
    threads = int(runtime.get("threads") or 1)
    model_file = next((f for f in runtime.get("files") or [] if f.endswith(".ort")), "model/model.ort")
    return f"""// Generated by edgeformer bundle from io.json ({_c_comment(_describe(io))}). Do not edit.
// Runs the bundle's model with the ONNX Runtime Java API (ai.onnxruntime, from the
// {ORT_GRADLE} AAR) and no JNI code of ours.  Not part of the default build: copy it into
// src/main/java/ai/edgeformer/examples/ and add the AAR dependency (android/README.md).
package {JAVA_PACKAGE}.examples;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.FloatBuffer;
import java.util.LinkedHashMap;
import java.util.Map;

public final class OrtDirect implements AutoCloseable {{
    /** The model inside the app's assets. */
    public static final String MODEL_ASSET = {_java_str(Path(model_file).name)};
    public static final String[] INPUT_NAMES = {{{", ".join(_java_str(n) for n, _ in inputs)}}};
    public static final long[][] INPUT_SHAPES = {{{_java_shape_rows(inputs)}}};
    public static final String[] OUTPUT_NAMES = {{{", ".join(_java_str(n) for n, _ in outputs)}}};
    public static final long[][] OUTPUT_SHAPES = {{{_java_shape_rows(outputs)}}};
    public static final int THREADS = {threads};

    private final OrtEnvironment env;
    private final OrtSession session;

    /** modelBytes: readAll(context.getAssets().open(MODEL_ASSET)). */
    public OrtDirect(byte[] modelBytes, int threads) throws OrtException {{
        env = OrtEnvironment.getEnvironment();
        try (OrtSession.SessionOptions options = new OrtSession.SessionOptions()) {{
            options.setIntraOpNumThreads(threads > 0 ? threads : THREADS);
            // the .ort file is already optimized for ARM; more would re-optimize it at load
            options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.BASIC_OPT);
            session = env.createSession(modelBytes, options);
        }}
    }}

    /** InputStream.readAllBytes needs Android API 33; this works from API 24. */
    public static byte[] readAll(InputStream in) throws IOException {{
        try (InputStream stream = in) {{
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[1 << 16];
            for (int n; (n = stream.read(buffer)) > 0; ) out.write(buffer, 0, n);
            return out.toByteArray();
        }}
    }}

    /** One array per input (row-major, INPUT_SHAPES); returns one array per output. */
    public float[][] run(float[]... inputs) throws OrtException {{
        if (inputs.length != INPUT_NAMES.length)
            throw new IllegalArgumentException("expected " + INPUT_NAMES.length + " inputs");
        Map<String, OnnxTensor> feed = new LinkedHashMap<>();
        try {{
            for (int i = 0; i < inputs.length; i++)
                feed.put(INPUT_NAMES[i], OnnxTensor.createTensor(env, FloatBuffer.wrap(inputs[i]), INPUT_SHAPES[i]));
            try (OrtSession.Result result = session.run(feed)) {{
                float[][] outputs = new float[OUTPUT_NAMES.length][];
                for (int j = 0; j < OUTPUT_NAMES.length; j++) {{
                    OnnxValue value = result.get(OUTPUT_NAMES[j]).orElseThrow(IllegalStateException::new);
                    FloatBuffer buffer = ((OnnxTensor) value).getFloatBuffer();
                    outputs[j] = new float[buffer.remaining()];
                    buffer.get(outputs[j]);
                }}
                return outputs;
            }}
        }} finally {{
            for (OnnxTensor t : feed.values()) t.close();
        }}
    }}

    @Override
    public void close() throws OrtException {{
        session.close();
    }}
}}
"""


def _ndk_cmake(io: dict) -> str:
    return f"""# Generated by edgeformer bundle ({_c_comment(_describe(io))}).
# NDK build of libedgeformer_jni.so: the bundle's C API implementation (../../../../src) and the
# JNI bridge (edgeformer_jni.c), linked against the ONNX Runtime library in
# ../jniLibs/{ANDROID_ABI}/libonnxruntime.so.  Gradle: externalNativeBuild {{ cmake {{ path
# "src/main/cpp/CMakeLists.txt" }} }} (android/README.md).
cmake_minimum_required(VERSION 3.22.1)
project(edgeformer_jni C CXX)

set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_C_STANDARD 99)

if(ANDROID_ABI AND NOT ANDROID_ABI STREQUAL "{ANDROID_ABI}")
  message(FATAL_ERROR "this bundle is for {ANDROID_ABI} only, not ${{ANDROID_ABI}}: "
                      "set ndk {{ abiFilters += \\"{ANDROID_ABI}\\" }} in build.gradle")
endif()

get_filename_component(EF_BUNDLE "${{CMAKE_CURRENT_SOURCE_DIR}}/../../../.." ABSOLUTE)
set(EF_ORT_LIBRARY "${{CMAKE_CURRENT_SOURCE_DIR}}/../jniLibs/{ANDROID_ABI}/libonnxruntime.so"
    CACHE FILEPATH "libonnxruntime.so for {ANDROID_ABI} (jni/{ANDROID_ABI}/ of the onnxruntime-android AAR)")
if(NOT EXISTS "${{EF_ORT_LIBRARY}}")
  message(FATAL_ERROR "no ${{EF_ORT_LIBRARY}}: unzip jni/{ANDROID_ABI}/libonnxruntime.so from the "
                      "{ORT_GRADLE} AAR into src/main/jniLibs/{ANDROID_ABI}/ (android/README.md)")
endif()
add_library(onnxruntime SHARED IMPORTED)
set_target_properties(onnxruntime PROPERTIES IMPORTED_LOCATION "${{EF_ORT_LIBRARY}}")

file(GLOB EF_SOURCES CONFIGURE_DEPENDS "${{EF_BUNDLE}}/src/*.cpp" "${{EF_BUNDLE}}/src/*.c")
add_library(edgeformer_jni SHARED edgeformer_jni.c ${{EF_SOURCES}})
target_include_directories(edgeformer_jni PRIVATE
  "${{EF_BUNDLE}}/include" "${{EF_BUNDLE}}/src" "${{EF_BUNDLE}}/third_party/onnxruntime/include")
set_source_files_properties(edgeformer_jni.c PROPERTIES COMPILE_OPTIONS "-Wall;-Wextra;-Werror")
target_link_libraries(edgeformer_jni PRIVATE onnxruntime)
# 16 KB pages (Android 15+ devices) and no undefined symbols left for the loader
target_link_options(edgeformer_jni PRIVATE "-Wl,-z,max-page-size=16384" "-Wl,--no-undefined")
"""


def _android_readme(io: dict, ort: dict | None) -> str:
    runtime = _runtime(io)
    version = str(runtime.get("version", ""))
    assets = "\n".join(f"- `src/main/assets/{a}` (the bundle's `{f}`)" for f, a in android_assets(io))
    if ort is not None:
        lib = (
            f"`src/main/jniLibs/{ANDROID_ABI}/libonnxruntime.so` is ONNX Runtime "
            f"{ort['version'] or '(version unknown)'} for "
            f"{ANDROID_ABI} ({ort['bytes']:,} bytes, sha256 `{ort['sha256']}`), unzipped from `{ort['aar']}`'s "
            f"`{ORT_AAR_LIBRARY}`. It is an AArch64 ELF library (e_machine {ELF_MACHINE_AARCH64}) "
            "for Android's Bionic libc. "
            "Gradle packages it into the APK next to `libedgeformer_jni.so`, which needs it."
        )
        dependency = (
            "No ONNX Runtime dependency is needed for the JNI class: the library is in `jniLibs/`.\n"
            f'Only `examples/ort-direct` (the ORT Java API) needs `implementation("{ORT_GRADLE}:{version}")`,\n'
            "and then "
            f"delete `src/main/jniLibs/{ANDROID_ABI}/libonnxruntime.so` (the AAR brings its own copy)."
        )
    else:
        lib = (
            f"`src/main/jniLibs/{ANDROID_ABI}/` is empty: this bundle was built without the ONNX Runtime AAR. "
            f"Get the official AAR (`{ORT_GRADLE}:{version}` on Maven Central, "
            "`https://repo1.maven.org/maven2/com/microsoft/onnxruntime/onnxruntime-android/"
            f"{version}/onnxruntime-android-{version}.aar`) "
            "and unzip its arm64 library there before the NDK build:\n\n"
            f"```sh\nunzip -j onnxruntime-android-{version}.aar {ORT_AAR_LIBRARY} "
            f"-d src/main/jniLibs/{ANDROID_ABI}/\n```"
        )
        dependency = (
            f'`examples/ort-direct` (the ORT Java API) needs `implementation("{ORT_GRADLE}:{version}")`; '
            "the JNI class does not."
        )
    stream = _streaming(io)
    stream_text = (
        "\nThis is a streaming bundle: `model.step(frame)` per frame, `model.flush()` at the end of a stream "
        "(its delay frames), `model.reset()` before the next one.\n"
        if stream
        else ""
    )
    names_in = ", ".join(f"`{n}` {s}" for n, s in _tensors(io, "inputs"))
    names_out = ", ".join(f"`{n}` {s}" for n, s in _tensors(io, "outputs"))
    return f"""# Android ({ANDROID_ABI}): {_c_comment(_describe(io))}

This folder is an Android library module's `src/` tree plus its build lines. Inputs: {names_in};
outputs: {names_out} (float32, row-major).

| path | what |
|---|---|
| `src/main/java/ai/edgeformer/EdgeformerModel.java` | the model through the C API (JNI); names, shapes as constants |
| `src/main/kotlin/ai/edgeformer/Edgeformer.kt` | a Kotlin class over it (`use {{}}`, inputs by name) |
| `src/main/cpp/edgeformer_jni.c` | the JNI bridge over `include/edgeformer.h`; errors become `EdgeformerException` |
| `src/main/cpp/CMakeLists.txt` | NDK build of `libedgeformer_jni.so` from the bundle's `src/` and the bridge |
| `src/main/jniLibs/{ANDROID_ABI}/` | the ONNX Runtime library (below) |
| `src/main/assets/` | the bundle files read at run time (below) |
| `examples/ort-direct/.../OrtDirect.java` | the same model with the ONNX Runtime Java API and no JNI of ours |

## Runtime library

{lib}

## Assets

{assets}

`EdgeformerModel.copyBundle` copies them to a folder the C API can open (assets are not files).

## Gradle (`build.gradle.kts` of the module)

```kotlin
android {{
    defaultConfig {{
        minSdk = {ANDROID_MIN_SDK}
        ndk {{ abiFilters += "{ANDROID_ABI}" }}
    }}
    externalNativeBuild {{
        cmake {{
            path = file("src/main/cpp/CMakeLists.txt")
            version = "3.22.1"
        }}
    }}
}}
```

Groovy (`build.gradle`): `minSdk {ANDROID_MIN_SDK}`, `ndk {{ abiFilters 'arm64-v8a' }}`,
`externalNativeBuild {{ cmake {{ path 'src/main/cpp/CMakeLists.txt'; version '3.22.1' }} }}`.
Kotlin sources in `src/main/kotlin` need the `org.jetbrains.kotlin.android` plugin.

{dependency}

## Use

```kotlin
val dir = Edgeformer.copyAssets({{ context.assets.open(it) }}, File(context.filesDir, "edgeformer"))
Edgeformer(dir, threads = {int(runtime.get("threads") or 1)}).use {{ model ->
    val outputs = model.run(input)          // one FloatArray per input, in io.json order
}}
```

Java:

```java
File dir = EdgeformerModel.copyBundle(p -> getAssets().open(p), new File(getFilesDir(), "edgeformer"));
try (EdgeformerModel m = new EdgeformerModel(dir)) {{ float[][] y = m.run(x); }}
```

Errors of the C API (missing files, runtime failures) are thrown as `EdgeformerException` with the
C API's status and message; wrong input sizes as `IllegalArgumentException`; use after `close()`
as `IllegalStateException`.
{stream_text}
## What was verified where this bundle was made

There is no Android NDK, SDK (`android.jar`), d8 or device on the machine that builds bundles, so
no APK was built and nothing ran on Android. edgeformer's tests check, on the host:
`edgeformer_jni.c` (gcc, `-Wall -Wextra -Werror`) and `EdgeformerModel.java` (javac) built and
run on the host JVM against the x86_64 build of the same C API on the golden data; `OrtDirect.java`
compiles against the ONNX Runtime AAR's `classes.jar`; the library here is AArch64 ELF; the model
asset loads in ONNX Runtime. The Kotlin class was not compiled (no current kotlinc there).
"""


JNI_SOURCE = r"""/* edgeformer_jni.c: JNI bridge from ai.edgeformer.EdgeformerModel to the bundle's C API
 * (include/edgeformer.h).  Generated by edgeformer bundle.  Do not edit.
 *
 * No C API failure crashes the VM: an ef_status other than EF_OK becomes a pending
 * ai.edgeformer.EdgeformerException carrying the status and the C API's message; bad arguments
 * become IllegalArgumentException / IndexOutOfBoundsException / IllegalStateException.  Tensors
 * are copied between Java float[] and C buffers (no pinning). */
#include <jni.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edgeformer.h"

#define EF_JNI_ERR_LEN 2048

/* `text` as modified UTF-8 for NewStringUTF: valid 1-3 byte UTF-8 sequences are kept, anything
 * else (invalid bytes, 4-byte sequences) becomes '?'.  The result must be free()d. */
static char* to_modified_utf8(const char* text) {
  size_t n = strlen(text), i = 0, o = 0;
  char* out = (char*)malloc(n + 1);
  if (out == NULL) return NULL;
  while (i < n) {
    unsigned char c = (unsigned char)text[i];
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 0;
    size_t k;
    int ok = len > 0 && i + len <= n;
    for (k = 1; ok && k < len; k++) ok = ((unsigned char)text[i + k] & 0xC0) == 0x80;
    if (ok && len == 2 && c < 0xC2) ok = 0; /* overlong */
    if (ok && len == 3 && c == 0xE0 && (unsigned char)text[i + 1] < 0xA0) ok = 0;
    if (ok) {
      memcpy(out + o, text + i, len);
      o += len;
      i += len;
    } else {
      out[o++] = '?';
      i += 1;
    }
  }
  out[o] = '\0';
  return out;
}

static jstring new_string(JNIEnv* env, const char* text) {
  char* clean;
  jstring s;
  if (text == NULL) return NULL;
  clean = to_modified_utf8(text);
  if (clean == NULL) return NULL;
  s = (*env)->NewStringUTF(env, clean);
  free(clean);
  return s;
}

static void throw_class(JNIEnv* env, const char* class_name, const char* message) {
  jclass cls;
  char* clean;
  if ((*env)->ExceptionCheck(env)) return;
  cls = (*env)->FindClass(env, class_name);
  if (cls == NULL) return; /* NoClassDefFoundError is pending */
  clean = to_modified_utf8(message);
  (*env)->ThrowNew(env, cls, clean != NULL ? clean : "edgeformer: out of memory");
  free(clean);
  (*env)->DeleteLocalRef(env, cls);
}

static void throw_status(JNIEnv* env, ef_status status, const char* message) {
  jclass cls;
  jmethodID ctor;
  jstring name, text;
  jobject error;
  if ((*env)->ExceptionCheck(env)) return;
  cls = (*env)->FindClass(env, "ai/edgeformer/EdgeformerException");
  if (cls == NULL) return;
  ctor = (*env)->GetMethodID(env, cls, "<init>", "(ILjava/lang/String;Ljava/lang/String;)V");
  if (ctor == NULL) return;
  name = new_string(env, ef_status_name(status) != NULL ? ef_status_name(status) : "EF_ERR_INTERNAL");
  text = new_string(env, message[0] != '\0' ? message : "(no message)");
  if (name == NULL || text == NULL) {
    if (!(*env)->ExceptionCheck(env)) throw_class(env, "java/lang/OutOfMemoryError", "edgeformer: out of memory");
    return;
  }
  error = (*env)->NewObject(env, cls, ctor, (jint)status, name, text);
  if (error != NULL) (*env)->Throw(env, (jthrowable)error);
  (*env)->DeleteLocalRef(env, name);
  (*env)->DeleteLocalRef(env, text);
  (*env)->DeleteLocalRef(env, cls);
}

static ef_model* model_of(JNIEnv* env, jlong handle) {
  if (handle == 0) throw_class(env, "java/lang/IllegalStateException", "EdgeformerModel is closed");
  return (ef_model*)(intptr_t)handle;
}

static int check_index(JNIEnv* env, jint index, size_t count, const char* what) {
  if (index < 0 || (size_t)index >= count) {
    char message[128];
    snprintf(message, sizeof message, "%s index %d out of range [0, %zu)", what, (int)index, count);
    throw_class(env, "java/lang/IndexOutOfBoundsException", message);
    return 0;
  }
  return 1;
}

static jlongArray new_shape(JNIEnv* env, const int64_t* shape, size_t rank) {
  jlongArray out = (*env)->NewLongArray(env, (jsize)rank);
  size_t i;
  if (out == NULL) return NULL;
  for (i = 0; i < rank; i++) {
    jlong d = (jlong)shape[i];
    (*env)->SetLongArrayRegion(env, out, (jsize)i, 1, &d);
  }
  return out;
}

/* A float[] of exactly `size` elements, or NULL with an exception pending. */
static jfloatArray float_array(JNIEnv* env, jobject value, size_t size, const char* what, size_t index) {
  char message[160];
  jsize length;
  if (value == NULL) {
    snprintf(message, sizeof message, "%s %zu is null", what, index);
    throw_class(env, "java/lang/IllegalArgumentException", message);
    return NULL;
  }
  length = (*env)->GetArrayLength(env, (jarray)value);
  if (length < 0 || (size_t)length != size) {
    snprintf(message, sizeof message, "%s %zu has %d floats, the model needs %zu", what, index, (int)length, size);
    throw_class(env, "java/lang/IllegalArgumentException", message);
    return NULL;
  }
  return (jfloatArray)value;
}

JNIEXPORT jint JNICALL Java_ai_edgeformer_EdgeformerModel_nativeApiVersion(JNIEnv* env, jclass cls) {
  (void)env;
  (void)cls;
  return (jint)ef_api_version();
}

JNIEXPORT jlong JNICALL Java_ai_edgeformer_EdgeformerModel_nativeOpen(JNIEnv* env, jclass cls, jstring dir,
                                                                      jint threads) {
  char err[EF_JNI_ERR_LEN];
  const char* path;
  ef_model* model = NULL;
  ef_status status;
  (void)cls;
  if (dir == NULL) {
    throw_class(env, "java/lang/NullPointerException", "bundleDir");
    return 0;
  }
  path = (*env)->GetStringUTFChars(env, dir, NULL);
  if (path == NULL) return 0;
  err[0] = '\0';
  status = ef_open(path, (int)threads, &model, err, sizeof err);
  (*env)->ReleaseStringUTFChars(env, dir, path);
  if (status != EF_OK || model == NULL) {
    ef_close(model);
    throw_status(env, status != EF_OK ? status : EF_ERR_INTERNAL, err);
    return 0;
  }
  return (jlong)(intptr_t)model;
}

JNIEXPORT void JNICALL Java_ai_edgeformer_EdgeformerModel_nativeClose(JNIEnv* env, jclass cls, jlong handle) {
  (void)env;
  (void)cls;
  ef_close((ef_model*)(intptr_t)handle);
}

JNIEXPORT jstring JNICALL Java_ai_edgeformer_EdgeformerModel_nativeRuntime(JNIEnv* env, jclass cls, jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return model != NULL ? new_string(env, ef_runtime(model)) : NULL;
}

JNIEXPORT jint JNICALL Java_ai_edgeformer_EdgeformerModel_nativeNumInputs(JNIEnv* env, jclass cls, jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return model != NULL ? (jint)ef_num_inputs(model) : 0;
}

JNIEXPORT jint JNICALL Java_ai_edgeformer_EdgeformerModel_nativeNumOutputs(JNIEnv* env, jclass cls, jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return model != NULL ? (jint)ef_num_outputs(model) : 0;
}

JNIEXPORT jstring JNICALL Java_ai_edgeformer_EdgeformerModel_nativeInputName(JNIEnv* env, jclass cls, jlong handle,
                                                                            jint index) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  if (model == NULL || !check_index(env, index, ef_num_inputs(model), "input")) return NULL;
  return new_string(env, ef_input_name(model, (size_t)index));
}

JNIEXPORT jstring JNICALL Java_ai_edgeformer_EdgeformerModel_nativeOutputName(JNIEnv* env, jclass cls, jlong handle,
                                                                             jint index) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  if (model == NULL || !check_index(env, index, ef_num_outputs(model), "output")) return NULL;
  return new_string(env, ef_output_name(model, (size_t)index));
}

JNIEXPORT jlongArray JNICALL Java_ai_edgeformer_EdgeformerModel_nativeInputShape(JNIEnv* env, jclass cls,
                                                                                jlong handle, jint index) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  if (model == NULL || !check_index(env, index, ef_num_inputs(model), "input")) return NULL;
  return new_shape(env, ef_input_shape(model, (size_t)index), ef_input_rank(model, (size_t)index));
}

JNIEXPORT jlongArray JNICALL Java_ai_edgeformer_EdgeformerModel_nativeOutputShape(JNIEnv* env, jclass cls,
                                                                                 jlong handle, jint index) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  if (model == NULL || !check_index(env, index, ef_num_outputs(model), "output")) return NULL;
  return new_shape(env, ef_output_shape(model, (size_t)index), ef_output_rank(model, (size_t)index));
}

JNIEXPORT void JNICALL Java_ai_edgeformer_EdgeformerModel_nativeRun(JNIEnv* env, jclass cls, jlong handle,
                                                                   jobjectArray inputs, jobjectArray outputs) {
  char err[EF_JNI_ERR_LEN];
  ef_model* model = model_of(env, handle);
  size_t ni, no, i, allocated = 0;
  float** buffers = NULL;
  jfloatArray* arrays = NULL;
  ef_status status;
  (void)cls;
  if (model == NULL) return;
  ni = ef_num_inputs(model);
  no = ef_num_outputs(model);
  if (inputs == NULL || outputs == NULL || (size_t)(*env)->GetArrayLength(env, inputs) != ni ||
      (size_t)(*env)->GetArrayLength(env, outputs) != no) {
    throw_class(env, "java/lang/IllegalArgumentException", "run: wrong number of input or output arrays");
    return;
  }
  buffers = (float**)calloc(ni + no + 1, sizeof *buffers);
  arrays = (jfloatArray*)calloc(ni + no + 1, sizeof *arrays);
  if (buffers == NULL || arrays == NULL) {
    throw_class(env, "java/lang/OutOfMemoryError", "edgeformer: out of memory");
    goto done;
  }
  for (i = 0; i < ni + no; i++) {
    int is_input = i < ni;
    size_t k = is_input ? i : i - ni;
    size_t size = is_input ? ef_input_size(model, k) : ef_output_size(model, k);
    jobject value = (*env)->GetObjectArrayElement(env, is_input ? inputs : outputs, (jsize)k);
    if ((*env)->ExceptionCheck(env)) goto done;
    arrays[i] = float_array(env, value, size, is_input ? "input" : "output", k);
    if (arrays[i] == NULL) goto done;
    buffers[i] = (float*)malloc((size > 0 ? size : 1) * sizeof(float));
    allocated = i + 1;
    if (buffers[i] == NULL) {
      throw_class(env, "java/lang/OutOfMemoryError", "edgeformer: out of memory");
      goto done;
    }
    if (is_input) (*env)->GetFloatArrayRegion(env, arrays[i], 0, (jsize)size, buffers[i]);
  }
  err[0] = '\0';
  status = ef_run(model, (const float* const*)buffers, (float* const*)(buffers + ni), err, sizeof err);
  if (status != EF_OK) {
    throw_status(env, status, err);
    goto done;
  }
  for (i = 0; i < no; i++)
    (*env)->SetFloatArrayRegion(env, arrays[ni + i], 0, (jsize)ef_output_size(model, i), buffers[ni + i]);
done:
  if (buffers != NULL)
    for (i = 0; i < allocated; i++) free(buffers[i]);
  if (arrays != NULL)
    for (i = 0; i < allocated; i++)
      if (arrays[i] != NULL) (*env)->DeleteLocalRef(env, arrays[i]);
  free(buffers);
  free((void*)arrays);
}

JNIEXPORT jboolean JNICALL Java_ai_edgeformer_EdgeformerModel_nativeIsStreaming(JNIEnv* env, jclass cls,
                                                                               jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return (jboolean)(model != NULL && ef_is_streaming(model) ? JNI_TRUE : JNI_FALSE);
}

JNIEXPORT jlong JNICALL Java_ai_edgeformer_EdgeformerModel_nativeFrameSize(JNIEnv* env, jclass cls, jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return model != NULL ? (jlong)ef_frame_size(model) : 0;
}

JNIEXPORT jlong JNICALL Java_ai_edgeformer_EdgeformerModel_nativeLogitsSize(JNIEnv* env, jclass cls, jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return model != NULL ? (jlong)ef_logits_size(model) : 0;
}

JNIEXPORT jlong JNICALL Java_ai_edgeformer_EdgeformerModel_nativeDelayFrames(JNIEnv* env, jclass cls,
                                                                            jlong handle) {
  ef_model* model = model_of(env, handle);
  (void)cls;
  return model != NULL ? (jlong)ef_delay_frames(model) : 0;
}

JNIEXPORT void JNICALL Java_ai_edgeformer_EdgeformerModel_nativeReset(JNIEnv* env, jclass cls, jlong handle) {
  char err[EF_JNI_ERR_LEN];
  ef_model* model = model_of(env, handle);
  ef_status status;
  (void)cls;
  if (model == NULL) return;
  err[0] = '\0';
  status = ef_reset(model, err, sizeof err);
  if (status != EF_OK) throw_status(env, status, err);
}

JNIEXPORT void JNICALL Java_ai_edgeformer_EdgeformerModel_nativeStep(JNIEnv* env, jclass cls, jlong handle,
                                                                    jfloatArray frame, jboolean flush,
                                                                    jfloatArray logits) {
  char err[EF_JNI_ERR_LEN];
  ef_model* model = model_of(env, handle);
  size_t frame_size, logits_size;
  float *frame_buf = NULL, *logits_buf = NULL;
  ef_status status;
  (void)cls;
  if (model == NULL) return;
  frame_size = ef_frame_size(model);
  logits_size = ef_logits_size(model);
  if (!ef_is_streaming(model)) {
    /* let the C API say it (EF_ERR_NOT_STREAMING with its own message) */
    float dummy[1] = {0.0f};
    err[0] = '\0';
    status = ef_step(model, dummy, flush ? 1 : 0, dummy, err, sizeof err);
    throw_status(env, status != EF_OK ? status : EF_ERR_NOT_STREAMING, err);
    return;
  }
  if (float_array(env, logits, logits_size, "logits", 0) == NULL) return;
  if (!flush && float_array(env, frame, frame_size, "frame", 0) == NULL) return;
  logits_buf = (float*)malloc((logits_size > 0 ? logits_size : 1) * sizeof(float));
  if (!flush) frame_buf = (float*)malloc((frame_size > 0 ? frame_size : 1) * sizeof(float));
  if (logits_buf == NULL || (!flush && frame_buf == NULL)) {
    throw_class(env, "java/lang/OutOfMemoryError", "edgeformer: out of memory");
    goto done;
  }
  if (!flush) (*env)->GetFloatArrayRegion(env, frame, 0, (jsize)frame_size, frame_buf);
  err[0] = '\0';
  status = ef_step(model, frame_buf, flush ? 1 : 0, logits_buf, err, sizeof err);
  if (status != EF_OK) {
    throw_status(env, status, err);
    goto done;
  }
  (*env)->SetFloatArrayRegion(env, logits, 0, (jsize)logits_size, logits_buf);
done:
  free(frame_buf);
  free(logits_buf);
}
"""


# ----------------------------------------------------------------------------------- iOS


def write_ios(root: Path, io: dict, *, ort_xcframework: Path | None = None) -> None:
    """Write ``root/ios/`` for an ``ios-arm64`` bundle (see the module docstring).

    ``ort_xcframework``: an ``onnxruntime.xcframework`` folder to copy to
    ``ios/Frameworks/`` (onnxruntime bundles only); without it the README says where to get one.
    """
    root = Path(root)
    _check_platform(io, IOS_PLATFORM)
    runtime = _runtime(io)
    name = runtime["name"]
    if name not in IOS_RUNTIMES:
        raise UserError(
            f"ios-arm64 bundles wrap Core ML or ONNX Runtime, not {name}", "compile with --profile iphone12-coreml"
        )
    inputs, outputs = _tensors(io, "inputs"), _tensors(io, "outputs")
    ios = root / "ios"
    if name == "coreml":
        if _streaming(io):
            raise UserError(
                "streaming Core ML bundles have no iOS wrapper yet",
                "bundle the streaming artifact for android-arm64 or linux",
            )
        units = str(runtime.get("compute_units") or "ALL")
        if units not in COMPUTE_UNITS:
            raise UserError(f"Core ML compute units {units!r} are unknown", f"use one of {', '.join(COMPUTE_UNITS)}")
        if ort_xcframework is not None:
            raise UserError("an ONNX Runtime xcframework was given for a Core ML bundle", "leave it out")
        _write(ios / "Package.swift", _package_coreml())
        _write(ios / "Sources" / "EdgeformerModel" / "EdgeformerModel.swift", _swift_coreml(io, inputs, outputs, units))
        _write(ios / "README.md", _ios_readme_coreml(io, units))
        return
    src, include = root / "src", root / "include" / "edgeformer.h"
    if not src.is_dir() or not include.is_file():
        raise FileNotFoundError(f"write_ios needs the bundle's src/ and include/edgeformer.h in {root} first")
    c_target = ios / "Sources" / "EdgeformerC"
    for f in sorted(src.iterdir()):
        if f.is_file():
            _write(c_target / f.name, f.read_bytes())
    _write(c_target / "include" / "edgeformer.h", include.read_bytes())
    _write(c_target / "include" / "module.modulemap", 'module EdgeformerC {\n  header "edgeformer.h"\n  export *\n}\n')
    # the xcframework's headers are framework-style (<onnxruntime/X.h>); the sources say <X.h>:
    # a forwarding header for each ORT header the sources include
    for name in ort_headers_included(src):
        _write(
            c_target / "ort" / name,
            f"/* Generated by edgeformer bundle: the xcframework's header. */\n#include <onnxruntime/{name}>\n",
        )
    if ort_xcframework is not None:
        dest = ios / IOS_ORT_XCFRAMEWORK
        if not (Path(ort_xcframework) / "Info.plist").is_file():
            raise UserError(f"{ort_xcframework} is not an xcframework (no Info.plist)", "pass onnxruntime.xcframework")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ort_xcframework, dest)
    _write(ios / "Package.swift", _package_ort())
    _write(ios / "Sources" / "EdgeformerModel" / "EdgeformerModel.swift", _swift_c_api(io, inputs, outputs))
    _write(ios / "README.md", _ios_readme_ort(io))


def ort_headers_included(src: Path) -> list[str]:
    """The ONNX Runtime headers (``onnxruntime_*.h``, ``*_provider_factory.h``) that the files in
    ``src`` include directly, sorted."""
    pattern = re.compile(r'^\s*#\s*include\s*[<"]((?:onnxruntime_\w+|\w+_provider_factory)\.h)[>"]', re.M)
    names: set[str] = set()
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and f.suffix in (".c", ".cc", ".cpp", ".h", ".hpp"):
            names.update(pattern.findall(f.read_text(errors="replace")))
    return sorted(names)


def _swift_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _swift_shapes(items) -> str:
    return _swift_list(["[" + ", ".join(str(d) for d in shape) + "]" for _, shape in items])


def _package_coreml() -> str:
    return """// swift-tools-version:5.7
// Generated by edgeformer bundle. Do not edit.
import PackageDescription

let package = Package(
    name: "EdgeformerModel",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "EdgeformerModel", targets: ["EdgeformerModel"])],
    targets: [
        .target(name: "EdgeformerModel", path: "Sources/EdgeformerModel", linkerSettings: [.linkedFramework("CoreML")]),
    ]
)
"""


def _package_ort() -> str:
    return f"""// swift-tools-version:5.7
// Generated by edgeformer bundle. Do not edit.
import PackageDescription

let package = Package(
    name: "EdgeformerModel",
    platforms: [.iOS(.v15)],
    products: [.library(name: "EdgeformerModel", targets: ["EdgeformerModel"])],
    targets: [
        // ONNX Runtime's official iOS build (ios/README.md says where to get it)
        .binaryTarget(name: "onnxruntime", path: "{IOS_ORT_XCFRAMEWORK}"),
        // the bundle's C API (include/edgeformer.h) and its ONNX Runtime implementation
        .target(
            name: "EdgeformerC",
            dependencies: ["onnxruntime"],
            path: "Sources/EdgeformerC",
            cxxSettings: [.headerSearchPath("ort")],
            linkerSettings: [.linkedLibrary("c++"), .linkedFramework("Foundation"), .linkedFramework("CoreML")]
        ),
        .target(name: "EdgeformerModel", dependencies: ["EdgeformerC"], path: "Sources/EdgeformerModel"),
    ],
    cxxLanguageStandard: .cxx17
)
"""


def _swift_header(io: dict) -> str:
    lines = [f"// Generated by edgeformer bundle from io.json ({_c_comment(_describe(io))}). Do not edit."]
    lines += [f"// {line}" for line in _prepost_lines(io)]
    return "\n".join(lines) + "\n"


_SWIFT_SOFTMAX = """
    /// Softmax over a logits vector (numerically stable).
    public static func softmax(_ logits: [Float]) -> [Float] {
        let m = logits.max() ?? 0
        let e = logits.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
"""


def _swift_coreml(io: dict, inputs, outputs, units: str) -> str:
    softmax = bool((io.get("postprocess") or {}).get("softmax"))
    model = str((io.get("model") or {}).get("name", ""))
    return f"""{_swift_header(io)}
import CoreML
import Foundation

public enum EdgeformerError: Error, CustomStringConvertible {{
    case missingModel(String)
    case badInput(String)
    case badOutput(String)

    public var description: String {{
        switch self {{
        case .missingModel(let m), .badInput(let m), .badOutput(let m): return m
        }}
    }}
}}

/// The bundle's Core ML model (model/model.mlpackage) with its inputs and outputs from io.json.
@available(iOS 16.0, macOS 13.0, *)
public final class EdgeformerModel {{
    public static let modelName = {_swift_str(model)}
    public static let inputNames: [String] = {_swift_list([_swift_str(n) for n, _ in inputs])}
    public static let inputShapes: [[Int]] = {_swift_shapes(inputs)}
    public static let outputNames: [String] = {_swift_list([_swift_str(n) for n, _ in outputs])}
    public static let outputShapes: [[Int]] = {_swift_shapes(outputs)}
    /// From the profile (io.json runtime.compute_units = {units}).
    public static let defaultComputeUnits: MLComputeUnits = {COMPUTE_UNITS[units]}
    /// io.json's postprocess asks for a softmax over the logits (see softmax(_:)).
    public static let appliesSoftmax = {"true" if softmax else "false"}

    public let model: MLModel

    /// `url`: the .mlpackage (compiled on the device with MLModel.compileModel(at:)) or an
    /// already compiled .mlmodelc.
    public init(contentsOf url: URL, computeUnits: MLComputeUnits = EdgeformerModel.defaultComputeUnits) throws {{
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let compiled = url.pathExtension == "mlmodelc" ? url : try MLModel.compileModel(at: url)
        model = try MLModel(contentsOf: compiled, configuration: configuration)
    }}

    /// The model added to the app target: Xcode compiles model.mlpackage into model.mlmodelc.
    public convenience init(bundle: Bundle = .main, resource: String = "model",
                            computeUnits: MLComputeUnits = EdgeformerModel.defaultComputeUnits) throws {{
        guard let url = bundle.url(forResource: resource, withExtension: "mlmodelc") else {{
            throw EdgeformerError.missingModel(
                "no \\(resource).mlmodelc in \\(bundle.bundlePath): add model/model.mlpackage to the app target")
        }}
        try self.init(contentsOf: url, computeUnits: computeUnits)
    }}

    /// One array per input (row-major, inputShapes order); returns one array per output.
    public func predict(_ inputs: [[Float]]) throws -> [[Float]] {{
        guard inputs.count == Self.inputNames.count else {{
            throw EdgeformerError.badInput(
                "expected \\(Self.inputNames.count) inputs \\(Self.inputNames), got \\(inputs.count)")
        }}
        var features: [String: MLFeatureValue] = [:]
        for (i, name) in Self.inputNames.enumerated() {{
            let array = try Self.multiArray(inputs[i], shape: Self.inputShapes[i], name: name)
            features[name] = MLFeatureValue(multiArray: array)
        }}
        let result = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: features))
        return try Self.outputNames.enumerated().map {{ j, name in
            guard let array = result.featureValue(for: name)?.multiArrayValue else {{
                throw EdgeformerError.badOutput("the model gave no multi-array output \\(name)")
            }}
            let values = try Self.floats(array, name: name)
            let want = Self.outputShapes[j].reduce(1, *)
            guard values.count == want else {{
                throw EdgeformerError.badOutput("output \\(name) has \\(values.count) values, expected \\(want)")
            }}
            return values
        }}
    }}

    /// An MLMultiArray of `shape` holding `values` (row-major), whatever strides Core ML picks.
    public static func multiArray(_ values: [Float], shape: [Int], name: String) throws -> MLMultiArray {{
        let count = shape.reduce(1, *)
        guard values.count == count else {{
            throw EdgeformerError.badInput("input \\(name) needs \\(count) floats \\(shape), got \\(values.count)")
        }}
        let array = try MLMultiArray(shape: shape.map {{ NSNumber(value: $0) }}, dataType: .float32)
        let offsets = offsetsOf(shape: shape, strides: array.strides.map {{ $0.intValue }})
        let pointer = array.dataPointer.bindMemory(to: Float.self, capacity: (offsets.max() ?? 0) + 1)
        for (i, offset) in offsets.enumerated() {{ pointer[offset] = values[i] }}
        return array
    }}

    /// The values of a Core ML output in row-major order (float32, float16, double or int32).
    public static func floats(_ array: MLMultiArray, name: String) throws -> [Float] {{
        let offsets = offsetsOf(shape: array.shape.map {{ $0.intValue }}, strides: array.strides.map {{ $0.intValue }})
        let capacity = (offsets.max() ?? 0) + 1
        switch array.dataType {{
        case .float32:
            let p = array.dataPointer.bindMemory(to: Float.self, capacity: capacity)
            return offsets.map {{ p[$0] }}
        case .float16:
            let p = array.dataPointer.bindMemory(to: Float16.self, capacity: capacity)
            return offsets.map {{ Float(p[$0]) }}
        case .double:
            let p = array.dataPointer.bindMemory(to: Double.self, capacity: capacity)
            return offsets.map {{ Float(p[$0]) }}
        case .int32:
            let p = array.dataPointer.bindMemory(to: Int32.self, capacity: capacity)
            return offsets.map {{ Float(p[$0]) }}
        @unknown default:
            throw EdgeformerError.badOutput("output \\(name) has an unsupported MLMultiArray data type")
        }}
    }}

    /// The buffer offset of each element of `shape`, in row-major order.
    static func offsetsOf(shape: [Int], strides: [Int]) -> [Int] {{
        let total = shape.reduce(1, *)
        var offsets: [Int] = []
        offsets.reserveCapacity(total)
        var index = [Int](repeating: 0, count: shape.count)
        for _ in 0..<total {{
            var offset = 0
            for k in 0..<shape.count {{ offset += index[k] * strides[k] }}
            offsets.append(offset)
            var k = shape.count - 1
            while k >= 0 {{
                index[k] += 1
                if index[k] < shape[k] {{ break }}
                index[k] = 0
                k -= 1
            }}
        }}
        return offsets
    }}
{_SWIFT_SOFTMAX}}}
"""


def _swift_c_api(io: dict, inputs, outputs) -> str:
    model = str((io.get("model") or {}).get("name", ""))
    softmax = bool((io.get("postprocess") or {}).get("softmax"))
    return f"""{_swift_header(io)}
import EdgeformerC
import Foundation

/// A failure of the bundle's C API: its ef_status name and message.
public struct EdgeformerError: Error, CustomStringConvertible {{
    public let status: String
    public let message: String
    public var description: String {{ "\\(status): \\(message)" }}
}}

/// The bundle's model through its C API (include/edgeformer.h) and ONNX Runtime.
/// Not thread-safe: use one instance per thread.
public final class EdgeformerModel {{
    public static let modelName = {_swift_str(model)}
    public static let inputNames: [String] = {_swift_list([_swift_str(n) for n, _ in inputs])}
    public static let inputShapes: [[Int]] = {_swift_shapes(inputs)}
    public static let outputNames: [String] = {_swift_list([_swift_str(n) for n, _ in outputs])}
    public static let outputShapes: [[Int]] = {_swift_shapes(outputs)}
    public static let isStreaming = {"true" if _streaming(io) else "false"}
    /// io.json's postprocess asks for a softmax over the logits (see softmax(_:)).
    public static let appliesSoftmax = {"true" if softmax else "false"}

    private var handle: OpaquePointer?

    /// `bundleDirectory`: a folder holding the bundle's io.json and model/ (e.g. a folder
    /// reference added to the app); threads 0 = io.json's default.
    public init(bundleDirectory: URL, threads: Int32 = 0) throws {{
        var err = [CChar](repeating: 0, count: 2048)
        var model: OpaquePointer?
        let status = ef_open(bundleDirectory.path, threads, &model, &err, err.count)
        guard status == EF_OK, let model else {{ throw Self.error(status, err) }}
        handle = model
    }}

    deinit {{ ef_close(handle) }}

    public var runtime: String {{ String(cString: ef_runtime(handle)) }}

    /// One array per input (row-major, inputShapes order); returns one array per output.
    public func run(_ inputs: [[Float]]) throws -> [[Float]] {{
        guard inputs.count == Self.inputNames.count else {{
            throw EdgeformerError(status: "EF_ERR_ARGUMENT",
                                  message: "expected \\(Self.inputNames.count) inputs, got \\(inputs.count)")
        }}
        for (i, values) in inputs.enumerated() where values.count != Self.inputShapes[i].reduce(1, *) {{
            let want = Self.inputShapes[i].reduce(1, *)
            throw EdgeformerError(status: "EF_ERR_ARGUMENT",
                                  message: "input \\(Self.inputNames[i]) needs \\(want) floats, got \\(values.count)")
        }}
        let inBuffers = inputs.map {{ values -> UnsafeMutablePointer<Float> in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(values.count, 1))
            p.initialize(from: values, count: values.count)
            return p
        }}
        let outBuffers = Self.outputShapes.map {{
            UnsafeMutablePointer<Float>.allocate(capacity: max($0.reduce(1, *), 1))
        }}
        defer {{
            inBuffers.forEach {{ $0.deallocate() }}
            outBuffers.forEach {{ $0.deallocate() }}
        }}
        let inPointers: [UnsafePointer<Float>?] = inBuffers.map {{ UnsafePointer($0) }}
        let outPointers: [UnsafeMutablePointer<Float>?] = outBuffers
        var err = [CChar](repeating: 0, count: 2048)
        let status = ef_run(handle, inPointers, outPointers, &err, err.count)
        guard status == EF_OK else {{ throw Self.error(status, err) }}
        return outBuffers.enumerated().map {{ j, p in
            Array(UnsafeBufferPointer(start: p, count: Self.outputShapes[j].reduce(1, *)))
        }}
    }}

    /// Streaming bundles: one frame in (ef_frame_size floats), logits out; flush ends a stream.
    public func step(_ frame: [Float]?, flush: Bool = false) throws -> [Float] {{
        var logits = [Float](repeating: 0, count: max(Int(ef_logits_size(handle)), 1))
        var err = [CChar](repeating: 0, count: 2048)
        let status: ef_status
        if let frame, !flush {{
            guard frame.count == Int(ef_frame_size(handle)) else {{
                throw EdgeformerError(status: "EF_ERR_ARGUMENT",
                                      message: "a frame has \\(ef_frame_size(handle)) floats, got \\(frame.count)")
            }}
            status = ef_step(handle, frame, 0, &logits, &err, err.count)
        }} else {{
            status = ef_step(handle, nil, 1, &logits, &err, err.count)
        }}
        guard status == EF_OK else {{ throw Self.error(status, err) }}
        return Array(logits.prefix(Int(ef_logits_size(handle))))
    }}

    /// Streaming bundles: start the next stream.
    public func reset() throws {{
        var err = [CChar](repeating: 0, count: 2048)
        let status = ef_reset(handle, &err, err.count)
        guard status == EF_OK else {{ throw Self.error(status, err) }}
    }}

    private static func error(_ status: ef_status, _ err: [CChar]) -> EdgeformerError {{
        EdgeformerError(status: String(cString: ef_status_name(status)), message: String(cString: err))
    }}
{_SWIFT_SOFTMAX}}}
"""


def _ios_readme_coreml(io: dict, units: str) -> str:
    inputs = ", ".join(f"`{n}` {s}" for n, s in _tensors(io, "inputs"))
    outputs = ", ".join(f"`{n}` {s}" for n, s in _tensors(io, "outputs"))
    return f"""# iOS (Core ML): {_c_comment(_describe(io))}

A Swift package with one class, `EdgeformerModel` (`Sources/EdgeformerModel/EdgeformerModel.swift`),
generated from the bundle's io.json: inputs {inputs}, outputs {outputs} (float32, row-major),
compute units `{COMPUTE_UNITS[units]}` (the profile's `{units}`). iOS 16 or later.

1. Add this folder as a local Swift package (Xcode: File > Add Package Dependencies > Add Local).
2. Add `../model/model.mlpackage` to the app target: Xcode compiles it into `model.mlmodelc`.
3. Use it:

```swift
import EdgeformerModel

let model = try EdgeformerModel()                       // Bundle.main's model.mlmodelc
let outputs = try model.predict([input])                // one [Float] per input, in io.json order
```

`EdgeformerModel(contentsOf: url)` takes a `.mlpackage` (compiled on the device with
`MLModel.compileModel(at:)`) or a `.mlmodelc`. Each input becomes one `MLMultiArray` with the
exact name and shape above; outputs are read back whatever their strides and type (float32/16).

## What was verified where this bundle was made

Nothing here was compiled: that machine has no Swift compiler, Xcode or Core ML. edgeformer's
tests check that the names and shapes in `EdgeformerModel.swift` equal the `.mlpackage`'s spec
(read with coremltools) and that the paths `Package.swift` names exist.
"""


def _ios_readme_ort(io: dict) -> str:
    version = str(_runtime(io).get("version", ""))
    return f"""# iOS (ONNX Runtime): {_c_comment(_describe(io))}

A Swift package: `EdgeformerC` (the bundle's C API, `include/edgeformer.h`, and its ONNX Runtime
implementation, copied from the bundle's `src/`), `EdgeformerModel` (a Swift class over it,
generated from io.json) and a `binaryTarget` for ONNX Runtime's iOS library at
`{IOS_ORT_XCFRAMEWORK}`.

## Get `onnxruntime.xcframework`

`Package.swift` expects it at `ios/{IOS_ORT_XCFRAMEWORK}`. It is not in the bundle unless
`{IOS_ORT_XCFRAMEWORK}` already exists. Sources:

- the official CocoaPods pod `onnxruntime-c` {version}: its pod archive holds `onnxruntime.xcframework`
  (see https://onnxruntime.ai/docs/install/ and the pod spec for the download URL);
- the npm package `com.github.asus4.onnxruntime` (0.4.9 carries ORT 1.29.0): `npm pack
  com.github.asus4.onnxruntime@0.4.9`, then copy `package/Plugins/iOS~/onnxruntime.xcframework`
  to `ios/Frameworks/`. Its API version 29 serves this bundle's C++ code.

The ORT headers the sources include are forwarded to the framework's (`Sources/EdgeformerC/ort/`).

## Use

Add this folder as a local Swift package, add the bundle's `io.json` and `model/` folder to the app
in a folder reference named `edgeformer`, then:

```swift
import EdgeformerModel

let dir = Bundle.main.url(forResource: "edgeformer", withExtension: nil)!
let model = try EdgeformerModel(bundleDirectory: dir, threads: 0)
let outputs = try model.run([input])   // one [Float] per input, in io.json order
```

## What was verified where this bundle was made

Nothing here was compiled: that machine has no Swift compiler or Xcode. edgeformer's tests check
that the paths `Package.swift` names exist (the xcframework when it was supplied) and that the
names and shapes in `EdgeformerModel.swift` equal io.json's. The same C API was built and run on
Linux (x86_64) on the golden data.
"""
