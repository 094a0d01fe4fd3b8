"""Input files as lazy streams of records: JSONL (NDJSON) and CSV, never loaded whole.

Every input record becomes exactly one item: a :class:`Record` ready to send, or a ``rejected``
:class:`~growthhub_async.outcomes.Outcome` (never sent) whose ``error`` starts with
``line N:`` and names the field, in msgspec's words where msgspec found the problem::

    line 7: Expected `str | null`, got `int` - at `$.firstName`
    line 3: Object contains unknown field `gender`
    line 9: malformed JSON: invalid character (byte 12)
    line 4: not a JSON object (got array)
    line 5: missing contactId
    line 6: unsafe contact id 'a/b': contains '/' at position 1 (...) - at `$.contactId`
    line 8: duplicate key `contactId` in one object (which value was meant?)

A bad record never stops the others. Only a file that cannot be read as a whole (missing,
unreadable, unknown extension, a CSV header that is not text) raises
:class:`~growthhub_async.errors.InputError`; :func:`open_source` reads the first record at
once, so that this happens before any work starts.

Common rules
------------
- ``line`` is the 1-based *physical* line number where the record starts, so an editor's "go to
  line" finds it. Blank lines are skipped (they are not records) but still counted.
- Encodings: UTF-8 (a byte order mark at the start is ignored), and UTF-16 and UTF-32 in
  either byte order, told by their byte order mark or, without one, by the zero bytes around
  the first characters (RFC 4627, section 3). UTF-16/32 input is decoded as it streams, one
  line at a time, into UTF-8 lines for the readers: memory stays bounded.
- A line that is not valid text rejects its record ("invalid UTF-8", "invalid UTF-16-LE
  text"); the others go on.
- A line longer than :data:`MAX_LINE_BYTES` (1 MiB) rejects its record ("longer than 1 MiB")
  and is skipped in bounded chunks: memory never holds more than about one such chunk.
- A control character in a value (C0 but tab, line feed and carriage return; DEL; C1) rejects
  its record, naming the character, its position and the column or JSON path: a NUL raw in a
  CSV cell and ``\u0000`` in a JSON string alike (JSON cannot hold one raw). Only lines with a
  backslash escape (JSONL) or a control character (a CSV row) are looked at closely.

JSONL (``.jsonl``, ``.ndjson``, or ``-`` for standard input)
------------------------------------------------------------
One JSON object per line: ``contactId`` plus Update Contact body fields under their API names
(``firstName``, ``dndSettings``, ``customFields``, ...), exactly as the request body would hold
them. A custom field's value sits under ``field_value`` (the v2 spelling) or, with
``value_key="fieldValue"``, under ``fieldValue``; the other spelling is an unknown field. Each
line is decoded once, into builtins, and validated once (``msgspec.convert``); this measured
faster than decoding into a ``contactId``-bearing subclass and copying into ``UpdateContact``.

CSV (``.csv``, ``.tsv``, ``.txt``)
----------------------------------
RFC 4180 as Python's ``csv`` module reads it (``"`` quoting, quoted cells may span lines). The
separator is what the header line shows: comma, tab or semicolon, whichever makes a
``contactId`` column (an Excel "Unicode text" export, UTF-16 and tab separated, reads as it
is). The first row is the header; one column must be ``contactId``; the others are named after
API fields:

- **A header line that cannot be read** (not valid UTF-8, as Excel's plain "CSV" on Windows
  writes it in Windows-1252; NUL bytes; over 1 MiB) raises ``InputError`` naming the problem:
  no record of such a file can be understood, and none is skipped silently.
- **Empty cell: leave the field unchanged** (it is omitted from the request), never "blank it".
- **``null``**: the literal cell ``null`` clears a nullable field (sends JSON ``null``); on a field
  the API does not let you clear (``postalCode``, ``country``, ...) it rejects the record. There
  is therefore no way to set a text field to the four letters ``null`` from CSV; use JSONL.
- Plain text fields (``firstName``, ``email``, ``dateOfBirth``, ``country``, ...): the cell
  verbatim, no trimming (a stray space is sent as typed).
- ``dnd``: ``true`` or ``false`` (any case); anything else rejects the record.
- ``tags``: one cell, tags separated by commas, whitespace around each tag trimmed, empty items
  dropped: ``vip, newsletter`` sends ``["vip", "newsletter"]``. A cell starting with ``[`` is read
  as a JSON array instead (``["a,b"]`` for a tag holding a comma; ``[]`` clears every tag).
  ``tags`` replaces the contact's whole tag list, as in the API.
- Nested fields by dotted names: ``dndSettings.<Channel>.<status|message|code>`` with a channel
  of ``Call``, ``Email``, ``SMS``, ``WhatsApp``, ``GMB``, ``FB``; and
  ``inboundDndSettings.all.<status|message>``.
- Custom fields: one column per field, ``customFields.<fieldId>``. The cell is sent as a string;
  to send a number, a list or an object, write a JSON literal after the prefix ``json:``
  (``json:42``, ``json:["red","blue"]``).
- A column named ``dndSettings``, ``inboundDndSettings`` or ``customFields`` takes the whole
  value as JSON in one cell; it cannot be combined with dotted columns of the same field.
- A header problem (an unknown column, a duplicate, a dotted name that means nothing, no
  ``contactId`` column) rejects every record, naming the column: the fix is in the header, and
  no record is sent with a column silently ignored. A column with an empty name is ignored while
  its cells are empty and rejects the records where they are not.
- A row with more or fewer cells than the header rejects that record.
- Python's ``csv`` limits a single cell to 131,072 characters; a longer cell rejects its record.

Duplicate keys
--------------
A key given twice in one JSON object (two ``contactId``, or twice ``firstName``, at any depth,
also in a CSV cell holding JSON) rejects the record, naming the key: parsers keep the last
value silently, and which one the user meant is a guess. The check costs about 1.5 µs a line
(count ``":`` against the decoded keys); only lines where the count differs, or with white space
before a colon, are parsed a second time to find the key.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from functools import partial
from types import TracebackType
from typing import IO, Any, Final, Literal, Protocol, TypeAlias

import msgspec

from growthhub_async.contact_id import LOCATION_KEY, check_contact_id, location_problem
from growthhub_async.errors import InputError, InvalidContactId
from growthhub_async.models import (
    CustomFieldValueKey,
    DndSettings,
    UpdateContact,
    UpdateContactCodec,
)
from growthhub_async.outcomes import Outcome, Status

__all__ = [
    "MAX_LINE_BYTES",
    "BinaryLines",
    "Item",
    "Record",
    "Source",
    "count_records",
    "open_source",
    "read_csv",
    "read_jsonl",
    "same_file",
]

MAX_LINE_BYTES: Final = 1 << 20
"""The longest physical line accepted (1 MiB, not counting its line ending)."""

# Byte order marks, longest first (UTF-32-LE's starts with UTF-16-LE's).
_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# What a decoding error becomes in a UTF-16/32 input: a lone surrogate, which no valid UTF-16/32
# text decodes to and which UTF-8 cannot hold, so the line it lands on is rejected.
_MARK: Final = "growthhub_async.invalid-text"
codecs.register_error(_MARK, lambda exc: ("\udcff", exc.end))  # type: ignore[attr-defined]
# Room for the line ending, so that a line of exactly MAX_LINE_BYTES plus "\r\n" still fits.
_READ_LIMIT: Final = MAX_LINE_BYTES + 2
_COUNT_CHUNK: Final = 1 << 20


class Record(msgspec.Struct, frozen=True):
    """One record to send: where it came from, whom to update, with what, and with which token.

    ``line`` is the 1-based physical line where the record starts in its input (or the position
    in whatever iterable the caller hands the bulk engine). ``token_key`` names one of the
    client's tokens; ``None`` means the run's or the client's default.
    """

    line: int
    contact_id: str
    update: UpdateContact
    token_key: str | None = None


Item: TypeAlias = Record | Outcome
"""What a source yields: a record to send, or a ``rejected`` outcome for a bad one."""

InputKind: TypeAlias = Literal["jsonl", "csv"]


class BinaryLines(Protocol):
    """What the readers need of a stream: ``readline(size)`` returning bytes (a binary file)."""

    def readline(self, size: int = -1, /) -> bytes:
        """At most ``size`` bytes, up to and including the next newline; ``b""`` at the end."""
        ...


def _reject(line: int, message: str, contact_id: str | None = None) -> Outcome:
    return Outcome(
        line=line, contact_id=contact_id, status=Status.REJECTED, error=f"line {line}: {message}"
    )


_TOO_LONG: Final = f"longer than {MAX_LINE_BYTES // (1 << 20)} MiB"
_TOO_DEEP: Final = "malformed JSON: nested too deeply"


def _invalid_text(exc: UnicodeDecodeError, encoding: str) -> str:
    if encoding != "utf-8":  # the offset would be in our UTF-8 copy: meaningless to the user
        return f"invalid {encoding.upper()} text"
    bad = exc.object[exc.start : exc.start + 1]
    return f"invalid UTF-8 (byte 0x{bad.hex()} at offset {exc.start})"


# Which of the first four bytes are zero -> the encoding (RFC 4627, section 3); a first line
# shorter than four bytes ("{" and a newline in UTF-16-LE) shows fewer.
_BOMLESS: Final[dict[tuple[bool, ...], str]] = {
    (True, True, True, False): "utf-32-be",
    (False, True, True, True): "utf-32-le",
    (True, False, True, False): "utf-16-be",
    (True, False, True): "utf-16-be",
    (True, False): "utf-16-be",
    (False, True, False, True): "utf-16-le",
    (False, True, False): "utf-16-le",
    (False, True): "utf-16-le",
}


def _sniff(head: bytes) -> tuple[str, int]:
    """The encoding of a text file that starts with ``head``, and the length of its BOM.

    A byte order mark decides; without one, zero bytes around the first characters show UTF-16
    or UTF-32 (RFC 4627, section 3: the first characters of JSON, and of our CSV header, are
    ASCII). Anything else is UTF-8.
    """
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    zeros = tuple(byte == 0 for byte in head[:4])
    return _BOMLESS.get(zeros, "utf-8"), 0


class _Prefixed(io.RawIOBase):
    """Bytes already read (``head``), then the rest of ``readline``'s stream: for a decoder."""

    def __init__(self, head: bytes, readline: Callable[[int], bytes]) -> None:
        self._head = head
        self._readline = readline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            data, self._head = self._head[: len(view)], self._head[len(view) :]
        else:
            data = self._readline(len(view))  # any bytes will do: the decoder finds the lines
        view[: len(data)] = data
        return len(data)


