"""Incremental sync (issue 14): ``--state FILE`` and ``GrowthHubClient(state=...)``.

The real command runs in a subprocess against an in-process sandbox that counts every PUT per
contact (``stats()["attempts"]``) and keeps every body it applied (``history``): "nothing sent"
is what the server saw, not what the client says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    SECRET_TOKEN,
    Ran,
    finish,
    journal_lines,
    run_cli,
    start_cli,
    update_args,
    wait_for_lines,
    write_jsonl,
)
from conftest import TEST_TOKEN, StartSandbox, sandbox_config

from growthhub_async import GrowthHubClient, Outcome, Status, UpdateContact
from growthhub_async.errors import StateError
from growthhub_async.incremental import StateRun, canonical_body, changed_fields, digest_of
from growthhub_async.models import CustomField, UpdateContactCodec
from growthhub_async.sandbox import Faults, Sandbox
from growthhub_async.sources import Record
from growthhub_async.state import SyncState

FAST = "1000/1s"


async def fast_sandbox(start_sandbox: StartSandbox, **faults: Any) -> Sandbox:
    return await start_sandbox(
        sandbox_config(
            tokens=frozenset({SECRET_TOKEN}),
            rate_limit=10_000,
            rate_window=1.0,
            faults=Faults(**faults),
        )
    )


def people(count: int, prefix: str = "st") -> list[dict[str, Any]]:
    return [
        {
            "contactId": f"{prefix}{n:04d}",
            "firstName": f"Name{n}",
            "email": f"p{n}@example.com",
            "tags": ["vip", f"t{n % 3}"],
            "customFields": [
                {"id": "cfA", "field_value": f"a{n}"},
                {"id": "cfB", "field_value": n},
            ],
        }
        for n in range(1, count + 1)
    ]


async def sync(
    sandbox: Sandbox, data: Path, out: Path, state: Path, *extra: str, limit: float = 30.0
) -> Ran:
    args = update_args(data, out, sandbox.base_url, rate=FAST)
    return await run_cli(*args, "--state", str(state), *extra, limit=limit)


def attempts(sandbox: Sandbox) -> int:
    return sum(sandbox.stats()["attempts"].values())


def row(text: str, label: str) -> int:
    """The count on the line of a dry run's or summary's table that starts with ``label``."""
    (line,) = [x for x in text.splitlines() if x.strip().startswith(label)]
    return int(line.split()[-1])


def state_rows(path: Path) -> dict[str, bytes]:
    """contactId -> the canonical body the state holds (read as any SQLite user would)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT contact_id, body FROM applied"))


# -- the canonical body ----------------------------------------------------------------------


def test_canonical_body_ignores_key_order_custom_field_order_and_value_key() -> None:
    codec = UpdateContactCodec("fieldValue")
    a = codec.decode(
        b'{"tags":["x","y"],"firstName":"Ada","customFields":'
        b'[{"id":"b","fieldValue":2},{"id":"a","fieldValue":"1"}]}'
    )
    b = UpdateContact(
        first_name="Ada",
        custom_fields=[CustomField(id="a", value="1"), CustomField(id="b", value=2)],
        tags=["x", "y"],
    )
    assert canonical_body(a) == canonical_body(b)
    # A changed value, an added field, a cleared field, a tag list in another order: changes.
    for other in (
        UpdateContact(first_name="Ada ", custom_fields=b.custom_fields, tags=["x", "y"]),
        UpdateContact(first_name="Ada", custom_fields=b.custom_fields, tags=["x", "y"], city="B"),
        UpdateContact(first_name=None, custom_fields=b.custom_fields, tags=["x", "y"]),
        UpdateContact(first_name="Ada", custom_fields=b.custom_fields, tags=["y", "x"]),
        UpdateContact(first_name="Ada", tags=["x", "y"]),
    ):
        assert digest_of(canonical_body(other)) != digest_of(canonical_body(b)), other


def test_changed_fields_compares_tags_whole_and_custom_fields_by_id() -> None:
    before = UpdateContact(
        first_name="Ada",
        email="a@example.com",
        tags=["a", "b"],
        custom_fields=[CustomField(id="x", value="1"), CustomField(id="y", value="2")],
    )
    after = UpdateContact(
        first_name="Ada",
        email=None,
        tags=["a", "b", "c"],
        custom_fields=[CustomField(id="y", value="2"), CustomField(id="x", value="9")],
        city="Paris",
    )
    assert changed_fields(before, after) == UpdateContact(
        email=None,
        tags=["a", "b", "c"],
        custom_fields=[CustomField(id="x", value="9")],
        city="Paris",
    )
    assert changed_fields(before, before) == UpdateContact()


