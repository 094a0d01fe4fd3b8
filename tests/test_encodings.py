"""Issue 12, item 11: input that is not UTF-8 is read (UTF-16, UTF-32) or refused, never skipped.

An Excel "Unicode text" export (UTF-16-LE with a BOM, tab separated, CRLF, ``.txt``) and UTF-16
or UTF-32 JSONL and CSV, with or without a byte order mark, give exactly the items their UTF-8
copy gives. A header that is not UTF-8 (Excel's plain CSV on Windows is Windows-1252) stops the
run before anything is sent (exit 2, naming the problem); so does one with NUL bytes.
"""

from __future__ import annotations

import codecs
import io
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_helpers import journal_lines, run_cli, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from recorder_server import Recorder, serve_recorder
from test_journal_hardening import args

from growthhub_async.errors import InputError
from growthhub_async.outcomes import Outcome, Status
from growthhub_async.sources import Item, Record, open_source, read_csv, read_jsonl

ENCODINGS = ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]
BOMS = {
    "utf-16-le": codecs.BOM_UTF16_LE,
    "utf-16-be": codecs.BOM_UTF16_BE,
    "utf-32-le": codecs.BOM_UTF32_LE,
    "utf-32-be": codecs.BOM_UTF32_BE,
}

JSONL = (
    '{"contactId":"c1","firstName":"Zoë","tags":["vip","😀"]}\n'
    "\n"
    '{"contactId":"c2","lastName":"Łukasiewicz","customFields":[{"id":"f","field_value":"ß"}]}\n'
    '{"contactId":"c3","gender":"x"}\n'  # rejected: unknown field
    "not json\n"
    '{"contactId":"c4","city":"Zürich"}'  # no newline at the end
)
CSV = (
    "contactId,firstName,tags,customFields.f\r\n"
    'c1,Zoë,"vip, 😀",ß\r\n'
    "c2,,,\r\n"
    'c3,"Multi\r\nline",,\r\n'
    "c4,x,y\r\n"  # rejected: 3 cells
)


def items_of(data: bytes, *, jsonl: bool) -> list[Item]:
    return list((read_jsonl if jsonl else read_csv)(io.BytesIO(data)))


@pytest.mark.parametrize("bom", [True, False], ids=["bom", "no-bom"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("jsonl", [True, False], ids=["jsonl", "csv"])
# Blank lines first (red team B2): in UTF-16-LE without a BOM the first line, LF alone, shows
# no zero byte; the zero starts the next line.
@pytest.mark.parametrize("lead", ["", "\n", "\n\n", "\r\n"], ids=["", "lf", "2lf", "crlf"])
def test_utf16_and_utf32_read_like_utf8(encoding: str, bom: bool, jsonl: bool, lead: str) -> None:
    text = lead + (JSONL if jsonl else CSV)
    expected = items_of(text.encode(), jsonl=jsonl)
    data = (BOMS[encoding] if bom else b"") + text.encode(encoding)
    assert items_of(data, jsonl=jsonl) == expected
    assert sum(isinstance(i, Record) for i in expected) == 3
    assert sum(isinstance(i, Outcome) for i in expected) == (2 if jsonl else 1)


def test_excel_unicode_text_export(tmp_path: Path) -> None:
    """Excel's "Unicode Text (*.txt)": UTF-16-LE, BOM, tab separated, CRLF, cells with commas."""
    table = [
        ["contactId", "firstName", "lastName", "tags", "city"],
        ["a1", "José", "Nuñez, Jr.", "vip, newsletter", "Málaga"],
        ["a2", "Ærin", "", "", "Tromsø"],
    ]
    text = "".join("\t".join(row) + "\r\n" for row in table)
    path = tmp_path / "contacts.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    with open_source(str(path)) as source:
        items = list(source)
    assert all(isinstance(i, Record) for i in items)
    first, second = (i for i in items if isinstance(i, Record))
    assert (first.line, first.contact_id) == (2, "a1")
    assert first.update.first_name == "José"
    assert first.update.last_name == "Nuñez, Jr."
    assert first.update.tags == ["vip", "newsletter"]
    assert first.update.city == "Málaga"
    assert (second.line, second.update.first_name, second.update.city) == (3, "Ærin", "Tromsø")


@pytest.mark.parametrize(("delimiter", "suffix"), [("\t", ".tsv"), (";", ".csv"), (",", ".txt")])
def test_the_header_shows_the_separator(tmp_path: Path, delimiter: str, suffix: str) -> None:
    path = tmp_path / f"in{suffix}"
    path.write_text(
        delimiter.join(["contactId", "firstName", "tags"])
        + "\n"
        + delimiter.join(["c1", '"Smith, A; B"', '"x, y"'])
        + "\n",
        encoding="utf-8",
    )
    with open_source(str(path)) as source:
        [record] = list(source)
    assert isinstance(record, Record)
    assert record.update.first_name == "Smith, A; B"
    assert record.update.tags == ["x", "y"]


def test_a_windows_1252_header_is_fatal_and_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes("contactId,Prénom\nc1,Zoé\n".encode("cp1252"))
    with pytest.raises(InputError) as info:
        open_source(str(path))
    message = str(info.value)
    assert "the header (line 1) cannot be read: invalid UTF-8 (byte 0xe9" in message
    assert "Windows-1252" in message
    assert "iconv" in message


def test_a_header_with_nul_bytes_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\x00\x00contactId\nc1\n")
    with pytest.raises(InputError, match=r"header \(line 1\) holds NUL bytes"):
        open_source(str(path))


def test_undecodable_utf16_rejects_only_its_line() -> None:
    good = '{"contactId":"c1"}\n'.encode("utf-16-le")
    lone = '{"contactId":"c2","firstName":"'.encode("utf-16-le") + b"\x00\xd8" + b'"\x00}\x00\n\x00'
    data = codecs.BOM_UTF16_LE + good + lone + good + b"\x00"  # and an odd byte at the end
    items = items_of(data, jsonl=True)
    assert [i.line for i in items] == [1, 2, 3, 4]
    assert isinstance(items[0], Record)
    assert isinstance(items[2], Record)
    for bad in (items[1], items[3]):
        assert isinstance(bad, Outcome)
        assert bad.status is Status.REJECTED
        assert bad.error is not None
        assert "invalid UTF-16-LE text" in bad.error


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["firstName", "lastName", "city", "companyName"]),
            st.text(max_size=15),
            max_size=3,
        ),
        max_size=8,
    ),
    st.sampled_from(ENCODINGS),
    st.booleans(),
)
def test_any_text_reads_the_same_in_any_encoding(
    rows: list[dict[str, str]], encoding: str, bom: bool
) -> None:
    text = "".join(
        json.dumps({"contactId": f"c{n}", **row}, ensure_ascii=False) + "\n"
        for n, row in enumerate(rows)
    )
    data = (BOMS[encoding] if bom else b"") + text.encode(encoding, "surrogatepass")
    assert items_of(data, jsonl=True) == items_of(text.encode("utf-8", "surrogatepass"), jsonl=True)


