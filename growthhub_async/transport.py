"""The HTTP edge shared by the client and the OAuth provider (issue 12: no import cycle).

Both talk to the network through aiohttp and must apply the same rules: which URLs may carry
a secret (:func:`check_base_url`), how aiohttp's and the socket layer's exceptions become ours
(:func:`map_exceptions`, the one place it happens), and no hidden re-send by aiohttp
(:func:`no_hidden_resend`), and how much of an answer is read (:func:`read_capped`).
``client.py`` and ``auth.py`` both import this module; neither
imports the other's internals.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Final

import aiohttp
import yarl

from growthhub_async.errors import (
    ConfigurationError,
    ConnectionFailed,
    RequestTimeout,
    ResponseError,
)

__all__ = [
    "MAX_ANSWER",
    "SEND_GATE",
    "NotSent",
    "check_base_url",
    "is_loopback",
    "map_exceptions",
    "may_send",
    "no_hidden_resend",
    "read_capped",
    "transport_error",
]

MAX_ANSWER: Final = 1 << 20
"""Bytes: the largest answer read (decompressed). The API's answer is one contact, a few KB;
a token endpoint's, a few hundred bytes."""


class NotSent(Exception):
    """The request was not written: its send gate said no when its connection was ready (a
    record's deadline had passed meanwhile, or the record was cut or its run stopped)."""


SEND_GATE: ContextVar[Callable[[], bool] | None] = ContextVar("growthhub_send_gate", default=None)
"""The send gate of the request this task is making: set it (``token = SEND_GATE.set(gate)``)
around one request and reset it after (``SEND_GATE.reset(token)``, in a ``finally``). The
client asks ``gate()`` at the last moment before the request is written, once its connection
is ready: ``False`` and the request is not written (:class:`NotSent`). Every await before that
moment (the budget, a token refresh, a new connection) may outlast a deadline, even one whose
timer has not run yet (a busy loop). Set and reset directly, not through a context manager: it
wraps every request (issue 17)."""


def may_send() -> bool:
    """Whether the request about to be written may go (``True`` outside a :data:`SEND_GATE`)."""
    gate = SEND_GATE.get()
    return gate is None or gate()


async def read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, or :class:`ResponseError` once it passes :data:`MAX_ANSWER`.

    ``resp.read()`` would hold whatever the server sends (a 50 MB body, a gzip bomb that
    inflates from KB to GB) in memory; this stops reading at the cap.
    """
    content = resp.content
    if content.is_eof():
        # The whole answer came with its headers (a small body usually does): it is in
        # memory already, and taking it costs no iteration (issue 17).
        whole = content.read_nowait()
        if len(whole) > MAX_ANSWER:
            raise ResponseError(
                f"HTTP {resp.status} with an answer over {MAX_ANSWER} bytes: not read further",
                status_code=resp.status,
            )
        return whole
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > MAX_ANSWER:
            raise ResponseError(
                f"HTTP {resp.status} with an answer over {MAX_ANSWER} bytes: not read further",
                status_code=resp.status,
            )
    return bytes(body)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names the loopback interface only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_insecure: bool = False) -> yarl.URL:
    """Validate the API's base URL: https, or plain http only to a loopback host.

    ``allow_insecure`` permits http to any host (a TLS-terminating proxy on a private network);
    the token then travels in clear text. A trailing slash is dropped; a path is kept (proxies).
    """
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"base_url {url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, not {url!r}")
    if parsed.user or parsed.password or parsed.query_string or parsed.fragment:
        raise ConfigurationError("base_url must not hold credentials, a query or a fragment")
    if parsed.scheme == "http" and not (allow_insecure or is_loopback(parsed.host)):
        raise ConfigurationError(
            f"base_url must use https (plain http is allowed to loopback hosts only): {url!r}"
        )
    return parsed.with_path(parsed.path.rstrip("/"))


class map_exceptions:  # noqa: N801 (a context manager used as a function: with map_exceptions())
    """Translate aiohttp's and the socket layer's exceptions into ours: the one place it happens.

    Timeouts become :class:`RequestTimeout`, every other client or socket error
    :class:`ConnectionFailed`. The original is not chained (``from None``): aiohttp exceptions
    can hold the request, and with it the ``Authorization`` header; its class and message are
    kept in ours, passed through ``redact`` first (a parser error quotes the server's bytes,
    which may echo a secret).

    A class rather than a ``@contextmanager`` generator: it wraps every request, and the
    generator's set-up cost a few microseconds per record (issue 17).
    """

    __slots__ = ("_clean",)

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self._clean = redact if redact is not None else _same

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, TimeoutError | aiohttp.ClientError | OSError):
            raise transport_error(exc, self._clean) from None


def transport_error(
    exc: TimeoutError | aiohttp.ClientError | OSError, redact: Callable[[str], str] | None = None
) -> RequestTimeout | ConnectionFailed:
    """Ours for one of aiohttp's or the socket layer's exceptions (see :class:`map_exceptions`;
    the client's request path catches these three itself and raises this ``from None``)."""
    clean = redact if redact is not None else _same
    if isinstance(exc, TimeoutError):  # aiohttp.ServerTimeoutError is one too
        return RequestTimeout(clean(f"no answer in time ({type(exc).__name__}: {exc})"))
    return ConnectionFailed(clean(f"{type(exc).__name__}: {exc}"))


def _same(text: str) -> str:
    return text


def no_hidden_resend(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Turn off aiohttp's silent second send of an idempotent request on a dropped connection.

    That hidden request would bypass the pacer and the attempt count (a PUT), or burn a refresh
    token that the first try may already have rotated (the OAuth refresh). aiohttp has no public
    switch; its own test client flips this same attribute.
    """
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session