# -- the command: repeated runs, edits, formats ----------------------------------------------


async def test_rerun_sends_nothing_and_says_unchanged(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(40))
    state = tmp_path / "sync.db"

    first = await sync(sandbox, data, tmp_path / "o1.jsonl", state)
    assert first.status == 0, first.stderr
    assert attempts(sandbox) == 40
    assert len(state_rows(state)) == 40

    second = await sync(sandbox, data, tmp_path / "o2.jsonl", state)

    assert second.status == 0, second.stderr
    assert attempts(sandbox) == 40  # nothing more reached the server
    lines = journal_lines(tmp_path / "o2.jsonl")
    assert len(lines) == 40
    assert {o["status"] for o in lines} == {"unchanged"}
    assert all(o["attempts"] == 0 and o["httpStatus"] is None for o in lines)
    assert row(second.stdout, "unchanged") == 40  # its own row of the summary
    assert "  0 requests in" in second.stdout
    for ran in (first, second):
        assert SECRET_TOKEN not in ran.stdout + ran.stderr


async def test_edits_are_sent_reordered_keys_and_whitespace_are_not(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    records = people(6)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0

    edited = [dict(r) for r in records]
    edited[0]["firstName"] = "Changed"  # a changed value
    edited[1]["city"] = "Lyon"  # an added field
    edited[2]["email"] = None  # a cleared field
    edited[3] = dict(reversed(list(records[3].items())))  # keys in another order
    edited[3]["customFields"] = list(reversed(records[3]["customFields"]))
    lines = [json.dumps(r) for r in edited]
    lines[4] = json.dumps(records[4], indent=None, separators=(" ,  ", " :  "))  # whitespace
    write_jsonl(data, lines)

    ran = await sync(sandbox, data, tmp_path / "o2.jsonl", state)

    assert ran.status == 0, ran.stderr
    by_id = {o["contactId"]: o["status"] for o in journal_lines(tmp_path / "o2.jsonl")}
    assert by_id == {
        "st0001": "updated",
        "st0002": "updated",
        "st0003": "updated",
        "st0004": "unchanged",
        "st0005": "unchanged",
        "st0006": "unchanged",
    }
    assert sandbox.stats()["attempts"] == {f"st{n:04d}": 2 if n <= 3 else 1 for n in range(1, 7)}
    assert sandbox.contacts["st0001"]["firstName"] == "Changed"
    assert sandbox.contacts["st0002"]["city"] == "Lyon"


async def test_csv_and_jsonl_of_the_same_data_are_the_same_bodies(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "contactId": "csvjs1",
                "firstName": "Ada",
                "email": "ada@example.com",
                "tags": ["vip", "newsletter"],
                "dndSettings": {"SMS": {"status": "active"}},
                "customFields": [{"id": "tier", "field_value": "gold"}],
                "country": "GB",
            },
            {"contactId": "csvjs2", "email": "grace@example.com"},
        ],
    )
    csv = tmp_path / "same.csv"
    csv.write_text(
        "country,customFields.tier,dndSettings.SMS.status,tags,email,firstName,contactId\n"
        'GB,gold,active,"vip, newsletter",ada@example.com,Ada,csvjs1\n'
        ",,,,grace@example.com,,csvjs2\n",
        encoding="utf-8",
    )
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0

    ran = await sync(sandbox, csv, tmp_path / "o2.jsonl", state)

    assert ran.status == 0, ran.stderr
    assert [o["status"] for o in journal_lines(tmp_path / "o2.jsonl")] == ["unchanged"] * 2
    assert attempts(sandbox) == 2


async def test_failures_are_not_remembered_and_a_failed_send_forgets(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # fail1 answers 422, fail2 404: both are sent again next time. forget1 is applied, then
    # its next body is refused (400): a record sent without a 2xx forgets its contact, so its
    # first body, sent once more, is not taken as unchanged.
    sandbox = await fast_sandbox(
        start_sandbox,
        scripts={"fail1": ["422"], "fail2": ["404"], "forget1": ["ok", "400"]},
    )
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"contactId": "fail1", "firstName": "A"},
            {"contactId": "fail2", "firstName": "B"},
            {"contactId": "forget1", "firstName": "C"},
            {"contactId": "fine1", "firstName": "D"},
            {"contactId": "bad1", "country": "XX"},  # rejected: never sent, never kept
        ],
    )
    state = tmp_path / "sync.db"
    first = await sync(sandbox, data, tmp_path / "o1.jsonl", state)
    assert first.status == 1
    assert set(state_rows(state)) == {"forget1", "fine1"}

    second = await sync(sandbox, data, tmp_path / "o2.jsonl", state)
    assert second.status == 1
    by_id = {o["contactId"]: o["status"] for o in journal_lines(tmp_path / "o2.jsonl")}
    assert by_id == {
        "fail1": "updated",
        "fail2": "updated",
        "forget1": "unchanged",
        "fine1": "unchanged",
        "bad1": "rejected",
    }

    # forget1 now gets another body, which the server refuses (400): forgotten...
    write_jsonl(data, [{"contactId": "forget1", "firstName": "Other"}])
    third = await sync(sandbox, data, tmp_path / "o3.jsonl", state)
    assert third.status == 1
    assert "forget1" not in state_rows(state)
    # ...so its first body, applied before, is sent again rather than taken as unchanged.
    write_jsonl(data, [{"contactId": "forget1", "firstName": "C"}])
    fourth = await sync(sandbox, data, tmp_path / "o4.jsonl", state)
    assert fourth.status == 0, fourth.stderr
    assert [o["status"] for o in journal_lines(tmp_path / "o4.jsonl")] == ["updated"]
    assert sandbox.stats()["attempts"]["forget1"] == 3


