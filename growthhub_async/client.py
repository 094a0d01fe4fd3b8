"""``GrowthHubClient``: the session pool, one rate budget per token, and the public API.

One client holds **one aiohttp connector** (keep-alive, ``concurrency`` connections per token)
and, per token, **one session** over it with that token's headers, its own rate budget
(:class:`~growthhub_async.ratelimit.Budget`: pace, 429 pause, daily limit) and its own stop
state (daily limit reached, repeated 401s).
Records for location A therefore never wait on location B's budget.

One token::

    async with GrowthHubClient(token=TOKEN, rate="100/10s") as gh:
        resp = await gh.update_contact("ocQHyuzHvysMo5N5VsXc", UpdateContact(first_name="Rosan"))
        async for outcome in gh.update_contacts(pairs):
            ...

Several tokens (one per sub-account/location), each named by a key of your choice::

    async with GrowthHubClient(tokens={"locA": TOKEN_A, "locB": TOKEN_B}) as gh:
        await gh.update_contact(cid, update, token_key="locA")
        async for outcome in gh.update_contacts(records):   # Record(..., token_key="locB")
            ...
        loc_b = gh.for_token("locB")                          # a view bound to one key
        await loc_b.submit(cid, update)

A single ``token=`` is named ``"default"``. With one token, the key may always be omitted; with
several, each record names its key (``Record.token_key``), or the call gives one for all
(``update_contacts(records, token_key="locA")``); a record with no or an unknown key is
``rejected``, never sent with another location's token.

The client is safe to share across the concurrent tasks of a web backend for the life of the
app: create it at start-up, ``await gh.close()`` at shutdown (or use ``async with``).

The token never appears in ``repr()``, ``str()``, exceptions or logs; errors carry the server's
messages, status, headers and ``traceId``, never the request.

``PUT /contacts/{id}`` with the same body is idempotent, which is what makes retrying after a
timeout or a dropped connection safe (the first request may have been applied; applying it
again changes nothing).

What the client does not trust (issue 12): a redirect is never followed (the body and the
token would go wherever ``Location`` points; a 303 would turn the PUT into a GET): it raises
:class:`~growthhub_async.errors.Redirected`, a ``failed`` outcome that is not retried. Every
answer must be complete within ``timeout`` (a body trickling a byte at a time does not keep a
request alive) and at most :data:`MAX_ANSWER` bytes, and a 2xx naming another contact raises
:class:`~growthhub_async.errors.ContactMismatch`. A pooled connection that the server had
already closed is never used: see :class:`_Connector`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import select
import time
import weakref
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import msgspec
import yarl

from growthhub_async.auth import (
    AccessToken,
    FixedToken,
    TokenProvider,
    is_location_error,
    is_scope_error,
)
from growthhub_async.bulk import Engine, OutcomeStream, RecordInput
from growthhub_async.contact_id import RESERVED_LOCATION, check_contact_id
from growthhub_async.errors import (
    ClientClosed,
    ConfigurationError,
    ContactMismatch,
    HTTPStatusError,
    RateLimited,
    ResponseError,
    TokenRefreshFailed,
    Unauthorized,
    error_for_status,
)
from growthhub_async.events import (
    Event,
    Hook,
    Paused,
    RecordFinished,
    TokenStopped,
)
from growthhub_async.locations import LocationToken, LocationTokens, location_problem
from growthhub_async.logs import current_run_id, log_event
from growthhub_async.models import (
    CustomFieldValueKey,
    UpdateContact,
    UpdateContactCodec,
    UpdateContactResponse,
    decode_error_body,
    decode_response,
)
from growthhub_async.outcomes import Outcome, Status
from growthhub_async.ratelimit import (
    NO_RATE_HEADERS,
    Budget,
    Pacer,
    Pacing,
    Rate,
    RateHeaders,
    parse_rate,
    parse_rate_headers,
)
from growthhub_async.redact import Redactor
from growthhub_async.retry import RetryPolicy, header_value, parse_retry_after
from growthhub_async.shared_budget import RedisBudgets
from growthhub_async.sources import Record
from growthhub_async.telemetry import ClientTelemetry, Telemetry
from growthhub_async.transport import (
    MAX_ANSWER,
    SEND_GATE,
    NotSent,
    check_base_url,
    is_loopback,
    map_exceptions,
    no_hidden_resend,
    read_capped,
    transport_error,
)

if TYPE_CHECKING:  # imported where a state is used: sqlite3 costs every other run's start-up
    from growthhub_async.state import SyncState

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_TOKEN_KEY",
    "MAX_ANSWER",
    "MAX_KEPT_ANSWER",
    "MAX_TIMEOUT",
    "MAX_VALUE_DEPTH",
    "GrowthHubClient",
    "TokenView",
    "check_base_url",
    "check_timeout",
    "is_loopback",
    "map_exceptions",
    "read_response",
]

DEFAULT_BASE_URL: Final = "https://services.leadconnectorhq.com"
API_VERSION: Final = "2021-07-28"
DEFAULT_TOKEN_KEY: Final = RESERVED_LOCATION  # "default": a name, not a secret
"""The key of the token given as ``token=``."""

DAILY_LIMIT_REACHED: Final = "daily limit reached"
_NO_SECRETS: Final = Redactor()

log = logging.getLogger("growthhub_async")


def _check_token(key: str, token: str | TokenProvider) -> TokenProvider:
    # The message names the key, never the token.
    if not isinstance(key, str) or not key:
        raise ConfigurationError("token keys must be non-empty strings")
    if isinstance(token, TokenProvider):
        return token
    if not isinstance(token, str) or not token:
        raise ConfigurationError(f"token {key!r} is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigurationError(f"token {key!r} contains whitespace or control characters")
    return FixedToken(token)


def connection_room() -> int:
    """The connections one client over many locations may hold at once: half the file
    descriptors the process may open (``RLIMIT_NOFILE``'s soft limit; 0: no limit known). Past
    it, a request waits for a free connection rather than failing with "Too many open files":
    at the usual soft limit of 1,024, a run over 5,000 locations with slow answers did."""
    try:
        import resource  # noqa: PLC0415 (not on Windows)
    except ImportError:  # pragma: no cover (Windows)
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(8, soft // 2)


class _Select:
    """``select.poll``'s one use here without it (Windows), or with no socket to look at
    (``fd`` None: nothing to read): ``poll(0)``."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def poll(self, timeout: int) -> list[int]:
        if self._fd is None:
            return []
        readable, _, _ = select.select([self._fd], [], [], timeout)  # pragma: no cover (Windows)
        return readable  # pragma: no cover (Windows)


def _poller(transport: asyncio.BaseTransport | None) -> Any:
    """What tells whether an idle pooled connection has anything to read: ``poll(0)`` is not
    empty on the server's FIN (it closed the connection), or on bytes it had no reason to send.
    Either way, no request may go on it. ``None``: its socket is closed already.

    A ``poll`` with a zero timeout: the kernel knows of a FIN before the event loop has run the
    callback that would mark the connection closed, which is the window in which aiohttp hands
    out a dead connection. Made once per connection (making it per reuse cost more than the
    ``poll``, issue 17).
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return _Select(None)
    fd = sock.fileno()
    if fd < 0:
        return None
    if not hasattr(select, "poll"):
        return _Select(fd)  # pragma: no cover (Windows)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, minus the pooled connections that the server has already closed.

    A server that closes an idle keep-alive connection (its keep-alive timeout, a restart)
    sends a FIN; until the event loop has read it, aiohttp still counts the connection as
    alive and hands it out again. A request sent on it fails before the server sees it, yet it
    was counted as an attempt and spent the record's retry budget. Each pooled connection is
    checked before reuse (:func:`_poller`) and closed instead when the server has. (A
    FIN still in flight while the request goes out cannot be told from a server that read the
    request and dropped it: that failure counts, as the server may have seen it. aiohttp's own
    silent re-send, which would also re-send the latter, stays off: see :meth:`_Lane.open`.)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Protocols of connections handed out before (only those come from the pool: a fresh
        # TLS connection may hold an unread session ticket, which is no reason to drop it),
        # with their poller (:func:`_poller`) once reused.
        self._used: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Any:
        while True:
            # Ends: each pass either returns or closes one pooled connection, and a fresh
            # connection is returned unchecked.
            conn = await super().connect(req, traces, timeout)
            protocol = conn.protocol
            if protocol is None:
                return self._gated(conn)
            poller = self._used.get(protocol, self)  # `self`: never handed out before
            if poller is self:
                self._used[protocol] = None
                return self._gated(conn)
            if poller is None:
                poller = self._used[protocol] = _poller(conn.transport)
            if poller is not None and not poller.poll(0):
                return self._gated(conn)
            log.debug("a pooled connection was closed by the server; not used")
            conn.close()

    @staticmethod
    def _gated(conn: Any) -> Any:
        """The connection, unless the request may no longer go (:func:`may_send`): the last
        moment before aiohttp writes it. The unused connection goes back to the pool."""
        gate = SEND_GATE.get()  # may_send(), one call frame less per request (issue 17)
        if gate is None or gate():
            return conn
        conn.release()
        raise NotSent


class _Trimmer:
    """One timer for every quiet lane of a client: trims a lane's pacing logs once they are
    stale (issue 13), without a timer per lane (issue 17: a thousand idle locations must not
    each hold a timer that wakes for nothing). Wakes at most once per :data:`_TRIM_EVERY`
    seconds while some lane waits, and not at all once none does."""

    __slots__ = ("_due", "_timer")

    def __init__(self) -> None:
        # Quiet lanes by when their logs are stale, in that order (every lane of a client has
        # the same delay: its rate's span), so the first entries are the ones due.
        self._due: dict[_Lane, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def later(self, lane: _Lane, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._due.pop(lane, None)  # quiet again: its new time goes last, keeping the order
        self._due[lane] = loop.time() + delay
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + delay, self._fire)

    def forget(self, lane: _Lane) -> None:
        self._due.pop(lane, None)
        if not self._due and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._due
        while due:
            lane, when = next(iter(due.items()))
            if when > now:
                self._timer = loop.call_at(max(when, now + _TRIM_EVERY), self._fire)
                return
            del due[lane]
            lane.budget.trim(now)


_TRIM_EVERY: Final = 1.0
"""Seconds: the shortest gap between two wakes of a client's :class:`_Trimmer`."""


class _Lanes(dict[str, "_Lane"]):
    """The client's lanes by key; with ``locations=``, a location's lane is made when first
    asked for (``get``), so a run over 1,000 locations holds only the lanes it uses."""

    def __init__(self, make: Callable[[str], _Lane | None] | None) -> None:
        super().__init__()
        self._make = make

    def get(self, key: str, default: Any = None) -> Any:
        lane: _Lane | None = dict.get(self, key)
        if lane is None and self._make is not None and isinstance(key, str):
            lane = self._make(key)
            if lane is not None:
                self[key] = lane
        return lane if lane is not None else default

    def why_missing(self, key: object) -> str:
        """Why no lane serves ``key``, naming it (never a token)."""
        if self._make is None:
            return f"unknown token_key {key!r}"
        if isinstance(key, str) and (problem := location_problem(key)) is not None:
            return problem
        return f"location {key!r} has no token (not in the tokens file, and no agency app)"


class _RejectedToken(Unauthorized):
    """A 401 that a refresh may cure, with the generation of the token that got it.

    Raised only where the token's provider can refresh; the generation (never the token)
    lets :meth:`_Lane.refresh` tell "refresh now" from "someone already did".
    """

    def __init__(self, error: HTTPStatusError, generation: int, sent_at: float) -> None:
        super().__init__(
            error.status_code, error.messages, headers=error.headers, trace_id=error.trace_id
        )
        self.generation = generation
        self.sent_at = sent_at


def read_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    redact: Redactor | None = None,
    contact_id: str | None = None,
    keep: bool = False,
) -> UpdateContactResponse:
    """The decoded 2xx body, or the typed error of the answer. Pure.

    Every piece of server text kept on the error (messages, ``traceId``, headers, a bad 2xx's
    body) goes through ``redact`` first: a gateway may echo the ``Authorization`` header.

    A 2xx whose body is not the API's JSON, or says ``succeded: false``, raises
    :class:`ResponseError` (the retry policy treats it as transient: most likely a proxy's
    truncated answer). A 204, or a 2xx with no body (or only whitespace), is success: the PUT
    was applied and there is nothing to read. A 2xx whose contact has an ``id`` other than
    ``contact_id`` raises :class:`~growthhub_async.errors.ContactMismatch` (not retried). A 3xx
    raises :class:`~growthhub_async.errors.Redirected`. ``now`` (Unix seconds) reads a
    ``Retry-After`` HTTP date when the answer has no ``Date`` header.

    ``keep``: the decoded 2xx goes to a caller (``submit(..., response=True)``), so a secret
    the server echoed in it (a contact field holding the bearer) is removed first: the body is
    decoded again from its redacted text, or without its contact if that is no longer JSON (or
    if a custom field value nests deeper than :data:`MAX_VALUE_DEPTH`, or the body is larger
    than :data:`MAX_KEPT_ANSWER`). Only then: the scan
    costs a pass over the body, for nothing when the body is dropped. A body nested too deep
    to decode (``RecursionError``) is unreadable like any other.
    """
    clean = redact if redact is not None else _NO_SECRETS
    if 200 <= status < 300:
        if not body or body.isspace():
            return UpdateContactResponse()
        try:
            decoded = decode_response(body)
        except (msgspec.DecodeError, RecursionError):
            raise ResponseError(
                f"HTTP {status} with a body that is not the API's JSON ({len(body)} bytes)",
                status_code=status,
                body=clean.bytes(body[:512]),
            ) from None
        if decoded.succeded is False:
            raise ResponseError(
                f"HTTP {status} but the server says succeded: false",
                status_code=status,
                body=clean.bytes(body[:512]),
            )
        named = decoded.contact.id if decoded.contact is not None else None
        if contact_id is not None and named is not None and named != contact_id:
            raise ContactMismatch(
                status_code=status,
                expected=contact_id,
                received=clean(named),
                body=clean.bytes(body[:512]),
            )
        return _for_caller(decoded, body, clean) if keep else decoded
    error = decode_error_body(body)
    messages = [clean(m) for m in error.messages] if error is not None else []
    trace_id = clean.text_or_none(error.trace_id) if error is not None else None
    headers = clean.headers(headers)
    cls = error_for_status(status)
    if cls is RateLimited:
        retry_after = parse_retry_after(
            header_value(headers, "Retry-After"), date=header_value(headers, "Date"), now=now
        )
        raise RateLimited(
            status, messages, headers=headers, trace_id=trace_id, retry_after=retry_after
        )
    raise cls(status, messages, headers=headers, trace_id=trace_id)


