"""Input readers: every bad record becomes a rejected outcome naming its line and field."""

from __future__ import annotations

import codecs
import io
import re
import tempfile
import tracemalloc
import unicodedata
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growthhub_async import sources
from growthhub_async.contact_id import MAX_LENGTH, check_contact_id
from growthhub_async.errors import InputError, InvalidContactId
from growthhub_async.models import UpdateContact, encode_update
from growthhub_async.outcomes import Outcome, Status
from growthhub_async.sources import (
    MAX_LINE_BYTES,
    Item,
    Record,
    count_records,
    open_source,
    read_csv,
    read_jsonl,
)


def jsonl(data: bytes, **kwargs: Any) -> list[Item]:
    return list(read_jsonl(io.BytesIO(data), **kwargs))


def csv_items(text: str | bytes) -> list[Item]:
    data = text.encode() if isinstance(text, str) else text
    return list(read_csv(io.BytesIO(data)))


def body(item: Item) -> dict[str, Any]:
    assert isinstance(item, Record), item
    result: dict[str, Any] = msgspec.json.decode(encode_update(item.update))
    return result


def rejected(item: Item) -> str:
    assert isinstance(item, Outcome), item
    assert item.status is Status.REJECTED
    assert item.attempts == 0
    assert item.http_status is None
    assert item.error is not None
    return item.error


# ---------------------------------------------------------------------------------------------
# contact ids


@pytest.mark.parametrize(
    "value",
    ["ocQHyuzHvysMo5N5VsXc", "a", "a.b", "A-b_c~d", "x" * MAX_LENGTH, "é日本"],
)
def test_safe_contact_ids_pass(value: str) -> None:
    check_contact_id(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("x" * (MAX_LENGTH + 1), "at most 128"),
        ("a/b", "'/'"),
        ("../locations", "'..'"),
        ("a..b", "'..'"),
        (".", "'.'"),
        ("a?b=1", "'?'"),
        ("a#b", "'#'"),
        ("a%2Fb", "'%'"),
        ("a\\b", "'\\\\'"),
        ("a b", "' '"),
        ("ab\t", "'\\t'"),
        ("a\nb", "'\\n'"),
        ("a\x00b", "'\\x00'"),
        ("a\x7fb", "'\\x7f'"),
        ("a\u00a0b", "'\\xa0'"),
        ("a\u200bb", "'\\u200b'"),
        ("\ufeffabc", "'\\ufeff'"),
        ("a\u202eb", "'\\u202e'"),
    ],
)
def test_unsafe_contact_ids_raise_naming_the_problem(value: str, fragment: str) -> None:
    with pytest.raises(InvalidContactId) as info:
        check_contact_id(value)
    assert fragment in str(info.value)


_FORBIDDEN = re.compile(
    r"[/?#%\\\s\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff"
    r"\u2044\u2215\u2216\u29f5\u29f8\u29f9\ud800-\udfff]"
)


def _invisible(value: str) -> bool:
    # Format, private-use, unassigned: shows nothing, or nothing known; and the invisible
    # characters of other categories (combining grapheme joiner, variation selectors, fillers).
    others = "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    return any(
        unicodedata.category(c) in ("Cf", "Co", "Cn", "Cs")
        or c in others
        or 0xFE00 <= ord(c) <= 0xFE0F
        or 0xE0100 <= ord(c) <= 0xE01EF
        for c in value
    )


def _folds_unsafe(value: str) -> bool:
    # Any change under NFKC: into "/" or "..", or into the plain id of another contact.
    return unicodedata.normalize("NFKC", value) != value


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=MAX_LENGTH + 2)
    | st.text("ab./?%# \t\u200b\u2025\uff0f\u2215\uff0e\uff41\u061c\u034f\ufe0f", max_size=6)
)
def test_contact_id_rule_holds_for_any_text(value: str) -> None:
    expected = (
        0 < len(value) <= MAX_LENGTH
        and value != "."
        and ".." not in value
        and not _FORBIDDEN.search(value)
        and not _folds_unsafe(value)
        and not _invisible(value)
    )
    try:
        check_contact_id(value)
    except InvalidContactId:
        assert not expected
    else:
        assert expected