async def test_changed_fields_only_sends_the_difference(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    records = people(3, prefix="cf")
    data = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0

    edited = [dict(r) for r in records]
    edited[0]["tags"] = [*records[0]["tags"], "new"]
    edited[0]["customFields"] = [{"id": "cfB", "field_value": 99}, records[0]["customFields"][0]]
    edited[1]["email"] = None
    write_jsonl(data, edited)

    ran = await sync(sandbox, data, tmp_path / "o2.jsonl", state, "--changed-fields-only")

    assert ran.status == 0, ran.stderr
    assert sandbox.history["cf0001"][-1] == {
        "tags": ["vip", "t1", "new"],  # the whole list: the API replaces it
        "customFields": [{"id": "cfB", "field_value": 99}],  # only the custom field changed
    }
    assert sandbox.history["cf0002"][-1] == {"email": None}
    assert len(sandbox.history["cf0003"]) == 1
    # What is remembered is the whole record: run again, nothing is sent.
    again = await sync(sandbox, data, tmp_path / "o3.jsonl", state, "--changed-fields-only")
    assert again.status == 0
    assert {o["status"] for o in journal_lines(tmp_path / "o3.jsonl")} == {"unchanged"}


async def test_dry_run_full_and_the_state_command(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    records = people(10)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "sync.db"

    fresh = await sync(sandbox, data, tmp_path / "o0.jsonl", state, "--dry-run")
    assert fresh.status == 0
    assert row(fresh.stdout, "valid (would be sent)") == 10
    assert "does not exist yet" in fresh.stdout
    assert not state.exists()  # a dry run creates nothing

    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    records[0]["firstName"] = "Edited"
    write_jsonl(data, records)

    dry = await sync(sandbox, data, tmp_path / "o2.jsonl", state, "--dry-run")
    assert dry.status == 0, dry.stderr
    assert row(dry.stdout, "unchanged (not sent)") == 9
    assert row(dry.stdout, "valid (would be sent)") == 1
    assert "for 1 requests" in dry.stdout
    assert "daily budget: 1 requests are 0.0% of a location's 200,000 a day" in dry.stdout
    assert attempts(sandbox) == 10

    full = await sync(sandbox, data, tmp_path / "o3.jsonl", state, "--full")
    assert full.status == 0
    assert attempts(sandbox) == 20
    assert {o["status"] for o in journal_lines(tmp_path / "o3.jsonl")} == {"updated"}
    assert json.loads(state_rows(state)["st0001"])["firstName"] == "Edited"  # still recorded

    shown = await run_cli("state", str(state))
    assert shown.status == 0, shown.stderr
    assert "10 contacts in 1 locations" in shown.stdout
    assert "bytes per contact" not in shown.stdout  # 10 contacts: SQLite's fixed pages rule
    assert f"applied through {sandbox.base_url}" in shown.stdout
    assert "last sync:" in shown.stdout
    forgot = await run_cli("state", str(state), "--forget-contact", "st0002")
    assert "forgot 1 of 1 contacts" in forgot.stdout
    assert "9 contacts in 1 locations" in forgot.stdout
    cleared = await run_cli("state", str(state), "--forget-location", "")
    assert "forgot 9 contacts" in cleared.stdout
    assert state_rows(state) == {}

    usage = await run_cli(
        *update_args(data, tmp_path / "o4.jsonl", sandbox.base_url, rate=FAST), "--full"
    )
    assert usage.status == 2
    assert "--full and --changed-fields-only need --state FILE" in usage.stderr


async def test_works_with_resume(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    records = people(8)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    records[2]["firstName"] = "Edited"
    write_jsonl(data, records)
    out = tmp_path / "o2.jsonl"
    assert (await sync(sandbox, data, out, state)).status == 0

    resumed = await sync(sandbox, data, out, state, "--resume")

    assert resumed.status == 0, resumed.stderr
    assert "skipped 8 records already final" in resumed.stdout
    assert attempts(sandbox) == 9
    # The whole job's totals keep the unchanged records as their own row.
    assert [line.split() for line in resumed.stdout.splitlines() if "unchanged" in line] == [
        ["unchanged", "0", "7"]
    ]


# -- what a kill, another run or a bad file cannot do ----------------------------------------


async def test_sigkill_between_the_2xx_and_the_state_write(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """The state is written after the 2xx: a kill while writes wait loses only those writes.

    The test holds SQLite's write lock on the state (as a backup or an ``sqlite3`` shell
    would), so the run's writes wait while its records keep getting 2xx answers and journal
    lines; then the run is killed. None of those records may be in the state, and the next run
    sends exactly the records the state does not hold.
    """
    sandbox = await start_sandbox(
        sandbox_config(
            tokens=frozenset({SECRET_TOKEN}),
            rate_limit=1000,
            rate_window=1.0,
            faults=Faults(latency=0.02, jitter=0.01),
        )
    )
    records = people(200, prefix="kill")
    data = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "sync.db"
    out = tmp_path / "o1.jsonl"
    args = update_args(data, out, sandbox.base_url, rate="300/1s", concurrency=5)
    proc = await start_cli(*args, "--state", str(state))
    await wait_for_lines(out, 20, proc)
    blocker = sqlite3.connect(state, isolation_level=None, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")  # the run's writes wait from here
    try:
        held_at = len(journal_lines(out))
        await wait_for_lines(out, held_at + 40, proc)
        proc.send_signal(signal.SIGKILL)
        killed = await finish(proc, limit=10)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert killed.status == -signal.SIGKILL

    updated = {o["contactId"] for o in journal_lines(out) if o["status"] == "updated"}
    kept = set(state_rows(state))
    assert kept <= updated  # never a record the server did not confirm
    assert len(updated - kept) >= 40  # the kill did come between 2xx and state write
    for cid, body in state_rows(state).items():
        assert json.loads(body)["firstName"] == sandbox.contacts[cid]["firstName"]

    await asyncio.sleep(0.2)  # let the sandbox finish what the dead process had sent
    before = dict(sandbox.stats()["attempts"])
    again = await run_cli(
        *update_args(data, tmp_path / "o2.jsonl", sandbox.base_url, rate="1000/1s"),
        "--state",
        str(state),
        limit=60,
    )
    assert again.status == 0, again.stderr
    after = sandbox.stats()["attempts"]
    sent_again = {cid for cid, n in after.items() if n > before.get(cid, 0)}
    assert sent_again == {r["contactId"] for r in records} - kept
    assert len(state_rows(state)) == 200


async def test_a_kill_while_a_change_is_in_flight_leaves_the_contact_unknown(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """Rule 3 of incremental.py: the old body is forgotten before the new one goes out, so a
    kill mid-request cannot leave the state claiming a body the server may no longer hold: an
    input reverted to that old body is sent, not taken as unchanged."""
    sandbox = await fast_sandbox(start_sandbox, scripts={"rev1": ["ok", "slow:30"]})
    state = tmp_path / "sync.db"
    data = write_jsonl(tmp_path / "in.jsonl", [{"contactId": "rev1", "firstName": "Old"}])
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    assert set(state_rows(state)) == {"rev1"}

    write_jsonl(data, [{"contactId": "rev1", "firstName": "New"}])
    args = update_args(data, tmp_path / "o2.jsonl", sandbox.base_url, rate=FAST)
    proc = await start_cli(*args, "--state", str(state))
    for _ in range(500):  # until the new body's request has reached the server
        if sandbox.stats()["attempts"].get("rev1") == 2:
            break
        await asyncio.sleep(0.01)
    assert sandbox.stats()["attempts"]["rev1"] == 2
    proc.send_signal(signal.SIGKILL)
    assert (await finish(proc, limit=10)).status == -signal.SIGKILL
    assert state_rows(state) == {}  # unknown now: the server may hold "Old" or "New"

    write_jsonl(data, [{"contactId": "rev1", "firstName": "Old"}])  # the input reverted
    again = await sync(sandbox, data, tmp_path / "o3.jsonl", state)
    assert again.status == 0, again.stderr
    assert [o["status"] for o in journal_lines(tmp_path / "o3.jsonl")] == ["updated"]
    assert sandbox.contacts["rev1"]["firstName"] == "Old"


async def test_two_runs_on_one_state_file(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    sandbox = await start_sandbox(
        sandbox_config(
            tokens=frozenset({SECRET_TOKEN}),
            rate_limit=1000,
            rate_window=1.0,
            faults=Faults(latency=0.05),
        )
    )
    state = tmp_path / "sync.db"
    slow = write_jsonl(tmp_path / "a.jsonl", people(100, prefix="runa"))
    other = write_jsonl(tmp_path / "b.jsonl", people(5, prefix="runb"))
    out = tmp_path / "a-out.jsonl"
    first = await start_cli(
        *update_args(slow, out, sandbox.base_url, rate="100/1s", concurrency=2),
        "--state",
        str(state),
    )
    try:
        await wait_for_lines(out, 2, first)
        second = await sync(sandbox, other, tmp_path / "b-out.jsonl", state)
    finally:
        first.send_signal(signal.SIGTERM)
        await finish(first, limit=20)

    assert second.status == 2
    assert f"is in use by another run: process {first.pid}" in second.stderr
    assert "growthhub_async update" in second.stderr  # the holder's command line
    assert not any(cid.startswith("runb") for cid in sandbox.stats()["attempts"])


def _foreign_db(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada')")


def _damaged_state(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA application_id = 1195922260")  # ours, "GHST"
        db.execute(
            "CREATE TABLE applied (location TEXT, contact_id TEXT, digest BLOB, body BLOB,"
            " applied_at REAL, PRIMARY KEY (location, contact_id)) WITHOUT ROWID"
        )
        db.executemany(
            "INSERT INTO applied VALUES ('', ?, x'00', ?, 0)",
            [(f"c{n}", b"x" * 300) for n in range(2000)],
        )
    raw = bytearray(path.read_bytes())
    raw[4096 * 3 : 4096 * 5] = os.urandom(8192)  # pages in the middle of the table
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(os.urandom(5000)), "not an SQLite database"),
        (lambda p: p.write_text("contactId,firstName\n"), "not an SQLite database"),
        (_foreign_db, "an SQLite database of another program"),
        (_damaged_state, "corrupt"),
        (lambda p: p.mkdir(), "is a directory"),
        (os.mkfifo, "is not a regular file"),
    ],
    ids=["random-bytes", "text", "foreign-sqlite", "damaged", "directory", "fifo"],
)
async def test_a_file_that_is_not_a_usable_state_sends_nothing(
    start_sandbox: StartSandbox, tmp_path: Path, make: Any, says: str
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(5))
    state = tmp_path / "sync.db"
    make(state)
    before = state.read_bytes() if state.is_file() else None

    ran = await sync(sandbox, data, tmp_path / "o.jsonl", state)

    assert ran.status == 2, ran.stdout + ran.stderr
    assert says in ran.stderr
    assert ran.stderr.count("\n") == 1  # one clear line
    assert sandbox.stats()["requests"] == 0
    if before is not None:
        assert state.read_bytes() == before  # not touched


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` made unwritable: mode 0400, or for root (whom modes do not stop) the immutable
    attribute (``chattr +i``); skips the test where neither is possible."""
    if os.geteuid() != 0:
        path.chmod(0o400)
        yield
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], check=False).returncode:
        pytest.skip("running as root, and the immutable attribute cannot be set here")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_a_read_only_state_sends_nothing(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(3))
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    with read_only(state):
        ran = await sync(sandbox, data, tmp_path / "o2.jsonl", state, "--full")
    assert ran.status == 2, ran.stdout + ran.stderr
    assert "cannot be written" in ran.stderr
    assert attempts(sandbox) == 3


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_CAP, SIZE_CAP))
from growthhub_async.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_a_state_that_cannot_be_written_stops_the_run(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """A full disk, as RLIMIT_FSIZE makes it: the state's file stops growing mid-run."""
    sandbox = await fast_sandbox(start_sandbox, latency=0.005)
    data = write_jsonl(tmp_path / "in.jsonl", people(400, prefix="disk"))
    state = tmp_path / "sync.db"
    out = tmp_path / "o.jsonl"
    env = {**os.environ, "GROWTHHUB_TOKEN": SECRET_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FULL_DISK.replace("SIZE_CAP", str(96 * 1024)),
        *update_args(data, out, sandbox.base_url, rate=FAST, concurrency=4),
        "--state",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    ran = await finish(proc, limit=60)

    assert ran.status == 2, ran.stdout + ran.stderr
    assert "state" in ran.stderr
    assert "disk is full" in ran.stderr or "cannot record" in ran.stderr
    updated = {o["contactId"] for o in journal_lines(out) if o["status"] == "updated"}
    assert set(state_rows(state)) <= updated
    assert len(updated) < 400  # the run stopped


# -- the library -----------------------------------------------------------------------------


async def test_library_state_for_update_contacts_and_submit(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await start_sandbox(sandbox_config(rate_limit=10_000, rate_window=1.0))
    path = tmp_path / "web.db"
    pairs = [(f"lib{n}", UpdateContact(first_name=f"N{n}", tags=["a"])) for n in range(20)]
    async with GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, rate=None, state=path) as gh:
        first = [o.status async for o in gh.update_contacts(pairs)]
        again = [o.status async for o in gh.update_contacts(pairs)]
        same = await gh.submit("lib1", UpdateContact(first_name="N1", tags=["a"]))
        other = await gh.submit("lib1", UpdateContact(first_name="Changed", tags=["a"]))
        diff = await gh.submit(
            "lib2", UpdateContact(first_name="N2", tags=["a", "b"]), changed_fields_only=True
        )
    assert first == [Status.UPDATED] * 20
    assert again == [Status.UNCHANGED] * 20
    assert same.status is Status.UNCHANGED
    assert same.attempts == 0
    assert other.status is Status.UPDATED
    assert diff.status is Status.UPDATED
    assert sandbox.history["lib2"][-1] == {"tags": ["a", "b"]}
    assert sum(sandbox.stats()["attempts"].values()) == 22
    assert len(state_rows(path)) == 20

    # A SyncState passed in is the caller's: it stays open after the client closes.
    async with SyncState(path) as state:
        async with GrowthHubClient(
            TEST_TOKEN, base_url=sandbox.base_url, rate=None, state=state
        ) as gh:
            assert (
                await gh.submit("lib1", UpdateContact(first_name="Changed", tags=["a"]))
            ).status is Status.UNCHANGED
        assert (await state.stats()).contacts == 20
        with pytest.raises(StateError, match="is in use by another run"):
            await SyncState(path).open()


async def test_a_contact_in_flight_is_never_judged_unchanged(tmp_path: Path) -> None:
    """Rule 3: the second record of a contact is judged against the first, not the file."""
    async with SyncState(tmp_path / "s.db") as state:
        old = UpdateContact(first_name="Old")
        state.remember(("", "c1"), digest_of(canonical_body(old)), canonical_body(old), 1.0)
        await state.flush()
        run = StateRun(state)
        items = [
            Record(1, "c1", UpdateContact(first_name="New")),
            Record(2, "c1", old),  # the input's last word: must be sent after line 1
            Record(3, "c2", old),
        ]
        judged = [item async for item in run.filter(items)]
        assert [type(j).__name__ for j in judged] == ["Record", "Record", "Record"]
        # Once line 1 and 2 are done (updated), the file has line 2's body.
        for line in (1, 2):
            run.finished(Outcome(line=line, contact_id="c1", status=Status.UPDATED, attempts=1))
        await state.flush()
        again = [item async for item in StateRun(state).filter([Record(1, "c1", old)])]
        assert again == [Outcome(line=1, contact_id="c1", status=Status.UNCHANGED)]


async def test_locations_are_kept_apart(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    """One contact id under two locations (token keys) is two entries of the state."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=10_000, rate_window=1.0))
    path = tmp_path / "multi.db"

    def records(b_name: str) -> list[Record]:
        return [
            Record(1, "same1", UpdateContact(first_name="A"), token_key="locA"),
            Record(2, "same1", UpdateContact(first_name=b_name), token_key="locB"),
        ]

    async with GrowthHubClient(
        tokens={"locA": TEST_TOKEN, "locB": TEST_TOKEN},
        base_url=sandbox.base_url,
        rate=None,
        state=path,
    ) as gh:
        first = [o.status async for o in gh.update_contacts(records("B"))]
        again = [(o.line, o.status) async for o in gh.update_contacts(records("B2"))]
        assert gh.state is not None
        stats = await gh.state.stats()
    assert first == [Status.UPDATED, Status.UPDATED]
    assert sorted(again) == [(1, Status.UNCHANGED), (2, Status.UPDATED)]
    assert [(loc.location, loc.contacts) for loc in stats.locations] == [
        ("locA", 1),
        ("locB", 1),
    ]
    shown = await run_cli("state", str(path), "--forget-location", "locB")
    assert shown.status == 0, shown.stderr
    assert "1 contacts in 1 locations" in shown.stdout
    missing = await run_cli("state", str(tmp_path / "nope.db"))
    assert missing.status == 2
    assert "does not exist" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


async def test_a_read_only_view_of_an_empty_or_missing_file_is_an_empty_state(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (empty, tmp_path / "missing.db"):
        async with SyncState(path, readonly=True) as state:
            assert state.missing
            assert await state.lookup([("", "c1")]) == {}
            with pytest.raises(StateError, match="read-only"):
                state.forget(("", "c1"))
    assert empty.read_bytes() == b""
    assert not (tmp_path / "missing.db").exists()


async def test_sqlite_waits_never_block_the_event_loop(tmp_path: Path) -> None:
    """Item 5: a commit waiting on the disk (here, on another writer's lock) waits on the
    state's thread; the event loop keeps running meanwhile."""
    path = tmp_path / "s.db"
    async with SyncState(path) as state:
        blocker = sqlite3.connect(path, isolation_level=None, timeout=10)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            body = canonical_body(UpdateContact(first_name="A"))
            state.remember(("", "c1"), digest_of(body), body, 1.0)
            flushing = asyncio.ensure_future(state.flush())
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert loop.time() - started < 1.0  # twenty ticks, none held up
            assert not flushing.done()  # the commit still waits for the lock
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await flushing
        found = await state.lookup([("", "c1")])
        assert found[("", "c1")].digest == digest_of(body)


# -- red team 3 ------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
async def test_a_second_run_through_another_name_of_the_state_is_refused(
    start_sandbox: StartSandbox, tmp_path: Path, link: str
) -> None:
    """The lock is the state file's own (flock on its inode), not ``FILE.lock`` by name."""
    sandbox = await start_sandbox(
        sandbox_config(
            tokens=frozenset({SECRET_TOKEN}),
            rate_limit=1000,
            rate_window=1.0,
            faults=Faults(latency=0.05),
        )
    )
    state = tmp_path / "real.db"
    other_name = tmp_path / "link.db"
    slow = write_jsonl(tmp_path / "a.jsonl", people(100, prefix="runa"))
    other = write_jsonl(tmp_path / "b.jsonl", people(5, prefix="runb"))
    out = tmp_path / "a-out.jsonl"
    first = await start_cli(
        *update_args(slow, out, sandbox.base_url, rate="100/1s", concurrency=2),
        "--state",
        str(state),
    )
    try:
        await wait_for_lines(out, 2, first)
        if link == "symlink":
            other_name.symlink_to(state.name)
        else:
            os.link(state, other_name)
        second = await sync(sandbox, other, tmp_path / "b-out.jsonl", other_name)
    finally:
        first.send_signal(signal.SIGTERM)
        await finish(first, limit=20)
    assert second.status == 2, second.stderr
    assert f"is in use by another run: process {first.pid}" in second.stderr
    assert not any(cid.startswith("runb") for cid in sandbox.stats()["attempts"])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".lock")]  # no lock file left


async def test_two_clients_sharing_a_state_forget_a_contact_whose_sends_overlapped(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """Two engines keep no order between them: the state cannot know which body the server
    kept, so the contact is forgotten and the next submit is sent (red team 3, R2b)."""
    sandbox = await start_sandbox(
        sandbox_config(
            rate_limit=10_000, rate_window=1.0, faults=Faults(scripts={"c1": ["slow:1", "ok"]})
        )
    )
    async with SyncState(tmp_path / "s.db") as state:
        options: dict[str, Any] = {"base_url": sandbox.base_url, "rate": None, "state": state}
        async with (
            GrowthHubClient(TEST_TOKEN, **options) as web,
            GrowthHubClient(TEST_TOKEN, **options) as nightly,
        ):
            slow = asyncio.ensure_future(web.submit("c1", UpdateContact(first_name="SLOW")))
            await asyncio.sleep(0.3)
            fast = await nightly.submit("c1", UpdateContact(first_name="B"))
            assert (await slow).status is Status.UPDATED
            assert fast.status is Status.UPDATED
        await state.flush()
        assert await state.lookup([("", "c1")]) == {}  # forgotten: either body may be there
        async with GrowthHubClient(TEST_TOKEN, **options) as again:
            resent = await again.submit("c1", UpdateContact(first_name="SLOW"))
    assert resent.status is Status.UPDATED
    assert resent.attempts == 1
    assert sandbox.contacts["c1"]["firstName"] == "SLOW"


async def test_a_state_filled_against_another_server_is_refused(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    first_server = await fast_sandbox(start_sandbox)
    second_server = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(5))
    state = tmp_path / "sync.db"
    assert (await sync(first_server, data, tmp_path / "o1.jsonl", state)).status == 0

    for extra in ((), ("--dry-run",)):
        ran = await sync(second_server, data, tmp_path / f"o2{len(extra)}.jsonl", state, *extra)
        assert ran.status == 2, ran.stdout + ran.stderr
        assert f"applied through {first_server.base_url}, not {second_server.base_url}" in (
            ran.stderr
        )
        assert ran.stderr.count("\n") == 1
    assert second_server.stats()["requests"] == 0


@pytest.mark.parametrize("which", ["out", "input"])
async def test_a_state_that_is_the_outcomes_or_the_input_is_refused(
    start_sandbox: StartSandbox, tmp_path: Path, which: str
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(3))
    out = tmp_path / "x.db"
    state = out if which == "out" else tmp_path / "link.jsonl"
    if which == "input":
        state.symlink_to(data.name)
    ran = await sync(sandbox, data, out, state)
    assert ran.status == 2, ran.stdout + ran.stderr
    assert ("is the outcomes file" if which == "out" else "is the input itself") in ran.stderr
    assert sandbox.stats()["requests"] == 0


async def test_a_state_another_program_locks_fails_fast_at_start(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(3))
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
        " c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(60)",
        str(state),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        loop = asyncio.get_running_loop()
        started = loop.time()
        ran = await sync(sandbox, data, tmp_path / "o2.jsonl", state, "--full", limit=20)
        took = loop.time() - started
    finally:
        holder.kill()
        await holder.wait()
    assert ran.status == 2, ran.stdout + ran.stderr
    assert "another program holds its lock" in ran.stderr
    assert f"process {holder.pid}" in ran.stderr
    assert ran.stderr.count("\n") == 1
    assert took < 15  # not SQLite's old 60 s wait
    assert attempts(sandbox) == 3  # nothing more sent


async def test_sigterm_while_another_program_holds_the_state_stops_within_the_grace(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """The run waits on the state (rule 3's commit before a batch) when SIGTERM comes: it ends
    within the grace, with its summary and resume command, not when the other program lets go."""
    sandbox = await fast_sandbox(start_sandbox)
    state = tmp_path / "sync.db"
    records = people(1200, prefix="lk")
    data = write_jsonl(tmp_path / "in.jsonl", records)
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state, limit=60)).status == 0
    for r in records:
        r["firstName"] += "-B"
    write_jsonl(data, records)
    out = tmp_path / "o2.jsonl"
    proc = await start_cli(
        *update_args(data, out, sandbox.base_url, rate="300/1s"), "--state", str(state)
    )
    blocker = None
    try:
        await wait_for_lines(out, 10, proc)
        blocker = sqlite3.connect(state, isolation_level=None, timeout=10)
        blocker.execute("BEGIN IMMEDIATE")
        await wait_for_lines(out, 512, proc)  # the first batch done; the next one waits
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        proc.send_signal(signal.SIGTERM)
        started = loop.time()
        ran = await finish(proc, limit=30)
        took = loop.time() - started
    finally:
        if blocker is not None:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert took < 13, took  # the grace is 10 s
    assert ran.status in (1, 2), ran.stderr
    assert "to resume, run:" in ran.stderr
    assert "requests in" in ran.stdout  # the summary


@pytest.mark.parametrize("stdout", ["closed", "full"])
async def test_the_state_command_with_a_closed_or_full_stdout(
    start_sandbox: StartSandbox, tmp_path: Path, stdout: str
) -> None:
    sandbox = await fast_sandbox(start_sandbox)
    data = write_jsonl(tmp_path / "in.jsonl", people(3))
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    redirect = ">&-" if stdout == "closed" else ">/dev/full"
    for extra in ([], ["--forget-contact", "st0001"]):
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            f'exec "$@" {redirect}',
            "sh",
            sys.executable,
            "-m",
            "growthhub_async",
            "state",
            str(state),
            *extra,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    assert set(state_rows(state)) == {"st0002", "st0003"}  # the forgetting was done


async def test_dry_run_counts_a_contact_given_twice_as_the_real_run_sends_it(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # A contact given twice, the first record a change and the second what the state holds:
    # the real run sends both (the first is in flight when the second is judged, rule 2), so
    # the dry run must not count the second as unchanged.
    sandbox = await fast_sandbox(start_sandbox)
    records = people(3)
    data = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "sync.db"
    assert (await sync(sandbox, data, tmp_path / "o1.jsonl", state)).status == 0
    edited = {**records[0], "firstName": "Edited"}
    write_jsonl(data, [edited, records[0], *records[1:]])

    dry = await sync(sandbox, data, tmp_path / "o2.jsonl", state, "--dry-run")
    assert dry.status == 0, dry.stderr
    real = await sync(sandbox, data, tmp_path / "o3.jsonl", state)
    assert real.status == 0, real.stderr
    statuses = [o["status"] for o in journal_lines(tmp_path / "o3.jsonl")]
    assert statuses.count("unchanged") == 2  # st0002 and st0003; st0001 sent twice
    assert row(dry.stdout, "unchanged (not sent)") == statuses.count("unchanged")
    assert row(dry.stdout, "valid (would be sent)") == statuses.count("updated") == 2
