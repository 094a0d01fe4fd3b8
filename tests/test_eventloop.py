"""The command runs on uvloop when it is installed, unless told otherwise (issue 17, item 3).

uvloop is in the ``dev`` extra, so both loops run here: the same bulk job, paced over several
windows of the sandbox's limit (uvloop's clock ticks in whole milliseconds, which once made the
pacer spin: ``ratelimit.MIN_SMOOTHING_GAP``), must give the same journal on either. A Python
where uvloop cannot be imported is made by poisoning ``sys.modules['uvloop']`` in the child.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import SECRET_TOKEN, Ran, cli_env, run_cli
from conftest import StartSandbox, sandbox_config

import growthhub_async
from growthhub_async import eventloop
from growthhub_async.errors import ConfigurationError

NO_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "  # `import uvloop` now raises ImportError
    "from growthhub_async.cli import main; sys.exit(main())"
)


async def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def records(path: Path, count: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"contactId": f"loop{n:04d}", "city": f"C{n}"}) + "\n" for n in range(count)
        )
    )
    return path


async def test_update_runs_on_either_loop_and_says_which(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # 20 per 0.5 s at the sandbox, 20/0.5s asked: 50 records span three windows, so the
    # smoother's timers (4.5 ms apart) run on each loop; zero 429s on both.
    sandboxes = {
        loop: await start_sandbox(
            sandbox_config(tokens=frozenset({SECRET_TOKEN}), rate_limit=20, rate_window=0.5)
        )
        for loop in ("asyncio", "uvloop")
    }
    data = records(tmp_path / "in.jsonl", 50)

    async def run(loop: str) -> Ran:
        out = tmp_path / f"{loop}.jsonl"
        return await run_cli(
            "update", str(data), "--out", str(out), "--base-url", sandboxes[loop].base_url,
            "--rate", "20/0.5s", "--concurrency", "8", "--no-progress", "--loop", loop,
        )  # fmt: skip

    on_asyncio, on_uvloop = await asyncio.gather(run("asyncio"), run("uvloop"))
    for loop, ran in (("asyncio", on_asyncio), ("uvloop", on_uvloop)):
        assert ran.status == 0, ran.stderr
        assert f"  event loop: {loop}" in ran.stdout
        journal = [
            json.loads(line)
            for line in (tmp_path / f"{loop}.jsonl").read_text().split("\n")
            if line
        ]
        assert sorted(o["line"] for o in journal) == list(range(1, 51))
        assert {o["status"] for o in journal} == {"updated"}
        stats = sandboxes[loop].stats()
        assert (stats["requests"], stats["rateLimited"]) == (50, 0)
    assert "event loop: uvloop 0." in on_uvloop.stdout


async def test_auto_takes_uvloop_and_the_environment_can_say_asyncio(tmp_path: Path) -> None:
    data = records(tmp_path / "in.jsonl", 3)
    dry = ("update", str(data), "--out", str(tmp_path / "o.jsonl"), "--dry-run")
    auto = await run_cli("--version", token=None)
    assert auto.stdout.splitlines()[1].startswith("event loop: uvloop 0.")
    env = {**cli_env(None), eventloop.LOOP_ENV: "asyncio"}
    told = await run_python(
        NO_UVLOOP.replace("sys.modules['uvloop'] = None; ", ""), "--version", env=env
    )
    assert told.stdout.splitlines()[1] == f"event loop: asyncio ({eventloop.LOOP_ENV}=asyncio)"
    # A value that is no loop is a usage error naming the variable, before anything is read.
    env[eventloop.LOOP_ENV] = "tokio"
    bad = await run_python(NO_UVLOOP, *dry, env=env)
    assert bad.status == 2
    assert f"{eventloop.LOOP_ENV} must be one of auto, asyncio, uvloop, not 'tokio'" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_without_uvloop_auto_runs_on_asyncio_and_uvloop_is_refused(tmp_path: Path) -> None:
    data = records(tmp_path / "in.jsonl", 3)
    dry = ("update", str(data), "--out", str(tmp_path / "o.jsonl"), "--dry-run")
    version = await run_python(NO_UVLOOP, "--version")
    assert "event loop: asyncio (uvloop not installed: pip install 'growthhub-async[speed]')" in (
        version.stdout
    )
    assert (await run_python(NO_UVLOOP, *dry)).status == 0
    refused = await run_python(NO_UVLOOP, *dry, "--loop", "uvloop")
    assert refused.status == 2
    assert refused.stderr.strip().splitlines() == [
        "growthhub-async update: error: --loop asks for uvloop, which is not installed: "
        "pip install 'growthhub-async[speed]' (or --loop asyncio)"
    ]


def test_the_library_installs_no_loop() -> None:
    # Importing the package (as an application embedding it does) picks no loop.
    assert "uvloop" not in vars(growthhub_async)
    with pytest.raises(ConfigurationError, match="--loop must be one of"):
        eventloop.loop_factory("trio")
    assert eventloop.loop_factory("asyncio") == ("asyncio", None)


def dry_run_with_stdin_closed(tmp_path: Path, *python: str) -> subprocess.CompletedProcess[str]:
    """``update --dry-run --loop uvloop`` on three records, run by ``python *python`` with
    descriptor 0 closed (as cron may start it)."""
    data = records(tmp_path / "in.jsonl", 3)
    return subprocess.run(
        [sys.executable, *python, "update", str(data), "--out", str(tmp_path / "o.jsonl"),
         "--dry-run", "--loop", "uvloop"],
        capture_output=True, text=True, env=cli_env(None), preexec_fn=lambda: os.close(0),
        timeout=30, check=False,
    )  # fmt: skip


def test_a_closed_standard_stream_runs_on_asyncio_not_into_an_abort(tmp_path: Path) -> None:
    # libuv takes a closed descriptor 0 for itself, then aborts on closing it: the command must
    # see the closed stream and stay on asyncio, whatever --loop says.
    ran = dry_run_with_stdin_closed(tmp_path, "-m", "growthhub_async")
    assert ran.returncode == 0, ran.stderr
    assert "valid (would be sent)" in ran.stdout


def test_uvloop_asked_for_but_missing_is_refused_even_with_a_closed_stream(
    tmp_path: Path,
) -> None:
    # A closed stream keeps the command off uvloop, but a missing extra is still the caller's to
    # fix: exit 2 naming it, not a quiet run on asyncio (cron closes stdin).
    ran = dry_run_with_stdin_closed(tmp_path, "-c", NO_UVLOOP)
    assert ran.returncode == 2, ran.stderr
    assert "asks for uvloop, which is not installed" in ran.stderr
