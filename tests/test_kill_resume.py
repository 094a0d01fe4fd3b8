"""Kill and resume: SIGKILL mid-run loses nothing, and only records in flight are sent twice.

The real command runs in a subprocess against an in-process sandbox that counts every PUT per
contact. After the kill (once some outcomes are in the journal), ``--resume`` finishes the job.
"""

from __future__ import annotations

import signal
from pathlib import Path

from cli_helpers import (
    SECRET_TOKEN,
    finish,
    journal_lines,
    run_cli,
    start_cli,
    wait_for_lines,
    write_jsonl,
)
from conftest import StartSandbox, sandbox_config

from growthhub_async.outcomes import FINAL_STATUSES
from growthhub_async.sandbox import Faults

RECORDS = 300
CONCURRENCY = 5


async def test_sigkill_then_resume(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    sandbox = await start_sandbox(
        sandbox_config(
            tokens=frozenset({SECRET_TOKEN}),
            rate_limit=1000,
            rate_window=1.0,
            # Latency keeps several requests in flight at any moment, so the kill cuts some.
            faults=Faults(latency=0.03, jitter=0.02),
        )
    )
    records = [
        {"contactId": f"kill{n:05d}", "firstName": f"Name{n}", "tags": [f"t{n % 3}"]}
        for n in range(1, RECORDS + 1)
    ]
    data = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = [
        "update",
        str(data),
        "--out",
        str(out),
        "--base-url",
        sandbox.base_url,
        "--rate",
        "150/1s",
        "--concurrency",
        str(CONCURRENCY),
        "--no-progress",
    ]

    proc = await start_cli(*args)
    await wait_for_lines(out, 60, proc)
    proc.send_signal(signal.SIGKILL)
    killed = await finish(proc, limit=10)
    assert killed.status == -signal.SIGKILL

    before = journal_lines(out)  # complete lines only: a torn last line is possible
    assert 60 <= len(before) < RECORDS
    journaled_before = {o["contactId"] for o in before}

    resumed = await run_cli(*args, "--resume", limit=30)

    assert resumed.status == 0, resumed.stderr
    assert f"skipped {len(before)} records" in resumed.stdout
    last: dict[int, dict[str, object]] = {}
    for outcome in journal_lines(out):
        last[outcome["line"]] = outcome
    assert sorted(last) == list(range(1, RECORDS + 1))
    assert all(o["status"] in FINAL_STATUSES for o in last.values())
    assert all(o["status"] == "updated" for o in last.values())

    for record in records:
        stored = sandbox.contacts[str(record["contactId"])]
        assert stored["firstName"] == record["firstName"]
        assert stored["tags"] == record["tags"]

    attempts = sandbox.stats()["attempts"]
    assert len(attempts) == RECORDS
    twice = {cid for cid, n in attempts.items() if n > 1}
    # Sent twice only if the kill came while it was in flight: no outcome before the kill...
    assert not twice & journaled_before
    # ...and at most one per worker.
    assert len(twice) <= CONCURRENCY
    assert all(n <= 2 for n in attempts.values())
    for ran in (killed, resumed):
        assert SECRET_TOKEN not in ran.stdout
        assert SECRET_TOKEN not in ran.stderr
    assert SECRET_TOKEN.encode() not in out.read_bytes()
