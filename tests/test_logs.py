"""Structured logs (issue 16): JSON lines on the command line, ``logging`` for the library.

A hostile server echoes the request's ``Authorization`` header in its 422 body: the reason is
journaled and logged, and the token must appear nowhere.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from growthhub_async import GrowthHubClient, RetryPolicy, Status, UpdateContact
from growthhub_async.logs import RUN_ID, JsonFormatter, JsonLines, configure
from growthhub_async.redact import Redactor
from growthhub_async.sandbox import Faults, SandboxConfig, run_sandbox
from tests.cli_helpers import (
    SECRET_TOKEN,
    finish,
    run_cli,
    start_cli,
    wait_for_lines,
    write_jsonl,
)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that answers every PUT 422, quoting the Authorization header it got."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            await reader.readexactly(int(headers.get("content-length", "0")))
            echoed = headers.get("authorization", "")
            body = json.dumps(
                {"statusCode": 422, "message": [f"bad credentials {echoed}"], "error": "x"}
            ).encode()
            writer.write(
                b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_json_logs_every_stderr_line_is_json_with_the_run_id(
    echo_server: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"contactId": f"c{i}", "firstName": "BodyNeverLogged"} for i in range(3)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    out = tmp_path / "out.jsonl"
    ran = await run_cli(
        "update",
        str(source),
        "--out",
        str(out),
        "--base-url",
        echo_server,
        "--rate",
        "1000/1s",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    )
    assert ran.status == 1, ran.stderr
    lines = ran.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert entries
    assert all({"time", "level", "logger", "runId", "msg"} <= set(e) for e in entries)
    (run_id,) = {e["runId"] for e in entries}
    assert run_id
    assert len(run_id) == 16
    # The records not updated, each with its facts as fields (the 422 quoted the token).
    invalid = [e for e in entries if e.get("status") == "invalid"]
    assert sorted(e["line"] for e in invalid) == [1, 2, 3]
    assert all(e["httpStatus"] == 422 and e["location"] == "default" for e in invalid)
    assert "<redacted>" in invalid[0]["msg"]
    assert [e["line"] for e in entries if e.get("status") == "rejected"] == [4]
    assert any(e["msg"].startswith("run finished") for e in entries)
    assert "invalid" in ran.stdout  # the summary table on stdout, as ever
    journal = [json.loads(line) for line in out.read_text().splitlines()]
    assert {j["runId"] for j in journal} == {run_id}
    for text in (ran.stderr, ran.stdout, out.read_text()):
        assert SECRET_TOKEN not in text
        assert "BodyNeverLogged" not in text
    # What the command writes on stderr itself (a warning here) is a JSON line too.
    ran = await run_cli(
        *("update", str(source), "--out", "/dev/null", "--base-url", echo_server),
        *("--log-format", "json"),
    )
    entries = [json.loads(line) for line in ran.stderr.splitlines()]
    (warning,) = [e for e in entries if e["level"] == "warning"]
    assert "not a regular file" in warning["msg"]
    assert warning["logger"] == "growthhub_async.cli"
    assert len({e["runId"] for e in entries} | {run_id}) == 2  # a new run, a new id


async def test_a_usage_error_in_json_mode_is_json_too(tmp_path: Path) -> None:
    ran = await run_cli("update", str(tmp_path / "in.jsonl"), "--log-format", "json")
    assert ran.status == 2
    entries = [json.loads(line) for line in ran.stderr.splitlines()]
    assert any("--out" in e["msg"] and e["level"] == "error" for e in entries)


def test_the_formatter_redacts_what_a_record_would_leak() -> None:
    """The last line of defence: a message holding a secret (in any form) is redacted."""
    secret = "pit-0123456789abcdef0123"
    written: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            written.append(text)

        def flush(self) -> None:
            pass

    setup = configure("json", "info", Sink(), Redactor(secret))  # type: ignore[arg-type]
    token = RUN_ID.set("abcdef0123456789")
    try:
        logging.getLogger("growthhub_async.test").info(
            "server said %s and %s", f"Bearer {secret}", secret[:14], extra={"line": 7}
        )
        try:
            int(f"boom {secret}")
        except ValueError:
            logging.getLogger("growthhub_async.test").exception("failed")
    finally:
        RUN_ID.reset(token)
        setup.remove()
    entries = [json.loads(w) for w in "".join(written).splitlines()]
    assert entries[0]["runId"] == "abcdef0123456789"
    assert entries[0]["line"] == 7
    assert "<redacted>" in entries[0]["msg"]
    assert "exc" in entries[1]
    assert secret not in "".join(written)
    assert secret[:12] not in "".join(written)
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


async def test_the_library_logs_through_logging_and_configures_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = logging.getLogger("growthhub_async")
    assert any(isinstance(h, logging.NullHandler) for h in ours.handlers)
    assert not any(type(h).__module__.startswith("growthhub_async") for h in logging.root.handlers)
    assert ours.level == logging.NOTSET  # the application decides
    caplog.set_level(logging.DEBUG, logger="growthhub_async")
    config = SandboxConfig(
        tokens=frozenset({SECRET_TOKEN}),
        rate_limit=1000,
        rate_window=0.2,
        faults=Faults(scripts={"c1": ["503", "ok"], "c2": ["422"]}),
    )
    retry = RetryPolicy(base_delay=0.005, max_delay=0.01)
    async with (
        run_sandbox(config) as sb,
        GrowthHubClient(SECRET_TOKEN, base_url=sb.base_url, rate=None, retry=retry) as gh,
    ):
        pairs = [(f"c{i}", UpdateContact(first_name="x")) for i in range(1, 4)]
        outcomes = {o.line: o async for o in gh.update_contacts(pairs)}
    assert outcomes[2].status is Status.INVALID
    events = [r for r in caplog.records if r.name == "growthhub_async.events"]
    by_line = {getattr(r, "line", None): r for r in events if hasattr(r, "status")}
    assert by_line[2].levelno == logging.INFO
    assert by_line[2].__dict__["status"] == "invalid"
    assert by_line[3].levelno == logging.DEBUG  # updated: debug only
    assert any("retry in" in r.getMessage() for r in events)
    assert any(r.getMessage().startswith("run finished") for r in events)
    assert SECRET_TOKEN not in caplog.text


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_a_usage_error_never_prints_the_environment_token(
    tmp_path: Path, log_format: str
) -> None:
    """rt16 #1: argparse quotes argv; an option mistyped with the token in it must not show it."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"contactId": "c1"}\n')
    common = ("update", str(source), "--out", str(tmp_path / "o.jsonl"))
    for wrong in ([f"--bogus={SECRET_TOKEN}"], ["--rate", SECRET_TOKEN]):
        ran = await run_cli(*common, "--log-format", log_format, *wrong)
        assert ran.status == 2, ran.stderr
        assert SECRET_TOKEN not in ran.stderr
        assert "<redacted>" in ran.stderr
        if log_format == "json":
            entries = [json.loads(line) for line in ran.stderr.splitlines()]
            assert any(e["level"] == "error" and "<redacted>" in e["msg"] for e in entries)
        else:
            assert "error:" in ran.stderr