class _Transcoded:
    """A UTF-16 or UTF-32 stream read back as UTF-8 lines, for readers that take bytes.

    Streaming: ``readline(size)`` returns at most ``size`` characters (so at most four times as
    many bytes); an undecodable sequence becomes a mark that rejects its line (see ``_MARK``).
    """

    def __init__(self, head: bytes, readline: Callable[[int], bytes], encoding: str) -> None:
        raw = io.BufferedReader(_Prefixed(head, readline))
        self._text = io.TextIOWrapper(raw, encoding=encoding, errors=_MARK, newline="\n")

    def readline(self, size: int = -1, /) -> bytes:
        return self._text.readline(size).encode("utf-8", "surrogatepass")


def _utf8_lines(stream: BinaryLines) -> tuple[bytes, Callable[[int], bytes], str]:
    """The first line of ``stream`` as UTF-8 (BOM removed), a ``readline`` for the rest, and
    the encoding found: UTF-8 is read as it is; UTF-16 and UTF-32 are transcoded, line by line.
    """
    readline = stream.readline
    head = [readline(_READ_LIMIT)]
    # A first line of fewer than four bytes cannot show its encoding: a blank line in UTF-16-LE
    # is LF alone, its zero byte starting the next line. Look at the lines after it too.
    while len(joined := b"".join(head)) < 4 and head[-1]:
        head.append(readline(_READ_LIMIT))
    encoding, bom = _sniff(joined)
    if encoding != "utf-8":
        transcoded = _Transcoded(joined[bom:], readline, encoding)
        return transcoded.readline(_READ_LIMIT), transcoded.readline, encoding
    if len(head) == 1:
        return head[0][bom:], readline, encoding
    ahead = [line for line in head[:0:-1] if line]  # the lines read after the first, last first

    def again(size: int = -1, /) -> bytes:
        return ahead.pop() if ahead else readline(size)

    return head[0][bom:], again, encoding


