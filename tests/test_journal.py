"""The outcome journal: lines reach the OS as records finish; resume reads them back safely."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from growthhub_async.errors import JournalError
from growthhub_async.journal import (
    MAX_LINE,
    Journal,
    ResumeState,
    RunFacts,
    load_resume_state,
    record_hash,
)
from growthhub_async.models import UpdateContact
from growthhub_async.outcomes import Outcome, Status, decode_outcome, encode_outcome
from growthhub_async.sources import Record, read_jsonl


def outcome(line: int, status: Status = Status.UPDATED, contact_id: str | None = None) -> Outcome:
    return Outcome(
        line=line,
        contact_id=contact_id if contact_id is not None else f"c{line}",
        status=status,
        http_status=200 if status is Status.UPDATED else None,
        attempts=1,
    )


def key(line: int, contact_id: str | None = None) -> bytes:
    """The resume key of record ``line`` (a record of ``contact_id``, default ``c<line>``)."""
    cid = contact_id if contact_id is not None else f"c{line}"
    return record_hash(Record(line, cid, UpdateContact(first_name=f"N{line}")))


def journal_line(item: Outcome, record: bytes | None = None) -> bytes:
    """One journal line as Journal.write writes it (recordHash last)."""
    hashed = b'"%s"' % record.hex().encode() if record is not None else b"null"
    return msgspec.json.encode(item)[:-1] + b',"recordHash":%s}\n' % hashed


def read_outcomes(path: Path) -> list[Outcome]:
    return [decode_outcome(line) for line in path.read_bytes().splitlines()]


def test_each_line_is_visible_to_another_reader_right_after_write(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with Journal(path) as journal, open(path, "rb") as reader:
        for n in range(1, 4):
            journal.write(outcome(n))
            # Another handle sees the whole line at once, before any close or flush call.
            assert reader.readline() == journal_line(outcome(n))
        assert journal.written == 3
    assert read_outcomes(path) == [outcome(1), outcome(2), outcome(3)]


def test_journal_line_shape(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with Journal(path) as journal:
        journal.write(Outcome(line=7, contact_id=None, status=Status.REJECTED, error="line 7: bad"))
    assert path.read_bytes() == (
        b'{"line":7,"contactId":null,"status":"rejected","httpStatus":null,'
        b'"attempts":0,"error":"line 7: bad","recordHash":null}\n'
    )


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(
            line=1, contact_id='c\u00e9"\n', status=Status.UPDATED, http_status=200, attempts=3
        ),
        Outcome(line=2**40, contact_id=None, status=Status.FAILED, error="e \u2028 \x00"),
    ],
)
def test_a_line_starts_with_the_outcome_as_encode_outcome_writes_it(
    tmp_path: Path, outcome: Outcome
) -> None:
    """The journal encodes a line in one call from a struct of its own (issue 17); its start
    must stay the outcome's keys as ``encode_outcome`` writes them (what readers and the format
    check expect), whatever fields the Outcome gains."""
    path = tmp_path / "out.jsonl"
    facts = RunFacts(location="loc1", at=1.5, rate_limited=2, run_id="r1")
    with Journal(path) as journal:
        journal.write(outcome, b"\x01" * 16, facts=facts)
    line = path.read_bytes()
    assert line.startswith(encode_outcome(outcome)[:-2] + b',"recordHash":"' + b"01" * 16)
    assert decode_outcome(line) == outcome


def test_lines_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    script = (
        "import os, signal, sys\n"
        "from growthhub_async.journal import Journal\n"
        "from growthhub_async.outcomes import Outcome, Status\n"
        "j = Journal(sys.argv[1])\n"
        "for n in range(1, 501):\n"
        "    j.write(Outcome(line=n, contact_id=f'c{n}', status=Status.UPDATED, attempts=1))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], check=False, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert [o.line for o in read_outcomes(path)] == list(range(1, 501))


def test_refuses_a_non_empty_file_without_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(journal_line(outcome(1)))
    before = path.read_bytes()
    with pytest.raises(JournalError, match="--resume") as info:
        Journal(path)
    assert "already holds outcomes" in str(info.value)
    assert path.read_bytes() == before


def test_an_empty_existing_file_is_fine_without_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.touch()
    with Journal(path) as journal:
        journal.write(outcome(1))
    assert read_outcomes(path) == [outcome(1)]


def test_resume_appends_after_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with Journal(path) as journal:
        journal.write(outcome(1))
    with Journal(path, resume=True) as journal:
        journal.write(outcome(2))
    assert read_outcomes(path) == [outcome(1), outcome(2)]


@pytest.mark.parametrize(
    "torn",
    [
        b'{"line":3,"contactId":"c3","sta',
        b'{"line":3,"contactId":"c3","status":"updated","httpStatus":200,"attempts":1,"error":null}',
        b"{",
        b'{"line":3,"contactId":"' + b"x" * 200_000,  # torn across more than one read chunk
    ],
    ids=["mid-line", "complete-but-no-newline", "one-byte", "long"],
)
def test_torn_last_line_is_ignored_then_cut_before_appending(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(journal_line(outcome(1), key(1)) + journal_line(outcome(2), key(2)) + torn)
    state = load_resume_state(path)
    assert state.torn
    assert state.entries == 2
    assert state.is_final(1, key(1))
    assert state.is_final(2, key(2))
    assert not state.is_final(3, key(3))  # the torn line's record is sent again
    with Journal(path, resume=True) as journal:
        journal.write(outcome(3))
    assert read_outcomes(path) == [outcome(1), outcome(2), outcome(3)]


def test_blank_lines_in_a_journal_are_skipped_on_resume(tmp_path: Path) -> None:
    # `echo >> out.jsonl`, or an editor that saved it with a blank line: not a foreign file.
    path = tmp_path / "out.jsonl"
    first, second = journal_line(outcome(1), key(1)), journal_line(outcome(2), key(2))
    path.write_bytes(first + b"\n  \r\n" + second + b"\n")
    state = load_resume_state(path)
    assert (state.entries, state.torn) == (2, False)
    assert state.is_final(1, key(1))
    assert state.is_final(2, key(2))
    with Journal(path, resume=True) as journal:
        journal.write(outcome(3))
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    assert [decode_outcome(line).line for line in lines] == [1, 2, 3]


def test_a_journal_holding_only_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"li')
    assert len(load_resume_state(path)) == 0
    with Journal(path, resume=True) as journal:
        journal.write(outcome(1))
    assert read_outcomes(path) == [outcome(1)]


def test_resume_refuses_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"  # the classic slip: --out pointing at the input
    data = b'{"contactId":"a","firstName":"x"}\n{"contactId":"b"'
    path.write_bytes(data)
    with pytest.raises(JournalError, match="not an outcome journal"):
        load_resume_state(path)
    with pytest.raises(JournalError, match="not an outcome journal"):
        Journal(path, resume=True)
    assert path.read_bytes() == data  # nothing truncated, nothing appended


def test_a_bad_line_before_the_end_is_not_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(journal_line(outcome(1)) + b"garbage\n" + journal_line(outcome(3)))
    with pytest.raises(JournalError, match="line 2"):
        load_resume_state(path)


def test_missing_journal_is_an_empty_state(tmp_path: Path) -> None:
    state = load_resume_state(tmp_path / "none.jsonl")
    assert len(state) == 0
    assert not state.torn
    assert not state.is_final(1, key(1))


def test_resume_state_final_statuses_and_last_outcome_wins(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    history = [
        outcome(1, Status.UPDATED),
        outcome(2, Status.FAILED),
        outcome(3, Status.UNAUTHORIZED),
        # No id: rejected before it had one (malformed JSON, say).
        Outcome(line=4, contact_id=None, status=Status.REJECTED, error="line 4: bad"),
        outcome(5, Status.INVALID),
        outcome(6, Status.BAD_REQUEST),
        outcome(7, Status.NOT_FOUND),
        outcome(2, Status.UPDATED),  # a retry in a resumed run: now final
        outcome(8, Status.UPDATED),
        outcome(8, Status.FAILED),  # the last outcome wins, even over a final one
    ]
    with Journal(path) as journal:
        for item in history:
            journal.write(item, key(item.line))
    state = load_resume_state(path)
    assert state.entries == len(history)
    assert not state.torn
    final = {n for n in range(1, 10) if state.is_final(n, key(n))}
    assert final == {1, 2, 4, 5, 6, 7}
    assert len(state) == 6
    assert state.mismatched == 0


def test_a_changed_input_line_is_sent_not_skipped() -> None:
    state = ResumeState()
    state.record(1, key(1, "alice"), Status.UPDATED)
    state.record(2, key(2, "bob"), Status.UPDATED)
    state.record(3, None, Status.UPDATED)  # a line written without a hash
    assert state.is_final(1, key(1, "alice"))
    assert not state.is_final(2, key(2, "carol"))  # line 2 now holds another contact
    assert not state.is_final(1, key(1, "bob"))
    assert not state.is_final(3, key(3))  # never skipped: nothing says it is the same record
    assert state.mismatched == 3
    assert len(state) == 3


def test_the_key_covers_the_whole_record() -> None:
    """Issue 12 item 10: any change to what is sent changes the key; nothing else does."""
    base = Record(1, "alice", UpdateContact(first_name="A", tags=["x"]))
    variants = [
        Record(1, "alice", UpdateContact(first_name="B", tags=["x"])),  # an edited value
        Record(1, "alice", UpdateContact(first_name="A", tags=["x", "y"])),
        Record(1, "alice", UpdateContact(first_name="A")),  # a field no longer given
        Record(1, "alice", UpdateContact(first_name="A", tags=["x"], email=None)),  # cleared
        Record(1, "alicf", UpdateContact(first_name="A", tags=["x"])),  # another contact
        Record(1, "alice", UpdateContact(first_name="A", tags=["x"]), token_key="other"),
        Outcome(line=1, contact_id="alice", status=Status.REJECTED, error="line 1: bad"),
    ]
    keys = {record_hash(v) for v in variants}
    assert len(keys) == len(variants)
    assert record_hash(base) not in keys
    assert len(record_hash(base)) == 16
    # The line number is where the key is kept, not part of it; equal records, equal keys.
    same = Record(9, "alice", UpdateContact(first_name="A", tags=["x"]))
    assert record_hash(same) == record_hash(base)


def test_pending_filters_a_source_by_line_and_record() -> None:
    before = (
        b'{"contactId":"a"}\n'
        b'{"contactId":"b"}\n'
        b"[]\n"  # rejected: final
        b'{"contactId":"d","firstName":"Old"}\n'
        b'{"contactId":"e"}\n'
        b'{"contactId":"f","email":"not an email"}\n'  # rejected: final
    )
    after = (
        b'{"contactId":"a"}\n'
        b'{"contactId":"b"}\n'
        b"[]\n"  # still the same rejection: skipped on resume
        b'{"contactId":"d","firstName":"New"}\n'  # edited since: sent again
        b'{"contactId":"e"}\n'
        b'{"contactId":"f","email":"f@example.com"}\n'  # fixed since: sent
    )
    statuses = [Status.UPDATED, Status.FAILED, None, Status.NOT_FOUND, Status.UPDATED, None]
    state = ResumeState()
    for item, status in zip(read_jsonl(io.BytesIO(before)), statuses, strict=True):
        state.record(item.line, record_hash(item), status or Status.REJECTED)
    items = list(state.pending(read_jsonl(io.BytesIO(after))))
    assert [(i.line, i.contact_id) for i in items] == [(2, "b"), (4, "d"), (6, "f")]
    assert all(isinstance(i, Record) for i in items)
    assert state.mismatched == 2


def test_a_journal_from_before_record_hashes_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    old = (
        b'{"line":1,"contactId":"c1","status":"updated","httpStatus":200,"attempts":1,'
        b'"error":null}\n'
    )
    path.write_bytes(old)
    with pytest.raises(JournalError, match=r"earlier growthhub-async.*no recordHash"):
        load_resume_state(path)
    with pytest.raises(JournalError, match="earlier growthhub-async"):
        Journal(path, resume=True)
    assert path.read_bytes() == old


def test_resume_state_rejects_impossible_line_numbers() -> None:
    state = ResumeState()
    for line in (0, -1, MAX_LINE + 1):
        with pytest.raises(ValueError, match="outside"):
            state.record(line, "c", Status.UPDATED)


def test_resume_state_for_a_million_lines_is_small(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    # One journal of a million lines, written at C speed: the journal's bytes, not its API.
    with open(path, "wb") as f:
        f.writelines(
            b'{"line":%d,"contactId":"c%d","status":"%s","httpStatus":200,"attempts":1,'
            b'"error":null,"recordHash":"%032x"}\n' % (n, n, b"updated" if n % 10 else b"failed", 0)
            for n in range(1, 1_000_001)
        )
    state = load_resume_state(path)
    assert state.entries == 1_000_000
    assert len(state) == 900_000
    assert state.nbytes <= 9 * 1_000_000  # 8 bytes per line for the hash, 1 for the status
    assert state.is_final(999_999, bytes(16))
    assert state.final_status(999_999) == "updated"
    assert state.final_status(1_000_000) is None  # failed: not final
    assert not state.is_final(1_000_000, bytes(16))


def test_fsync_every_and_closing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="fsync_every"):
        Journal(path, fsync_every=-1)
    journal = Journal(path, fsync_every=2)
    for n in range(1, 6):
        journal.write(outcome(n))
    journal.sync()
    journal.close()
    journal.close()  # harmless
    assert journal.closed
    with pytest.raises(ValueError, match="closed"):
        journal.write(outcome(6))
    assert len(read_outcomes(path)) == 5


def test_unwritable_location_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot open outcomes"):
        Journal(tmp_path / "no-such-dir" / "out.jsonl")
    if os.geteuid() != 0:  # root reads anything; the check means nothing there
        path = tmp_path / "locked.jsonl"
        path.write_bytes(journal_line(outcome(1)))
        path.chmod(0)
        with pytest.raises(JournalError, match="cannot read outcomes"):
            load_resume_state(path)
