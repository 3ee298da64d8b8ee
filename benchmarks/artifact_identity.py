"""Are the artifacts of this checkout byte-identical to those of another revision?

Compiles the same models for the same profiles with two source trees, the working tree and
``--ref`` (a git revision), one after the other from the same path (exported programs carry the
model code's file paths), each with an empty cache, into the same output folder.  Then compares
every runtime file's sha256 and the manifest, less the fields that legitimately differ:
timestamps, timings, the cache key (it digests edgeformer's own sources) and the version.
A refactor that claims "behaviour unchanged" runs this.

    python benchmarks/artifact_identity.py --ref 613be32 \
        [--models efficientformer_l1] [--profiles host-ort,host-tvm] [--tune-trials N]

Each tree runs from a plain copy laid out as the installed package (``edgeformer/passes``,
``edgeformer/targets``, ``edgeformer/profiles``) on PYTHONPATH, so no install is needed.  TVM
compiles untuned, or with ``--tune-trials N`` against one small database that this tree tunes
first and both trees then read.  Exit status 1 when anything differs.  Writes
``bench-results/artifact_identity.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Manifest fields that may differ between two trees compiling the same thing.
_VOLATILE = {"created_at", "compile_time_s", "cache_key", "edgeformer_version"}


def _layout(src: Path, dst: Path) -> Path:
    """Copy a source tree into the installed package layout; returns the PYTHONPATH root."""
    pkg = dst / "edgeformer"
    shutil.copytree(src / "edgeformer", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("passes", "targets", "profiles"):
        shutil.copytree(src / sub, pkg / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _tree_at(ref: str, dst: Path) -> Path:
    """The source tree of git revision ``ref`` (an archive export, no worktree left behind)."""
    dst.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def _run(pythonpath: Path, args: list[str], cache: Path) -> None:
    # -S: no site processing, so an editable install's import hook cannot shadow the copy; the
    # environment's packages come from PYTHONPATH instead.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(pythonpath), sysconfig.get_paths()["purelib"]]),
        "EDGEFORMER_CACHE_DIR": str(cache),
    }
    code = (
        "import sys, edgeformer\n"
        "assert edgeformer.__file__.startswith(sys.argv[1]), edgeformer.__file__\n"
        "from edgeformer.cli import main\n"
        "sys.exit(main(sys.argv[2:]))"
    )
    cmd = [sys.executable, "-S", "-c", code, str(pythonpath), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=pythonpath)  # not this checkout
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed under {pythonpath}:\n{proc.stderr[-3000:]}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    for key in _VOLATILE:
        m.pop(key, None)
    for p in m.get("passes", []):
        p.pop("time_s", None)
    return m


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {json.dumps(a, default=str)[:120]} != {json.dumps(b, default=str)[:120]}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="git revision to compare against (e.g. the commit before a refactor)")
    ap.add_argument("--this", default="", help="compare this git revision instead of the working tree")
    ap.add_argument("--models", default="efficientformer_l1")
    ap.add_argument("--profiles", default="host-ort,host-tvm")
    ap.add_argument("--tune-trials", type=int, default=0, help="tune host-tvm with this many trials first (0: none)")
    args = ap.parse_args()
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="edgeformer-identity-") as tmp:
        tmp = Path(tmp)
        this = _tree_at(args.this, tmp / "this-src") if args.this else ROOT
        sources = {"this": this, args.ref: _tree_at(args.ref, tmp / "ref-src")}
        # Both trees run from the same path, one after the other: exported programs carry the
        # source file paths of the model code in their stack-trace metadata.
        site = tmp / "site"
        tune_cache = tmp / "tune-cache"
        outs: dict[tuple[str, str, str], Path] = {}
        for label, src in sources.items():
            shutil.rmtree(site, ignore_errors=True)
            _layout(src, site)
            cache = tmp / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            for model in args.models.split(","):
                if args.tune_trials and "host-tvm" in args.profiles and not tune_cache.exists():
                    _run(site, ["tune", model, "--profile", "host-tvm", "--trials", str(args.tune_trials)], tune_cache)
                if tune_cache.is_dir() and not (cache / "tvm-tune").exists():  # both trees read one database
                    shutil.copytree(tune_cache / "tvm-tune", cache / "tvm-tune")
                for profile in args.profiles.split(","):
                    out = tmp / "out" / f"{model}-{profile}"  # the same folder for both trees
                    _run(site, ["compile", model, "--profile", profile, "-o", str(out), "--no-cache"], cache)
                    kept = tmp / "kept" / label / out.name
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(out), kept)
                    outs[(label, model, profile)] = kept
        for model in args.models.split(","):
            for profile in args.profiles.split(","):
                a, b = outs[("this", model, profile)], outs[(args.ref, model, profile)]
                ma, mb = _manifest(a), _manifest(b)
                files = {}
                for entry in ma["files"]:
                    other = b / entry["path"]
                    files[entry["path"]] = (_sha(a / entry["path"]), _sha(other) if other.is_file() else None)
                same_files = all(x == y for x, y in files.values()) and len(ma["files"]) == len(mb["files"])
                diffs = _diff(ma, mb)
                same = same_files and not diffs
                ok &= same
                rows.append(
                    {
                        "model": model,
                        "profile": profile,
                        "identical": same,
                        "files": {k: {"this": x, args.ref: y} for k, (x, y) in files.items()},
                        "manifest_differences": diffs,
                    }
                )
                print(f"{model} · {profile}: {'identical' if same else 'DIFFERENT'}")
                for k, (x, y) in files.items():
                    print(f"  {k}: {x[:16]} {'==' if x == y else '!='} {(y or 'missing')[:16]}")
                for d in diffs[:20]:
                    print(f"  manifest {d}")
    path = write_result("artifact_identity", {"ref": args.ref, "results": rows, "identical": ok})
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