def _is_too_long(raw: bytes) -> bool:
    """Whether a line read with ``readline(_READ_LIMIT)`` exceeds the cap (rarely evaluated)."""
    content = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    return len(content) > MAX_LINE_BYTES


def _drain_line(readline: Callable[[int], bytes], raw: bytes) -> None:
    """Discard the rest of an over-long line in bounded chunks, up to and including its newline."""
    while raw and not raw.endswith(b"\n"):
        raw = readline(_READ_LIMIT)


# ---------------------------------------------------------------------------------------------
# JSONL


def read_jsonl(
    stream: BinaryLines, *, value_key: CustomFieldValueKey = "field_value"
) -> Iterator[Item]:
    """Yield one item per non-blank line of a binary JSONL stream, lazily.

    ``value_key`` names the key of a custom field's value in the input (``"field_value"`` or
    ``"fieldValue"``), as :class:`~growthhub_async.models.UpdateContactCodec` does.
    """
    codec = UpdateContactCodec(value_key)
    convert = codec.convert
    decode = msgspec.json.Decoder().decode
    first, readline, encoding = _utf8_lines(stream)
    if not first:
        return
    lineno = 0
    for raw in itertools.chain((first,), iter(partial(readline, _READ_LIMIT), b"")):
        lineno += 1
        if len(raw) >= MAX_LINE_BYTES and _is_too_long(raw):
            _drain_line(readline, raw)
            yield _reject(lineno, _TOO_LONG)
            continue
        try:
            obj = decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # A blank line fails to decode too; checking here keeps `strip()` off the fast path.
            if not raw.strip():
                continue
            yield _reject(lineno, _why_undecodable(raw, exc, encoding))
            continue
        except RecursionError:
            # msgspec raises this, not a DecodeError, for nesting deeper than Python's stack.
            yield _reject(lineno, _TOO_DEEP)
            continue
        if type(obj) is not dict:
            yield _reject(lineno, f"not a JSON object (got {_json_type(obj)})")
            continue
        if (duplicate := _duplicate_key(raw, obj)) is not None:
            yield _reject(lineno, duplicate)
            continue
        # A control character can only be written escaped (JSON forbids it raw): look for one
        # only in lines with such an escape (rare); most lines have no backslash at all, which
        # one byte search tells (a regular expression's search cost ten times as much). The
        # byte as an int: `b"\\" in raw` first tries the bytes as an int, and formats the
        # TypeError it then drops (about 2,000 instructions a line, issue 17).
        if (
            _BACKSLASH in raw
            and _ESCAPE.search(raw) is not None
            and (control := _control_in(obj, "$")) is not None
        ):
            yield _reject(lineno, control, _safe_id(obj.get("contactId")))
            continue
        yield _jsonl_record(lineno, obj, convert)


def _jsonl_record(
    lineno: int, obj: dict[str, Any], convert: Callable[[Any], UpdateContact]
) -> Item:
    """One decoded JSONL object as a record: ``contactId`` and ``locationId`` taken out (they
    address and route the update; neither goes in the body), the rest validated."""
    contact_id = obj.pop("contactId", None)
    if contact_id is None:
        return _reject(lineno, "missing contactId")
    if type(contact_id) is not str:
        return _reject(lineno, f"Expected `str`, got `{_json_type(contact_id)}` - at `$.contactId`")
    location = obj.pop(LOCATION_KEY, _ABSENT)
    try:
        check_contact_id(contact_id)
        if location is not _ABSENT:
            _check_location(location)
        update = convert(obj)
    except InvalidContactId as exc:
        return _reject(lineno, f"{exc} - at `$.contactId`")
    except _CellError as exc:
        return _reject(lineno, f"{exc} - at `$.locationId`", contact_id)
    except msgspec.ValidationError as exc:
        return _reject(lineno, str(exc), contact_id)
    return Record(lineno, contact_id, update, None if location is _ABSENT else location)


_JSON_TYPES: Final[dict[type, str]] = {
    type(None): "null",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "array",
    dict: "object",
}


