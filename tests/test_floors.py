"""Package floors: configs (foundation) < shards < modeling < trainer < cluster < launcher.

Every module's imports (top-level and inside functions) are read with ``ast``; an import of a
higher floor, or any circle between packages, fails with the offending files named.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ["configs", "shards", "modeling", "trainer", "cluster", "launcher"]


def package_edges(root: Path = ROOT) -> dict[tuple[str, str], set[str]]:
    edges: dict[tuple[str, str], set[str]] = {}
    for pkg in FLOORS:
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in FLOORS and top != pkg:
                        edges.setdefault((pkg, top), set()).add(str(path.relative_to(root)))
    return edges


def test_no_upward_import():
    upward = {f"{a} -> {b}": sorted(files) for (a, b), files in package_edges().items()
              if FLOORS.index(b) > FLOORS.index(a)}
    assert not upward, upward


def test_no_circle_between_packages():
    adj = {p: {b for (a, b) in package_edges() if a == p} for p in FLOORS}

    def reaches(src: str, dst: str, seen: frozenset = frozenset()) -> bool:
        return dst in adj[src] or any(reaches(n, dst, seen | {src}) for n in adj[src] if n not in seen)

    circles = [(a, b) for a in FLOORS for b in FLOORS if a < b and reaches(a, b) and reaches(b, a)]
    assert not circles, circles


def test_the_scan_sees_lazy_imports(tmp_path):
    """An import hidden inside a function (rrg defers heavy imports that way) still counts."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "x.py").write_text("def f():\n    from trainer.loop import Trainer\n")
    assert package_edges(tmp_path) == {("shards", "trainer"): {"shards/x.py"}}


def module_edges(root: Path = ROOT, import_time_only: bool = False) -> dict[str, set[str]]:
    """module -> the modules of its own package it imports (``import_time_only``: not inside a function)."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(p): p for pkg in FLOORS for p in (root / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if import_time_only:
            nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for n in ast.walk(top) if not isinstance(top, ast.ClassDef) or n in top.body]
        else:
            nodes = list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            edges[mod] |= {n for n in names if n in files and n != mod and n.split(".")[0] == mod.split(".")[0]}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# The data layer's manifest / reader / sidecars / storage still import one another inside functions (each
# side's import is deferred, so none runs at import time); known, and not to grow: a new module in a
# circle, or a circle anywhere else, fails below.
KNOWN_LAZY_CIRCLE = {"shards.config", "shards.manifest", "shards.reader", "shards.passes.reasoning.annotate",
                     "shards.sidecars", "shards.storage", "shards.views"}


def test_no_import_circle_between_the_files_of_a_package():
    assert not circles(module_edges(import_time_only=True))
    lazy = circles(module_edges())
    assert all(set(group) <= KNOWN_LAZY_CIRCLE for group in lazy), lazy


def test_the_circle_scan_finds_a_circle(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "a.py").write_text("from trainer.b import x\n")
    (tmp_path / "trainer" / "b.py").write_text("def f():\n    import trainer.a\n")
    assert circles(module_edges(tmp_path)) == [["trainer.a", "trainer.b"]]
    assert circles(module_edges(tmp_path, import_time_only=True)) == []
