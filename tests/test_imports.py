"""The package has no import cycle (issue 12): two modules that need each other share a third.
The command imports only what its run uses (issue 17)."""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

from cli_helpers import SECRET_TOKEN, cli_env
from conftest import StartSandbox, sandbox_config

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


# What `update` must not import (issue 17, item 4): each costs start-up, and a one-record run
# is all start-up. SQLite only with --state, the sandbox and demo (aiohttp's web framework)
# only for their own subcommands, the spill file's tempfile only when a record spills, the Dask
# module only with --dask, the report's only for `report`.
LAZY = (
    "sqlite3",
    "growthhub_async.state",
    "growthhub_async.incremental",
    "growthhub_async.sandbox",
    "growthhub_async.demo",
    "growthhub_async.spill",
    "growthhub_async.distributed",
    "growthhub_async.report",
    "aiohttp.web",
)
# The command, then the modules it imported, one per line, into the file named by argv[1].
SPY = (
    "import atexit, sys; out = sys.argv.pop(1); "
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules)))); "
    "from growthhub_async.cli import main; sys.exit(main())"
)


async def test_update_imports_only_what_it_uses(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await start_sandbox(sandbox_config(tokens=frozenset({SECRET_TOKEN})))
    data = tmp_path / "one.jsonl"
    data.write_text('{"contactId": "startup1", "firstName": "Ada"}\n')

    async def modules(*extra: str) -> set[str]:
        seen = tmp_path / "modules.txt"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SPY, str(seen), "update", str(data),
            "--out", str(tmp_path / f"o{len(extra)}.jsonl"), "--base-url", sandbox.base_url,
            "--no-progress", *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=cli_env(),
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        return set(seen.read_text().split())

    plain = await modules()
    assert "growthhub_async.job" in plain  # it ran the command
    assert [m for m in LAZY if m in plain] == []
    # The guard can fail: --state does import SQLite and the state's modules.
    with_state = await modules("--state", str(tmp_path / "sync.db"))
    assert {"sqlite3", "growthhub_async.state", "growthhub_async.incremental"} <= with_state
    assert sandbox.stats()["requests"] == 2