def _why_undecodable(raw: bytes, exc: Exception, encoding: str = "utf-8") -> str:
    """Why a line did not decode: invalid UTF-8 (with the byte), else msgspec's JSON complaint.

    msgspec up to 0.22 raises ``UnicodeDecodeError`` for invalid UTF-8 and 0.23 a ``DecodeError``
    ("Invalid UTF-8 encoded string"); asking Python's own decoder gives one answer for both.
    """
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return _invalid_text(bad, encoding)
    why = f"malformed JSON: {_without_prefix(exc)}"
    if (cr := _BARE_CR_BYTES.search(raw.rstrip(b"\r\n"))) is not None:
        why += (
            f" (a bare carriage return at byte {cr.start()}: JSON Lines ends lines with LF or"
            " CRLF, so this line holds whatever comes before the next LF; convert the file's"
            " line ends, e.g. tr '\\r' '\\n')"
        )
    return why


# Control characters a contact field cannot hold: C0 (but tab, line feed and carriage return,
# which multi-line text such as an address holds), DEL and C1. NUL first: a database or a
# C string would cut the value there; the others are binary garbage or a wrong encoding.
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# How a JSON string writes them: \u0000-\u001f, \u007f-\u009f, \b, \f (an escaped backslash
# before "u0000" matches too: the walk then finds nothing).
_BACKSLASH: Final = ord("\\")
_ESCAPE: Final = re.compile(rb"\\(?:u00[0189][0-9a-fA-F]|u007[fF]|[bf])")


def _control_message(text: str, where: str) -> str | None:
    """Why ``text`` cannot be sent (``where``: the field, in the user's terms), or ``None``."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    return (
        f"control character U+{ord(found.group()):04X} (not text a field can hold) at position"
        f" {found.start() + 1} {where}"
    )


def _control_in(value: Any, path: str) -> str | None:
    """Why a decoded JSON ``value`` (at JSON path ``path``) cannot be sent: the first string,
    or object key, holding a control character; ``None`` when none does."""
    if type(value) is str:
        return _control_message(value, f"- at `{path}`")
    if type(value) is dict:
        for key, item in value.items():
            if (why := _control_message(key, f"in a key - at `{path}`")) is not None:
                return why
            if (why := _control_in(item, f"{path}.{key}")) is not None:
                return why
    elif type(value) is list:
        for n, item in enumerate(value):
            if (why := _control_in(item, f"{path}[{n}]")) is not None:
                return why
    return None


def _safe_id(contact_id: object) -> str | None:
    """A JSONL record's contactId for a rejected outcome, when it is a safe string."""
    return _safe(contact_id) if type(contact_id) is str else None


# A quote, then white space, then a colon: a key written `"a" :` (or a string value so).
_SPACED_COLON: Final = re.compile(rb'"\s+:')
_CONTAINERS: Final = (dict, list)


def _duplicate_key(raw: bytes, obj: dict[str, Any] | list[Any]) -> str | None:
    """Why ``raw`` (which decoded to ``obj``) is ambiguous: a key twice in one object, which
    msgspec (like most parsers) takes silently, keeping the last value. ``None`` when not.

    Cheap first: every key written is followed by one colon, so a line with no more colons
    than ``obj`` has keys cannot repeat one (a colon inside a string only adds to the count:
    then, every key is written ``"key":`` or with white space before its colon, so as many
    ``":`` as keys and no spaced colon will do). Only other lines are parsed again, by
    ``json.loads`` with a hook that sees each object's keys in order.
    """
    colons = raw.count(b":")
    if type(obj) is dict and colons == len(obj) and raw.count(b"{") == 1:
        return None  # one object, nothing nested (its only brace): its keys are len(obj)
    try:
        keys = _count_keys(obj) if isinstance(obj, dict) else _count_in_list(obj)
        if colons == keys:
            return None
        if raw.count(b'":') == keys and not _SPACED_COLON.search(raw):
            return None
    except RecursionError:
        pass  # nested deeper than the walk goes: let json.loads judge
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if not found and len(set(keys)) != len(keys):
            found.append(next(key for n, key in enumerate(keys) if key in keys[:n]))
        return {}

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None  # msgspec read it; what json cannot read is for the validation to judge
    if not found:
        return None
    return f"duplicate key `{found[0]}` in one object (which value was meant?)"


def _count_keys(obj: dict[str, Any]) -> int:
    """How many keys ``obj`` holds, in nested objects too (plain recursion: fastest here)."""
    count = len(obj)
    for value in obj.values():
        kind = type(value)
        if kind is dict:
            count += _count_keys(value)
        elif kind is list and value:
            count += _count_in_list(value)
    return count


def _count_in_list(items: list[Any]) -> int:
    count = 0
    for value in items:
        kind = type(value)
        if kind is dict:
            count += _count_keys(value)
        elif kind is list and value:
            count += _count_in_list(value)
    return count


def _without_prefix(exc: Exception) -> str:
    """msgspec's message without its own "JSON is malformed: " (we already said so)."""
    return str(exc).removeprefix("JSON is malformed: ")


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, in msgspec's vocabulary."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# CSV


_MAX_ROW_LINES: Final = 100
"""A quoted cell may hold line breaks, but a record spread over more physical lines than this
is a quote left open (a stray ``"Bob``): its first line is rejected and the lines after it are
read again as records of their own, instead of disappearing into one cell."""
_HISTORY_BYTES: Final = 4 << 20  # lines kept for reading again after an open quote, at most
_BARE_CR: Final = re.compile(r"(?<=\r)(?!\n)")  # after a CR that no LF follows: a line end
_BARE_CR_BYTES: Final = re.compile(rb"\r(?!\n|$)")


