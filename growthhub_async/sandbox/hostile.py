"""Hostile answers: what a broken proxy, a half-dead server or a buggy gateway sends back.

Each mode is a per-contact script step (``Faults(scripts={"c1": ["badjson", "ok"]})``) and
answers one PUT in place of the API (the update is **not** applied), except
``garbage-headers``, which applies it normally and only spoils the ``X-RateLimit-*`` headers:

- ``truncated``: a 200 announcing a longer body than it sends, then the connection closes.
- ``badjson``: a 200 whose body is cut-off JSON.
- ``html200``: a 200 with a captive portal's HTML page.
- ``notsucceeded``: a 200 with ``{"succeded": false}``.
- ``html500``: a 500 with an HTML error page.
- ``garbage-headers``: the real answer, with ``X-RateLimit-*`` values like ``abc``, ``-5``,
  ``1e999`` and empty.
- ``garbage-429``: a 429 whose ``Retry-After`` and ``X-RateLimit-*`` values are garbage.
- ``hang``: no answer at all; the connection stays open until the client gives up.
- ``stall``: the status line, headers and part of the body, then nothing.

The raw modes write bytes straight to the socket (aiohttp would not let a handler lie about
``Content-Length``) and close or hold it; the handler then returns a response that aiohttp finds
it cannot send and drops quietly, as for a dropped connection.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

__all__ = ["HOSTILE_MODES", "answer", "install"]

HOSTILE_MODES: Final = frozenset(
    {
        "truncated",
        "badjson",
        "html200",
        "notsucceeded",
        "html500",
        "garbage-headers",
        "garbage-429",
        "hang",
        "stall",
    }
)

# Longest a "hang" or "stall" holds a connection the client has not closed: long enough for
# any client timeout under test, short enough that a forgotten client cannot pin the server.
HANG_LIMIT: Final = 30.0
_POLL: Final = 0.02

_GARBAGE_HEADERS: Final = {
    "X-RateLimit-Limit-Daily": "1e999",
    "X-RateLimit-Daily-Remaining": "",
    "X-RateLimit-Interval-Milliseconds": "-5",
    "X-RateLimit-Max": "abc",
    "X-RateLimit-Remaining": "-5",
}
_MODE: Final = web.RequestKey("growthhub_sandbox_hostile", str)

_HTML_PORTAL: Final = (
    b"<!DOCTYPE html><html><head><title>Sign in to the Wi-Fi</title></head>"
    b"<body><form><input name=user></form></body></html>\n"
)
_HTML_500: Final = (
    b"<html><head><title>500 Internal Server Error</title></head><body>"
    b"<h1>Internal Server Error</h1><p>The server encountered an internal error.</p>"
    b"</body></html>\n"
)
_BODY: Final = b'{"succeded":true,"contact":{"id":"x","firstName":"Trunc'


def _raw(request: web.Request, data: bytes, *, close: bool) -> bool:
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    transport.write(data)
    if close:
        transport.close()
    return True


async def _hold(request: web.Request) -> None:
    """Wait until the client closes the connection (or ``HANG_LIMIT``), answering nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_LIMIT
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(_POLL)
    transport = request.transport
    if transport is not None:
        transport.abort()


def _unsent() -> web.Response:
    # The transport is closed: aiohttp drops this response without sending it.
    return web.Response(status=204)


# The modes answered with a plain (if wrong) HTTP response: status, body, content type.
_CANNED: Final[dict[str, tuple[int, bytes, str]]] = {
    "badjson": (200, _BODY, "application/json"),
    "html200": (200, _HTML_PORTAL, "text/html"),
    "notsucceeded": (200, b'{"succeded":false}', "application/json"),
    "html500": (500, _HTML_500, "text/html"),
    "garbage-429": (429, b'{"statusCode":429,"message":"Too many requests"}', "application/json"),
}
_LYING_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % (len(_BODY) + 200)
)


async def answer(request: web.Request, mode: str) -> web.StreamResponse | None:
    """Answer one PUT in ``mode``; ``None`` means "handle normally" (``garbage-headers``)."""
    if mode not in HOSTILE_MODES:
        raise ValueError(f"unknown hostile mode {mode!r}")
    if mode == "garbage-headers":
        request[_MODE] = mode  # spoiled by the on_response_prepare hook of install()
        return None
    canned = _CANNED.get(mode)
    if canned is not None:
        status, body, content_type = canned
        headers = dict(_GARBAGE_HEADERS, **{"Retry-After": "1e999"}) if status == 429 else None
        return web.Response(status=status, body=body, headers=headers, content_type=content_type)
    if mode == "truncated":
        _raw(request, _LYING_HEAD + _BODY, close=True)
    elif mode == "stall":
        if _raw(request, _LYING_HEAD + _BODY, close=False):
            await _hold(request)
    else:  # hang
        await _hold(request)
    return _unsent()


async def _spoil(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(_MODE) == "garbage-headers":
        response.headers.update(_GARBAGE_HEADERS)


def install(app: web.Application) -> None:
    """Register the hook that spoils the headers of ``garbage-headers`` answers."""
    app.on_response_prepare.append(_spoil)
