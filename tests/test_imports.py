"""The package has no import cycle (issue 12): two modules that need each other share a third."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "growthhub_async"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of ours that ``path`` imports, at the top or inside a function (a deferred import
    is a cycle in disguise)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found.update(n for n in names if n.startswith("growthhub_async"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("growthhub_async"))
    return found


def test_no_import_cycle_between_modules() -> None:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
        if path.name != "__init__.py"
    }
    assert "growthhub_async.transport" in graph["growthhub_async.auth"]
    assert "growthhub_async.auth" in graph["growthhub_async.client"]
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycles.append([*trail[trail.index(name) :], name])
            return
        for target in sorted(graph.get(name, ())):
            visit(target, [*trail, name])

    for start in graph:
        visit(start, [])
    assert cycles == []