class _CsvLines:
    """Physical lines of a binary stream as text, for ``csv.reader``, one per physical line.

    Problems that must reject a record (invalid UTF-8, an over-long line) are noted by physical
    line number instead of raised, so the reader keeps its place and the other records go on.
    A bare CR ends a line, as LF and CRLF do (old Mac and some spreadsheet exports). The lines
    of the record being read are kept (up to :data:`_HISTORY_BYTES`), so that an open quote
    can be undone by :meth:`read_again`.
    """

    def __init__(self, stream: BinaryLines) -> None:
        self._stream = stream
        self._readline: Callable[[int], bytes] | None = None
        self.encoding = "utf-8"
        self.count = 0
        """The physical number of the last line given out."""
        self._read = 0  # the physical number of the last line read from the stream
        self.problems: dict[int, str] = {}
        self._again: list[tuple[int, str]] = []  # lines to give out again, the next one last
        self._history: list[tuple[int, str]] = []
        self._history_bytes = 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        number, text = self._again.pop() if self._again else self._next_line()
        self.count = number
        if self._history_bytes < _HISTORY_BYTES:
            self._history.append((number, text))
            self._history_bytes += len(text)
        return text

    def _next_line(self) -> tuple[int, str]:
        readline = self._readline
        if readline is None:  # the first line: find the encoding
            raw, self._readline, self.encoding = _utf8_lines(self._stream)
            readline = self._readline
        else:
            raw = readline(_READ_LIMIT)
        if not raw:
            raise StopIteration
        self._read += 1
        number = self._read
        if len(raw) >= MAX_LINE_BYTES and _is_too_long(raw):
            _drain_line(readline, raw)
            self.problems[number] = _TOO_LONG
            # An empty line keeps the line count right; the record is rejected anyway.
            return number, "\n"
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            self.problems[number] = _invalid_text(exc, self.encoding)
            text = raw.decode(errors="replace")
        if "\r" in text and len(pieces := [p for p in _BARE_CR.split(text) if p]) > 1:
            # Each piece a line of its own; the later ones wait, numbered after this one.
            self._read += len(pieces) - 1
            self._again.extend((number + k, p) for k, p in reversed(list(enumerate(pieces))))
            return self._again.pop()
        return number, text

    def peek(self) -> list[str]:
        """The lines up to the first one that is not blank (all blank at the end), read now
        and given again by the iteration."""
        before = self.count
        lines = []
        for text in self:
            lines.append((self.count, text))
            if text.strip():
                break
        self._again.extend(reversed(lines))
        self.count = before
        self.start_record()
        return [text for _, text in lines]

    def start_record(self) -> None:
        """The lines given out so far belong to finished records: forget them."""
        self._history.clear()
        self._history_bytes = 0

    def read_again(self, after: int) -> bool:
        """Give out again the current record's lines after line ``after``; ``False`` when they
        were not all kept (a record of megabytes), and nothing is given again."""
        if self._history_bytes >= _HISTORY_BYTES:
            return False
        self._again.extend(reversed([line for line in self._history if line[0] > after]))
        self.start_record()
        return True

    def problem_within(self, start: int, end: int) -> Outcome | None:
        """The first problem noted on lines ``start..end``, reported at ``start``; forget them."""
        found = None
        for line in sorted(self.problems):
            if line > end:
                break
            message = self.problems.pop(line)
            if found is None and line >= start:
                where = "" if line == start else f" on physical line {line}"
                found = _reject(start, f"{message}{where}")
        return found


def _rows(lines: _CsvLines, delimiter: str) -> Iterator[tuple[int, list[str] | Outcome]]:
    """Each CSV row with the physical line it starts on, or an outcome for an unreadable one.

    A quote left open (the row runs to the end of the input, past the field size limit, or
    over more than :data:`_MAX_ROW_LINES` lines) rejects the line it opened on; the lines after
    it are read again, so the records there keep their own outcomes.
    """
    start = lines.count + 1
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        lines.start_record()
        error: str | None = None
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a quote left open, a cell over csv's size limit, ...
            row, error = None, str(exc)
        end = lines.count
        open_quote = end > start and (error is not None or end - start >= _MAX_ROW_LINES)
        if open_quote and lines.read_again(after=start):
            lines.problem_within(start, start)
            yield (
                start,
                _reject(
                    start,
                    'a quote (") opened on this line is never closed: the line is not read as'
                    " a record (quote the cell whole, or double the quote inside it)",
                ),
            )
            start += 1
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            continue
        problem = lines.problem_within(start, end) if lines.problems else None
        if problem is not None:
            yield start, problem
        elif error is not None:
            yield start, _reject(start, f"bad CSV: {error}")
        else:
            assert row is not None
            yield start, row
        start = end + 1


# A header column: (kind, name, path). Kinds: "id" (contactId), "text", "bool" (dnd), "tags",
# "json" (a whole nested field as JSON), "nested" (a dotted dnd column), "custom"
# (customFields.<id>), "unnamed" (ignored while empty), "unknown".
_Column: TypeAlias = tuple[str, str, tuple[str, ...]]

