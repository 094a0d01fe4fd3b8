"""Issue 12, items 8-10 and 12: the journal under a second run, a deletion, a full disk, edits.

Each test runs the real command in subprocesses against a small server written here (aiohttp.web
on loopback) that records every PUT and answers only when the test lets it.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_helpers import finish, journal_lines, run_cli, start_cli, wait_for_lines, write_jsonl
from recorder_server import Recorder, serve_recorder

from growthhub_async.errors import JournalError
from growthhub_async.journal import Journal
from growthhub_async.outcomes import Outcome, Status


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with serve_recorder() as rec:
        yield rec


def args(data: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "update",
        str(data),
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--rate",
        "1000/1s",
        "--no-progress",
        *extra,
    ]


def records(count: int, name: str = "N") -> list[dict[str, object]]:
    return [{"contactId": f"c{n:04d}", "firstName": f"{name}{n}"} for n in range(1, count + 1)]


# -- item 8: one run per journal ----------------------------------------------------------------


async def test_a_second_run_on_the_same_journal_is_refused_naming_the_first(
    recorder: Recorder, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", records(20))
    out = tmp_path / "out.jsonl"
    recorder.gate.clear()  # the first run's requests wait: it holds the journal meanwhile
    first = await start_cli(*args(data, out, recorder.base_url, "--concurrency", "1"))
    await asyncio.wait_for(recorder.arrived.wait(), 15)

    # A plain second run and a --resume, both while the first one runs: refused at once.
    for extra in ((), ("--resume",)):
        second = await run_cli(*args(data, out, recorder.base_url, *extra), limit=15)
        assert second.status == 2, second.stderr
        assert "is in use by another run" in second.stderr
        assert f"process {first.pid}" in second.stderr
        assert "growthhub_async update" in second.stderr  # the holder's command line
    assert len(recorder.puts) == 1  # the refused runs sent nothing

    recorder.gate.set()
    ran = await finish(first, limit=30)
    assert ran.status == 0, ran.stderr
    assert sorted(cid for cid, _ in recorder.puts) == [f"c{n:04d}" for n in range(1, 21)]
    assert [o["line"] for o in journal_lines(out)] == list(range(1, 21))
    # The lock dies with its holder: a later --resume runs (and has nothing left to do).
    again = await run_cli(*args(data, out, recorder.base_url, "--resume"), limit=15)
    assert again.status == 0, again.stderr
    assert "skipped 20 records" in again.stdout
    assert len(recorder.puts) == 20


def test_a_journal_open_in_this_process_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with Journal(path), pytest.raises(JournalError, match=f"process {os.getpid()}"):
        Journal(path, resume=True)
    with Journal(path, resume=True):  # released on close
        pass


def test_the_journal_is_created_private(tmp_path: Path) -> None:
    """Issue 18 item 3: errors may quote the server; the file is readable by its owner only."""
    path = tmp_path / "out.jsonl"
    old = os.umask(0)
    try:
        Journal(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("resume", [False, True])
def test_a_journal_that_was_already_there_is_made_private(tmp_path: Path, resume: bool) -> None:
    """An empty file made by `touch`, or an older journal resumed, may be 0644: narrowed."""
    path = tmp_path / "out.jsonl"
    path.touch()
    path.chmod(0o644)
    Journal(path, resume=resume).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- item 9: a journal deleted or truncated mid-run ----------------------------------------------


def line(n: int) -> Outcome:
    return Outcome(line=n, contact_id=f"c{n}", status=Status.UPDATED, http_status=200, attempts=1)


@pytest.mark.parametrize(
    "change", ["deleted", "truncated", "replaced", "emptied", "copied over", "same size"]
)
def test_the_journal_notices_its_file_changing_under_it(tmp_path: Path, change: str) -> None:
    path = tmp_path / "out.jsonl"
    journal = Journal(path, check_every=0)
    journal.write(line(1))
    journal.write(line(2))
    if change == "deleted":
        path.unlink()
    elif change == "truncated":
        os.truncate(path, path.stat().st_size - 5)
    elif change == "replaced":
        (tmp_path / "other").write_bytes(path.read_bytes())
        os.replace(tmp_path / "other", path)
    elif change == "copied over":
        # `cp other.jsonl out.jsonl`: the same inode, a longer file (red team B6).
        with path.open("r+b") as f:
            f.write(b'{"line":1,"contactId":"other"}\n' * 50)
    elif change == "same size":
        data = path.read_bytes()
        with path.open("r+b") as f:
            f.write(data.replace(b'"c2"', b'"x2"'))
    else:
        path.write_bytes(b"")  # a shell's `> out.jsonl`
    expected = {
        "emptied": "truncated",
        "copied over": "overwritten",
        "same size": "overwritten",
    }.get(change, change)
    # Noticed at the end (check) and by the next line, whichever comes first.
    with pytest.raises(JournalError, match=f"was {expected}"):
        journal.check()
    with pytest.raises(JournalError, match=f"was {expected}.*sends those records again"):
        journal.write(line(3))
    journal.close()


async def test_a_journal_deleted_mid_run_stops_the_run_with_exit_2(
    recorder: Recorder, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", records(200))
    out = tmp_path / "out.jsonl"
    # Slow enough that the run is still going when the file goes.
    run = args(data, out, recorder.base_url, "--concurrency", "1")
    run[run.index("--rate") + 1] = "40/1s"
    proc = await start_cli(*run)
    await wait_for_lines(out, 5, proc)
    out.unlink()
    ran = await finish(proc, limit=20)
    assert ran.status == 2, (ran.stdout, ran.stderr)
    assert "was deleted while this run was writing to it" in ran.stderr
    assert "to resume, run:" in ran.stderr
    assert len(recorder.puts) < 100  # it stopped; it did not go on sending into the void
    assert not out.exists()


async def test_a_journal_deleted_while_every_answer_waits_is_noticed_in_time(
    recorder: Recorder, tmp_path: Path
) -> None:
    """No outcome is written while the server holds every answer (red team B7): the run
    checks the file on its own clock, not only when it writes."""
    data = write_jsonl(tmp_path / "in.jsonl", records(3))
    out = tmp_path / "out.jsonl"
    recorder.gate.clear()  # no answer until the test says so
    proc = await start_cli(*args(data, out, recorder.base_url, "--concurrency", "1"))
    for _ in range(500):
        if recorder.puts and out.exists():
            break
        await asyncio.sleep(0.01)
    out.unlink()
    try:
        ran = await finish(proc, limit=5)  # the answer never comes: only the clock can tell
    finally:
        recorder.gate.set()
    assert ran.status == 2, (ran.stdout, ran.stderr)
    assert "was deleted while this run was writing to it" in ran.stderr
    assert "to resume, run:" in ran.stderr
    assert len(recorder.puts) == 1


async def test_a_journal_emptied_while_the_last_record_is_in_flight_exits_2(
    recorder: Recorder, tmp_path: Path
) -> None:
    """The end of the run checks the file too: no exit 0 with a summary pointing at nothing."""
    data = write_jsonl(tmp_path / "in.jsonl", records(2))
    out = tmp_path / "out.jsonl"
    recorder.gate.clear()
    recorder.free = 1  # the first record is answered, the second waits for the gate
    proc = await start_cli(*args(data, out, recorder.base_url, "--concurrency", "1"))
    await wait_for_lines(out, 1, proc)
    for _ in range(500):  # until the second request is at the server
        if len(recorder.puts) == 2:
            break
        await asyncio.sleep(0.01)
    out.write_bytes(b"")  # a shell's `> out.jsonl`
    recorder.gate.set()
    ran = await finish(proc, limit=20)
    assert ran.status == 2, (ran.stdout, ran.stderr)
    assert "was truncated" in ran.stderr
    assert "to resume, run:" in ran.stderr


# -- item 10: --resume sends what changed ---------------------------------------------------------


async def test_resume_sends_records_edited_or_fixed_since(
    recorder: Recorder, tmp_path: Path
) -> None:
    first = [
        {"contactId": "keep", "firstName": "Same"},
        {"contactId": "edit", "firstName": "Old"},
        {"contactId": "fixd", "emial": "f@example.com"},  # a typo: rejected, never sent
    ]
    data = write_jsonl(tmp_path / "in.jsonl", first)
    out = tmp_path / "out.jsonl"
    ran = await run_cli(*args(data, out, recorder.base_url), limit=20)
    assert ran.status == 1, ran.stderr
    assert [cid for cid, _ in recorder.puts] == ["keep", "edit"]
    assert {o["line"]: o["status"] for o in journal_lines(out)}[3] == "rejected"

    # The user edits a value and fixes the rejected record, then resumes.
    second = [
        {"contactId": "keep", "firstName": "Same"},
        {"contactId": "edit", "firstName": "New"},
        {"contactId": "fixd", "email": "fixed@example.com"},
    ]
    write_jsonl(data, second)
    recorder.puts.clear()
    ran = await run_cli(*args(data, out, recorder.base_url, "--resume"), limit=20)
    assert ran.status == 0, ran.stderr
    assert sorted(recorder.puts, key=lambda p: p[0]) == [
        ("edit", {"firstName": "New"}),
        ("fixd", {"email": "fixed@example.com"}),
    ]
    assert "skipped 1 records" in ran.stdout
    assert "2 records changed since the earlier run" in ran.stderr
    last = {o["line"]: o["status"] for o in journal_lines(out)}
    assert last == {1: "updated", 2: "updated", 3: "updated"}

    # Nothing changed since: a third resume sends nothing.
    recorder.puts.clear()
    ran = await run_cli(*args(data, out, recorder.base_url, "--resume"), limit=20)
    assert ran.status == 0, ran.stderr
    assert recorder.puts == []
    assert "skipped 3 records" in ran.stdout


async def test_resume_keeps_a_contacts_records_in_input_order(
    recorder: Recorder, tmp_path: Path
) -> None:
    # Line 1 of a contact is rejected, line 2 of it updated. The user fixes line 1 and
    # resumes: sending line 1 alone would leave the contact with line 1's older value, so
    # line 2 goes again after it. Another contact's later record is still skipped.
    first = [
        {"contactId": "same", "emial": "a@example.com"},  # a typo: rejected, never sent
        {"contactId": "same", "firstName": "Newest"},
        {"contactId": "other", "firstName": "Kept"},
        {"contactId": "same", "lastName": "Last"},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", first)
    out = tmp_path / "out.jsonl"
    ran = await run_cli(*args(data, out, recorder.base_url), limit=20)
    assert ran.status == 1, ran.stderr
    write_jsonl(data, [{"contactId": "same", "firstName": "Oldest"}, *first[1:]])
    recorder.puts.clear()
    ran = await run_cli(*args(data, out, recorder.base_url, "--resume"), limit=20)
    assert ran.status == 0, ran.stderr
    assert recorder.puts == [
        ("same", {"firstName": "Oldest"}),
        ("same", {"firstName": "Newest"}),
        ("same", {"lastName": "Last"}),
    ]
    assert "skipped 1 records" in ran.stdout
    assert "note: 2 records updated earlier were sent again after an earlier record" in ran.stderr


# -- item 12: a full disk ------------------------------------------------------------------------


async def test_a_full_disk_exits_2_and_prints_the_resume_command(
    recorder: Recorder, tmp_path: Path
) -> None:
    """/dev/full answers every write with ENOSPC: the kernel's own "no space left on device"."""
    data = write_jsonl(tmp_path / "in.jsonl", records(30))
    ran = await run_cli(*args(data, Path("/dev/full"), recorder.base_url), limit=20)
    assert ran.status == 2, (ran.stdout, ran.stderr)
    assert "cannot write outcomes '/dev/full': No space left on device" in ran.stderr
    assert "to resume, run:" in ran.stderr
    assert " update " in ran.stderr.split("to resume, run:")[1]
    assert "--resume" in ran.stderr.split("to resume, run:")[1]
    assert recorder.puts  # the failure came mid-run, after records were sent
    assert len(recorder.puts) < 30  # and stopped it
