"""The README and docs/ hold what the code cites, and what a new user needs (issue 11, item 20)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["edgeformer", "passes", "targets", "profiles", "benchmarks", "tests", "docs", "README.md"]


def _texts():
    for top in SOURCES:
        path = ROOT / top
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".py", ".toml", ".md")]
        for f in files:
            if f != Path(__file__):
                yield f, f.read_text()


def test_every_cited_doc_is_in_the_repository_and_nothing_cites_outside_it():
    cited, outside = set(), []
    for f, text in _texts():
        cited.update(re.findall(r"docs/[\w-]+\.md", text))
        outside += [f"{f.relative_to(ROOT)}: {m}" for m in re.findall(r"specs/\w+\.md|\bARCHITECTURES\.md", text)]
    assert not outside, outside
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert cited and not missing, missing


def test_readme_covers_install_cache_json_threads_and_passes():
    readme = (ROOT / "README.md").read_text()
    for needle in (
        "pip install -e '.[openvino]'",
        "EDGEFORMER_CACHE_DIR",
        "edgeformer cache",
        "--json",
        "threads",
        "--passes -fold_layer_scale",
        "docs/measurement.md",
        "docs/cli.md",
    ):
        assert needle in readme, needle
    assert "the mobile model.ort" not in readme


def test_the_cache_command_the_docs_name_exists():
    out = subprocess.run(
        [sys.executable, "-m", "edgeformer.cli", "cache", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--clean" in out.stdout and "EDGEFORMER_CACHE_DIR" in out.stdout
