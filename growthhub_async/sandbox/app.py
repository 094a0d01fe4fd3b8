"""The sandbox server: ``PUT`` and ``GET /contacts/{contactId}`` plus its own stats endpoints.

Order of handling of a PUT, as the API's layers would see it:

1. counted (stats, the arrival meter of its token);
2. its fate from the fault injector: a delay, then maybe a dropped connection or a 5xx/429
   sent by "the proxy" (no budget used);
3. ``Authorization: Bearer`` checked (401);
4. the token's rate budget (429; only admitted requests use budget);
5. the ``Version`` header (400), the JSON (400), the body's validation (422);
6. the contact looked up (404 with a seeded store), merged, answered 200.

Every answer to ``/contacts/*`` carries the five ``X-RateLimit-*`` headers with the token's true
budget. Time is the event loop's monotonic clock, never wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from aiohttp import web

from growthhub_async.sandbox import hostile
from growthhub_async.sandbox.config import Faults, SandboxConfig
from growthhub_async.sandbox.faults import Fate, FaultInjector, canned_body
from growthhub_async.sandbox.oauth import OAuthServer, read_form
from growthhub_async.sandbox.ratelimit import ArrivalMeter, Budget, Decision, retry_after_header
from growthhub_async.sandbox.store import apply_update, new_contact
from growthhub_async.sandbox.validation import validate_update

__all__ = ["API_VERSION", "Sandbox", "create_app", "run_sandbox"]

API_VERSION: Final = "2021-07-28"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_UNAUTHORIZED: Final = _encode(
    {
        "statusCode": 401,
        "message": "Invalid token: access token is invalid",
        "error": "Unauthorized",
    }
)
_NO_VERSION: Final = _encode(
    {"statusCode": 400, "message": "Version header was not found", "error": "Bad Request"}
)
_BAD_VERSION: Final = _encode(
    {"statusCode": 400, "message": "Unsupported Version header value", "error": "Bad Request"}
)
_NOT_OBJECT: Final = _encode(
    {"statusCode": 400, "message": "The request body must be a JSON object", "error": "Bad Request"}
)
_NOT_FOUND: Final = _encode({"statusCode": 404, "message": "Contact not found"})
_OTHER_LOCATION: Final = _encode(
    {
        "statusCode": 403,
        "message": "The token does not have access to this location.",
        "error": "Forbidden",
    }
)
_TOO_MANY: Final = _encode({"statusCode": 429, "message": "Too many requests"})
_JSON: Final = "application/json"


class _State:
    """Everything the handlers share: config, store, budgets, stats. One per application."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.injector = FaultInjector(config.faults)
        self.interval_ms = str(round(config.rate_window * 1000))
        self.fresh_headers = {
            "X-RateLimit-Limit-Daily": str(config.daily_limit),
            "X-RateLimit-Daily-Remaining": str(config.daily_limit),
            "X-RateLimit-Interval-Milliseconds": self.interval_ms,
            "X-RateLimit-Max": str(config.rate_limit),
            "X-RateLimit-Remaining": str(config.rate_limit),
        }
        self.contacts: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.budgets: dict[str, Budget] = {}
        self.meters: dict[str, ArrivalMeter] = {}
        self.requests = 0
        self.by_status: dict[str, int] = {}
        self.rate_limited = 0
        self.attempts: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        self.oauth = OAuthServer(config.oauth) if config.oauth is not None else None
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.contacts.clear()
        if config.contacts is not None:
            for contact_id, seed in config.contacts.items():
                self.contacts[contact_id] = new_contact(contact_id, config.location_id, seed)
        self.history.clear()
        self.budgets.clear()
        self.meters.clear()
        self.requests = 0
        self.by_status.clear()
        self.rate_limited = 0
        self.attempts.clear()
        self.writes.clear()
        self.injector.restart()
        if self.oauth is not None:
            self.oauth.reset()

    def set_faults(self, faults: Faults) -> None:
        self.injector = FaultInjector(faults)

    def stats(self) -> dict[str, Any]:
        stats = {
            "requests": self.requests,
            "byStatus": dict(self.by_status),
            "rateLimited": self.rate_limited,
            "maxInWindow": max((m.max_seen for m in self.meters.values()), default=0),
            "attempts": dict(self.attempts),
            "writes": dict(self.writes),
        }
        if self.oauth is not None:  # only with an OAuth app, so the plain shape stays as it was
            stats["oauth"] = self.oauth.stats()
        return stats

    def authenticate(self, token: str | None, now: float) -> tuple[str | None, str | None, bytes]:
        """``(budget key, location, b"")`` for a token that may write, else
        ``(None, None, the 401 body)``.

        Fixed tokens of ``tokens`` are their own budget key (location ``location_id``); those
        of ``location_tokens`` and OAuth access tokens share their location's budget.
        """
        if token is None:
            return None, None, _UNAUTHORIZED
        if token in self.config.tokens:
            return token, self.config.location_id, b""
        location = self.config.location_tokens.get(token)
        if location is not None:
            return f"location:{location}", location, b""
        if self.oauth is not None:
            return self.oauth.authenticate(token, now)
        return None, None, _UNAUTHORIZED

    def budget(self, token: str) -> Budget:
        budget = self.budgets.get(token)
        if budget is None:
            config = self.config
            budget = self.budgets[token] = Budget(
                config.rate_limit,
                config.rate_window,
                config.window,
                config.daily_limit,
                config.day_length,
            )
        return budget

    def headers(self, decision: Decision | None) -> dict[str, str]:
        if decision is None:
            return dict(self.fresh_headers)
        return {
            "X-RateLimit-Limit-Daily": self.fresh_headers["X-RateLimit-Limit-Daily"],
            "X-RateLimit-Daily-Remaining": str(decision.daily_remaining),
            "X-RateLimit-Interval-Milliseconds": self.interval_ms,
            "X-RateLimit-Max": self.fresh_headers["X-RateLimit-Max"],
            "X-RateLimit-Remaining": str(decision.remaining),
        }

    def count(self, status: str) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


