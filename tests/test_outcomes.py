"""The status table shared by classification and retry, and the outcome's JSONL shape."""

from __future__ import annotations

import msgspec
import pytest

from growthhub_async.outcomes import (
    FINAL_STATUSES,
    Outcome,
    Status,
    Summary,
    classify_status,
    decode_outcome,
    encode_outcome,
)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (200, Status.UPDATED),
        (201, Status.UPDATED),
        (400, Status.BAD_REQUEST),
        (401, Status.UNAUTHORIZED),
        (403, Status.UNAUTHORIZED),
        (404, Status.NOT_FOUND),
        (408, Status.FAILED),
        (409, Status.BAD_REQUEST),
        (422, Status.INVALID),
        (429, Status.FAILED),
        (500, Status.FAILED),
        (502, Status.FAILED),
        (503, Status.FAILED),
        (504, Status.FAILED),
    ],
)
def test_classify_status(code: int, status: Status) -> None:
    assert classify_status(code) is status


def test_final_statuses_are_those_a_resend_cannot_change() -> None:
    assert {s.value for s in FINAL_STATUSES} == {
        "updated",
        "unchanged",  # with a sync state: the same body was applied already (issue 14)
        "rejected",
        "invalid",
        "bad_request",
        "not_found",
    }


def test_outcome_line_has_every_key_in_camel_case() -> None:
    line = encode_outcome(Outcome(line=3, contact_id="abc", status=Status.UPDATED))
    assert line.endswith(b"\n")
    assert msgspec.json.decode(line) == {
        "line": 3,
        "contactId": "abc",
        "status": "updated",
        "httpStatus": None,
        "attempts": 0,
        "error": None,
    }
    assert decode_outcome(line) == Outcome(line=3, contact_id="abc", status=Status.UPDATED)
    with pytest.raises(msgspec.DecodeError):
        decode_outcome(line[:-8])


def test_summary_counts() -> None:
    summary = Summary()
    summary.add(Outcome(line=1, contact_id="a", status=Status.UPDATED, http_status=200, attempts=2))
    summary.add(Outcome(line=2, contact_id="b", status=Status.INVALID, http_status=422, attempts=1))
    summary.elapsed = 1.5
    assert summary.records == 2
    assert summary.requests == 3
    assert summary.rate == 2.0
    assert not summary.all_updated
    assert "invalid=1" in repr(summary)
