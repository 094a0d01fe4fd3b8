"""Removing secrets from text that came from a server (issues 12 and 18).

Servers, proxies and gateways echo requests: a 401 body quoting the ``Authorization`` header, a
token endpoint's 400 quoting the form it received (client secret and refresh token included),
a parser error quoting a malformed header line. Whatever a server says may end up in an
outcome's ``error``, the journal, an exception, a log line or the terminal, so every piece of
server text goes through a :class:`Redactor` *once, where it enters* (the client's
``read_response`` and ``map_exceptions``, the OAuth provider's ``read_token_answer``), before
anything can store, raise, print or log it.

A redactor knows every secret the client holds (bearer tokens, OAuth access and refresh
tokens, the client secret) and removes each in every form a server may echo it in: bare (so
``Bearer <token>`` too), URL-encoded (a form body: ``%2B`` or ``+`` for a space, upper or lower
case hex), JSON-escaped (``\\/``), and cut short at the end of a truncated text (a prefix of
at least :data:`MIN_PREFIX` characters). Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = ["MIN_PREFIX", "MIN_SECRET", "REDACTED", "Redactor"]

REDACTED: Final = "<redacted>"
"""What a secret is replaced with."""
MIN_SECRET: Final = 6
"""Shorter values are not treated as secrets (a one-letter "secret" would blank every text)."""
MIN_PREFIX: Final = 8
"""A text ending in this many first characters of a secret (or more) is taken as truncated."""

_HEX = re.compile(r"%[0-9A-F]{2}")


def forms_of(secret: str) -> set[str]:
    """The forms a server may echo ``secret`` in: bare, URL-encoded, JSON-escaped."""
    forms = {secret}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms.add(encoded)
        forms.add(_HEX.sub(lambda m: m.group(0).lower(), encoded))
    escaped = json.dumps(secret)[1:-1]
    forms.update({escaped, escaped.replace("/", "\\/")})
    return forms


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
            self._compiled_for = key
        return self._pattern

    def __call__(self, text: str) -> str:
        """``text`` with every known secret, in every form, replaced by ``<redacted>``."""
        pattern = self._compile()
        if pattern is None or not text:
            return text
        text = pattern.sub(REDACTED, text)
        # A text cut short (a body truncated by us or by a gateway) may end in part of one.
        for form in self._forms:
            for size in range(len(form) - 1, MIN_PREFIX - 1, -1):
                if text.endswith(form[:size]):
                    return text[:-size] + REDACTED
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
