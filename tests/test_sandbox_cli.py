"""``growthhub-async sandbox``: argument parsing, token choice, and a real run in a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import aiohttp
import pytest

from growthhub_async.cli import build_parser
from growthhub_async.client import is_loopback
from growthhub_async.sandbox.cli import _config


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        (None, False),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("::", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_options_become_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROWTHHUB_TOKEN", raising=False)
    args = build_parser().parse_args(
        [
            "sandbox",
            "--rate",
            "20/500ms",
            "--daily",
            "50",
            "--window",
            "fixed",
            "--no-retry-after",
            "--error-rate",
            "0.1",
            "--drop-rate",
            "0.05",
            "--rate-limit-rate",
            "0.02",
            "--latency",
            "0.01",
            "--jitter",
            "0.02",
            "--seed",
            "9",
            "--token",
            "a",
            "--token",
            "b",
        ]
    )
    config = _config(args)
    assert (config.rate_limit, config.rate_window, config.window) == (20, 0.5, "fixed")
    assert config.daily_limit == 50
    assert config.retry_after is False
    assert config.tokens == frozenset({"a", "b"})
    faults = config.faults
    assert (faults.seed, faults.error_rate, faults.drop_rate) == (9, 0.1, 0.05)
    assert (faults.rate_limit_rate, faults.latency, faults.jitter) == (0.02, 0.01, 0.02)


def test_token_from_environment_wins_else_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROWTHHUB_TOKEN", "from-env")
    args = build_parser().parse_args(["sandbox", "--token", "argv"])
    assert _config(args).tokens == frozenset({"from-env"})
    monkeypatch.delenv("GROWTHHUB_TOKEN")
    assert _config(build_parser().parse_args(["sandbox"])).tokens == frozenset({"sandbox-token"})


@pytest.mark.parametrize("argv", [["--rate", "fast"], ["--error-rate", "2"], ["--latency", "-1"]])
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["sandbox", *argv])
    assert exc.value.code == 2
    capsys.readouterr()


async def start_sandbox_command(
    env: dict[str, str], *argv: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``growthhub-async sandbox --port 0 ARGV`` in a subprocess, and its start-up line."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "growthhub_async", "sandbox", "--port", "0", *argv),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, line


async def test_command_serves_until_interrupted() -> None:
    env = {**os.environ, "GROWTHHUB_TOKEN": "cli-token"}
    proc, line = await start_sandbox_command(env, "--rate", "5/10s")
    assert proc.stderr is not None
    try:
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        headers = {"Authorization": "Bearer cli-token", "Version": "2021-07-28"}
        async with (
            aiohttp.ClientSession() as http,
            http.put(
                f"{match.group(0)}/contacts/c1", json={"firstName": "A"}, headers=headers
            ) as r,
        ):
            assert r.status == 200
            assert r.headers["X-RateLimit-Max"] == "5"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        rest = (await proc.stderr.read()).decode()
        assert "cli-token" not in line + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("env_token", "argv", "says"),
    [
        (None, [], "accepts only the token 'sandbox-token' (GROWTHHUB_TOKEN is not set)"),
        ("env-token-1234", [], "accepts the token in GROWTHHUB_TOKEN"),
        (None, ["--token", "t-one-1", "--token", "t-two-2"], "accepts the 2 token(s) given"),
    ],
    ids=["default", "environment", "argv"],
)
async def test_the_start_up_line_says_which_token_is_accepted(
    env_token: str | None, argv: list[str], says: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GROWTHHUB_TOKEN"}
    if env_token is not None:
        env["GROWTHHUB_TOKEN"] = env_token
    proc, line = await start_sandbox_command(env, *argv)
    proc.kill()
    await proc.wait()
    assert says in line, line
    for secret in ("env-token-1234", "t-one-1", "t-two-2"):
        assert secret not in line


def test_sandbox_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sandbox", "--help"])
    text = capsys.readouterr().out
    for shown in (
        "(default: 100/10s)",
        "(default: 200000)",
        "(default: sliding)",
        "(default: 127.0.0.1)",
        "(default: 8080)",
        "default 'sandbox-token'",
    ):
        assert shown in " ".join(text.split()), shown


def test_update_help_gives_examples_units_and_the_trial_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["update", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "examples:",
        "in ms, s, m or h",
        "25/10s for sandbox and trial accounts",
        "Exit status: 0",
        "never from the command line",
    ):
        assert shown in text, shown
