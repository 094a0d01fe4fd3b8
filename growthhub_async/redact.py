"""Removing secrets from text that came from a server (issues 12 and 18).

Servers, proxies and gateways echo requests: a 401 body quoting the ``Authorization`` header, a
token endpoint's 400 quoting the form it received (client secret and refresh token included),
a parser error quoting a malformed header line. Whatever a server says may end up in an
outcome's ``error``, the journal, an exception, a log line or the terminal, so every piece of
server text goes through a :class:`Redactor` *once, where it enters* (the client's
``read_response`` and ``map_exceptions``, the OAuth provider's ``read_token_answer``), before
anything can store, raise, print or log it.

A redactor knows every secret the client holds (bearer tokens, OAuth access and refresh
tokens, the client secret) and removes each in every form a server may echo it in:

- whole: bare (so ``Bearer <token>`` too), URL-encoded (a form body: ``%2B`` or ``+`` for a
  space, upper or lower case hex), JSON-escaped (``\\/``);
- cut short at the end of a truncated text (a prefix of at least :data:`MIN_PREFIX` characters);
- in pieces: any run of :data:`MIN_RUN` characters or more of a secret, or of its bytes (UTF-8
  or UTF-16) as hex, decimals or base64 (a ``Basic`` header, a debug dump; standard or
  URL-safe, at any of the three byte alignments), anywhere in the text, in any ASCII case:
  a body cut in the middle (``eyJhbGciOi...``), a token wrapped over lines or split by
  spaces, zero-width characters, commas or colons, each character escaped (``\\u0070``,
  ``\\u{70}``, ``\\x70``, ``\\160``, ``%70``, ``%2570``, ``%u0070``, ``0x70``, ``=70``,
  ``&#x70;``, ``&#112;``, named entities). The pieces are looked for in two *readings* of
  the text (separators removed; separators removed and escapes decoded) and removed from
  the text itself, with the separators and escapes inside them.
  Not covered: ciphers and other encodings (rot13, base32, a reversed token).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = ["MIN_PREFIX", "MIN_RUN", "MIN_SECRET", "REDACTED", "Redactor"]

REDACTED: Final = "<redacted>"
"""What a secret is replaced with."""
MIN_SECRET: Final = 6
"""Shorter values are not treated as secrets (a one-letter "secret" would blank every text)."""
MIN_PREFIX: Final = 8
"""A text ending in this many first characters of a secret (or more) is taken as truncated."""

MIN_RUN: Final = 12
"""A run of this many characters of a secret (or of its base64), anywhere, is taken as one."""
_STEP: Final = MIN_RUN // 2
"""Window size and stride of the search: every run of MIN_RUN holds a window at a multiple."""

_HEX = re.compile(r"%[0-9A-F]{2}")
# Two readings of a text are searched for pieces of secrets. The first only drops what may
# separate a secret's characters (whitespace, zero-width characters, commas, colons,
# semicolons): "70:69:74", "[112, 105]", a token split by zero-width spaces. The second also
# decodes escapes, one character each: "\\u0070", "\\u{70}", "%u0070", "\\x70", octal "\\160",
# URL "%70" and "%2570", "0x70",
# quoted-printable "=70", HTML "&#x70;" and "&#112;" (the ";" optional), named entities.
_SEPARATORS = r"(?P<sep>[\s,:;\u200b-\u200f\u2060\ufeff]+)"
_SPLIT: Final = re.compile(_SEPARATORS)
_ESCAPE: Final = re.compile(
    r"\\[u](?P<u>[0-9a-fA-F]{4})|\\u\{(?P<uc>[0-9a-fA-F]{1,6})\}|%u(?P<pu>[0-9a-fA-F]{4})"
    r"|\\x(?P<x>[0-9a-fA-F]{2})|\\(?P<oct>[0-7]{3})|(?P<slash>\\/)"
    r"|%25(?P<pp>[0-9a-fA-F]{2})|%(?P<p>[0-9a-fA-F]{2})|0x(?P<ox>[0-9a-fA-F]{2})"
    r"|=(?P<qp>[0-9A-F]{2})|&#(?P<dec>[0-9]{1,7});?|&#[xX](?P<hx>[0-9a-fA-F]{1,6});?"
    r"|(?P<ent>&[a-zA-Z]{2,12};)|" + _SEPARATORS
)
_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
"""ASCII only: a reading must keep its length (``"İ".lower()`` has two characters)."""


def forms_of(secret: str) -> set[str]:
    """The forms a server may echo ``secret`` in: bare, URL-encoded, JSON-escaped."""
    forms = {secret}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms.add(encoded)
        forms.add(_HEX.sub(lambda m: m.group(0).lower(), encoded))
    escaped = json.dumps(secret)[1:-1]
    forms.update({escaped, escaped.replace("/", "\\/")})
    return forms


def encoded_forms(secret: str) -> set[str]:
    """``secret``'s bytes (UTF-8, and UTF-16) as hex, as decimals, and the part of their base64
    that does not depend on the bytes around them: standard and URL-safe alphabets, with the
    secret starting at each of the three byte alignments (an ``user:secret`` pair puts it
    anywhere).
    """
    raw = secret.encode("utf-8")
    # The bytes in decimal, as a byte array reads once its ", " are gone.
    forms = {"".join(map(str, raw))}
    for data in (raw, secret.encode("utf-16-le")):  # UTF-16: what Windows tools dump
        forms.add(data.hex())
        for align in range(3):
            encoded = base64.b64encode(b"\0" * align + data).decode("ascii").rstrip("=")
            first = -(-align * 8 // 6)  # the first character made of the secret's bits alone
            last = (align + len(data)) * 8 // 6  # after this one, what follows mixes in
            core = encoded[first:last]
            forms.update({core, core.replace("+", "-").replace("/", "_")})
    return forms


def _value(match: re.Match[str]) -> str:
    """The character an escape stands for ("" for separators, and numbers beyond Unicode)."""
    kind = match.lastgroup
    if kind == "sep":
        return ""
    if kind == "slash":
        return "/"
    if kind == "ent":
        value = html.unescape(match.group(kind))
    else:
        base = 10 if kind == "dec" else 8 if kind == "oct" else 16
        code = int(match.group(kind), base)  # type: ignore[arg-type]
        value = chr(code) if code <= 0x10FFFF else ""
    # An escaped separator (JSON's "\\u200b") separates too; an unknown entity is no character.
    return value if len(value) == 1 and not _SPLIT.fullmatch(value) else ""


def _reading(text: str, pattern: re.Pattern[str]) -> tuple[str, list[tuple[int, int, str]]]:
    """``text`` as ``pattern`` reads it (see ``_SPLIT`` and ``_ESCAPE``), ASCII lower-cased.

    Also returns the escapes, as (start, end, value) in ``text``, for :func:`_origins`.
    """
    escapes = [(m.start(), m.end(), _value(m)) for m in pattern.finditer(text)]
    if not escapes:
        return text.translate(_LOWER), escapes
    pieces: list[str] = []
    done = 0
    for start, end, value in escapes:
        pieces += (text[done:start], value)
        done = end
    pieces.append(text[done:])
    return "".join(pieces).translate(_LOWER), escapes


def _origins(text: str, escapes: list[tuple[int, int, str]]) -> tuple[list[int], list[int]]:
    """For each character of the reading, where it starts and ends in ``text``."""
    starts: list[int] = []
    ends: list[int] = []
    done = 0
    for start, end, value in [*escapes, (len(text), len(text), "")]:
        starts.extend(range(done, start))
        ends.extend(range(done + 1, start + 1))
        if value:
            starts.append(start)
            ends.append(end)
        done = end
    return starts, ends


class Redactor:
    """The secrets one client (or one token provider) knows; ``redactor(text)`` removes them.

    Secrets are added as they become known (:meth:`add`: a rotation brings new ones); a
    redactor may also :meth:`include` others, whose secrets it sees as they grow (the client
    includes each token provider's). Its repr shows how many, never which.
    """

    def __init__(self, *secrets: str) -> None:
        self._secrets: set[str] = set()
        self._included: list[Redactor] = []
        self._version = 0
        self._compiled_for: tuple[int, ...] | None = None
        self._pattern: re.Pattern[str] | None = None
        self._forms: tuple[str, ...] = ()
        self._windows: dict[str, list[tuple[str, int]]] = {}
        self.add(*secrets)

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._all())} secrets>"

    def add(self, *secrets: str | None) -> None:
        """Know these secrets from now on (``None``, empty and very short values are ignored)."""
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET and secret not in self._secrets:
                self._secrets.add(secret)
                self._version += 1

    def include(self, other: Redactor) -> None:
        """Redact ``other``'s secrets too, present and future."""
        if other is not self and other not in self._included:
            self._included.append(other)
            self._version += 1

    def _all(self) -> set[str]:
        found = set(self._secrets)
        for other in self._included:
            found |= other._all()
        return found

    def _key(self) -> tuple[int, ...]:
        return (self._version, *(v for other in self._included for v in other._key()))

    def _compile(self) -> re.Pattern[str] | None:
        key = self._key()
        if key != self._compiled_for:
            forms = sorted({f for s in self._all() for f in forms_of(s)}, key=len, reverse=True)
            self._forms = tuple(forms)
            self._pattern = re.compile("|".join(map(re.escape, forms))) if forms else None
            self._windows = {}
            long = {s for s in self._all() if len(s) >= MIN_RUN}
            for found in long.union(*map(encoded_forms, long)):
                # Compared as the readings are: ASCII lower-cased, separators gone.
                piece = _SPLIT.sub("", found).translate(_LOWER)
                if len(piece) >= MIN_RUN:
                    for at in range(len(piece) - _STEP + 1):
                        self._windows.setdefault(piece[at : at + _STEP], []).append((piece, at))
            self._compiled_for = key
        return self._pattern

    def __call__(self, text: str) -> str:
        """``text`` with every known secret, in every form, replaced by ``<redacted>``."""
        pattern = self._compile()
        if pattern is None or not text:
            return text
        text = self._remove_pieces(pattern.sub(REDACTED, text))
        # A text cut short (a body truncated by us or by a gateway) may end in part of one
        # too short for a run: MIN_PREFIX characters will do there.
        for form in self._forms:
            for size in range(min(len(form), MIN_RUN) - 1, MIN_PREFIX - 1, -1):
                if text.endswith(form[:size]):
                    return text[:-size] + REDACTED
        return text

    def _remove_pieces(self, text: str) -> str:
        """``text`` without any run of MIN_RUN characters of a secret (see the module)."""
        for pattern in (_SPLIT, _ESCAPE):  # decoding could break a bare run: both readings
            text = self._remove_pieces_of(text, pattern)
        return text

    def _remove_pieces_of(self, text: str, pattern: re.Pattern[str]) -> str:
        reading, escapes = _reading(text, pattern)
        windows = self._windows
        spans: list[tuple[int, int]] = []
        for at in range(0, len(reading) - _STEP + 1, _STEP):
            for piece, offset in windows.get(reading[at : at + _STEP], ()):
                base = at - offset  # where the piece would start in the reading
                start, end = at, at + _STEP
                while start > max(base, 0) and reading[start - 1] == piece[start - 1 - base]:
                    start -= 1
                limit = min(base + len(piece), len(reading))
                while end < limit and reading[end] == piece[end - base]:
                    end += 1
                if end - start >= MIN_RUN:
                    spans.append((start, end))
        if not spans:
            return text
        if escapes:
            starts, ends = _origins(text, escapes)
            spans = [(starts[a], ends[b - 1]) for a, b in spans]
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in reversed(merged):
            text = text[:start] + REDACTED + text[end:]
        return text

    def text_or_none(self, text: str | None) -> str | None:
        """:meth:`__call__` for an optional text."""
        return None if text is None else self(text)

    def bytes(self, data: bytes) -> bytes:
        """:meth:`__call__` for raw bytes (kept as they are where they are not UTF-8)."""
        return self(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` as they are when no value holds a secret, else a redacted copy."""
        if self._compile() is None or all(self(v) == v for v in headers.values()):
            return headers
        return {k: self(v) for k, v in headers.items()}