_STATE: Final = web.AppKey("growthhub_sandbox_state", _State)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None or len(header) < 8 or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def _respond(
    state: _State,
    status: int,
    body: bytes,
    headers: dict[str, str],
    content_type: str = _JSON,
) -> web.Response:
    state.count(str(status))
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


def _too_many(state: _State, decision: Decision | None, headers: dict[str, str]) -> web.Response:
    state.rate_limited += 1
    if state.config.retry_after:
        # Time until a slot frees; a forced 429 with budget to spare says "soon".
        wait = decision.retry_after if decision is not None else 0.0
        headers["Retry-After"] = retry_after_header(wait)
    return _respond(state, 429, _TOO_MANY, headers)


async def _put_contact(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    loop = asyncio.get_running_loop()
    contact_id = request.match_info["contactId"]
    token = _token(request)
    state.requests += 1
    state.attempts[contact_id] = state.attempts.get(contact_id, 0) + 1
    meter_key = token or ""
    meter = state.meters.get(meter_key)
    if meter is None:
        meter = state.meters[meter_key] = ArrivalMeter(state.config.rate_window)
    meter.arrive(loop.time())

    fate = state.injector.fate(contact_id)
    if fate.delay:
        await asyncio.sleep(fate.delay)
    # From here on ``token`` is the budget key (an OAuth token's is its location's), or None.
    token, location, denied = state.authenticate(token, loop.time())
    if fate.kind == "hostile":
        spoiled = await hostile.answer(request, fate.mode)
        if spoiled is not None:
            state.count(fate.mode)
            return spoiled
    elif fate.kind != "normal":
        return _faulted(request, state, fate, token)
    if token is None:
        return _respond(state, 401, denied, state.headers(None))
    decision = state.budget(token).acquire(loop.time())
    headers = state.headers(decision)
    if not decision.allowed:
        return _too_many(state, decision, headers)
    return await _update(request, state, contact_id, headers, location)


def _faulted(
    request: web.Request, state: _State, fate: Fate, token: str | None
) -> web.StreamResponse:
    """What "the proxy" answers instead of the API: no budget is used."""
    if fate.kind == "drop":
        state.count("dropped")
        transport = request.transport
        if transport is not None:
            transport.abort()
        # Never sent: aiohttp finds the transport closed and drops the response quietly.
        return web.Response(status=204)
    decision = None
    if token is not None:
        decision = state.budget(token).peek(asyncio.get_running_loop().time())
    if fate.status == 429 and fate.mode == "spent" and decision is not None:
        # Someone else spent the budget, says the server: none left until the window moves.
        decision = dataclasses.replace(
            decision, remaining=0, retry_after=state.config.rate_window / 2
        )
    headers = state.headers(decision)
    if fate.status == 429:
        return _too_many(state, decision, headers)
    body, content_type = canned_body(fate.status)
    return _respond(state, fate.status, body, headers, content_type)


async def _update(
    request: web.Request,
    state: _State,
    contact_id: str,
    headers: dict[str, str],
    location: str | None,
) -> web.Response:
    """The API proper, past auth and rate limit: location, version, JSON, validation, store."""
    version = request.headers.get("Version")
    known = state.contacts.get(contact_id)
    if location is None or (known is not None and known.get("locationId") != location):
        status, error = 403, _OTHER_LOCATION
    elif version != API_VERSION:
        status, error = 400, _NO_VERSION if version is None else _BAD_VERSION
    else:
        status, error = 0, b""
    if status:
        return _respond(state, status, error, headers)
    raw = await request.read()
    try:
        body = _decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        message = _encode({"statusCode": 400, "message": str(exc), "error": "Bad Request"})
        return _respond(state, 400, message, headers)
    if type(body) is not dict:
        return _respond(state, 400, _NOT_OBJECT, headers)
    problems = validate_update(body)
    if problems:
        message = _encode({"statusCode": 422, "message": problems, "error": "Unprocessable Entity"})
        return _respond(state, 422, message, headers)
    contact = state.contacts.get(contact_id)
    if contact is None:
        if state.config.contacts is not None:
            return _respond(state, 404, _NOT_FOUND, headers)
        assert location is not None  # refused above
        contact = state.contacts[contact_id] = new_contact(contact_id, location)
    apply_update(contact, body)
    state.history.setdefault(contact_id, []).append(body)
    state.writes[contact_id] = state.writes.get(contact_id, 0) + 1
    return _respond(state, 200, _encode({"succeded": True, "contact": contact}), headers)


async def _get_contact(request: web.Request) -> web.Response:
    # A verification aid: authenticated like a PUT, but it uses no rate budget (so checking
    # what was written does not disturb the pacing under test) and needs no Version header.
    state = request.app[_STATE]
    now = asyncio.get_running_loop().time()
    budget_key, _, denied = state.authenticate(_token(request), now)
    if budget_key is None:
        return web.Response(
            body=denied, status=401, headers=state.headers(None), content_type=_JSON
        )
    headers = state.headers(state.budget(budget_key).peek(now))
    contact = state.contacts.get(request.match_info["contactId"])
    if contact is None:
        return web.Response(body=_NOT_FOUND, status=404, headers=headers, content_type=_JSON)
    return web.Response(body=_encode({"contact": contact}), headers=headers, content_type=_JSON)


async def _oauth_token(request: web.Request) -> web.Response:
    # POST /oauth/token (see sandbox/oauth.py); 404 when the sandbox has no OAuth app.
    oauth = request.app[_STATE].oauth
    if oauth is None:
        raise web.HTTPNotFound
    form = await read_form(request)
    status, body = oauth.answer(form, asyncio.get_running_loop().time())
    return web.Response(body=body, status=status, content_type=_JSON)


async def _location_token(request: web.Request) -> web.Response:
    # POST /oauth/locationToken (see sandbox/oauth.py); 404 when the sandbox has no OAuth app.
    oauth = request.app[_STATE].oauth
    if oauth is None:
        raise web.HTTPNotFound
    version = request.headers.get("Version")
    if version != API_VERSION:
        body = _NO_VERSION if version is None else _BAD_VERSION
        return web.Response(body=body, status=400, content_type=_JSON)
    form = await read_form(request)
    status, body = oauth.mint(_token(request), form, asyncio.get_running_loop().time())
    return web.Response(body=body, status=status, content_type=_JSON)


async def _stats(request: web.Request) -> web.Response:
    return web.Response(body=_encode(request.app[_STATE].stats()), content_type=_JSON)


async def _reset(request: web.Request) -> web.Response:
    request.app[_STATE].reset()
    return web.Response(status=204)


def create_app(config: SandboxConfig | None = None) -> web.Application:
    """The sandbox as an ``aiohttp.web.Application`` (run it with any aiohttp runner)."""
    app = web.Application()
    app[_STATE] = _State(config or SandboxConfig())
    hostile.install(app)
    # Any one path segment is an id, braces included (aiohttp's default pattern excludes them).
    app.router.add_put("/contacts/{contactId:[^/]+}", _put_contact)
    app.router.add_get("/contacts/{contactId:[^/]+}", _get_contact)
    app.router.add_post("/oauth/token", _oauth_token)
    app.router.add_post("/oauth/locationToken", _location_token)
    app.router.add_get("/__sandbox/stats", _stats)
    app.router.add_post("/__sandbox/reset", _reset)
    return app


class Sandbox:
    """A running sandbox: its base URL and a view on its state for tests and benchmarks."""

    __slots__ = ("_state", "base_url", "host", "port")

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._state = app[_STATE]
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{url_host}:{port}"
        """``http://HOST:PORT``, no trailing slash."""

    def __repr__(self) -> str:
        return f"<Sandbox {self.base_url}>"

    @property
    def config(self) -> SandboxConfig:
        """The configuration it runs with."""
        return self._state.config

    @property
    def contacts(self) -> dict[str, dict[str, Any]]:
        """The stored contacts, by id, in the API's contact JSON shape (live, not a copy)."""
        return self._state.contacts

    @property
    def oauth(self) -> OAuthServer | None:
        """The token endpoint's state (live refresh tokens, counters), if OAuth is configured."""
        return self._state.oauth

    @property
    def history(self) -> dict[str, list[dict[str, Any]]]:
        """Per contact id, every applied PUT body, in the order they were applied."""
        return self._state.history

    def stats(self) -> dict[str, Any]:
        """The same dict as ``GET /__sandbox/stats``."""
        return self._state.stats()

    def reset(self) -> None:
        """Clear stats, store (back to the seeded contacts), budgets; rewind the faults."""
        self._state.reset()

    def set_faults(self, faults: Faults) -> None:
        """Inject ``faults`` from now on (the random source restarts from their seed)."""
        self._state.set_faults(faults)


@contextlib.asynccontextmanager
async def run_sandbox(
    config: SandboxConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 1.0,
) -> AsyncIterator[Sandbox]:
    """Run the sandbox on ``host:port`` (``port=0``: a free one) for the ``async with`` block.

    On exit, requests still in flight get ``shutdown_timeout`` seconds to finish, then the
    server closes every connection. The address is reusable at once (``SO_REUSEADDR``), so a
    sandbox can restart on the same port.
    """
    app = create_app(config)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield Sandbox(app, host, bound_port)
    finally:
        await runner.cleanup()
