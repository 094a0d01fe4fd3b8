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
- in pieces: any run of :data:`MIN_RUN` characters or more of a secret, of its hex (either
  case) or of its base64 (a ``Basic`` header, a debug dump; standard or URL-safe, at any of
  the three byte alignments), anywhere in the text: a body cut in the middle
  (``eyJhbGciOi...``), a token wrapped over lines or split by spaces, each character escaped
  as ``\\u00XX``, ``%XX`` or an HTML character reference (``&#x74;``, ``&#116;``). The
  pieces are looked for in a *reading* of the text with whitespace removed and JSON, URL and
  HTML escapes decoded, and removed from the text itself (with the whitespace and escapes
  inside them).

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
_ESCAPE = re.compile(
    r"\\u[0-9a-fA-F]{4}|\\/|%[0-9a-fA-F]{2}|\s+"
    r"|&#[0-9]{1,7};|&#[xX][0-9a-fA-F]{1,6};|&(?:amp|sol|plus|equals|lowbar|period|colon);"
)


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
    """``secret`` as hex (either case), and the part of its base64 that does not depend on the
    bytes around it: standard and URL-safe alphabets, with the secret starting at each of the
    three byte alignments (an ``user:secret`` pair puts it anywhere).
    """
    raw = secret.encode("utf-8")
    forms = {raw.hex(), raw.hex().upper()}
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + raw).decode("ascii").rstrip("=")
        first = -(-align * 8 // 6)  # the first character made of the secret's bits alone
        last = (align + len(raw)) * 8 // 6  # the characters after this one mix in what follows
        core = encoded[first:last]
        forms.update({core, core.replace("+", "-").replace("/", "_")})
    return forms


def _reading(text: str) -> tuple[str, list[tuple[int, int, str]]]:
    """``text`` with whitespace removed and ``\\uXXXX``, ``\\/``, ``%XX`` decoded.

    Also returns the escapes, as (start, end, value) in ``text``, for :func:`_origins`.
    """
    escapes: list[tuple[int, int, str]] = []
    for match in _ESCAPE.finditer(text):
        found = match.group(0)
        if found[0] == "\\":
            value = "/" if found == "\\/" else chr(int(found[2:], 16))
        elif found[0] == "%":
            value = chr(int(found[1:], 16))
        elif found[0] == "&":
            value = html.unescape(found)
            value = value if len(value) == 1 else ""  # a number beyond Unicode
        else:
            value = ""
        escapes.append((match.start(), match.end(), value))
    if not escapes:
        return text, escapes
    pieces: list[str] = []
    done = 0
    for start, end, value in escapes:
        pieces += (text[done:start], value)
        done = end
    pieces.append(text[done:])
    return "".join(pieces), escapes


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
            for piece in long.union(*map(encoded_forms, long)):
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
        reading, escapes = _reading(text)
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