def _levels(least: int) -> list[tuple[str, str]]:
    """What JsonLines writes of what an interrupted run prints, at ``least``."""
    sink = io.StringIO()
    lines = JsonLines(sink, least=least)
    lines.write("\rline 5 of 30 (20/s)\r\x1b[K")  # progress
    lines.write("\nSIGTERM: reading no more records; waiting up to 10s for those in flight\n")
    lines.write("warning: /dev/null is not a regular file\n")
    lines.write("interrupted: records not yet done have no final outcome.\n")
    lines.write("to resume, run:\n  growthhub-async update in.jsonl --out o.jsonl --resume\n")
    lines.write("  with the same records on its standard input again (INPUT was -)\n")
    lines.write("error: the journal could not be written\n")
    lines.write("WARNING: the rotated OAuth tokens could not be written to t.json (full).\n")
    lines.write("  mv t.json.rescued t.json\n")
    lines.close()
    return [(e["level"], e["msg"]) for e in map(json.loads, sink.getvalue().splitlines())]


def test_the_commands_own_lines_honour_the_log_level_but_the_resume_command_stays() -> None:
    """rt16 #6: honest levels; below --log-level dropped, except how to resume."""
    every = _levels(logging.NOTSET)
    assert [level for level, _ in every] == [
        "info",  # progress
        "warning",  # the signal: the run will not finish
        "warning",
        "warning",  # interrupted
        "warning",  # to resume, and its indented lines: the same message
        "warning",
        "warning",
        "error",
        "warning",  # the OAuth rescue, and its command
        "warning",
    ]
    resume = [m for _, m in every[4:7]]
    assert resume[0] == "to resume, run:"
    assert "--resume" in resume[1]
    assert [m for _, m in _levels(logging.WARNING)] == [m for _, m in every[1:]]
    at_error = _levels(logging.ERROR)
    rescue = [m for _, m in every[-2:]]
    assert [m for _, m in at_error] == [*resume, "error: the journal could not be written", *rescue]


async def test_log_level_error_on_sigterm_keeps_only_the_resume_command(tmp_path: Path) -> None:
    """rt16 #6 end to end: --log-level error, SIGTERM: no info line, the command to resume."""
    rows = [{"contactId": f"contact{i}", "tags": ["x"]} for i in range(40)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    config = SandboxConfig(tokens=frozenset({SECRET_TOKEN}), rate_limit=1000, rate_window=1.0)
    async with run_sandbox(config) as sandbox:
        proc = await start_cli(
            *("update", str(data), "--out", str(out), "--base-url", sandbox.base_url),
            *("--rate", "20/1s", "--log-format", "json", "--log-level", "error"),
        )
        await wait_for_lines(out, 3, proc)
        proc.send_signal(signal.SIGTERM)
        ran = await finish(proc, limit=20)
    assert ran.status == 1, ran.stderr
    entries = [json.loads(line) for line in ran.stderr.splitlines()]
    assert {e["level"] for e in entries} == {"warning"}, entries
    assert entries[0]["msg"] == "to resume, run:"
    assert "--resume" in entries[1]["msg"]
    assert not any("SIGTERM" in e["msg"] for e in entries)