MAX_VALUE_DEPTH: Final = 32
"""Lists and objects nested in a returned custom field value, at most, for the contact to be
given to a caller (``response=True``): a web framework's JSON encoder or pydantic refuses a
few hundred levels (the API's values are scalars or lists of strings)."""


MAX_KEPT_ANSWER: Final = 256 << 10
"""Bytes: the largest 2xx whose contact is given to a caller (``response=True``). Looking for
secrets costs about 0.3 s a MiB on the event loop; the API's answer is a few KB."""


def _for_caller(
    decoded: UpdateContactResponse, body: bytes, clean: Redactor
) -> UpdateContactResponse:
    """The decoded 2xx as a caller may hold it: ``body`` decoded again from its redacted text
    when it holds a secret, and without the contact when that no longer decodes, or when a
    custom field value nests deeper than :data:`MAX_VALUE_DEPTH`, or when the body is larger
    than :data:`MAX_KEPT_ANSWER`."""
    if len(body) > MAX_KEPT_ANSWER:
        return msgspec.structs.replace(decoded, contact=None)
    redacted = clean.bytes(body)
    if redacted != body:
        try:
            decoded = decode_response(redacted)
        except (msgspec.DecodeError, RecursionError):
            return msgspec.structs.replace(decoded, contact=None)
    contact = decoded.contact
    fields = contact.custom_fields if contact is not None else None
    if fields and any(_too_deep(f.value) for f in fields):
        return msgspec.structs.replace(decoded, contact=None)
    return decoded


