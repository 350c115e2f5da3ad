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
