"""The house keeps its shape: layering between packages, no import circles, small modules, a docstring each.

Read from the source with ``ast`` (every import, including those inside
functions), so a change that breaks a boundary fails here, not in review.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("indexer", "curation", "app", "demo", "cli")
HEAVY = {"torch", "torchvision", "duckdb", "faiss", "open_clip", "transformers"}
# package -> the top-level names (or dotted prefixes) it may never import
FORBIDDEN = {
    "indexer": {"curation", "app", "demo", "cli"},
    "curation": {"app", "demo", "cli"},
    "app": {"demo", "cli", "tarfile", "pyarrow", "webdataset"} | HEAVY,
    "demo": {"app", "cli"},
    "cli": set(),
}
SQL_CALLS = {"execute", "executemany", "rows", "scalar", "dicts", "fetchall", "fetchnumpy", "register"}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every product module."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it: ``from a.b import c`` gives ``a.b.c`` when that is a
    module of ours, else ``a.b``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute imports)"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in MODULES else node.module)
    return names


def _violates(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layering(module):
    package = module.split(".")[0]
    bad = sorted(n for n in imported_names(MODULES[module]) if _violates(n, FORBIDDEN[package] | {"cli"}
                                                                        if package != "cli" else set()))
    assert not bad, f"{module} ({package}/) may not import {bad}"


def test_nothing_imports_the_command_line():
    for path in list(MODULES.values()) + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py")):
        if path.relative_to(ROOT).parts[0] != "cli":
            assert not [n for n in imported_names(path) if _violates(n, {"cli"})], f"{path} imports cli"


def test_app_runs_no_sql():
    """The UI calls library functions; it never talks to DuckDB itself."""
    for name, path in MODULES.items():
        if not name.startswith("app"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in SQL_CALLS, f"{path}:{node.lineno} calls .{node.func.attr}()"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                head = node.value.lstrip().split(" ", 1)[0].upper()
                assert head not in {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "WITH"}, \
                    f"{path}:{node.lineno} holds SQL"


def test_no_import_circles():
    graph = {name: {n for n in imported_names(path) if n in MODULES and n != name} for name, path in MODULES.items()}
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def test_modules_are_small_and_say_what_they_do():
    for name, path in MODULES.items():
        lines = path.read_text().count("\n")
        assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES})"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"


def test_the_check_can_fail(tmp_path):
    """The walker sees imports inside functions and through ``from`` forms (so the tests above can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from curation.views import search\n    import duckdb\n")
    assert {"curation.views.search", "duckdb"} <= imported_names(probe)
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"], ["c"]]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in discovery order."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
