"""``growthhub-async demo``: the sample input, and a scaled-down run in-process and as a command."""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from cli_helpers import cli_env, run_cli

from growthhub_async.cmdline import invoked_as
from growthhub_async.demo import BAD_RECORDS, run_demo, write_sample


def test_sample_holds_the_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    assert write_sample(path, 100) == 100
    lines = path.read_bytes().splitlines()
    assert len(lines) == 100
    assert sorted(line for line in lines if line in BAD_RECORDS) == sorted(BAD_RECORDS)
    good = [json.loads(line) for line in lines if line not in BAD_RECORDS]
    assert len({g["contactId"] for g in good}) == len(good)


async def test_demo_runs_twice_in_the_same_folder(tmp_path: Path) -> None:
    for _ in range(2):
        out = io.StringIO()
        err = io.StringIO()
        status = await run_demo(tmp_path, records=120, progress=True, stdout=out, stderr=err)
        assert status == 0, out.getvalue() + err.getvalue()
        outcomes = (tmp_path / "outcomes.jsonl").read_bytes().splitlines()
        assert len(outcomes) == 120  # a fresh outcome file each run
        statuses = [json.loads(line)["status"] for line in outcomes]
        assert statuses.count("rejected") == len(BAD_RECORDS)
        assert statuses.count("updated") == 120 - len(BAD_RECORDS)
        text = out.getvalue()
        assert str(tmp_path / "outcomes.jsonl") in text
        assert "unknown field `favouriteColour`" in text
        assert "rejected" in text


async def test_demo_command(tmp_path: Path) -> None:
    ran = await run_cli(
        "demo", "--dir", str(tmp_path / "d"), "--records", "80", "--no-progress", token=None
    )
    assert ran.status == 0, ran.stderr
    assert "outcomes: " in ran.stdout
    assert (tmp_path / "d" / "contacts.jsonl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(line: str, cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen[str]:
    """Run a printed command line as a shell would (leading VAR=value words set the env)."""
    words = shlex.split(line.replace("8080", str(port)))
    env = dict(env)
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return subprocess.Popen(
        words, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_commands_the_demo_suggests_work_as_printed(tmp_path: Path) -> None:
    # As after `make demo`: the console script by its path, nothing of ours on PATH.
    script = Path(sys.executable).with_name("growthhub-async")
    env = cli_env(None)
    env["PATH"] = "/usr/bin:/bin"
    demo = subprocess.run(
        [str(script), "demo", "--dir", "d", "--records", "60", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    lines = demo.stdout.splitlines()
    first = lines.index(
        "demo: try it yourself (checks every record, sends nothing, needs no token):"
    )
    dry_run, _, sandbox_line, update_line, activate = lines[first + 1 : first + 6]
    assert dry_run.strip().startswith(f"{script} update d/contacts.jsonl")
    assert (Path(shlex.split(activate.split("`")[1])[1])).is_file()

    port = _free_port()
    ran = _run(dry_run.strip(), tmp_path, env, port)
    out, err = ran.communicate(timeout=30)
    assert ran.returncode == 1, err  # the demo's six bad records
    assert "dry run: nothing was sent" in out
    assert "rejected" in out

    sandbox = _run(sandbox_line.strip(), tmp_path, env, port)
    try:
        assert sandbox.stderr is not None
        assert "sandbox listening on" in sandbox.stderr.readline()
        ran = _run(update_line.strip(), tmp_path, env, port)
        out, err = ran.communicate(timeout=30)
    finally:
        sandbox.terminate()
        sandbox.communicate(timeout=10)
    assert ran.returncode == 1, err  # updated, but for the six bad records
    outcomes = [
        json.loads(line) for line in (tmp_path / "d" / "mine.jsonl").read_text().splitlines()
    ]
    statuses = [o["status"] for o in outcomes]
    assert statuses.count("updated") == 60 - len(BAD_RECORDS)
    assert statuses.count("rejected") == len(BAD_RECORDS)


def test_invoked_as_names_a_command_that_runs_from_here(tmp_path: Path) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "growthhub-async"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    rel = os.path.relpath(script)
    assert invoked_as(rel, path="/usr/bin:/bin") == shlex.quote(rel)
    assert invoked_as(str(script), path=str(bin_dir)) == "growthhub-async"
    assert invoked_as("/nowhere/__main__.py", path="/usr/bin:/bin") == shlex.join(
        [sys.executable, "-m", "growthhub_async"]
    )
