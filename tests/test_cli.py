"""``growthhub-async update`` end to end: the real command in a subprocess, a sandbox in-process.

Each test starts its own sandbox (fast window: these tests are about files, statuses and
signals, not pacing) and runs ``python -m growthhub_async update ...`` against it.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from cli_helpers import (
    SECRET_TOKEN,
    Ran,
    cli_env,
    finish,
    journal_lines,
    run_cli,
    run_command,
    start_cli,
    update_args,
    wait_for_lines,
    write_jsonl,
)
from conftest import StartSandbox, sandbox_config

from growthhub_async import __version__
from growthhub_async.cli import build_parser, resume_command
from growthhub_async.job import JobSettings, _next_steps, run_job
from growthhub_async.journal import record_hash
from growthhub_async.outcomes import FINAL_STATUSES, Status
from growthhub_async.ratelimit import Rate
from growthhub_async.sandbox import Faults, Sandbox
from growthhub_async.sources import read_jsonl

JOURNAL_KEYS = [
    *("line", "contactId", "status", "httpStatus", "attempts", "error", "recordHash"),
    *("location", "at", "rateLimited", "runId"),  # the run's facts (issue 16)
]
FAST = "1000/1s"


async def fast_sandbox(start_sandbox: StartSandbox, **overrides: object) -> Sandbox:
    settings: dict[str, object] = {
        "tokens": frozenset({SECRET_TOKEN}),
        "rate_limit": 1000,
        "rate_window": 1.0,
    }
    settings.update(overrides)
    return await start_sandbox(sandbox_config(**settings))


def assert_no_token(ran: Ran, *files: Path) -> None:
    assert SECRET_TOKEN not in ran.stdout
    assert SECRET_TOKEN not in ran.stderr
    for path in files:
        if path.exists():
            assert SECRET_TOKEN.encode() not in path.read_bytes()


def good(n: int, prefix: str = "good") -> dict[str, object]:
    return {"contactId": f"{prefix}{n:04d}", "firstName": f"First{n}", "tags": ["cli"]}


# Every bad-input case of the issue, with a word its rejection must name.
BAD_LINES: list[tuple[str, str]] = [
    ('{"contactId": "badjson01", "firstName": "x"', "malformed JSON"),
    ('["contactId", "notanobject"]', "not a JSON object"),
    ('{"firstName": "NoId"}', "missing contactId"),
    ('{"contactId": "a/b", "firstName": "Unsafe"}', "$.contactId"),
    ('{"contactId": "unknown01", "gender": "x"}', "unknown field `gender`"),
    ('{"contactId": "wrongtype01", "firstName": 42}', "$.firstName"),
    (
        '{"contactId": "badenum01", "dndSettings": {"SMS": {"status": "maybe"}}}',
        "$.dndSettings.SMS.status",
    ),
    ('{"contactId": "baddate01", "dateOfBirth": "1990-13-45"}', "$.dateOfBirth"),
    ('{"contactId": "badcountry01", "country": "XX"}', "$.country"),
]


async def test_jsonl_end_to_end_every_bad_case_rejected_others_updated(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    lines: list[str] = []
    expected_bad: dict[int, str] = {}
    for n in range(30):
        lines.append(json.dumps(good(n)))
        if n < len(BAD_LINES):
            lines.append(BAD_LINES[n][0])
            expected_bad[len(lines)] = BAD_LINES[n][1]
    data = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"

    ran = await run_cli(
        "update", str(data), "--out", str(out), "--base-url", sandbox.base_url, "--rate", FAST
    )

    assert ran.status == 1, ran.stderr
    journal = journal_lines(out)
    assert sorted(o["line"] for o in journal) == list(range(1, len(lines) + 1))
    for outcome in journal:
        assert list(outcome) == JOURNAL_KEYS
        if outcome["line"] in expected_bad:
            assert outcome["status"] == "rejected"
            assert outcome["attempts"] == 0
            assert outcome["httpStatus"] is None
            assert outcome["error"].startswith(f"line {outcome['line']}: ")
            assert expected_bad[outcome["line"]] in outcome["error"]
        else:
            assert outcome["status"] == "updated", outcome
            assert (outcome["httpStatus"], outcome["attempts"], outcome["error"]) == (200, 1, None)
    for n in range(30):
        assert sandbox.contacts[f"good{n:04d}"]["firstName"] == f"First{n}"
    assert sandbox.stats()["requests"] == 30
    assert "updated" in ran.stdout
    assert "rejected" in ran.stdout
    assert str(out) in ran.stdout
    # The summary names the first problems by line, field and reason, where the rest are, and
    # the command to run next, which works as printed.
    first_bad = sorted(expected_bad)[:5]
    assert (
        f"{len(BAD_LINES)} of {len(lines)} records were not updated; the first 5 of this run:"
        in ran.stdout
    )
    for line in first_bad:
        assert f"  line {line} (rejected): " in ran.stdout
    assert expected_bad[first_bad[0]] in ran.stdout
    jq = ran.stdout.split("every one of them, from the outcomes:\n", 1)[1].splitlines()[0]
    assert jq.strip().startswith("jq ")
    assert jq.strip().endswith(f" {out}")
    next_command = ran.stdout.split("then:\n", 1)[1].splitlines()[0].strip()
    assert next_command.endswith(
        f"update {data} --out {out} --resume --base-url {sandbox.base_url} --rate {FAST}"
    )
    again = await run_command(next_command)
    # The bad lines unchanged: skipped, none sent; the whole job still has them, so exit 1.
    assert again.status == 1, again.stderr
    assert "this run  whole job" in again.stdout
    assert f"{len(BAD_LINES)} of {len(lines)} records were not updated\n" in again.stdout
    assert sandbox.stats()["requests"] == 30
    assert f"skipped {len(lines)} records" in again.stdout
    assert_no_token(ran, out)


async def test_csv_end_to_end(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    csv_text = (
        "\ufeffcontactId,firstName,email,tags,dndSettings.SMS.status,customFields.tier,country\n"
        'csv0001,Ada,ada@example.com,"vip, newsletter",active,gold,GB\n'
        "csv0002,,grace@example.com,,,,\n"
        "csv0003,Alan,,trial,inactive,,XX\n"
    )
    data = tmp_path / "in.csv"
    data.write_text(csv_text, encoding="utf-8")
    out = tmp_path / "out.jsonl"

    ran = await run_cli(
        "update", str(data), "--out", str(out), "--base-url", sandbox.base_url, "--rate", FAST
    )

    assert ran.status == 1, ran.stderr
    by_line = {o["line"]: o for o in journal_lines(out)}
    assert by_line[2]["status"] == by_line[3]["status"] == "updated"
    assert by_line[4]["status"] == "rejected"
    assert "line 4:" in by_line[4]["error"]
    assert "$.country" in by_line[4]["error"]
    ada = sandbox.contacts["csv0001"]
    assert ada["firstName"] == "Ada"
    assert ada["tags"] == ["vip", "newsletter"]
    assert ada["country"] == "GB"
    assert ada["dndSettings"]["SMS"]["status"] == "active"
    # An empty cell leaves the field unchanged: only the email was sent for csv0002.
    assert sandbox.history["csv0002"] == [{"email": "grace@example.com"}]
    assert "csv0003" not in sandbox.contacts
    assert_no_token(ran, out)


async def test_all_updated_exits_0_and_stdin_input(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    out = tmp_path / "out.jsonl"
    data = "".join(json.dumps(good(n)) + "\n" for n in range(5)).encode()

    ran = await run_cli(
        "update", "-", "--out", str(out), "--base-url", sandbox.base_url, "--rate", FAST, data=data
    )

    assert ran.status == 0, ran.stderr
    assert [o["status"] for o in journal_lines(out)] == ["updated"] * 5
    assert "Traceback" not in ran.stderr
    assert_no_token(ran, out)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no token", "GROWTHHUB_TOKEN"),
        ("unreadable input", "cannot read input"),
        ("journal exists", "--resume"),
        ("bad rate", "--rate"),
        ("insecure base url", "https"),
        ("unknown input kind", "in.xlsx"),
        ("outcomes are the input", "is the input itself"),
        ("concurrency too high", "--concurrency"),
    ],
)
async def test_fatal_errors_exit_2_with_one_clear_line(
    start_sandbox: StartSandbox, tmp_path: Path, case: str, needle: str
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", [good(1)])
    out = tmp_path / "out.jsonl"
    args = ["update", str(data), "--out", str(out), "--base-url", sandbox.base_url]
    token: str | None = SECRET_TOKEN
    if case == "no token":
        token = None
    elif case == "unreadable input":
        args[1] = str(tmp_path / "missing.jsonl")
    elif case == "journal exists":
        out.write_text('{"line":1}\n')
    elif case == "bad rate":
        args += ["--rate", "fast please"]
    elif case == "insecure base url":
        args[-1] = "http://example.com"
    elif case == "unknown input kind":
        args[1] = str(tmp_path / "in.xlsx")
        (tmp_path / "in.xlsx").write_text("x\n")
    elif case == "outcomes are the input":
        # Under another name: each outcome appended would be read back as a record, for ever.
        (tmp_path / "link.jsonl").symlink_to(data)
        args[3:4] = [str(tmp_path / "link.jsonl"), "--resume"]
    elif case == "concurrency too high":
        args += ["--concurrency", "100000"]

    ran = await run_cli(*args, token=token)

    assert ran.status == 2
    assert needle in ran.stderr
    assert "Traceback" not in ran.stderr
    assert ran.stderr.strip().splitlines()[-1].startswith("growthhub-async update: error:")
    assert sandbox.stats()["requests"] == 0
    if case == "journal exists":
        assert out.read_text() == '{"line":1}\n'  # never overwritten
    if case == "outcomes are the input":
        assert data.read_text().count("\n") == 1  # nothing appended to it
    assert_no_token(ran, out)


async def test_dry_run_counts_sends_nothing_needs_no_token(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(
        tmp_path / "in.jsonl", [json.dumps(good(n)) for n in range(12)] + [BAD_LINES[4][0]]
    )
    out = tmp_path / "out.jsonl"
    args = ["update", str(data), "--out", str(out), "--base-url", sandbox.base_url]

    ran = await run_cli(*args, "--dry-run", "--rate", "4/1s", token=None)

    assert ran.status == 1
    assert "valid (would be sent)       12" in ran.stdout
    assert "rejected                     1" in ran.stdout
    assert "3.0s for 12 requests" in ran.stdout  # 12 records at 4 per second
    assert "unknown field `gender`" in ran.stderr
    assert sandbox.stats()["requests"] == 0
    assert not out.exists()

    write_jsonl(data, [good(n) for n in range(3)])
    ran = await run_cli(*args, "--dry-run", token=None)
    assert ran.status == 0
    assert sandbox.stats()["requests"] == 0


async def test_resume_skips_final_outcomes_and_sends_the_rest(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(1, 7)])
    out = tmp_path / "out.jsonl"
    earlier = [
        {"line": 1, "contactId": "good0001", "status": "updated"},
        {"line": 2, "contactId": "good0002", "status": "not_found"},
        {"line": 3, "contactId": "good0003", "status": "failed"},
        {"line": 4, "contactId": "good0004", "status": "unauthorized"},
        # line 5 never finished; line 6 is final, but for another contact: the input changed
        {"line": 6, "contactId": "someoneElse", "status": "updated"},
    ]
    with data.open("rb") as f:
        keys = {item.line: record_hash(item).hex() for item in read_jsonl(f)}
    keys[6] = "0" * 32  # what the earlier run sent on line 6 was another record
    out.write_text(
        "".join(
            json.dumps(
                {
                    **o,
                    "httpStatus": None,
                    "attempts": 1,
                    "error": None,
                    "recordHash": keys[o["line"]],
                }
            )
            + "\n"
            for o in earlier
        )
        + '{"line": 5, "contactI'  # torn by a kill
    )

    ran = await run_cli(
        "update",
        str(data),
        "--out",
        str(out),
        "--resume",
        "--base-url",
        sandbox.base_url,
        "--rate",
        FAST,
    )

    # This run updated everything it sent, but the whole job still holds line 2's not_found.
    assert ran.status == 1, ran.stderr
    assert sorted(sandbox.stats()["attempts"]) == ["good0003", "good0004", "good0005", "good0006"]
    assert "  status     this run  whole job\n" in ran.stdout
    assert "  updated           4          5\n" in ran.stdout
    assert "  not_found         0          1\n" in ran.stdout
    assert "  total             4          6\n" in ran.stdout
    assert "1 of 6 records were not updated\n" in ran.stdout
    journal = journal_lines(out)
    assert out.read_bytes().endswith(b"\n")
    last = {o["line"]: o for o in journal}
    assert all(last[n]["status"] in FINAL_STATUSES for n in range(1, 7))
    assert "skipped 2 records" in ran.stdout
    assert "torn" in ran.stderr
    assert "1 records changed since the earlier run" in ran.stderr


async def test_sigterm_finishes_in_flight_and_prints_the_resume_command(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox, faults=Faults(latency=0.05))
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(150)])
    out = tmp_path / "out.jsonl"
    args = update_args(data, out, sandbox.base_url, rate="50/1s", concurrency=4)
    proc = await start_cli(*args)
    await wait_for_lines(out, 10, proc)

    sent_before = sandbox.stats()["requests"]
    proc.send_signal(signal.SIGTERM)
    ran = await finish(proc, limit=15)

    assert ran.status == 1
    assert "SIGTERM" in ran.stderr
    assert "to resume, run:" in ran.stderr
    resume_line = ran.stderr.split("to resume, run:\n", 1)[1].splitlines()[0].strip()
    assert " update " in resume_line
    assert "--resume" in resume_line
    assert f"--out {out}" in resume_line
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    journal = journal_lines(out)
    assert 10 <= len(journal) < 150
    # The requests on the wire finished normally: none was cut off. No new request went after
    # the signal (at most the 4 in flight, and one more that started as it was sent); records
    # read ahead but never sent end "cancelled", unsent, for the resumed run to send.
    updated = [o for o in journal if o["status"] == "updated"]
    assert len(updated) == sandbox.stats()["requests"]
    assert sandbox.stats()["requests"] - sent_before <= 5
    for o in journal:
        if o["status"] != "updated":
            assert (o["status"], o["error"], o["attempts"]) == ("failed", "cancelled", 0)
    assert_no_token(ran, out)

    ran = await run_command(resume_line, limit=30)  # as printed, whatever runs the program
    assert ran.status == 0, ran.stderr
    assert {o["line"] for o in journal_lines(out)} == set(range(1, 151))
    assert f"skipped {len(updated)} records" in ran.stdout


async def test_progress_bar_and_line_in_process(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(60)])

    for mode, every in (("bar", 5.0), ("line", 0.1)):
        out, err = io.StringIO(), io.StringIO()
        settings = JobSettings(
            input=str(data),
            out=str(tmp_path / f"{mode}.jsonl"),
            base_url=sandbox.base_url,
            rate=Rate(200, 1.0),
            progress=mode,  # type: ignore[arg-type]
            progress_every=every,
            handle_signals=False,
        )
        result = await run_job(settings, token=SECRET_TOKEN, stdout=out, stderr=err)
        assert result.exit_status == 0
        assert result.summary.records == 60
        if mode == "bar":
            assert "\r\x1b[K[" in err.getvalue()
            assert "60/60 100.0%" in err.getvalue()
        else:
            assert "progress: " in err.getvalue()
            assert "/60 records" in err.getvalue()
            assert "\r" not in err.getvalue()
        assert "outcomes: " in out.getvalue()
        assert "requests that 200/1s allows in" in out.getvalue()


async def test_token_is_not_accepted_from_argv(tmp_path: Path) -> None:
    ran = await run_cli("update", "x.jsonl", "--out", "o.jsonl", "--token", "abc", token=None)
    assert ran.status == 2
    assert "unrecognized arguments: --token" in ran.stderr


async def test_help_lists_the_documented_options() -> None:
    ran = await run_cli("update", "--help")
    assert ran.status == 0
    for option in (
        "--out",
        "--base-url",
        "--rate",
        "--concurrency",
        "--resume",
        "--dry-run",
        "--no-progress",
        "--value-key",
        "--state",
        "--changed-fields-only",
        "--full",
        "GROWTHHUB_TOKEN",
    ):
        assert option in ran.stdout


def test_update_defaults() -> None:
    args = build_parser().parse_args(["update", "in.jsonl", "--out", "o.jsonl"])
    assert str(args.rate) == "100/10s"
    assert args.concurrency == 10
    assert args.base_url == "https://services.leadconnectorhq.com"
    assert args.value_key == "field_value"


async def test_version_and_bare_command() -> None:
    ran = await run_cli("--version", token=None)
    assert ran.status == 0
    version, loop = ran.stdout.strip().splitlines()
    assert version == f"growthhub-async {__version__}"
    assert loop.startswith("event loop: ")  # tests/test_eventloop.py: which one
    bare = await run_cli(token=None)
    assert bare.status == 2
    for command in ("update", "sandbox", "demo"):
        assert command in bare.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["update", "x.jsonl", "--out", "o.jsonl"],
        ["update", "--out=-o.jsonl", "--base-url", "http://127.0.0.1:9", "--", "-in.jsonl"],
        ["update", "-", "--out", "o.jsonl", "--oauth=-oauth.json"],
        ["update", "x.csv", "--out", "o.jsonl", "--state=-sync.db", "--changed-fields-only"],
    ],
)
def test_the_resume_command_parses_back_to_the_same_run(argv: list[str]) -> None:
    """File names that start with '-' (red team B4) survive the printed command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    words = shlex.split(resume_command(args))
    again = parser.parse_args(words[words.index("update") :])
    assert (again.input, again.out, again.base_url) == (args.input, args.out, args.base_url)
    assert again.oauth == args.oauth
    assert (again.state, again.changed_fields_only, again.full) == (
        args.state,
        args.changed_fields_only,
        args.full,
    )
    assert again.resume


