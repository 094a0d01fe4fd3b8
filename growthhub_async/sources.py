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

A bad record never stops the others. Only a file that cannot be opened at all (missing,
unreadable, unknown extension) raises :class:`~growthhub_async.errors.InputError`.

Common rules
------------
- ``line`` is the 1-based *physical* line number where the record starts, so an editor's "go to
  line" finds it. Blank lines are skipped (they are not records) but still counted.
- A UTF-8 byte order mark at the start of the file is ignored.
- A line that is not valid UTF-8 rejects its record ("invalid UTF-8"); the others go on.
- A line longer than :data:`MAX_LINE_BYTES` (1 MiB) rejects its record ("longer than 1 MiB")
  and is skipped in bounded chunks: memory never holds more than about one such chunk.

JSONL (``.jsonl``, ``.ndjson``, or ``-`` for standard input)
------------------------------------------------------------
One JSON object per line: ``contactId`` plus Update Contact body fields under their API names
(``firstName``, ``dndSettings``, ``customFields``, ...), exactly as the request body would hold
them. A custom field's value sits under ``field_value`` (the v2 spelling) or, with
``value_key="fieldValue"``, under ``fieldValue``; the other spelling is an unknown field. Each
line is decoded once, into builtins, and validated once (``msgspec.convert``); this measured
faster than decoding into a ``contactId``-bearing subclass and copying into ``UpdateContact``.

CSV (``.csv``)
--------------
RFC 4180 as Python's ``csv`` module reads it (comma separated, ``"`` quoting, quoted cells may
span lines). The first row is the header; one column must be ``contactId``; the others are named
after API fields:

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
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, Any, Final, Literal, Protocol, TypeAlias

import msgspec

from growthhub_async.contact_id import check_contact_id
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
]

MAX_LINE_BYTES: Final = 1 << 20
"""The longest physical line accepted (1 MiB, not counting its line ending)."""

_BOM: Final = b"\xef\xbb\xbf"
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


def _invalid_utf8(exc: UnicodeDecodeError) -> str:
    bad = exc.object[exc.start : exc.start + 1]
    return f"invalid UTF-8 (byte 0x{bad.hex()} at offset {exc.start})"


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
    readline = stream.readline
    lineno = 0
    while raw := readline(_READ_LIMIT):
        lineno += 1
        if len(raw) >= MAX_LINE_BYTES and _is_too_long(raw):
            _drain_line(readline, raw)
            yield _reject(lineno, _TOO_LONG)
            continue
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[3:]
        try:
            obj = decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # A blank line fails to decode too; checking here keeps `strip()` off the fast path.
            if not raw.strip():
                continue
            yield _reject(lineno, _why_undecodable(raw, exc))
            continue
        except RecursionError:
            # msgspec raises this, not a DecodeError, for nesting deeper than Python's stack.
            yield _reject(lineno, _TOO_DEEP)
            continue
        if type(obj) is not dict:
            yield _reject(lineno, f"not a JSON object (got {_json_type(obj)})")
            continue
        contact_id = obj.pop("contactId", None)
        if contact_id is None:
            yield _reject(lineno, "missing contactId")
            continue
        if type(contact_id) is not str:
            yield _reject(
                lineno, f"Expected `str`, got `{_json_type(contact_id)}` - at `$.contactId`"
            )
            continue
        try:
            check_contact_id(contact_id)
            update = convert(obj)
        except InvalidContactId as exc:
            yield _reject(lineno, f"{exc} - at `$.contactId`")
            continue
        except msgspec.ValidationError as exc:
            yield _reject(lineno, str(exc), contact_id)
            continue
        yield Record(lineno, contact_id, update)


_JSON_TYPES: Final[dict[type, str]] = {
    type(None): "null",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "array",
    dict: "object",
}


def _why_undecodable(raw: bytes, exc: Exception) -> str:
    """Why a line did not decode: invalid UTF-8 (with the byte), else msgspec's JSON complaint.

    msgspec up to 0.22 raises ``UnicodeDecodeError`` for invalid UTF-8 and 0.23 a ``DecodeError``
    ("Invalid UTF-8 encoded string"); asking Python's own decoder gives one answer for both.
    """
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return _invalid_utf8(bad)
    return f"malformed JSON: {_without_prefix(exc)}"


def _without_prefix(exc: Exception) -> str:
    """msgspec's message without its own "JSON is malformed: " (we already said so)."""
    return str(exc).removeprefix("JSON is malformed: ")


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, in msgspec's vocabulary."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# CSV