_NESTED_JSON: Final = frozenset({"dndSettings", "inboundDndSettings", "customFields"})
_SPECIAL_KINDS: Final = {
    "contactId": "id",
    LOCATION_KEY: "location",
    "dnd": "bool",
    "tags": "tags",
    **dict.fromkeys(_NESTED_JSON, "json"),
}
_TOP_FIELDS: Final = frozenset(f.encode_name for f in msgspec.structs.fields(UpdateContact))
_NESTED_COLUMNS: Final = frozenset(
    [
        *(
            f"dndSettings.{f.encode_name}.{key}"
            for f in msgspec.structs.fields(DndSettings)
            for key in ("status", "message", "code")
        ),
        "inboundDndSettings.all.status",
        "inboundDndSettings.all.message",
    ]
)
_CUSTOM_PREFIX: Final = "customFields."
_CUSTOM_INDEX: Final = re.compile(r"\$\.customFields\[(\d+)\]")
_JSON_PREFIX: Final = "json:"
# Anything else stays a string, so that msgspec's "Expected `bool`, got `str`" names the field.
_BOOLS: Final[dict[str, bool | None]] = {"true": True, "false": False, "null": None}


def _plan_header(header: list[str]) -> tuple[list[_Column], list[str]]:
    """Map each header cell onto what it sets; also return the header's problems, if any."""
    columns: list[_Column] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, name in enumerate(header, start=1):
        if name in seen:
            problems.append(f"duplicate column `{name}` (column {number})")
        seen.add(name)
        column = _plan_column(name, number)
        if column[0] == "unknown":
            problems.append(f"unknown field `{name}` (column {number})")
        columns.append(column)
    if "contactId" not in seen:
        problems.append("missing contactId (the header has no `contactId` column)")
    problems.extend(
        f"column `{field}` cannot be combined with `{field}.*` columns"
        for field in sorted(_NESTED_JSON)
        if field in seen and any(name.startswith(f"{field}.") for name in seen)
    )
    return columns, problems


def _plan_column(name: str, number: int) -> _Column:
    if not name:
        return ("unnamed", str(number), ())
    if kind := _SPECIAL_KINDS.get(name):
        return (kind, name, ())
    if name in _TOP_FIELDS:
        return ("text", name, ())
    if name in _NESTED_COLUMNS:
        return ("nested", name, tuple(name.split(".")))
    if name.startswith(_CUSTOM_PREFIX) and len(name) > len(_CUSTOM_PREFIX):
        return ("custom", name, (name[len(_CUSTOM_PREFIX) :],))
    return ("unknown", name, ())


_DELIMITERS: Final = ",\t;"


def _delimiter(header: str) -> str:
    """The separator the header line uses: the one that makes a ``contactId`` column, else the
    one it holds most of (comma on a tie: a one-column header)."""

    def fit(delimiter: str) -> tuple[bool, int]:
        try:
            cells = next(csv.reader([header], delimiter=delimiter), [])
        except csv.Error:  # the reader will say so, at the header's line
            cells = []
        return "contactId" in cells, len(cells)

    return max(_DELIMITERS, key=fit)


def read_csv(stream: BinaryLines, *, delimiter: str | None = None) -> Iterator[Item]:
    """Yield one item per data row of a binary CSV stream, lazily (conventions: module doc).

    ``delimiter`` (default: what the header line shows, among comma, tab and semicolon)
    separates the cells. Raises :class:`~growthhub_async.errors.InputError` when the header
    line cannot be read (not text in a known encoding, too long): no row could be understood.
    """
    lines, rows = _csv_rows(stream, delimiter)
    for start, header in rows:
        if isinstance(header, Outcome):
            raise InputError(_header_problem(start, header, lines.encoding))
        if header:
            break
        # Blank lines before the header are not records.
    else:
        return
    if any("\0" in name for name in header):
        raise InputError(
            f"the header (line {start}) holds NUL bytes: the file is not text in UTF-8,"
            " UTF-16 or UTF-32; save it as CSV UTF-8"
        )
    columns, header_problems = _plan_header(header)
    for start, row in rows:
        if isinstance(row, Outcome):
            yield row
        elif not row:
            continue  # a blank line
        elif header_problems:
            yield _reject(start, "; ".join(header_problems), _cell_id(columns, row))
        elif len(row) != len(columns):
            message = f"{len(row)} cells, but the header has {len(columns)} columns"
            yield _reject(start, message, _cell_id(columns, row))
        else:
            yield _csv_record(start, columns, row)


def _csv_rows(
    stream: BinaryLines, delimiter: str | None
) -> tuple[_CsvLines, Iterator[tuple[int, list[str] | Outcome]]]:
    """The physical lines of a CSV stream and its rows (``delimiter``: the header's, if None)."""
    lines = _CsvLines(stream)
    peeked = lines.peek()
    if delimiter is None:
        delimiter = _delimiter(peeked[-1]) if peeked else ","
    return lines, _rows(lines, delimiter)


def _header_problem(line: int, outcome: Outcome, encoding: str) -> str:
    """Why the header cannot be read, and what to do about it, in one line."""
    problem = (outcome.error or "").removeprefix(f"line {line}: ")
    message = f"the header (line {line}) cannot be read: {problem}"
    if "invalid UTF-8" in problem:
        message += (
            "; the file is not UTF-8 (Excel's plain CSV is Windows-1252): save it as"
            " CSV UTF-8, or convert it, e.g. iconv -f WINDOWS-1252 -t UTF-8 IN > OUT"
        )
    elif encoding != "utf-8":
        message += f" (the file is {encoding.upper()}, by its byte order mark)"
    return message


def _cell_id(columns: list[_Column], row: list[str]) -> str | None:
    """The row's contactId cell when it is there and safe, for a rejected outcome's context."""
    for (kind, _, _), cell in zip(columns, row, strict=False):
        if kind == "id":
            return _safe(cell)
    return None


