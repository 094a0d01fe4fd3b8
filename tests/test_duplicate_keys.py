"""Issue 12, item 12: a key twice in one JSON object rejects the record, naming the key.

msgspec (like ``json``) keeps the last value without a word; which one the user meant is a
guess, so the record is not sent. The cheap pre-test (count ``":`` against the decoded keys)
must never let a duplicate through, whatever the spacing, escapes or nesting.
"""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growthhub_async.outcomes import Outcome, Status
from growthhub_async.sources import Record, read_csv, read_jsonl


def one(line: bytes) -> Record | Outcome:
    [item] = list(read_jsonl(io.BytesIO(line + b"\n")))
    return item


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b'{"contactId":"a","contactId":"b"}', "contactId"),
        (b'{"contactId":"a","firstName":"X","firstName":"Y"}', "firstName"),
        (b'{"contactId" : "a", "contactId" : "b"}', "contactId"),  # spaced colons
        (b'{"contactId":"a","contact\\u0049d":"b"}', "contactId"),  # an escaped spelling
        (
            b'{"contactId":"a","dndSettings":{"Email":{"status":"active","status":"inactive"}}}',
            "status",
        ),
        (b'{"contactId":"a","customFields":[{"id":"f","id":"g","field_value":"v"}]}', "id"),
        (b'{"contactId":"a","firstName":"\\":","firstName":"b"}', "firstName"),
    ],
    ids=["contactId", "field", "spaced", "escaped", "nested", "in-list", "quote-colon-value"],
)
def test_a_duplicate_key_rejects_the_record(line: bytes, key: str) -> None:
    item = one(line)
    assert isinstance(item, Outcome)
    assert item.status is Status.REJECTED
    assert item.error == f"line 1: duplicate key `{key}` in one object (which value was meant?)"


@pytest.mark.parametrize(
    "line",
    [
        b'{"contactId":"a","firstName":":","lastName":"\\":"}',  # "": inside strings
        b'{"contactId" : "a", "tags" : ["x", "y"]}',
        b'{"contactId":"a","customFields":[{"id":"f","field_value":"1"},{"id":"g","field_value":"2"}]}',
    ],
)
def test_no_false_alarm(line: bytes) -> None:
    assert isinstance(one(line), Record)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["firstName", "lastName", "city", "tags"]), min_size=1, max_size=6),
    st.sampled_from(["", " ", "\t"]),
)
def test_found_exactly_when_a_key_repeats(keys: list[str], space: str) -> None:
    pairs = [f'"{k}"{space}:{space}{json.dumps(["v"] if k == "tags" else "v")}' for k in keys]
    line = ("{" + ",".join(['"contactId":"c"', *pairs]) + "}").encode()
    item = one(line)
    if len(set(keys)) == len(keys):
        assert isinstance(item, Record)
    else:
        assert isinstance(item, Outcome)
        assert item.error is not None
        assert "duplicate key" in item.error


def test_csv_json_cells_are_checked_too() -> None:
    data = b'contactId,dndSettings\nc1,"{""SMS"":{""status"":""active""},""SMS"":{}}"\n'
    [item] = list(read_csv(io.BytesIO(data)))
    assert isinstance(item, Outcome)
    assert item.error is not None
    assert "duplicate key `SMS`" in item.error
    assert "column `dndSettings`" in item.error