class _CsvLines:
    """Physical lines of a binary stream as text, for ``csv.reader``, one per physical line.

    Problems that must reject a record (invalid UTF-8, an over-long line) are noted by physical
    line number instead of raised, so the reader keeps its place and the other records go on.
    """

    def __init__(self, stream: BinaryLines) -> None:
        self._readline = stream.readline
        self.count = 0
        self.problems: dict[int, str] = {}

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        raw = self._readline(_READ_LIMIT)
        if not raw:
            raise StopIteration
        self.count += 1
        if len(raw) >= MAX_LINE_BYTES and _is_too_long(raw):
            _drain_line(self._readline, raw)
            self.problems[self.count] = _TOO_LONG
            # An empty line keeps csv's line count right; the record is rejected anyway.
            return "\n"
        if self.count == 1 and raw.startswith(_BOM):
            raw = raw[3:]
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            self.problems[self.count] = _invalid_utf8(exc)
            return raw.decode(errors="replace")

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


def _rows(lines: _CsvLines) -> Iterator[tuple[int, list[str] | Outcome]]:
    """Each CSV row with the physical line it starts on, or an outcome for an unreadable one."""
    reader = csv.reader(lines)
    end = 0  # the physical line where the previous row ended
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a cell over csv's field size limit, for one
            start, end = end + 1, reader.line_num
            yield start, lines.problem_within(start, end) or _reject(start, f"bad CSV: {exc}")
            continue
        start, end = end + 1, reader.line_num
        problem = lines.problem_within(start, end) if lines.problems else None
        yield start, problem or row


# A header column: (kind, name, path). Kinds: "id" (contactId), "text", "bool" (dnd), "tags",
# "json" (a whole nested field as JSON), "nested" (a dotted dnd column), "custom"
# (customFields.<id>), "unnamed" (ignored while empty), "unknown".
_Column: TypeAlias = tuple[str, str, tuple[str, ...]]

_NESTED_JSON: Final = frozenset({"dndSettings", "inboundDndSettings", "customFields"})
_SPECIAL_KINDS: Final = {
    "contactId": "id",
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


def read_csv(stream: BinaryLines) -> Iterator[Item]:
    """Yield one item per data row of a binary CSV stream, lazily (conventions: module doc)."""
    rows = _rows(_CsvLines(stream))
    for _, header in rows:
        if isinstance(header, list) and header:
            break
        # Nothing before the header is a record: a blank or unreadable first line is skipped.
    else:
        return
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


def _cell_id(columns: list[_Column], row: list[str]) -> str | None:
    """The row's contactId cell when it is there and safe, for a rejected outcome's context."""
    for (kind, _, _), cell in zip(columns, row, strict=False):
        if kind == "id":
            return _safe(cell)
    return None


class _CellError(ValueError):
    """A cell that cannot become part of the body (a bad JSON literal, a nameless column)."""


def _csv_record(line: int, columns: list[_Column], row: list[str]) -> Item:
    body: dict[str, Any] = {}
    custom_columns: list[str] = []
    contact_id = ""
    try:
        for (kind, name, path), cell in zip(columns, row, strict=True):
            if not cell:
                continue  # empty: leave the field unchanged
            if kind == "id":
                contact_id = cell
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
    return Record(line, contact_id, update)


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
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise _CellError(f"malformed JSON in column `{name}`: {_without_prefix(exc)}") from None
    except RecursionError:
        raise _CellError(f"{_TOO_DEEP} in column `{name}`") from None


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


def input_kind(path: str) -> InputKind:
    """The kind of input ``path`` names by its extension; ``-`` is JSONL on standard input."""
    if path == "-":
        return "jsonl"
    lowered = path.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    raise InputError(
        f"cannot tell the kind of input {path!r}: expected a .jsonl, .ndjson or .csv file,"
        " or - for JSONL on standard input"
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
        stream = stdin if stdin is not None else sys.stdin.buffer
        owned = False
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - Source.close() owns it
        except OSError as exc:
            raise InputError(f"cannot read input {path!r}: {exc.strerror or exc}") from None
        owned = True
    items = read_jsonl(stream, value_key=value_key) if kind == "jsonl" else read_csv(stream)
    return Source(stream, kind, items, owned=owned)


def count_records(path: str) -> int | None:
    """About how many records ``path`` holds, for a progress bar; ``None`` when unknown.

    Counts line endings in binary chunks (about a second per few GB): blank lines and CSV cells
    spanning lines make it an upper bound. ``None`` for standard input or an unreadable file.
    """
    if path == "-":
        return None
    try:
        kind = input_kind(path)
        lines = 0
        last = b"\n"
        with open(path, "rb") as f:
            while chunk := f.read(_COUNT_CHUNK):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, InputError):
        return None
    if last != b"\n":
        lines += 1  # a last line without its newline
    if kind == "csv":
        lines = max(lines - 1, 0)  # the header
    return lines
