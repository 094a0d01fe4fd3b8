"""The contact id safety rule, in one pure function shared by the input readers and the client.

A contact id becomes a path segment: ``PUT /contacts/{contactId}``. An id that could change the
request's path, query or fragment (``../locations``, ``x?y=1``, ``a#b``, ``%2F``) must never be
sent, whatever a caller or an input file says. The API's ids are 20-odd alphanumeric characters,
so the rule can be strict without refusing real ones:

- not empty, at most :data:`MAX_LENGTH` characters;
- none of ``/ ? # % \\`` (the backslash because some proxies read it as ``/``);
- not ``.`` and no ``..`` anywhere (URL normalisation would resolve them as path segments);
- no whitespace and no control characters (C0, DEL, C1), which could split or smuggle a header
  line, and no invisible character (zero-width spaces and joiners, bidirectional marks and
  overrides, the byte order mark, every other format character, variation selectors, fillers,
  private-use and unassigned code points), which would make an id differ from how it looks;
- no slash look-alikes (division, fraction and fullwidth slashes...), and nothing that Unicode
  compatibility normalisation (NFKC, which some servers apply) would change: it turns U+FF0F
  FULLWIDTH SOLIDUS into ``/``, U+FF0E FULLWIDTH FULL STOP alone into ``.``, and fullwidth
  letters into the plain id of another contact; and no lone surrogates (they cannot be
  encoded in a URL at all).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from growthhub_async.errors import InvalidContactId

__all__ = [
    "LOCATION_KEY",
    "MAX_LENGTH",
    "MAX_LOCATION_LENGTH",
    "RESERVED_LOCATION",
    "check_contact_id",
    "json_type",
    "location_problem",
]

MAX_LENGTH: Final = 128
"""The longest contact id accepted; the API's own ids are about 20 characters."""

# One search finds the first offending character or sequence. `\s` (str pattern) covers the
# Unicode whitespace too (NBSP, U+2028, ...); C0, DEL and C1 are the control characters; then
# soft hyphen, zero-width and bidi marks, word joiners and invisible operators, and the BOM.
_UNSAFE: Final = re.compile(
    r"[/?#%\\\s\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff"
    r"\u2044\u2215\u2216\u29f5\u29f8\u29f9\ud800-\udfff]|\.\."
)


# Characters that show nothing: format characters (Cf: the Arabic letter mark, the Mongolian
# vowel separator, tag characters...), private-use and unassigned code points, and the
# invisible ones of other categories (combining grapheme joiner, variation selectors, Hangul
# fillers, the braille blank).
_INVISIBLE_CATEGORIES: Final = frozenset({"Cf", "Co", "Cn", "Cs"})
_INVISIBLE: Final = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


def check_contact_id(value: str) -> None:
    """Raise :class:`~growthhub_async.errors.InvalidContactId` unless ``value`` is safe to send.

    Pure and cheap (one length check and one regular-expression search); the message names the
    problem and shows the offending character, never the whole id when it is long.
    """
    # The API's own ids are ASCII letters and digits: two C-level checks clear them.
    if isinstance(value, str) and value.isascii() and value.isalnum() and len(value) <= MAX_LENGTH:
        return
    if not isinstance(value, str):
        raise InvalidContactId(f"contact id must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidContactId("contact id is empty")
    if len(value) > MAX_LENGTH:
        raise InvalidContactId(
            f"contact id is {len(value)} characters long, at most {MAX_LENGTH} allowed"
        )
    if value == ".":
        raise InvalidContactId("contact id '.' would address the collection, not a contact")
    if m := _UNSAFE.search(value):
        found = m.group()
        what = "'..'" if found == ".." else repr(found)
        raise InvalidContactId(
            f"unsafe contact id {value!r}: contains {what} at position {m.start()}"
            " (ids must not contain / ? # % \\ .. whitespace, control or invisible characters)"
        )
    for position, char in enumerate(value):
        if unicodedata.category(char) in _INVISIBLE_CATEGORIES or char in _INVISIBLE:
            raise InvalidContactId(
                f"unsafe contact id {value!r}: contains the invisible character"
                f" U+{ord(char):04X} at position {position}"
            )
    if not unicodedata.is_normalized("NFKC", value):
        folded = unicodedata.normalize("NFKC", value)
        raise InvalidContactId(
            f"unsafe contact id {value!r}: reads as {folded!r} once Unicode-normalised (NFKC),"
            " as some servers do"
        )


# -- location ids (issue 13) ------------------------------------------------------------------

LOCATION_KEY: Final = "locationId"
"""The JSONL key and CSV column that names a record's location."""
MAX_LOCATION_LENGTH: Final = 128
RESERVED_LOCATION: Final = "default"
"""The client's key of a single ``token=``: no location may be named so, or its records would
go with the run's own token (``client.DEFAULT_TOKEN_KEY``)."""
_LOCATION_ID: Final = re.compile(r"[A-Za-z0-9_-]+")


def location_problem(value: object) -> str | None:
    """Why ``value`` cannot be a location id (``None`` when it can). Pure.

    The API's ids are 20 ASCII letters and digits; we accept 1 to 128 ASCII letters, digits,
    ``_`` and ``-``, so an id is safe in a form, a file name and a terminal.
    """
    if not isinstance(value, str):
        return f"locationId must be a string, not {json_type(value)}"
    if not value:
        return "locationId is empty"
    if len(value) > MAX_LOCATION_LENGTH:
        return f"locationId is {len(value)} characters long, at most {MAX_LOCATION_LENGTH} allowed"
    if not _LOCATION_ID.fullmatch(value):
        bad = next(c for c in value if not (c.isascii() and (c.isalnum() or c in "_-")))
        return f"locationId {value[:40]!r} contains {bad!r} (ASCII letters, digits, _ and - only)"
    if value == RESERVED_LOCATION:
        return f"locationId {value!r} is reserved: it names the run's own token"
    return None


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type."""
    names = {type(None): "null", bool: "bool", int: "int", float: "float", list: "array"}
    return names.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)