async def test_a_resume_over_an_input_without_the_journals_records_is_not_exit_0(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """Red team B5: the journal's records were not in this input (an empty stdin)."""
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(3)])
    out = tmp_path / "out.jsonl"
    first = await run_cli(*update_args(data, out, sandbox.base_url, rate=FAST))
    assert first.status == 0, first.stderr
    ran = await run_cli(
        "update", "-", "--out", str(out), "--resume", "--base-url", sandbox.base_url, data=b""
    )
    assert ran.status == 1, (ran.stdout, ran.stderr)
    assert "3 records final in" in ran.stderr
    assert "were not in this input" in ran.stderr


def test_a_closed_standard_input_exits_2_naming_it(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "growthhub_async", "update", "-", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=cli_env(SECRET_TOKEN),
        preexec_fn=lambda: os.close(0),
        timeout=30,
        check=False,
    )
    assert ran.returncode == 2, ran.stderr
    assert "standard input is closed" in ran.stderr
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    ("out", "shown"), [("o.jsonl", " o.jsonl"), ("-o.jsonl", " ./-o.jsonl"), ("a b", " 'a b'")]
)
def test_the_jq_line_names_the_outcomes_so_jq_reads_them(out: str, shown: str) -> None:
    # jq would take "-o.jsonl" for an option and print its usage instead of the records.
    lines = _next_steps(JobSettings(input="in.jsonl", out=out), Counter({Status.FAILED: 1}), [])
    [jq] = [line for line in lines if line.strip().startswith("jq ")]
    assert jq.endswith(shown)