def _too_deep(value: object) -> bool:
    """Whether ``value`` nests lists and dicts deeper than :data:`MAX_VALUE_DEPTH`."""
    level: list[object] = [value]
    for _ in range(MAX_VALUE_DEPTH + 1):
        inner: list[object] = []
        for item in level:
            if isinstance(item, list):
                inner.extend(item)
            elif isinstance(item, dict):
                inner.extend(item.values())
        if not inner:
            return False
        level = inner
    return True


class _Lane:
    """One token: its session (headers), budget, pacer and stop state. Never shows the token."""

    def __init__(
        self,
        key: str,
        provider: TokenProvider,
        budget: Budget,
        *,
        unauthorized_limit: int,
        client: GrowthHubClient,
    ) -> None:
        self.key = key
        self.budget = budget
        self.provider = provider
        self._client = client
        self._redact = client.redactor
        self._sent_value: str | None = None  # the last bearer value, known to the redactor
        self._unauthorized_limit = unauthorized_limit
        self._unauthorized = 0
        # A token fresh from a refresh, refused before any success (issue 18, item 7): how
        # many times in a row, and when the last refusal was counted.
        self._fresh_refusals = 0
        self._fresh_refused_at = float("-inf")
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the session's (asking costs a getpid)
        self._pacer: Pacing | None = None
        self._timeout = 0.0
        self.stopped: tuple[Status, str] | None = None
        """Why this token sends no more: ``(status, reason)`` for its remaining records."""

    def __repr__(self) -> str:
        return f"<token {self.key!r}>"

    def open(self, connector: aiohttp.BaseConnector, timeout: aiohttp.ClientTimeout) -> None:
        self._loop = asyncio.get_running_loop()
        self._pacer = self._client.pacing(self.key, self.provider, self.budget)
        self._sent_value = None  # a new session: its first request sets Authorization
        self._timeout = timeout.total or 0.0
        self._session = aiohttp.ClientSession(
            connector=connector,
            connector_owner=False,
            timeout=timeout,
            # Authorization is added by the first request (_credential), and replaced when an
            # OAuth token changes under the session.
            headers={
                "Version": API_VERSION,
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": self._client.user_agent,
            },
            raise_for_status=False,
            trust_env=False,
            # The API sets no cookies we need; a jar per location would only cost memory.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # No hidden re-send of a PUT on a dropped connection: the engine's own retry covers drops.
        no_hidden_resend(self._session)

    async def close(self) -> None:
        self._client._trimmer.forget(self)
        if self._session is not None:
            await self._session.close()
        if self._pacer is not None:
            await self._pacer.aclose()
        await self.provider.aclose()

    def pause_remaining(self, now: float) -> float:
        return max(0.0, self.budget.paused_until - now)

    def quiet(self) -> None:
        """The engine has nothing of this token queued or running: once its times are stale
        (two spans from now), trim its budget's logs (the client's one timer does it)."""
        if self.budget.rate is not None:
            self._client._trimmer.later(self, 2 * self.budget.span + 0.01)

    async def acquire(self) -> float:
        """Wait for this token's budget; returns the send time (``loop.time()``).

        When the token stopped while we waited, the engine sends nothing: the slot is given
        back at once, or every later wait would count it as in flight forever (a stopped
        location's last records hung so, found with issue 13).
        """
        assert self._pacer is not None
        return self._taken(await self._pacer.acquire())

    def take(self) -> float | None:
        """:meth:`acquire` without waiting: the send time when the budget has room now (the
        usual case, for no coroutine), else ``None`` (then ``await acquire()``)."""
        assert self._pacer is not None
        sent_at = self._pacer.take()
        if sent_at is not None and (self.stopped is not None or self.budget.daily_exhausted):
            self._taken(sent_at)
        return sent_at

    def _taken(self, sent_at: float) -> float:
        if self.budget.daily_exhausted:  # another process saw it (a shared budget)
            self.stop(Status.FAILED, DAILY_LIMIT_REACHED)
        if self.stopped is not None:
            self.release(sent_at)
        return sent_at

    def release(self, sent_at: float) -> None:
        """The request :meth:`acquire` made room for is not sent: its slot goes back."""
        assert self._pacer is not None
        self._pacer.complete(sent_at)

    async def refresh(self, error: HTTPStatusError, *, again: bool = False) -> float | None:
        """After a 401: seconds to wait before sending again (0: at once), or ``None``: not.

        Only a 401 that means "expired or invalid token", from a provider that can refresh,
        gets here as :class:`_RejectedToken`; the provider refreshes once for every caller
        (single flight) or, if the token was already replaced, not at all. A refused refresh
        stops the token (its records end ``unauthorized`` with the server's reason) and raises
        :class:`~growthhub_async.errors.TokenRefreshFailed`, the record's own error.

        A token fresh from a refresh is not refreshed again: see :meth:`_fresh_token_refused`.
        ``again``: this record already had its refresh, so it may not cause another one (it
        pauses and sends again instead). The caller does the waiting (the engine schedules the
        record like a retry, so a pause holds no worker).
        """
        if not isinstance(error, _RejectedToken) or self.stopped is not None:
            return None
        if self.provider.fresh(error.generation):
            return self._fresh_token_refused(error)
        if again:
            # The record had its refresh, and this token is not fresh: it works for others.
            # An intermittent 401 ("Invalid JWT"): pause and send again, no new refresh (the
            # engine bounds how often per record).
            return self._client.retry.backoff_delay(1)
        try:
            renewed = await self.provider.rejected(error.generation)
        except TokenRefreshFailed as exc:
            self.stop(Status.UNAUTHORIZED, str(exc))
            raise
        if renewed:
            return 0.0
        return self._fresh_token_refused(error)

    def _fresh_token_refused(self, error: _RejectedToken) -> float | None:
        """The token a refresh just issued was refused, before it ever worked.

        The API sometimes refuses a brand-new token ("Invalid JWT") for a moment. So the record
        is sent again with it after a pause (the retry policy's backoff), and the token is
        declared dead only after ``unauthorized_limit`` refusals in a row, each of a request
        sent after the previous refusal (requests in flight together are one piece of
        evidence). Any success resets the count.
        """
        if error.sent_at >= self._fresh_refused_at:
            self._fresh_refusals += 1
            self._fresh_refused_at = asyncio.get_running_loop().time()
        if self._fresh_refusals >= self._unauthorized_limit:
            self.stop(
                Status.UNAUTHORIZED,
                f"not sent: the token from the last refresh was refused (401) "
                f"{self._fresh_refusals} times in a row, with pauses between",
            )
            return None
        return self._client.retry.backoff_delay(self._fresh_refusals)

    def _count_unauthorized(self) -> None:
        self._unauthorized += 1
        if self._unauthorized >= self._unauthorized_limit:
            self.stop(
                Status.UNAUTHORIZED,
                f"not sent: the token was refused (401) {self._unauthorized} times",
            )

    def stop(self, status: Status, reason: str) -> None:
        if self.stopped is None:
            self.stopped = (status, reason)
            self._client._broadcast(TokenStopped(token_key=self.key, status=status, reason=reason))

    async def request(
        self,
        contact_id: str,
        body: bytes,
        *,
        sent_at: float,
        deadline: float | None = None,
        keep_response: bool = False,
    ) -> tuple[int, UpdateContactResponse]:
        """Send one PUT (already paced); returns ``(status, body)`` or raises the typed error.

        The whole answer must be in within the client's ``timeout``, and by ``deadline``
        (``loop.time()``) when one is given (a record's ``max_time``). Never follows a
        redirect. Whatever happens, the budget learns when the request ended: it counts against
        the window from then on (rule 1 of :mod:`~growthhub_async.ratelimit`).
        ``keep_response``: the decoded body goes to a caller (``submit(..., response=True)``),
        so a secret it echoes is removed first.

        One coroutine from the budget's bookkeeping to the decoded answer (it was three, each a
        frame on every resumption: issue 17).
        """
        assert self._pacer is not None
        assert self._session is not None
        loop = self._loop
        assert loop is not None
        try:
            url = self._client.contact_url(contact_id)
            # In the session's headers. The provider's value at hand when no refresh is due (no
            # coroutine: two per request cost more than the lookup, issue 17).
            credential = self.provider.current()
            if credential is None:
                credential = await self._credential()
            elif credential.value is not self._sent_value:
                self._bearer(credential.value)
            left = deadline - loop.time() if deadline is not None else None
            try:
                if left is not None and left < self._timeout:
                    # The record's max_time is nearer than the usual timeout: it bounds this one.
                    limit = aiohttp.ClientTimeout(
                        total=max(left, 0.001), sock_connect=self._timeout
                    )
                    request = self._session.put(
                        url, data=body, allow_redirects=False, timeout=limit
                    )
                else:
                    request = self._session.put(url, data=body, allow_redirects=False)
                # The response awaited, then entered: the request's own context manager would
                # be one more coroutine frame on every resumption (issue 17); the same exit.
                async with await request as resp:
                    status, headers, raw = resp.status, resp.headers, await read_capped(resp)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise transport_error(exc, self._redact) from None
            now = loop.time()
            rate = parse_rate_headers(headers)
            if rate is not NO_RATE_HEADERS:  # an answer without them teaches the budget nothing
                self._pacer.observe(rate, sent_at=sent_at, now=now)
            return status, self._answer(
                status,
                headers,
                raw,
                contact_id=contact_id,
                credential=credential,
                sent_at=sent_at,
                now=now,
                rate=rate,
                keep=keep_response,
            )
        finally:
            self._pacer.complete(loop.time())

    def _pause(self, asked: float | None, now: float) -> None:
        """After a 429 that spent the budget: pause the token, bounded (rule 4 of ratelimit)."""
        wait = asked if asked is not None else self.budget.rest_of_window(now)
        cap = self.budget.pause_cap
        seconds = min(wait, cap)
        assert self._pacer is not None
        if self._pacer.pause(now + seconds, now):
            reason = "429 Too Many Requests"
            if wait > cap:
                reason += f" (asked for {wait:g}s, cut to max_pause {cap:g}s)"
            self._client._broadcast(Paused(token_key=self.key, seconds=seconds, reason=reason))

    async def _credential(self) -> AccessToken:
        try:
            credential = await self.provider.token()
        except TokenRefreshFailed as exc:
            self.stop(Status.UNAUTHORIZED, str(exc))
            raise
        if credential.value is not self._sent_value:
            self._bearer(credential.value)
        return credential

    def _bearer(self, value: str) -> None:
        """Send ``value`` from now on: in the session's own headers, one merge fewer per request
        than passing it each time (issue 17). No await between here and the request that
        carries it."""
        self._sent_value = value
        self._redact.add(value)  # whatever the provider, it is a secret
        assert self._session is not None
        self._session.headers["Authorization"] = f"Bearer {value}"

    def _answer(
        self,
        status: int,
        headers: Mapping[str, str],
        raw: bytes,
        *,
        contact_id: str,
        credential: AccessToken,
        sent_at: float,
        now: float,
        rate: RateHeaders,
        keep: bool,
    ) -> UpdateContactResponse:
        """The answer to a request of :meth:`request`, read; what it says about the token acted
        on (a 401 counted or handed to a refresh, a 429 pause, the daily stop)."""
        try:
            result = read_response(
                status,
                headers,
                raw,
                now=time.time() if status == 429 else None,  # a Retry-After date's reference
                redact=self._redact,
                contact_id=contact_id,
                keep=keep,
            )
        except RateLimited as exc:
            # Only a spent budget pauses everyone; any other 429 delays its own record.
            if rate.spent:
                self._pause(exc.retry_after, now)
            raise
        except HTTPStatusError as exc:
            if exc.status_code == 401:
                if self.provider.refreshable and not is_scope_error(exc):
                    # Counted by refresh() only if no newer token cures it.
                    raise _RejectedToken(exc, credential.generation, sent_at) from None
                self._count_unauthorized()
            elif exc.status_code == 403 and is_location_error(exc):
                # The token belongs to another location: every record would get this answer
                # (issue 18). Stop it as repeated 401s do.
                self.stop(Status.UNAUTHORIZED, f"not sent: the token was refused: {exc}")
            else:
                self._unauthorized = 0
                if 400 <= exc.status_code < 500 and exc.status_code not in (403, 429):
                    self.provider.accepted(credential.generation)  # got past auth
            raise
        finally:
            if self.budget.daily_exhausted:
                self.stop(Status.FAILED, DAILY_LIMIT_REACHED)
        self._unauthorized = self._fresh_refusals = 0
        self.provider.accepted(credential.generation)
        return result


MAX_TIMEOUT: Final = 1e9
"""Seconds: a ``submit`` deadline must be below this (asyncio's timers take no more)."""


def check_timeout(timeout: object) -> None:
    """Raise :class:`ConfigurationError` unless ``timeout`` is ``None`` or a deadline ``submit``
    takes: a positive number of seconds below :data:`MAX_TIMEOUT` (not a bool, not NaN). The
    one rule: the example apps check their ``GROWTHHUB_DEADLINE`` with it at start-up."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"timeout must be a number of seconds, not {timeout!r}")
    if not 0 < timeout < MAX_TIMEOUT:
        raise ConfigurationError(
            f"timeout must be a positive number of seconds below {MAX_TIMEOUT:g}: {timeout!r}"
        )


def _budget_store(
    shared_budget: str | RedisBudgets | None, rate: Rate | None, redactor: Redactor
) -> RedisBudgets | None:
    """The shared budget's store for ``shared_budget=``; its password joins the redactor."""
    if shared_budget is None:
        return None
    if rate is None:
        raise ConfigurationError("shared_budget= needs a rate (rate=None paces nothing)")
    store = RedisBudgets(shared_budget) if isinstance(shared_budget, str) else shared_budget
    redactor.include(store.redactor)
    return store


class GrowthHubClient:
    """The client: sessions, auth, pacing per token, ``update_contact``, the bulk engine.

    Parameters (all keyword-only except ``token``):

    - ``token`` or ``tokens``: one bearer token (key ``"default"``), or a mapping ``{key: token}``
      for several locations (see the module's documentation).
    - ``base_url``: the API root; https, or http to loopback (``allow_insecure`` lifts that).
    - ``rate``: ``"N/Ws"`` per token (``"100/10s"``, the API's burst limit; ``"25/10s"`` for
      sandbox accounts; ``"20/0.5s"``) or ``None`` for no client-side pacing.
    - ``concurrency``: requests in flight per token (workers and pooled connections).
    - ``timeout``: seconds for one request: to connect, between two reads, and for the whole
      answer. A record's retries also end by its ``retry.max_time``, in flight or not.
    - ``retry``: the :class:`~growthhub_async.retry.RetryPolicy` of the bulk engine.
    - ``value_key``: a custom field's value key on the wire (``"field_value"`` or ``"fieldValue"``).
    - ``hooks``: callables receiving every :mod:`~growthhub_async.events` event.
    - ``max_pending``: records of one ``update_contacts`` run read ahead of their outcomes.
    - ``unauthorized_limit``: 401s in a row after which a token stops sending.
    - ``rate_margin``: seconds added to the rate window for safety (default: see ratelimit).
    - ``max_pause``: the longest one 429 may pause a whole token (default: the rate window;
      see rule 4 of :mod:`~growthhub_async.ratelimit`). A record still waits as long as its
      ``Retry-After`` says, or ends ``failed`` at once when that is beyond its ``max_time``.
    - ``state``: incremental sync (issue 14): a state file's path (opened by ``async with`` or
      on first use, closed with the client) or a :class:`~growthhub_async.state.SyncState`
      (the caller closes it). ``update_contacts`` and ``submit`` then skip records whose body
      equals the one last applied (outcome ``unchanged``) and remember what their 2xx applied.
    - ``shared_budget``: one budget per token for every process that names the same Redis
      (issue 15): a ``redis://`` URL (the client makes the store and closes it) or a
      :class:`~growthhub_async.shared_budget.RedisBudgets` (for its options; the caller closes
      it). Needs a ``rate``. See :mod:`~growthhub_async.shared_budget`.
    - ``telemetry``: OpenTelemetry traces and metrics (issue 16; the ``otel`` extra). ``None``
      (default): to the global providers if an SDK is configured when the client first sends;
      ``False``: never; a :class:`~growthhub_async.telemetry.Telemetry`: to its providers.
    """

    def __init__(  # noqa: PLR0915 (one checked assignment per option)
        self,
        token: str | TokenProvider | None = None,
        *,
        tokens: Mapping[str, str | TokenProvider] | None = None,
        base_url: str = DEFAULT_BASE_URL,
        rate: str | Rate | None = "100/10s",
        concurrency: int = 10,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        value_key: CustomFieldValueKey = "field_value",
        hooks: Iterable[Hook] = (),
        max_pending: int = 1000,
        unauthorized_limit: int = 3,
        rate_margin: float | None = None,
        max_pause: float | None = None,
        allow_insecure: bool = False,
        user_agent: str | None = None,
        state: str | os.PathLike[str] | SyncState | None = None,
        locations: LocationTokens | None = None,
        shared_budget: str | RedisBudgets | None = None,
        telemetry: Telemetry | bool | None = None,
    ) -> None:
        if token is not None and tokens is not None:
            raise ConfigurationError("give exactly one of token= or tokens=")
        if token is None and tokens is None and locations is None:
            raise ConfigurationError("give token=, tokens= or locations=")
        named = {DEFAULT_TOKEN_KEY: token} if token is not None else dict(tokens or {})
        if not named and locations is None:
            raise ConfigurationError("tokens= must name at least one token")
        providers = {key: _check_token(key, value) for key, value in named.items()}
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("concurrency must be a positive integer")
        if not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if max_pending < 1 or unauthorized_limit < 1:
            raise ConfigurationError("max_pending and unauthorized_limit must be at least 1")
        from growthhub_async import __version__  # noqa: PLC0415 (the package imports us)

        self.base_url = check_base_url(base_url, allow_insecure=allow_insecure)
        for provider in providers.values():
            provider.attach(self.base_url)  # an OAuth token endpoint follows the API (issue 18)
        # The API's ids are ASCII letters and digits: nothing to quote, so the URL is the base
        # URL with the path plus the id, built without yarl's parsing of a whole URL (a few
        # percent of a record's CPU; `with_path` is a third of `URL(text, encoded=True)`).
        self._contacts_path = self.base_url.joinpath("contacts").raw_path + "/"
        self.rate = parse_rate(rate)
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_pending = max_pending
        self.user_agent = user_agent or f"growthhub-async/{__version__}"
        # The events as log records of growthhub_async.events (a level check when unused).
        self.hooks: list[Hook] = [*hooks, log_event]
        self.redactor = Redactor()
        """Every secret of every token: removed from server text before it is kept anywhere."""
        for provider in providers.values():
            self.redactor.include(provider.redactor)
        self._codec = UpdateContactCodec(value_key)
        self._rate_margin = rate_margin
        self._max_pause = max_pause
        self._owns_budgets = isinstance(shared_budget, str)
        self.shared_budget = _budget_store(shared_budget, self.rate, self.redactor)
        """The Redis store of the budgets (issue 15), or ``None``: each process its own."""
        self._unauthorized_limit = unauthorized_limit
        self.locations = locations
        if locations is not None:
            locations.attach(self.base_url)
        self._lanes = _Lanes(self._new_lane if locations is not None else None)
        for key, provider in providers.items():
            self._lanes[key] = self._make_lane(key, provider)
        self.default_token_key = next(iter(self._lanes)) if len(self._lanes) == 1 else None
        self._timeouts: aiohttp.ClientTimeout | None = None
        self._trimmer = _Trimmer()
        self._connector: aiohttp.TCPConnector | None = None
        self._engine: Engine | None = None
        # Decided at first use (_telemetry_now), when the application has set up its SDK.
        self._telemetry_option: Telemetry | bool | None = telemetry
        self._telemetry: ClientTelemetry | None = None
        self._closed = False
        self._submitted = itertools.count(1)
        if state is not None:  # sqlite3 only for a state (issue 17: start-up)
            from growthhub_async.incremental import StateRun  # noqa: PLC0415
            from growthhub_async.state import SyncState  # noqa: PLC0415
        self._owns_state = state is not None and not isinstance(state, SyncState)
        self.state: SyncState | None = (
            None if state is None else state if isinstance(state, SyncState) else SyncState(state)
        )
        """The sync state (issue 14), or ``None``."""
        # One view of the state for every submit(): concurrent submits see each other in flight.
        self._submit_run = (
            StateRun(self.state, sender=self, server=str(self.base_url))
            if self.state is not None
            else None
        )

    def _make_lane(self, key: str, provider: TokenProvider) -> _Lane:
        return _Lane(
            key,
            provider,
            Budget(self.rate, margin=self._rate_margin, max_pause=self._max_pause),
            unauthorized_limit=self._unauthorized_limit,
            client=self,
        )

    def _new_lane(self, key: str) -> _Lane | None:
        """The lane of a location first named by a record (``locations=``); ``None``: no token."""
        assert self.locations is not None
        if location_problem(key) is not None:
            return None
        value = self.locations(key)
        if value is None:
            return None
        provider = _check_token(key, value)
        if not isinstance(value, LocationToken):  # minted ones share the agency's URL
            provider.attach(self.base_url)
        self.redactor.include(provider.redactor)
        lane = self._make_lane(key, provider)
        if self._connector is not None and self._timeouts is not None:
            lane.open(self._connector, self._timeouts)
        return lane

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._connector else "not started"
        return (
            f"<GrowthHubClient {self.base_url} tokens={sorted(self._lanes)} "
            f"rate={self.rate} concurrency={self.concurrency} {state}>"
        )

    def contact_url(self, contact_id: str) -> yarl.URL:
        """``{base_url}/contacts/{contact_id}`` for an id that passed ``check_contact_id``."""
        if contact_id.isascii() and contact_id.isalnum():
            return self.base_url.with_path(self._contacts_path + contact_id, encoded=True)
        return self.base_url.joinpath("contacts", contact_id)  # quotes what needs it

    @property
    def token_keys(self) -> list[str]:
        """The names of the configured tokens (never the tokens)."""
        return list(self._lanes)

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> GrowthHubClient:
        if self.state is not None:
            await self.state.check_server(self.base_url)  # opens it; before any session
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> None:
        if self._closed:
            raise ClientClosed(
                "this GrowthHubClient is closed: it sends nothing more; make a new one "
                "(a web app keeps one per process, closed at shutdown)"
            )
        if self._connector is not None:
            return
        # With locations, lanes come and go with the input: the engine bounds what is in
        # flight (per lane `concurrency`, and the records held in memory); the pool, the
        # connections to the file descriptors the process may open.
        many = self.locations is not None
        limit = connection_room() if many else self.concurrency * len(self._lanes)
        self._connector = _Connector(limit=limit, limit_per_host=0, keepalive_timeout=30)
        # `total`: the whole answer has a deadline, not only each read (a trickling body). No
        # `sock_read` of the same length: no gap between two reads can outlast the total, and
        # its timer, re-armed at every read, cost two timer handles per request (issue 17).
        timeout = self._timeouts = aiohttp.ClientTimeout(
            total=self.timeout, sock_connect=self.timeout
        )
        for lane in self._lanes.values():
            lane.open(self._connector, timeout)

    async def close(self) -> None:
        """Stop the engine (records in flight end ``failed``, ``"cancelled"``), close the pool."""
        if self._closed:
            return
        self._closed = True
        if self._engine is not None:
            await self._engine.close()
        for lane in list(self._lanes.values()):
            await lane.close()
        if self.locations is not None:
            await self.locations.aclose()
        if self._connector is not None:
            await self._connector.close()
        if self.state is not None and self._owns_state:
            await self.state.close()
        if self.shared_budget is not None and self._owns_budgets:
            await self.shared_budget.aclose()

    def pacing(self, key: str, provider: TokenProvider, budget: Budget) -> Pacing:
        """The pacer of one token: in this process, or in the shared budget's Redis."""
        if self.shared_budget is None:
            return Pacer(budget)
        identity = provider.budget_identity or f"key\0{key}"
        return self.shared_budget.pacer(str(self.base_url), identity, budget, lease=self.timeout)

    def _broadcast(self, event: Event) -> None:
        if self._engine is not None:
            self._engine.broadcast(event)
        else:
            Engine.call_hooks(self.hooks, event)

    def _get_engine(self) -> Engine:
        self._open()
        if self._engine is None:
            self._engine = Engine(
                self._lanes,
                policy=self.retry,
                concurrency=self.concurrency,
                encode=self._codec.encode,
                hooks=self.hooks,
                default_token_key=self.default_token_key,
            )
            if (telemetry := self._telemetry_now()) is not None:
                telemetry.attach(self._engine)
        return self._engine

    def _telemetry_now(self) -> ClientTelemetry | None:
        """Decided once, at first use: an SDK configured by then gets reports (issue 16)."""
        option = self._telemetry_option
        if option is not False:
            self._telemetry_option = False  # decided: never again
            chosen = Telemetry.resolve(option)
            if chosen is not None:
                url = self.base_url
                self._telemetry = chosen.for_client((url.host or "", url.port))
                self.hooks.append(self._telemetry.hook)
        return self._telemetry

    def add_hook(self, hook: Hook) -> None:
        """Subscribe ``hook`` to every event from now on (those it :func:`listens` to, if it
        says)."""
        self.hooks.append(hook)

    def remove_hook(self, hook: Hook) -> None:
        """Unsubscribe ``hook``."""
        self.hooks.remove(hook)

    def _lane(self, token_key: str | None) -> _Lane:
        key = token_key if token_key is not None else self.default_token_key
        if key is None:
            raise ConfigurationError("several tokens are configured: name one with token_key=")
        lane: _Lane | None = self._lanes.get(key)
        if lane is None:
            raise ConfigurationError(
                self._lanes.why_missing(key).replace("unknown token_key", "no token named")
            )
        return lane

    # -- the API ---------------------------------------------------------------------------

    async def update_contact(
        self, contact_id: str, update: UpdateContact, *, token_key: str | None = None
    ) -> UpdateContactResponse:
        """``PUT /contacts/{contact_id}``: one request, paced by the token's budget, no retry.

        Returns the decoded answer, or raises: :class:`~growthhub_async.errors.InvalidContactId`
        before sending anything; the status's :class:`~growthhub_async.errors.HTTPStatusError`
        (``BadRequest``, ``Unauthorized``, ``Forbidden``, ``NotFound``, ``UnprocessableEntity``,
        ``RateLimited`` with ``retry_after``, ``ServerError``, ``Redirected`` for a 3xx, never
        followed) with the server's messages; :class:`~growthhub_async.errors.ResponseError`
        for an unreadable 2xx (``ContactMismatch`` for one naming another contact);
        :class:`~growthhub_async.errors.ConnectionFailed` or
        :class:`~growthhub_async.errors.RequestTimeout` when no complete answer came within
        ``timeout``; :class:`~growthhub_async.errors.ClientClosed` after :meth:`close`; and
        ``ValueError`` for a custom field value JSON cannot carry (NaN, infinity). A 429 that
        spent the budget also pauses the token for every other caller (for at most
        ``max_pause``). For retries without exceptions use :meth:`submit`.
        """
        check_contact_id(contact_id)
        lane = self._lane(token_key)
        body = self._codec.encode(update)
        self._open()
        sent_at = await lane.acquire()
        try:
            _, response = await lane.request(contact_id, body, sent_at=sent_at)
        except Unauthorized as exc:
            # An expired OAuth token: refreshed once for every caller, then one more try.
            wait = await lane.refresh(exc) if exc.status_code == 401 else None
            if wait is None:
                raise
            await asyncio.sleep(wait)
            sent_at = await lane.acquire()
            _, response = await lane.request(contact_id, body, sent_at=sent_at)
        return response

    def update_contacts(
        self,
        records: Iterable[RecordInput] | AsyncIterable[RecordInput],
        *,
        token_key: str | None = None,
        hooks: Iterable[Hook] = (),
        full: bool = False,
        changed_fields_only: bool = False,
        side_by_side: bool | None = None,
        max_held: int = 1000,
        spill_dir: str | None = None,
        record_hashes: bool = False,
    ) -> OutcomeStream:
        """Send many records; iterate the result for one :class:`Outcome` per record.

        ``side_by_side`` (default: when the client has several tokens or ``locations=``): the
        tokens' records progress at once whatever the input order, the reader running ahead
        into a spill file in ``spill_dir`` (the system's temporary folder by default), with at
        most ``max_pending`` records per token and ``max_held`` in all in memory (see
        :class:`~growthhub_async.bulk.OutcomeStream`). ``record_hashes``: each
        ``RecordFinished`` event carries the record's resume key.

        ``records``: an iterable or async iterable of ``(contact_id, UpdateContact)`` pairs
        (``line`` is then the 1-based position), :class:`~growthhub_async.sources.Record`
        objects (``line``, ``contact_id``, ``update``, ``token_key``: what the input readers
        yield), or ready ``Outcome`` objects (records a reader already rejected: passed
        through). See
        :class:`~growthhub_async.bulk.OutcomeStream` for ordering, memory and cancellation.

        With a ``state``: records whose body equals the one last applied end ``unchanged``
        (never sent); ``changed_fields_only`` sends only the fields that differ from it;
        ``full`` sends every record (and still remembers what is applied). A record's location
        in the state is its ``locationId`` (its token key; ``""`` with a single ``token=``).
        """
        known_hashes = None
        if self.state is not None:
            from growthhub_async.incremental import StateRun  # noqa: PLC0415

            run = StateRun(
                self.state,
                location=token_key,
                full=full,
                changed_fields_only=changed_fields_only,
                encode=self._codec.encode if record_hashes else None,
                sender=self,  # one engine: a contact's records go in order (rule 6 of state)
                server=str(self.base_url),
            )
            known_hashes = run.hashes
            records = run.filter(records)
            hooks = [*hooks, run.on_event]  # after the caller's (a journal line comes first)
        elif full or changed_fields_only:
            raise ConfigurationError("full= and changed_fields_only= need a client with state=")
        if (telemetry := self._telemetry_now()) is not None:
            hooks = [*hooks, telemetry.run(current_run_id()).hook]  # the run's span
        return OutcomeStream(
            self._get_engine,
            records,
            token_key=token_key,
            hooks=hooks,
            max_pending=self.max_pending,
            side_by_side=(
                side_by_side
                if side_by_side is not None
                else self.locations is not None or len(self._lanes) > 1
            ),
            max_held=max_held,
            spill_dir=spill_dir,
            record_hashes=record_hashes,
            known_hashes=known_hashes,
        )

    async def submit(
        self,
        contact_id: str,
        update: UpdateContact,
        *,
        token_key: str | None = None,
        line: int | None = None,
        full: bool = False,
        changed_fields_only: bool = False,
        # Not asyncio.timeout (ASYNC109): that would raise, and the record's outcome, which
        # says whether it was sent, would be lost; the deadline ends the record instead.
        timeout: float | None = None,  # noqa: ASYNC109
        response: bool = False,
    ) -> Outcome:
        """Send one record through the engine (shared workers, budget, retries) for its Outcome.

        Never raises for API or transport errors: they are the outcome's ``status`` and
        ``error``. Cancelling the awaiting task cancels this record only (its outcome goes to
        the hooks as ``failed``, ``"cancelled"``; one still queued is never sent). ``line``
        defaults to a running count. After :meth:`close` it raises
        :class:`~growthhub_async.errors.ClientClosed`.

        ``timeout`` (seconds, issue 15): the record's deadline, counted from this call. When it
        passes, the record ends ``failed`` and ``submit`` returns; the outcome's ``error``
        starts with ``"deadline"`` and says how far it got: not sent (it never will be), cut
        while in flight (cancelled like any other: the server may have applied it), or waiting
        to retry. Without it a queued record waits as long as the budget makes it.

        ``response=True``: an ``updated`` outcome carries the decoded 2xx body in
        ``outcome.response`` (``outcome.contact``: the contact as the server now holds it).
        Hooks get the outcome without it.

        With a ``state``, as :meth:`update_contacts` (an ``unchanged`` record is not sent);
        a state that cannot be read raises :class:`~growthhub_async.errors.StateError`.
        """
        check_timeout(timeout)
        started = asyncio.get_running_loop().time()
        number = line if line is not None else next(self._submitted)
        engine = self._get_engine()
        run = self._submit_run
        if run is None:
            if full or changed_fields_only:
                raise ConfigurationError("full= and changed_fields_only= need state=")
            return await engine.submit(
                number, contact_id, update, token_key, timeout=timeout, response=response
            )
        record = Record(number, contact_id, update, token_key)
        (judged,) = await run.judge(
            [record], number, full=full, changed_fields_only=changed_fields_only
        )
        if not isinstance(judged, Record):
            # Not sent (unchanged, or not a record at all): the engine says which.
            outcome = judged if isinstance(judged, Outcome) else None
            if outcome is None:
                return await engine.submit(
                    number, contact_id, update, token_key, timeout=timeout, response=response
                )
            Engine.call_hooks(self.hooks, RecordFinished(outcome=outcome, token_key=token_key))
            return outcome
        try:
            # The state's look-up counts against the deadline: it runs from `started`.
            outcome = await engine.submit(
                number,
                contact_id,
                judged.update,
                token_key,
                timeout=timeout,
                response=response,
                started=started,
            )
        except asyncio.CancelledError:
            # It may have reached the server: what the contact holds is unknown now.
            run.finished(
                Outcome(line=number, contact_id=contact_id, status=Status.FAILED, attempts=1)
            )
            raise
        run.finished(outcome)
        return outcome

    def for_token(self, token_key: str) -> TokenView:
        """A view of this client bound to one token key (same pool, same budgets)."""
        self._lane(token_key)
        return TokenView(self, token_key)


class TokenView:
    """``update_contact``, ``update_contacts`` and ``submit`` of a client, for one token key."""

    def __init__(self, client: GrowthHubClient, token_key: str) -> None:
        self.client = client
        self.token_key = token_key

    def __repr__(self) -> str:
        return f"<TokenView {self.token_key!r} of {self.client!r}>"

    async def update_contact(self, contact_id: str, update: UpdateContact) -> UpdateContactResponse:
        """:meth:`GrowthHubClient.update_contact` with this view's token."""
        return await self.client.update_contact(contact_id, update, token_key=self.token_key)

    def update_contacts(
        self,
        records: Iterable[RecordInput] | AsyncIterable[RecordInput],
        *,
        hooks: Iterable[Hook] = (),
        **options: Any,
    ) -> OutcomeStream:
        """:meth:`GrowthHubClient.update_contacts` with this view's token as the default."""
        return self.client.update_contacts(
            records, token_key=self.token_key, hooks=hooks, **options
        )

    async def submit(self, contact_id: str, update: UpdateContact, **options: Any) -> Outcome:
        """:meth:`GrowthHubClient.submit` with this view's token."""
        return await self.client.submit(contact_id, update, token_key=self.token_key, **options)