class Utf16Lines(io.RawIOBase):
    """A UTF-16-LE JSONL stream (with BOM) of ``count`` lines made on demand."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = 0
        self.pending = codecs.BOM_UTF16_LE

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> bytes:
        if not self.pending and self.produced < self.count:
            self.produced += 1
            line = f'{{"contactId":"c{self.produced}","firstName":"Zoë {self.produced}"}}\n'
            self.pending = line.encode("utf-16-le")
        limit = len(self.pending) if size is None or size < 0 else size
        out, self.pending = self.pending[:limit], self.pending[limit:]
        return out


def test_utf16_is_streamed_in_bounded_memory() -> None:
    items = read_jsonl(Utf16Lines(60_000))
    for _ in range(5_000):
        next(items)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        count = 5_000
        for item in items:
            assert isinstance(item, Record)
            count += 1
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 60_000
    assert current - base < 64 * 1024
    assert peak - base < 256 * 1024


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    async with serve_recorder() as rec:
        yield rec


async def test_an_excel_unicode_export_is_sent_whole(recorder: Recorder, tmp_path: Path) -> None:
    text = "contactId\tfirstName\tcity\r\n" + "".join(
        f"u{n:03d}\tZoë{n}\tZürich\r\n" for n in range(1, 41)
    )
    data = tmp_path / "export.txt"
    data.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    out = tmp_path / "out.jsonl"
    ran = await run_cli(*args(data, out, recorder.base_url), limit=30)
    assert ran.status == 0, ran.stderr
    assert sorted(recorder.puts) == [
        (f"u{n:03d}", {"firstName": f"Zoë{n}", "city": "Zürich"}) for n in range(1, 41)
    ]
    assert sorted(o["line"] for o in journal_lines(out)) == list(range(2, 42))


async def test_a_cp1252_csv_exits_2_before_anything(recorder: Recorder, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_bytes("contactId,Prénom\nc1,Zoé\nc2,Zoë\n".encode("cp1252"))
    out = tmp_path / "out.jsonl"
    ran = await run_cli(*args(data, out, recorder.base_url), limit=30)
    assert ran.status == 2, ran.stdout
    assert "header (line 1) cannot be read: invalid UTF-8" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
    assert recorder.puts == []
    assert not out.exists()


async def test_an_empty_input_says_so(recorder: Recorder, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [])
    ran = await run_cli(*args(data, tmp_path / "out.jsonl", recorder.base_url), limit=30)
    assert ran.status == 0
    assert "holds no records: nothing was sent" in ran.stderr
