"""Where a bundle's runtime libraries and headers come from, fetched and cached.

Nothing third-party is in the repository.  The files come, at bundle time, from:

- **the runtime's PyPI wheel for the platform**: for ``linux-x86_64`` the installed wheel in this
  Python; for ``linux-aarch64`` ``pip download --platform <tag>`` of the same version (PyPI has
  aarch64 wheels of all four runtimes), unpacked once into the runtime cache.  Which files each
  runtime needs is data: ``files/runtimes/<runtime>.json``;
- **ONNX Runtime's C headers, Android AAR and iOS xcframework**, which no wheel has: the npm
  package ``com.github.asus4.onnxruntime`` (a repackaging of the official ONNX Runtime release
  artifacts, MIT), pinned below by version and sha256 and checked after download.

The cache is ``$EDGEFORMER_RUNTIME_CACHE``, else ``<cache root>/runtimes`` (``edgeformer cache``).
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgeformer.errors import UserError
from edgeformer.fsutil import cache_root, make_temp_dir
from edgeformer.manifest import sha256_file

FILES = Path(__file__).parent / "files"

# The npm package carrying the official ONNX Runtime headers and mobile binaries.
ORT_NPM = {
    "package": "com.github.asus4.onnxruntime",
    "version": "0.4.9",
    "ort_version": "1.29.0",
    "url": "https://registry.npmjs.org/com.github.asus4.onnxruntime/-/com.github.asus4.onnxruntime-0.4.9.tgz",
    "sha256": "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d",
    "bytes": 149786233,
}


def runtime_cache() -> Path:
    return Path(os.environ.get("EDGEFORMER_RUNTIME_CACHE") or cache_root() / "runtimes")


def spec(runtime: str) -> dict:
    """``files/runtimes/<runtime>.json``: wheels, libraries per platform, header folders."""
    path = FILES / "runtimes" / f"{runtime}.json"
    if not path.exists():
        raise UserError(f"no bundle support for the {runtime} runtime yet", "bundle an ONNX Runtime artifact")
    return json.loads(path.read_text())


def _fetch(url: str, sha256: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` once, refusing it unless its sha256 is ``sha256``."""
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=600) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not download {url}: {e}", "check the network, or fill the runtime cache by hand") from e
    got = sha256_file(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{url} has sha256 {got}, expected {sha256}", "the package changed upstream: do not use it")
    os.replace(tmp, dest)
    return dest


def ort_npm_root() -> Path:
    """The unpacked npm package (``.../package``): ``Plugins/Android/onnxruntime.aar``,
    ``Plugins/iOS~/onnxruntime.xcframework``, ``LICENSE``."""
    root = runtime_cache() / f"npm-{ORT_NPM['package']}-{ORT_NPM['version']}"
    done = root / ".unpacked"
    if not done.exists():
        tgz = _fetch(ORT_NPM["url"], ORT_NPM["sha256"], runtime_cache() / "downloads" / Path(ORT_NPM["url"]).name)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(".npm-", root.parent)
        try:
            with tarfile.open(tgz) as t:
                members = [m for m in t.getmembers() if m.isfile() and not m.name.endswith(".meta")]
                t.extractall(tmp, members=members, filter="data")
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done.write_text(ORT_NPM["sha256"] + "\n")
    return root / "package"


def ort_aar() -> Path:
    return ort_npm_root() / "Plugins" / "Android" / "onnxruntime.aar"


def ort_headers(dest: Path) -> list[Path]:
    """Copy ONNX Runtime's official C/C++ headers (from the AAR in the npm package) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(ort_aar()) as z:
        for name in z.namelist():
            if name.startswith("headers/") and not name.endswith("/"):
                (dest / Path(name).name).write_bytes(z.read(name))
                out.append(dest / Path(name).name)
    if not (dest / "onnxruntime_c_api.h").exists():
        raise UserError(f"{ort_aar()} has no headers/onnxruntime_c_api.h", "clear the runtime cache and bundle again")
    return out


@dataclass
class Wheel:
    """One runtime wheel's files for one platform: ``root`` is its site-packages-like folder."""

    dist: str
    version: str
    platform: str
    root: Path
    source: str  # "installed" or the downloaded wheel's file name


def _installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError as e:
        raise UserError(f"{dist} is not installed", f"pip install {dist}") from e


def wheel(dist: str, platform: str, tag: str | None) -> Wheel:
    """The files of ``dist`` (at the installed version) for ``platform``."""
    version = _installed_version(dist)
    if platform == "linux-x86_64":
        files = importlib.metadata.distribution(dist).locate_file("")
        return Wheel(dist, version, platform, Path(files), "installed")
    if not tag:
        raise UserError(f"no wheel platform tag for {dist} on {platform}", "use linux-x86_64 or linux-aarch64")
    root = runtime_cache() / "wheels" / f"{dist}-{version}-{tag}"
    if not (root / ".unpacked").exists():
        downloads = runtime_cache() / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        cmd += ["--platform", tag, "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"]
        cmd += ["-d", str(downloads), f"{dist}=={version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise UserError(f"could not download the {tag} wheel of {dist}=={version}: {last}", "check the network")
        norm = dist.replace("-", "_")
        found = sorted(glob.glob(str(downloads / f"{norm}-{version}-*{tag.split('_', 2)[-1]}*.whl")))
        if not found:
            raise UserError(f"pip left no {tag} wheel of {dist}=={version} in {downloads}", "check the network")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(".wheel-", root.parent)
        try:
            with zipfile.ZipFile(found[-1]) as z:
                for info in z.infolist():
                    z.extract(info, tmp)
                    mode = info.external_attr >> 16
                    if mode:
                        os.chmod(tmp / info.filename, mode & 0o777 | 0o600)
            (tmp / ".unpacked").write_text(Path(found[-1]).name + "\n")
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Wheel(dist, version, platform, root, (root / ".unpacked").read_text().strip())


@dataclass
class RuntimeFiles:
    """What :func:`collect` put into a bundle."""

    runtime: str
    version: str
    libs: list[dict]  # {"file": "lib/...", "from": "<wheel> <path>", "bytes": n}
    headers: list[str]  # folders under the bundle
    sources: list[str]  # provenance sentences for the bundle README


def collect(runtime: str, platform: str, bundle: Path) -> RuntimeFiles:
    """Copy the runtime's libraries for ``platform`` into ``bundle/lib`` (under the names the
    spec gives: their SONAMEs) and its headers into ``bundle/third_party``."""
    s = spec(runtime)
    tags = s.get("platform_tags", {})
    wheels = {d: wheel(d, platform, tags.get(platform)) for d in s["wheels"]}
    lib_dir = bundle / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    libs, sources = [], []
    if platform not in s["libs"]:
        raise UserError(f"the {runtime} bundle has no libraries for {platform}", "bundle for linux-x86_64")
    for entry in s["libs"][platform]:
        entry = {"from": entry} if isinstance(entry, str) else entry
        matches = []
        for w in wheels.values():
            matches += [(w, Path(p)) for p in sorted(glob.glob(str(w.root / entry["from"])))]
        if not matches:
            raise UserError(
                f"no {entry['from']} in the {platform} wheel(s) of {', '.join(wheels)}",
                "reinstall the runtime at the version in constraints.txt",
            )
        seen: set[Path] = set()  # two wheels may share one site-packages (apache-tvm, apache-tvm-ffi)
        for w, path in matches:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            name = entry.get("to") or path.name
            shutil.copyfile(path.resolve(), lib_dir / name)
            os.chmod(lib_dir / name, 0o755)
            rel = path.relative_to(w.root)
            libs.append(
                {
                    "file": f"lib/{name}",
                    "from": f"{w.dist} {w.version} ({w.source}): {rel}",
                    "bytes": (lib_dir / name).stat().st_size,
                }
            )
    headers = []
    for entry in s.get("include", []):
        dest = bundle / entry["to"]
        src = None
        for w in wheels.values():
            if (w.root / entry["from"]).is_dir():
                src = w.root / entry["from"]
        if src is None:
            raise UserError(f"no {entry['from']} in the wheel(s) of {', '.join(wheels)}", "reinstall the runtime")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        headers.append(entry["to"])
    if s.get("npm_headers"):
        dest = bundle / s["npm_headers"]
        ort_headers(dest)
        headers.append(s["npm_headers"])
        sources.append(
            f"ONNX Runtime {ORT_NPM['ort_version']} C/C++ headers: from the official Android AAR inside the npm "
            f"package {ORT_NPM['package']}@{ORT_NPM['version']} ({ORT_NPM['url']}, sha256 {ORT_NPM['sha256']}); "
            "they are API-compatible with the newer library below"
        )
    for w in wheels.values():
        sources.append(f"{w.dist} {w.version} libraries: PyPI wheel for {platform} ({w.source})")
    version = wheels[s["wheels"][0]].version
    return RuntimeFiles(runtime, version, libs, headers, sources)
