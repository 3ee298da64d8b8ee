"""The floors of the house (docs/architecture.md): no module imports a module of a higher floor.

Every import statement counts, at module level or inside a function, found by reading the
sources with ``ast`` (relative imports resolved), so a function-local import cannot hide an arrow
back up.  Inside the library, imports of edgeformer's own modules sit at module level; only the
CLI imports lazily (it keeps ``edgeformer --help`` fast), and vendor SDKs are imported lazily
everywhere (they are not edgeformer modules, so this test does not see them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it installs as (pyproject's package-dir mapping).
PACKAGES = {"edgeformer": "edgeformer", "passes": "edgeformer.passes", "targets": "edgeformer.targets"}

# Longest matching prefix wins.  Floor 2 holds passes and targets; targets may use passes, not
# the reverse, so passes sit half a floor lower.
FLOORS: dict[str, float] = {
    "edgeformer": 1,  # the ground floor's modules, and the lazy public API in __init__ (strings only)
    "edgeformer.models": 1,
    "edgeformer.passes": 2,
    "edgeformer.targets": 2.5,
    "edgeformer.compiler": 3,
    "edgeformer.tuning": 3,
    "edgeformer.profiling": 3,
    "edgeformer.runtime": 3,
    "edgeformer.training": 3,
    "edgeformer.report": 3,
    "edgeformer.accuracy": 3,
    "edgeformer.sites": 3,  # the attention-site driver of the compiler (uses passes)
    "edgeformer.streaming": 3,
    "edgeformer.search": 3,
    "edgeformer.bundle": 3,
    "edgeformer.predict": 3,
    "edgeformer.cli": 4,
}
# Modules allowed to import edgeformer modules inside functions, and why.
LAZY_OK = {
    "edgeformer.cli": "keeps `edgeformer --help` fast: each command imports what it runs",
}


def floor(module: str) -> float:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[best]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported edgeformer module, line, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append((target, child.lineno, in_function))
                # `from edgeformer import ir` imports the submodule edgeformer.ir
                for a in child.names:
                    found.append((f"{target}.{a.name}", child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    modules = _modules()
    return [(t, line, fn) for t, line, fn in found if t in modules and t != module]


MODULES = _modules()


def test_every_module_has_a_floor():
    assert "edgeformer.compiler" in MODULES and "edgeformer.passes.base" in MODULES
    for module in MODULES:
        assert floor(module) in (1, 2, 2.5, 3, 4), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_a_floor(module):
    up = [
        f"{module}:{line} imports {target} (floor {floor(target)} > {floor(module)})"
        for target, line, _ in _imports(module, MODULES[module])
        if floor(target) > floor(module)
    ]
    assert not up, "\n".join(up)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_edgeformer_modules_are_imported_at_module_level(module):
    if any(module == m or module.startswith(m + ".") for m in LAZY_OK):
        return
    lazy = [
        f"{module}:{line} imports {target} inside a function"
        for target, line, fn in _imports(module, MODULES[module])
        if fn
    ]
    assert not lazy, "\n".join(lazy)


def test_the_scan_sees_function_local_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from .base import X\n\ndef f():\n    from edgeformer.compiler import compile\n")
    found = _imports("edgeformer.targets.tvm.remote", src)
    assert ("edgeformer.targets.tvm.base", 1, False) not in found  # not a real module: dropped
    assert ("edgeformer.compiler", 4, True) in found
    assert floor("edgeformer.targets.tvm.remote") < floor("edgeformer.compiler")