class _CellError(ValueError):
    """A cell that cannot become part of the body (a bad JSON literal, a nameless column)."""


_ABSENT: Final[Any] = object()


def _check_location(value: object) -> str:
    """A record's ``locationId``: it routes the record (issue 13), never goes in the body."""
    problem = location_problem(value)
    if problem is not None:
        raise _CellError(problem)
    assert isinstance(value, str)
    return value


def _csv_record(line: int, columns: list[_Column], row: list[str]) -> Item:
    body: dict[str, Any] = {}
    custom_columns: list[str] = []
    contact_id = ""
    location: str | None = None
    # One search over the whole row; the cells only when it finds something (rare).
    if _CONTROL.search("\t".join(row)) is not None:
        return _control_in_row(line, columns, row)
    try:
        for (kind, name, path), cell in zip(columns, row, strict=True):
            if not cell:
                continue  # empty: leave the field unchanged (no location: the run's token)
            if kind == "id":
                contact_id = cell
            elif kind == "location":
                location = _check_location(cell)
            elif kind == "custom":
                custom_columns.append(name)
                item = {"id": path[0], "field_value": _custom_value(cell, name)}
                body.setdefault("customFields", []).append(item)
            else:
                _put(body, kind, name, path, cell)
    except _CellError as exc:
        return _reject(line, str(exc), _safe(contact_id))
    if not contact_id:
        return _reject(line, "missing contactId")
    try:
        check_contact_id(contact_id)
    except InvalidContactId as exc:
        return _reject(line, f"{exc} - at `$.contactId`")
    try:
        update = msgspec.convert(body, UpdateContact)
    except msgspec.ValidationError as exc:
        message = str(exc)
        # Name the column the user wrote, not only the list index msgspec saw.
        if custom_columns and (m := _CUSTOM_INDEX.search(message)):
            message += f" (column `{custom_columns[int(m.group(1))]}`)"
        return _reject(line, message, contact_id)
    return Record(line, contact_id, update, location)


def _control_in_row(line: int, columns: list[_Column], row: list[str]) -> Outcome:
    """The rejection of a row that holds a control character, naming the first one's column."""
    for (_, name, _), cell in zip(columns, row, strict=True):
        if (why := _control_message(cell, f"in column `{name}`")) is not None:
            return _reject(line, why, _cell_id(columns, row))
    raise AssertionError("no control character in the row")  # the caller found one


def _put(body: dict[str, Any], kind: str, name: str, path: tuple[str, ...], cell: str) -> None:
    """Set one non-empty cell's value in ``body``, by its column's kind."""
    if kind == "text":
        body[name] = None if cell == "null" else cell
    elif kind == "bool":
        body[name] = _BOOLS.get(cell.lower(), cell)
    elif kind == "tags":
        body[name] = (
            _json_cell(cell, name)
            if cell.startswith("[")
            else [tag for item in cell.split(",") if (tag := item.strip())]
        )
    elif kind == "json":
        body[name] = None if cell == "null" else _json_cell(cell, name)
    elif kind == "nested":
        top, middle, leaf = path
        body.setdefault(top, {}).setdefault(middle, {})[leaf] = None if cell == "null" else cell
    else:  # "unnamed"; "unknown" never gets here (a header problem rejects the row first)
        raise _CellError(f"a value in column {name}, which has no name in the header")


def _custom_value(cell: str, name: str) -> Any:
    if cell.startswith(_JSON_PREFIX):
        return _json_cell(cell[len(_JSON_PREFIX) :], name)
    return None if cell == "null" else cell


def _json_cell(text: str, name: str) -> Any:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise _CellError(f"malformed JSON in column `{name}`: {_without_prefix(exc)}") from None
    except RecursionError:
        raise _CellError(f"{_TOO_DEEP} in column `{name}`") from None
    if type(value) in _CONTAINERS and (duplicate := _duplicate_key(text.encode(), value)):
        raise _CellError(f"{duplicate} in column `{name}`")
    if "\\" in text and (control := _control_in(value, "$")) is not None:
        raise _CellError(f"{control} in column `{name}`")
    return value


def _safe(contact_id: str) -> str | None:
    """``contact_id`` when it is safe to show in an outcome, else ``None``."""
    try:
        check_contact_id(contact_id)
    except InvalidContactId:
        return None
    return contact_id


# ---------------------------------------------------------------------------------------------
# Opening