def test_contact_id_must_be_a_string() -> None:
    with pytest.raises(InvalidContactId, match="string"):
        check_contact_id(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# JSONL: one bad line between two good ones, for every kind of problem

GOOD_BEFORE = b'{"contactId":"before","firstName":"A"}\n'
GOOD_AFTER = b'{"contactId":"after","lastName":"B"}\n'

JSONL_BAD = [
    ("malformed", b'{"contactId": "x", ', ["malformed JSON: Input data was truncated"]),
    ("bad-token", b'{"contactId": x}', ["malformed JSON: invalid character (byte 14)"]),
    ("trailing-garbage", b'{"contactId":"x"} x', ["malformed JSON"]),
    ("array", b'[{"contactId":"x"}]', ["not a JSON object (got array)"]),
    ("string", b'"x"', ["not a JSON object (got str)"]),
    ("number", b"42", ["not a JSON object (got int)"]),
    ("null", b"null", ["not a JSON object (got null)"]),
    ("missing-id", b'{"firstName":"x"}', ["missing contactId"]),
    ("null-id", b'{"contactId":null}', ["missing contactId"]),
    ("int-id", b'{"contactId":7}', ["got `int`", "`$.contactId`"]),
    ("empty-id", b'{"contactId":""}', ["empty", "`$.contactId`"]),
    ("slash-id", b'{"contactId":"a/b"}', ["unsafe contact id", "'/'", "`$.contactId`"]),
    ("dotdot-id", b'{"contactId":"../x"}', ["'..'", "`$.contactId`"]),
    ("query-id", b'{"contactId":"a?b"}', ["'?'", "`$.contactId`"]),
    ("space-id", b'{"contactId":"a b"}', ["' '", "`$.contactId`"]),
    ("long-id", b'{"contactId":"' + b"x" * 200 + b'"}', ["at most 128", "`$.contactId`"]),
    ("unknown-field", b'{"contactId":"x","gender":"m"}', ["unknown field `gender`"]),
    ("wrong-type", b'{"contactId":"x","firstName":1}', ["got `int`", "`$.firstName`"]),
    ("null-not-nullable", b'{"contactId":"x","postalCode":null}', ["`$.postalCode`"]),
    ("dnd-string", b'{"contactId":"x","dnd":"yes"}', ["Expected `bool`", "`$.dnd`"]),
    ("tags-string", b'{"contactId":"x","tags":"vip"}', ["Expected `array`", "`$.tags`"]),
    ("tags-ints", b'{"contactId":"x","tags":[1]}', ["`$.tags[0]`"]),
    (
        "bad-enum",
        b'{"contactId":"x","dndSettings":{"SMS":{"status":"maybe"}}}',
        ["Invalid enum value 'maybe'", "`$.dndSettings.SMS.status`"],
    ),
    (
        "dnd-channel-case",
        b'{"contactId":"x","dndSettings":{"sms":{"status":"active"}}}',
        ["unknown field `sms`", "`$.dndSettings`"],
    ),
    (
        "dnd-missing-status",
        b'{"contactId":"x","dndSettings":{"Email":{"message":"m"}}}',
        ["missing required field `status`", "`$.dndSettings.Email`"],
    ),
    (
        "inbound-permanent",
        b'{"contactId":"x","inboundDndSettings":{"all":{"status":"permanent"}}}',
        ["'permanent'", "`$.inboundDndSettings.all.status`"],
    ),
    ("bad-date", b'{"contactId":"x","dateOfBirth":"2020-13-01"}', ["`$.dateOfBirth`"]),
    ("day-first-date", b'{"contactId":"x","dateOfBirth":"31/12/1990"}', ["`$.dateOfBirth`"]),
    ("bad-country", b'{"contactId":"x","country":"XX"}', ["'XX'", "`$.country`"]),
    ("lower-country", b'{"contactId":"x","country":"us"}', ["`$.country`"]),
    (
        "custom-no-id",
        b'{"contactId":"x","customFields":[{"field_value":"v"}]}',
        ["missing required field `id`", "`$.customFields[0]`"],
    ),
    (
        "custom-null-value",
        b'{"contactId":"x","customFields":[{"id":"f","field_value":null}]}',
        ["`$.customFields[0].field_value`"],
    ),
    (
        "custom-other-key",
        b'{"contactId":"x","customFields":[{"id":"f","fieldValue":"v"}]}',
        ["unknown field `fieldValue`", "`$.customFields[0]`"],
    ),
    ("invalid-utf8", b'{"contactId":"x","firstName":"\xff\xfe"}', ["invalid UTF-8", "0xff"]),
    ("invalid-utf8-key", b'{"contactId":"x","\xc3":"v"}', ["invalid UTF-8"]),
]


@pytest.mark.parametrize(
    ("bad", "fragments"), [(c[1], c[2]) for c in JSONL_BAD], ids=[c[0] for c in JSONL_BAD]
)
def test_jsonl_bad_line_is_rejected_alone(bad: bytes, fragments: list[str]) -> None:
    items = jsonl(GOOD_BEFORE + bad + b"\n" + GOOD_AFTER)
    assert len(items) == 3
    first, middle, last = items
    assert first == Record(1, "before", UpdateContact(first_name="A"))
    assert last == Record(3, "after", UpdateContact(last_name="B"))
    error = rejected(middle)
    assert middle.line == 2
    assert error.startswith("line 2: ")
    for fragment in fragments:
        assert fragment in error


def test_jsonl_rejection_keeps_a_safe_contact_id_for_context() -> None:
    [outcome] = jsonl(b'{"contactId":"abc","gender":"m"}\n')
    assert isinstance(outcome, Outcome)
    assert outcome.contact_id == "abc"
    [unsafe] = jsonl(b'{"contactId":"a/b"}\n')
    assert isinstance(unsafe, Outcome)
    assert unsafe.contact_id is None  # never echo an id we refuse to send


def test_jsonl_bom_blank_lines_and_crlf_keep_physical_line_numbers() -> None:
    data = (
        b"\xef\xbb\xbf"
        + b'{"contactId":"a","tags":["x"]}\r\n'
        + b"\r\n"
        + b"   \n"
        + b"\n"
        + b'{"contactId":"b","dnd":true}\r\n'
        + b'{"contactId":"c"}'  # the last line has no newline
    )
    items = jsonl(data)
    assert [(i.line, i.contact_id) for i in items] == [(1, "a"), (5, "b"), (6, "c")]
    assert all(isinstance(i, Record) for i in items)


def test_jsonl_bom_only_at_the_start() -> None:
    items = jsonl(b'{"contactId":"a"}\n\xef\xbb\xbf{"contactId":"b"}\n')
    assert isinstance(items[0], Record)
    assert "malformed JSON" in rejected(items[1])


def test_jsonl_huge_line_is_rejected_in_bounded_memory() -> None:
    huge = b'{"contactId":"big","firstName":"' + b"a" * (8 * MAX_LINE_BYTES) + b'"}\n'
    data = GOOD_BEFORE + huge + GOOD_AFTER
    tracemalloc.start()
    try:
        items = jsonl(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_BYTES  # the line is 8 MiB; at most a couple of chunks are held
    assert [i.line for i in items] == [1, 2, 3]
    assert rejected(items[1]) == "line 2: longer than 1 MiB"
    assert isinstance(items[2], Record)


def test_jsonl_line_at_the_cap_is_accepted() -> None:
    head = b'{"contactId":"edge","firstName":"'
    line = head + b"a" * (MAX_LINE_BYTES - len(head) - 2) + b'"}'
    assert len(line) == MAX_LINE_BYTES
    items = jsonl(line + b"\r\n" + GOOD_AFTER)
    assert isinstance(items[0], Record)
    assert items[1].line == 2
    assert "longer than" in rejected(jsonl(b"x" + line + b"\n")[0])


def test_jsonl_value_key_field_value_spelling_is_honoured() -> None:
    line = b'{"contactId":"x","customFields":[{"id":"f","fieldValue":["a","b"]}]}\n'
    [record] = jsonl(line, value_key="fieldValue")
    assert body(record) == {"customFields": [{"id": "f", "field_value": ["a", "b"]}]}
    [outcome] = jsonl(line.replace(b"fieldValue", b"field_value"), value_key="fieldValue")
    assert "`field_value`" in rejected(outcome)
    bad = b'{"contactId":"x","customFields":[{"id":"f","fieldValue":null}]}\n'
    [outcome] = jsonl(bad, value_key="fieldValue")
    assert "`$.customFields[0].fieldValue`" in rejected(outcome)


def test_jsonl_is_lazy() -> None:
    class CountingStream(io.BytesIO):
        lines_read = 0

        def readline(self, size: int | None = -1, /) -> bytes:
            self.lines_read += 1
            return super().readline(size)

    stream = CountingStream(b"".join(b'{"contactId":"c%d"}\n' % i for i in range(1000)))
    items = read_jsonl(stream)
    assert stream.lines_read == 0
    next(items)
    assert stream.lines_read == 1


class GeneratedLines(io.RawIOBase):
    """A binary stream of ``count`` JSONL lines made on demand: no file, no list in memory."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> bytes:
        if self.produced >= self.count:
            return b""
        self.produced += 1
        return b'{"contactId":"c%d","firstName":"N%d","tags":["t"]}\n' % (
            self.produced,
            self.produced,
        )


def test_jsonl_streams_200k_lines_without_memory_growth() -> None:
    items = read_jsonl(GeneratedLines(200_000))
    for _ in range(20_000):  # warm up caches and allocator pools before measuring
        next(items)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        count = 20_000
        for item in items:
            assert isinstance(item, Record)
            count += 1
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert current - base < 64 * 1024
    assert peak - base < 256 * 1024


# Bodies that the API accepts, as JSON builtins: a round trip through the reader and the encoder
# gives them back unchanged.
# Any text a field can hold: control characters other than tab, LF and CR reject their record.
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc"]) | st.sampled_from("\t\n\r"),
    max_size=12,
)
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "firstName": st.none() | _text,
        "lastName": _text,
        "email": st.none() | _text,
        "postalCode": _text,
        "dnd": st.booleans(),
        "tags": st.lists(_text, max_size=4),
        "country": st.sampled_from(["US", "GB", "DE"]),
        "dateOfBirth": st.sampled_from(["1990-01-31", "01/31/1990", None]),
        "dndSettings": st.fixed_dictionaries(
            {},
            optional={
                "SMS": st.fixed_dictionaries(
                    {"status": st.sampled_from(["active", "inactive", "permanent"])},
                    optional={"message": _text},
                ),
                "WhatsApp": st.fixed_dictionaries({"status": st.just("inactive")}),
            },
        ),
        "inboundDndSettings": st.fixed_dictionaries(
            {"all": st.fixed_dictionaries({"status": st.sampled_from(["active", "inactive"])})}
        ),
        "customFields": st.lists(
            st.fixed_dictionaries(
                {"id": _text.filter(bool)},
                optional={
                    "key": _text,
                    "field_value": _text
                    | st.integers(-(2**53 - 1), 2**53 - 1)
                    | st.lists(_text, max_size=3),
                },
            ),
            max_size=3,
        ),
    },
)


@settings(max_examples=200, deadline=None)
@given(contact_id=st.from_regex(r"[A-Za-z0-9]{1,24}", fullmatch=True), fields=_bodies)
def test_jsonl_round_trip_gives_back_the_body_minus_contact_id(
    contact_id: str, fields: dict[str, Any]
) -> None:
    line = msgspec.json.encode({"contactId": contact_id, **fields}) + b"\n"
    [record] = jsonl(line)
    assert isinstance(record, Record)
    assert record.contact_id == contact_id
    assert body(record) == fields


# ---------------------------------------------------------------------------------------------
# CSV

HEADER = (
    "contactId,firstName,postalCode,tags,dnd,dndSettings.SMS.status,"
    "inboundDndSettings.all.status,customFields.f1\n"
)
CSV_GOOD_BEFORE = "before,A,,,,,,\n"
CSV_GOOD_AFTER = "after,,,,,,,\n"

CSV_BAD = [
    ("fewer-cells", "x,A", ["2 cells, but the header has 8 columns"]),
    ("more-cells", "x,A,,,,,,,extra", ["9 cells, but the header has 8 columns"]),
    ("missing-id", ",A,,,,,,", ["missing contactId"]),
    ("unsafe-id", "a/b,,,,,,,", ["'/'", "`$.contactId`"]),
    ("spaced-id", " x,,,,,,,", ["' '", "`$.contactId`"]),
    ("null-not-nullable", "x,,null,,,,,", ["`$.postalCode`"]),
    ("dnd-word", "x,,,,yes,,,", ["Expected `bool`", "`$.dnd`"]),
    ("dnd-null", "x,,,,null,,,", ["`$.dnd`"]),
    ("bad-enum", "x,,,,,maybe,,", ["'maybe'", "`$.dndSettings.SMS.status`"]),
    ("inbound-enum", "x,,,,,,permanent,", ["`$.inboundDndSettings.all.status`"]),
    ("custom-null", "x,,,,,,,null", ["`$.customFields[0].field_value`", "`customFields.f1`"]),
    ("custom-json", "x,,,,,,,json:{oops", ["malformed JSON in column `customFields.f1`"]),
    ("custom-json-null", "x,,,,,,,json:null", ["`customFields.f1`"]),
    ("tags-json", 'x,,,"[1,2]",,,,', ["`$.tags[0]`"]),
    ("tags-bad-json", "x,,,[oops,,,,", ["malformed JSON in column `tags`"]),
]


@pytest.mark.parametrize(
    ("bad", "fragments"), [(c[1], c[2]) for c in CSV_BAD], ids=[c[0] for c in CSV_BAD]
)
def test_csv_bad_row_is_rejected_alone(bad: str, fragments: list[str]) -> None:
    items = csv_items(HEADER + CSV_GOOD_BEFORE + bad + "\n" + CSV_GOOD_AFTER)
    assert len(items) == 3
    first, middle, last = items
    assert first == Record(2, "before", UpdateContact(first_name="A"))
    assert last == Record(4, "after", UpdateContact())
    error = rejected(middle)
    assert middle.line == 3
    assert error.startswith("line 3: ")
    for fragment in fragments:
        assert fragment in error


def test_csv_empty_cells_are_omitted_and_fields_are_mapped() -> None:
    text = (
        HEADER
        + 'c1,Ann,,"vip,  newsletter , ,",TRUE,active,inactive,json:42\n'
        + "c2,,,,,,,\n"
        + "c3,null,,[],false,,,plain text\n"
    )
    one, two, three = csv_items(text)
    assert body(one) == {
        "firstName": "Ann",
        "tags": ["vip", "newsletter"],
        "dnd": True,
        "dndSettings": {"SMS": {"status": "active"}},
        "inboundDndSettings": {"all": {"status": "inactive"}},
        "customFields": [{"id": "f1", "field_value": 42}],
    }
    assert body(two) == {}
    assert body(three) == {
        "firstName": None,
        "tags": [],
        "dnd": False,
        "customFields": [{"id": "f1", "field_value": "plain text"}],
    }


def test_csv_dotted_dnd_columns_build_one_nested_object() -> None:
    text = (
        "contactId,dndSettings.SMS.status,dndSettings.SMS.message,dndSettings.Email.status,"
        "dndSettings.WhatsApp.code,inboundDndSettings.all.message\n"
        "c1,permanent,asked us,inactive,,\n"
    )
    [record] = csv_items(text)
    assert body(record) == {
        "dndSettings": {
            "SMS": {"status": "permanent", "message": "asked us"},
            "Email": {"status": "inactive"},
        }
    }


def test_csv_whole_json_columns_and_custom_field_lists() -> None:
    text = (
        "contactId,customFields,dndSettings\n"
        'c1,"[{""id"":""f"",""field_value"":[""a"",""b""]}]","{""FB"":{""status"":""active""}}"\n'
    )
    [record] = csv_items(text)
    assert body(record) == {
        "customFields": [{"id": "f", "field_value": ["a", "b"]}],
        "dndSettings": {"FB": {"status": "active"}},
    }


def test_csv_tag_with_a_comma_via_json_array() -> None:
    [record] = csv_items('contactId,tags\nc1,"[""a,b"", ""c""]"\n')
    assert body(record) == {"tags": ["a,b", "c"]}


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("contactId,gender", "unknown field `gender` (column 2)"),
        ("contactId,firstname", "unknown field `firstname` (column 2)"),
        ("contactId,dndSettings.sms.status", "unknown field `dndSettings.sms.status`"),
        ("contactId,dndSettings.SMS", "unknown field `dndSettings.SMS`"),
        ("contactId,inboundDndSettings.all.code", "unknown field `inboundDndSettings.all.code`"),
        ("contactId,customFields.", "unknown field `customFields.`"),
        ("contactId,firstName,firstName", "duplicate column `firstName` (column 3)"),
        ("id,firstName", "missing contactId (the header has no `contactId` column)"),
        ("contactId,tags,customFields,customFields.f", "cannot be combined"),
    ],
)
def test_csv_header_problem_rejects_every_record_naming_the_column(
    header: str, fragment: str
) -> None:
    width = header.count(",") + 1
    rows = "".join(f"c{i}" + "," * (width - 1) + "\n" for i in range(3))
    items = csv_items(header + "\n" + rows)
    assert [i.line for i in items] == [2, 3, 4]
    for item in items:
        assert fragment in rejected(item)


def test_csv_unnamed_column_is_ignored_while_empty() -> None:
    ok, bad = csv_items("contactId,firstName,\nc1,A,\nc2,B,oops\n")
    assert body(ok) == {"firstName": "A"}
    assert "column 3, which has no name" in rejected(bad)


def test_csv_embedded_newlines_keep_the_starting_physical_line() -> None:
    text = (
        "contactId,firstName,lastName\n"
        'c1,"two\nlines",x\n'
        "\n"
        'c2,"three\r\nphysical\nlines",y\n'
        "c3,z,\n"
    )
    items = csv_items(text)
    assert [(i.line, i.contact_id) for i in items] == [(2, "c1"), (5, "c2"), (8, "c3")]
    assert body(items[1]) == {"firstName": "three\r\nphysical\nlines", "lastName": "y"}


def test_csv_bom_crlf_and_last_line_without_newline() -> None:
    data = b"\xef\xbb\xbfcontactId,firstName\r\nc1,A\r\n\r\nc2,B"
    items = csv_items(data)
    assert [(i.line, i.contact_id) for i in items] == [(2, "c1"), (4, "c2")]
    assert all(isinstance(i, Record) for i in items)


def test_csv_invalid_utf8_rejects_only_its_record() -> None:
    data = b'contactId,firstName\nc1,A\nc2,\xff\xfe\nc3,"multi\n\xc3(\nline"\nc4,D\n'
    items = csv_items(data)
    assert [i.line for i in items] == [2, 3, 4, 7]
    assert isinstance(items[0], Record)
    assert rejected(items[1]).startswith("line 3: invalid UTF-8")
    # The bad byte is on physical line 5, inside a record that starts on line 4.
    error = rejected(items[2])
    assert error.startswith("line 4: invalid UTF-8 (byte 0xc3")
    assert error.endswith("on physical line 5")
    assert isinstance(items[3], Record)


def test_csv_huge_line_is_rejected_and_the_rest_go_on() -> None:
    huge = b"big," + b"a" * (2 * MAX_LINE_BYTES) + b"\n"
    items = csv_items(b"contactId,firstName\nc1,A\n" + huge + b"c3,C\n")
    assert [i.line for i in items] == [2, 3, 4]
    assert rejected(items[1]) == "line 3: longer than 1 MiB"
    assert isinstance(items[2], Record)


def test_csv_cell_over_the_csv_field_limit_is_rejected() -> None:
    items = csv_items(b'contactId,firstName\nc1,"' + b"a" * 200_000 + b'"\nc2,B\n')
    assert [i.line for i in items] == [2, 3]
    assert "field larger than field limit" in rejected(items[0])
    assert isinstance(items[1], Record)


def test_csv_header_only_or_empty_has_no_records() -> None:
    assert csv_items("contactId,firstName\n") == []
    assert csv_items("") == []
    assert csv_items("\n\n") == []


# ---------------------------------------------------------------------------------------------
# Opening and counting


def test_open_source_by_extension(tmp_path: Path) -> None:
    j = tmp_path / "in.JSONL"
    j.write_bytes(b'{"contactId":"a"}\n')
    n = tmp_path / "in.ndjson"
    n.write_bytes(b'{"contactId":"b"}\n')
    c = tmp_path / "in.csv"
    c.write_bytes(b"contactId\nc\n")
    for path, kind, expected in ((j, "jsonl", "a"), (n, "jsonl", "b"), (c, "csv", "c")):
        with open_source(str(path)) as source:
            assert source.kind == kind
            assert source.name == str(path)
            [record] = list(source)
            assert isinstance(record, Record)
            assert record.contact_id == expected


def test_open_source_dash_reads_stdin_and_leaves_it_open() -> None:
    stdin = io.BytesIO(b'{"contactId":"a","customFields":[{"id":"f","fieldValue":"v"}]}\n')
    with open_source("-", "fieldValue", stdin=stdin) as source:
        assert source.name == "-"
        [record] = list(source)
    assert isinstance(record, Record)
    assert not stdin.closed


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.jsonl, \.ndjson, \.csv, \.tsv or \.txt"):
        open_source(str(tmp_path / "in.json"))
    with pytest.raises(InputError, match="cannot read input"):
        open_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match="cannot read input"):
        open_source(str(tmp_path / "dir.csv"))


def test_count_records(tmp_path: Path) -> None:
    j = tmp_path / "a.jsonl"
    j.write_bytes(b"{}\n" * 5)
    assert count_records(str(j)) == 5
    j.write_bytes(b"{}\n{}")
    assert count_records(str(j)) == 2
    j.write_bytes(b"")
    assert count_records(str(j)) == 0
    c = tmp_path / "a.csv"
    c.write_bytes(b"contactId\n" + b"x\n" * 3)
    assert count_records(str(c)) == 3
    assert count_records("-") is None
    assert count_records(str(tmp_path / "missing.jsonl")) is None


# -- quotes left open and bare carriage returns (found by the red team) -----------------------


@pytest.mark.parametrize("rows", [3, 3000])
def test_a_quote_left_open_rejects_its_line_and_every_later_record_is_read(rows: int) -> None:
    # A nickname typed `"Bob` opens a quoted cell that nothing closes: before, the rest of the
    # file became Bob's first name and every later record was lost, with exit 0.
    lines = [f"c{n},N{n}" for n in range(1, rows + 1)]
    lines[1] = 'c2,"Bob'
    items = csv_items("contactId,firstName\n" + "\n".join(lines) + "\n")
    assert len(items) == rows
    assert [i.line for i in items] == list(range(2, rows + 2))
    bad = items[1]
    assert isinstance(bad, Outcome)
    assert bad.error is not None
    assert 'line 3: a quote (") opened on this line is never closed' in bad.error
    records = [i for i in items if isinstance(i, Record)]
    assert len(records) == rows - 1
    assert all(r.update.first_name == f"N{r.contact_id[1:]}" for r in records)


def test_a_long_quoted_cell_over_many_lines_is_still_one_record() -> None:
    address = "\n".join(f"line {n}" for n in range(20))
    items = csv_items(f'contactId,address1\nc1,"{address}"\nc2,x\n')
    assert [type(i).__name__ for i in items] == ["Record", "Record"]
    first = items[0]
    assert isinstance(first, Record)
    assert first.update.address1 == address
    assert items[1].line == 22


def test_a_bare_cr_ends_a_csv_line() -> None:
    items = csv_items(b"contactId,firstName\r\nc1,A\rc2,B\nc3,C\r\n")
    assert [(i.line, i.contact_id) for i in items] == [(2, "c1"), (3, "c2"), (4, "c3")]
    assert all(isinstance(i, Record) for i in items)
    only_cr = csv_items(b"contactId,firstName\rc1,A\rc2,B\r")
    assert [(i.line, i.contact_id) for i in only_cr] == [(2, "c1"), (3, "c2")]


def test_a_bare_cr_in_jsonl_is_named() -> None:
    items = jsonl(b'{"contactId":"a"}\r{"contactId":"b"}\n{"contactId":"c"}\n')
    assert isinstance(items[0], Outcome)
    assert "bare carriage return at byte 17" in str(items[0].error)
    assert isinstance(items[1], Record)


_LINE_KINDS = st.sampled_from(
    [b"", b"  ", b"\t\r", b"\x0b", b'{"contactId":"c1","firstName":"A"}', b'  {"a":1}  ', b"x" * 40]
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINE_KINDS, max_size=30),
    final_newline=st.booleans(),
    chunk=st.sampled_from([1, 2, 7, 16, 64, 1 << 20]),
    bom=st.booleans(),
)
def test_the_chunked_count_is_the_readers_count(
    lines: list[bytes], final_newline: bool, chunk: int, bom: bool
) -> None:
    """Lines counted a chunk at a time (any chunk size, lines longer than a chunk, blank lines at
    chunk edges): as many as the JSONL reader yields items."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    data = (codecs.BOM_UTF8 if bom else b"") + data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(data)
        with open(path, "rb") as f:
            read = sum(1 for _ in read_jsonl(f))
        saved = sources._COUNT_CHUNK
        sources._COUNT_CHUNK = chunk
        try:
            counted = count_records(str(path))
        finally:
            sources._COUNT_CHUNK = saved
    assert counted == read