class _Broken(io.StringIO):
    """A terminal that fails like a full disk or a closed pipe, from the first write on."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


async def test_a_broken_stdout_or_stderr_changes_neither_the_run_nor_its_exit_status(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(40)])
    for name, out, err in (("stdout", _Broken(), io.StringIO()), ("stderr", None, _Broken())):
        settings = JobSettings(
            input=str(data),
            out=str(tmp_path / f"{name}.jsonl"),
            base_url=sandbox.base_url,
            rate=Rate(100, 1.0),
            progress="line",
            progress_every=0.05,  # progress lines while records are on their way
            handle_signals=False,
        )
        result = await run_job(
            settings, token=SECRET_TOKEN, stdout=out or io.StringIO(), stderr=err
        )
        assert result.exit_status == 0, name
        assert [o["status"] for o in journal_lines(tmp_path / f"{name}.jsonl")] == ["updated"] * 40


def test_the_command_exits_0_with_stdout_and_stderr_on_a_full_disk(tmp_path: Path) -> None:
    # Python flushes stdout at exit; a failure there would make the exit status 120.
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(5)])
    with open("/dev/full", "w") as full:
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "growthhub_async",
                "update",
                str(data),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--dry-run",
            ],
            stdout=full,
            stderr=full,
            env=cli_env(None),
            timeout=30,
            check=False,
        )
    assert ran.returncode == 0


async def test_outcomes_that_cannot_be_read_back_are_warned_of(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", [good(n) for n in range(3)])
    ran = await run_cli(*update_args(data, Path(os.devnull), sandbox.base_url, rate="100/1s"))
    assert ran.status == 0, ran.stderr
    assert "which is not a regular file" in ran.stderr
    assert "cannot be resumed" in ran.stderr
