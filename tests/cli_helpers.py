"""Running the real ``growthhub-async`` command in a subprocess, against an in-process sandbox.

The test's event loop serves the sandbox while it awaits the subprocess (hence
``asyncio.create_subprocess_exec``, never ``subprocess.run``, which would block the loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Distinctive, so that finding it anywhere in the output means it leaked.
SECRET_TOKEN = "tok-CLI-SECRET-7f3a9c2e41"


@dataclass
class Ran:
    """A finished command: exit status and both outputs, as text."""

    status: int
    stdout: str
    stderr: str


def cli_env(token: str | None = SECRET_TOKEN) -> dict[str, str]:
    """The subprocess's environment: ours, with ``GROWTHHUB_TOKEN`` set or removed."""
    env = {k: v for k, v in os.environ.items() if k != "GROWTHHUB_TOKEN"}
    if token is not None:
        env["GROWTHHUB_TOKEN"] = token
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def start_cli(
    *args: str, token: str | None = SECRET_TOKEN, stdin: bool = False
) -> asyncio.subprocess.Process:
    """Start ``python -m growthhub_async ARGS``; stdout and stderr are piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "growthhub_async",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(token),
    )


async def finish(
    proc: asyncio.subprocess.Process, data: bytes | None = None, limit: float = 30.0
) -> Ran:
    """Wait for the command (killing it after ``limit`` seconds) and collect its outputs."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def run_cli(
    *args: str, token: str | None = SECRET_TOKEN, data: bytes | None = None, limit: float = 30.0
) -> Ran:
    """Run the command to its end."""
    proc = await start_cli(*args, token=token, stdin=data is not None)
    return await finish(proc, data, limit)


async def run_command(line: str, token: str | None = SECRET_TOKEN, limit: float = 30.0) -> Ran:
    """Run a command line that the program printed for the user to paste, word for word."""
    words = shlex.split(line)
    proc = await asyncio.create_subprocess_exec(
        *words,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(token),
    )
    return await finish(proc, None, limit)


def update_args(
    data: Path, out: Path, base_url: str, *, rate: str, concurrency: int | None = None
) -> list[str]:
    """Arguments of an ``update`` run against a sandbox, with plain progress off."""
    args = ["update", str(data), "--out", str(out), "--base-url", base_url, "--rate", rate]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    return [*args, "--no-progress"]


def journal_lines(path: Path) -> list[dict[str, Any]]:
    """The journal's complete lines, decoded (a torn last line is left out)."""
    raw = path.read_bytes()
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


def write_jsonl(path: Path, records: list[dict[str, Any]] | list[str]) -> Path:
    """Write records (dicts, or raw lines as given) one per line."""
    with path.open("w") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def _complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def wait_for_lines(path: Path, count: int, proc: asyncio.subprocess.Process) -> None:
    """Poll until the journal holds at least ``count`` complete lines (the loop keeps serving)."""
    for _ in range(2000):
        if _complete_lines(path) >= count:
            return
        assert proc.returncode is None, "the command ended before the journal filled"
        await asyncio.sleep(0.01)
    raise AssertionError(f"the journal never reached {count} lines")