class Source:
    """An open input: iterate it once for its items; close it (or use ``with``) when done.

    Built by :func:`open_source`, which has already opened the file, so that an unreadable input
    fails before any work starts.
    """

    def __init__(self, stream: IO[bytes], kind: InputKind, items: Iterator[Item], *, owned: bool):
        self.kind: InputKind = kind
        self.name: str = getattr(stream, "name", "-") if owned else "-"
        self._stream = stream
        self._items = items
        self._owned = owned

    def __iter__(self) -> Iterator[Item]:
        return self._items

    def is_file(self, path: str) -> bool:
        """Whether ``path`` names the very file this source reads (another name, a link)."""
        try:
            mine = os.fstat(self._stream.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return False
        return same_file(mine, path)

    def close(self) -> None:
        """Close the file (standard input is left open: it is not ours)."""
        if self._owned:
            self._stream.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def same_file(a: str | os.stat_result, b: str) -> bool:
    """Whether ``a`` (a path, or an open file's ``fstat``) and the path ``b`` are one regular
    file, under any names (a symlink, a hard link); two names of a file yet to be created are
    one file when they resolve to one path."""
    try:
        theirs = os.stat(b)
    except (OSError, ValueError):
        theirs = None
    if isinstance(a, str):
        try:
            mine = os.stat(a)
        except (OSError, ValueError):
            mine = None
        if mine is None or theirs is None:
            return mine is theirs and os.path.realpath(a) == os.path.realpath(b)
    else:
        mine = a
    return theirs is not None and stat.S_ISREG(mine.st_mode) and os.path.samestat(mine, theirs)


def input_kind(path: str) -> InputKind:
    """The kind of input ``path`` names by its extension; ``-`` is JSONL on standard input."""
    if path == "-":
        return "jsonl"
    lowered = path.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv", ".txt")):  # .txt: Excel's "Unicode text" export
        return "csv"
    raise InputError(
        f"cannot tell the kind of input {path!r}: expected a .jsonl, .ndjson, .csv, .tsv or"
        " .txt file, or - for JSONL on standard input"
    )


def open_source(
    path: str,
    value_key: CustomFieldValueKey = "field_value",
    *,
    stdin: IO[bytes] | None = None,
) -> Source:
    """Open ``path`` (``-``: standard input, JSONL) and return its lazy :class:`Source`.

    Raises :class:`~growthhub_async.errors.InputError` for an unknown extension or a file that
    cannot be opened. ``stdin`` replaces ``sys.stdin.buffer`` (for tests and embedding).
    """
    kind = input_kind(path)
    if path == "-":
        if stdin is None and sys.stdin is None:
            raise InputError("cannot read input '-': standard input is closed")
        stream = stdin if stdin is not None else sys.stdin.buffer
        owned = False
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - Source.close() owns it
        except OSError as exc:
            raise InputError(f"cannot read input {path!r}: {exc.strerror or exc}") from None
        owned = True
    items = read_jsonl(stream, value_key=value_key) if kind == "jsonl" else read_csv(stream)
    try:
        # The first item now: a header or an encoding that cannot be read fails here, before
        # any work starts, rather than once records are on their way.
        first = next(items, None)
    except (InputError, OSError) as exc:
        if owned:
            stream.close()
        if isinstance(exc, InputError):
            raise InputError(f"input {path!r}: {exc}") from None
        raise InputError(f"cannot read input {path!r}: {exc.strerror or exc}") from None
    if first is not None:
        items = itertools.chain((first,), items)
    return Source(stream, kind, items, owned=owned)


def count_records(path: str) -> int | None:
    """How many records ``path`` holds, for a progress bar; ``None`` when unknown.

    Exact: the lines are read as the readers read them (UTF-8, UTF-16 or UTF-32 by the same
    sniffing, blank lines skipped), and a CSV's rows are split as its reader splits them
    (quoted cells spanning lines, bare CRs ending lines, a quote left open taken back), only
    without building the records: about 0.1 s per million UTF-8 JSONL lines (counted a chunk
    at a time), more for UTF-16 and CSV (line by line; the progress bar's count runs in a
    thread beside the job). ``None`` for standard
    input, an unreadable file or a CSV whose header cannot be read.
    """
    if path == "-":
        return None
    try:
        kind = input_kind(path)
        with open(path, "rb") as f:
            return _count_csv(f) if kind == "csv" else _count_jsonl(f)
    except (OSError, InputError):
        return None


# A blank line after a line end: white space up to the next line end (which stays unread, the
# next blank line's start).
_BLANK_AFTER: Final = re.compile(rb"\n[ \t\r\x0b\x0c]*(?=\n)")


def _count_jsonl(stream: io.BufferedReader) -> int:
    """The records of a JSONL stream: its lines that are not blank (an over-long line once)."""
    encoding, bom = _sniff(stream.peek(4)[:4])
    if encoding == "utf-8":
        stream.read(bom)
        return _count_utf8_lines(stream.read)
    first, readline, _ = _utf8_lines(stream)
    count = 0
    whole = True  # the last piece read ended its line (a line over 1 MiB comes in pieces)
    for raw in itertools.chain((first,), iter(partial(readline, _READ_LIMIT), b"")):
        if whole and not raw.isspace():
            count += 1
        whole = raw.endswith(b"\n")
    return count if first else 0


def _count_utf8_lines(read: Callable[[int], bytes]) -> int:
    """The lines of UTF-8 text that are not blank, a chunk at a time: the line ends counted,
    less the blank lines (a regular expression's search, in C). Reading line by line cost
    about 5 K instructions per line, in a thread beside the run (issue 17)."""
    count = 0
    rest = b""  # the line begun in the last chunk
    while chunk := read(_COUNT_CHUNK):
        data = rest + chunk if rest else chunk
        end = data.rfind(b"\n") + 1
        if end:
            first_blank = not data[: data.index(b"\n")].strip()
            blank = len(_BLANK_AFTER.findall(data, 0, end)) + first_blank
            count += data.count(b"\n", 0, end) - blank
            rest = data[end:]
        else:
            rest = data
        if len(rest) > _COUNT_CHUNK:  # a line longer than a chunk: is it blank, is all it takes
            rest = b"x" if rest.strip() else b""
    return count + (1 if rest.strip() else 0)


def _count_csv(stream: BinaryLines) -> int | None:
    """The records of a CSV stream: its rows after the header, blank ones left out."""
    _, rows = _csv_rows(stream, None)
    items = (row for _, row in rows if row != [])
    header = next(items, None)
    if isinstance(header, Outcome):
        return None  # the reader refuses the file
    return sum(1 for _ in items)
