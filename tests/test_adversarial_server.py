"""Answers the sandbox never gives (issue 12, "Answers from the server").

Each test runs a small adversarial server of its own on loopback (``aiohttp.web`` or raw
``asyncio.start_server``), never the project's sandbox: redirects that would carry the body and
the token elsewhere, a ``Retry-After`` of a day, 429s that are not about the budget, bodies that
trickle a byte at a time, bursts of transient errors, answers naming another contact, and
keep-alive connections the server has already closed. Windows and timeouts are scaled down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web

from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.auth import OAuthProvider
from growthhub_async.client import MAX_ANSWER
from growthhub_async.errors import (
    ClientClosed,
    ContactMismatch,
    GrowthHubError,
    RateLimited,
    Redirected,
    RequestTimeout,
    ResponseError,
    ServerError,
    TokenRefreshFailed,
)
from growthhub_async.events import Event, Paused, RecordFinished
from growthhub_async.models import CustomField
from growthhub_async.outcomes import Outcome, Status, Summary
from growthhub_async.progress import render_bar, render_line
from growthhub_async.ratelimit import Budget, Rate, RateHeaders, parse_rate_headers
from growthhub_async.retry import RetryPolicy, is_transient

TOKEN = "adversary-token-Qx81"
NO_WAIT = RetryPolicy(max_tries=4, max_time=10.0, jitter=lambda _: 0.0)
OK_BODY = b'{"succeded":true,"contact":{"id":"%s"}}'


@dataclass
class Seen:
    """One request as the adversarial server saw it."""

    method: str
    path: str
    body: bytes
    at: float
    authorization: str | None


Answer = Callable[[web.Request, "Server"], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    """An aiohttp.web server that logs every request and lets the test answer it."""

    answer: Answer | None = None
    seen: list[Seen] = field(default_factory=list)
    base_url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    async def wait_seen(self, count: int) -> None:
        """Until the server has seen ``count`` requests."""
        while len(self.seen) < count:
            self.arrived.clear()
            await self.arrived.wait()


def ok(contact_id: str, **headers: str) -> web.Response:
    return web.Response(body=OK_BODY % contact_id.encode(), headers=headers)


def contact_of(request: web.Request) -> str:
    return request.path.rsplit("/", 1)[-1]


@contextlib.asynccontextmanager
async def serve(answer: Answer | None = None) -> AsyncIterator[Server]:
    server = Server(answer)
    loop = asyncio.get_running_loop()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        server.seen.append(
            Seen(
                request.method,
                request.path,
                body,
                loop.time(),
                request.headers.get("Authorization"),
            )
        )
        server.arrived.set()
        if server.answer is None:
            return ok(contact_of(request))
        return await server.answer(request, server)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base_url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def client(server: Server, **options: object) -> GrowthHubClient:
    settings: dict[str, object] = {"base_url": server.base_url, "rate": None, "retry": NO_WAIT}
    settings.update(options)
    return GrowthHubClient(TOKEN, **settings)  # type: ignore[arg-type]


async def run(gh: GrowthHubClient, ids: list[str], **kwargs: object) -> dict[int, Outcome]:
    records = [(cid, UpdateContact(first_name=f"n{n}")) for n, cid in enumerate(ids)]
    outcomes = [o async for o in gh.update_contacts(records, **kwargs)]  # type: ignore[arg-type]
    assert len(outcomes) == len(ids)
    return {o.line: o for o in outcomes}


# -- 1. redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_origin_is_never_followed(code: int) -> None:
    async with serve() as elsewhere, serve() as api:
        target = f"{elsewhere.base_url}/contacts/c1"

        async def redirect(request: web.Request, _: Server) -> web.StreamResponse:
            return web.Response(status=code, headers={"Location": target})

        api.answer = redirect
        async with client(api) as gh:
            [outcome] = (await run(gh, ["c1"])).values()
            with pytest.raises(Redirected) as caught:
                await gh.update_contact("c1", UpdateContact(first_name="Ada"))
    assert elsewhere.seen == []  # neither the body (PII) nor the token went there
    assert [s.method for s in api.seen] == ["PUT", "PUT"]  # one try each, no retry
    assert outcome.status is Status.FAILED
    assert outcome.http_status == code
    assert outcome.attempts == 1
    assert outcome.error is not None
    assert f"HTTP {code}" in outcome.error
    assert target in outcome.error
    assert "not followed" in outcome.error
    assert not outcome.final  # a resume sends it again, once base_url is fixed
    assert caught.value.location == target
    assert caught.value.status_code == code
    assert not is_transient(caught.value)


@pytest.mark.parametrize("code", [302, 307, 308])
async def test_a_same_origin_redirect_to_another_path_is_never_followed(code: int) -> None:
    async def redirect(request: web.Request, _: Server) -> web.StreamResponse:
        if request.path.startswith("/contacts/"):
            location = f"/locations/evil/{contact_of(request)}"
            return web.Response(status=code, headers={"Location": location})
        return ok("evil")

    async with serve(redirect) as api, client(api) as gh:
        outcomes = await run(gh, ["c1", "c2"])
    assert api.paths() == ["/contacts/c1", "/contacts/c2"] or api.paths() == [
        "/contacts/c2",
        "/contacts/c1",
    ]
    for outcome in outcomes.values():
        assert outcome.status is Status.FAILED
        assert outcome.attempts == 1
        assert outcome.error is not None
        assert f"'/locations/evil/{outcome.contact_id}'" in outcome.error


async def test_a_303_never_turns_the_put_into_a_get_reported_updated() -> None:
    async def see_other(request: web.Request, _: Server) -> web.StreamResponse:
        if request.method == "PUT":
            return web.Response(status=303, headers={"Location": request.path})
        return ok(contact_of(request))  # a GET here would "succeed" without applying anything

    async with serve(see_other) as api, client(api) as gh:
        [outcome] = (await run(gh, ["c1"])).values()
    assert [s.method for s in api.seen] == ["PUT"]
    assert outcome.status is Status.FAILED
    assert outcome.http_status == 303


async def test_a_redirect_without_location_is_named_so() -> None:
    async def moved(request: web.Request, _: Server) -> web.StreamResponse:
        return web.Response(status=301)

    async with serve(moved) as api, client(api) as gh:
        [outcome] = (await run(gh, ["c1"])).values()
    assert outcome.status is Status.FAILED
    assert outcome.error is not None
    assert "no Location" in outcome.error


async def test_the_token_endpoint_is_never_redirected_either() -> None:
    # A 307/308 would re-send the form: client secret and refresh token.
    async with serve() as elsewhere, serve() as auth:

        async def redirect(request: web.Request, _: Server) -> web.StreamResponse:
            return web.Response(status=307, headers={"Location": f"{elsewhere.base_url}/steal"})

        auth.answer = redirect
        provider = OAuthProvider(
            "client-id", "client-secret-Zz", "refresh-Yy", token_url=f"{auth.base_url}/token"
        )
        try:
            with pytest.raises(TokenRefreshFailed) as caught:
                await provider.token()
        finally:
            await provider.aclose()
    assert elsewhere.seen == []
    assert len(auth.seen) == 1  # not retried either
    assert caught.value.refresh_status == 307


# -- 2. a Retry-After of a day -----------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["86400", "Thu, 01 Jan 2099 00:00:00 GMT"])
async def test_a_huge_retry_after_ends_its_record_at_once_and_pauses_the_token_briefly(
    retry_after: str,
) -> None:
    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        if contact_of(request) == "greedy":
            # The budget is spent, says the server: the token pauses, but not for a day.
            headers = {"Retry-After": retry_after, "X-RateLimit-Remaining": "0"}
            return web.Response(status=429, headers=headers)
        return ok(contact_of(request))

    events: list[Event] = []
    loop = asyncio.get_running_loop()
    ids = ["greedy"] + [f"c{n}" for n in range(30)]
    async with serve(answer) as api:
        started = loop.time()
        async with client(
            api, rate="20/0.2s", retry=RetryPolicy(max_time=30.0), hooks=[events.append]
        ) as gh:
            outcomes = await run(gh, ids)
        elapsed = loop.time() - started
    greedy = outcomes[1]
    assert greedy.status is Status.FAILED
    assert greedy.attempts == 1
    assert greedy.error is not None
    assert "Retry-After" in greedy.error
    assert "beyond the retry budget of 30s" in greedy.error
    assert all(outcomes[n].status is Status.UPDATED for n in range(2, len(ids) + 1))
    [pause] = [e for e in events if isinstance(e, Paused)]
    budget = Budget(Rate(20, 0.2))
    assert pause.seconds == pytest.approx(budget.pause_cap)  # the window, not a day
    assert "asked for" in pause.reason
    assert "cut to max_pause" in pause.reason
    # 31 requests at 20 per 0.2 s, plus one window of pause: well under two seconds.
    assert elapsed < 2.0


async def test_max_pause_is_configurable_and_a_fitting_retry_after_is_still_honoured() -> None:
    tries: dict[str, int] = {}

    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        cid = contact_of(request)
        tries[cid] = tries.get(cid, 0) + 1
        if cid == "slow" and tries[cid] == 1:
            return web.Response(status=429, headers={"Retry-After": "0.6"})  # no rate headers
        return ok(cid)

    loop = asyncio.get_running_loop()
    finished: dict[str, float] = {}
    pauses: list[Paused] = []

    def hook(event: Event) -> None:
        if isinstance(event, RecordFinished):
            finished[event.outcome.contact_id or ""] = loop.time()
        elif isinstance(event, Paused):
            pauses.append(event)

    ids = ["slow"] + [f"c{n}" for n in range(20)]
    async with serve(answer) as api, client(api, concurrency=2, max_pause=0.1, hooks=[hook]) as gh:
        started = loop.time()
        outcomes = await run(gh, ids)
    assert all(o.status is Status.UPDATED for o in outcomes.values())
    assert [p.seconds for p in pauses] == [0.1]
    # The record itself waited the 0.6 s it was asked to; the others did not.
    assert finished["slow"] - started >= 0.6
    assert max(t for cid, t in finished.items() if cid != "slow") - started < 0.5


def test_a_pause_shows_in_the_progress_line() -> None:
    summary = Summary()
    summary.elapsed = 10.0
    summary.paused_until = 12.5
    assert "PAUSED 2.5s (429)" in render_bar(summary, 100, width=200)
    assert "PAUSED 2.5s (429)" in render_bar(summary, 100, width=60)  # before ETA and rate
    assert render_line(summary, 100).endswith(", PAUSED 2.5s (429)")
    summary.elapsed = 13.0
    assert "PAUSED" not in render_bar(summary, 100) + render_line(summary, 100)


async def test_a_pause_reaches_the_run_summary() -> None:
    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        if contact_of(request) == "c0" and len(api.seen) == 1:
            return web.Response(status=429, headers={"Retry-After": "0.3"})
        return ok(contact_of(request))

    async with serve(answer) as api, client(api) as gh:
        stream = gh.update_contacts([("c0", UpdateContact(first_name="A"))])
        async with stream:
            [outcome] = [o async for o in stream]
    assert outcome.status is Status.UPDATED
    assert 0.25 < stream.summary.paused_until < stream.summary.elapsed + 0.05


def test_the_pause_cap_is_the_window_unless_configured() -> None:
    assert Budget(Rate(100, 10.0)).pause_cap == pytest.approx(10.0 + 0.105)
    assert Budget(Rate(100, 10.0), max_pause=3.0).pause_cap == 3.0
    assert Budget(None).pause_cap == 60.0
    learned = Budget(None)
    learned.observe(RateHeaders(interval=2.5), sent_at=0.0, now=0.1)
    assert learned.pause_cap == 2.5  # the server's window, from X-RateLimit-Interval-*
    # A server claiming a window of a day buys no day-long pause, with or without our rate.
    for budget in (Budget(None), Budget(Rate(100, 10.0))):
        budget.observe(RateHeaders(interval=86400.0), sent_at=0.0, now=0.1)
        assert budget.pause_cap <= 60.0
    with pytest.raises(GrowthHubError, match="max_pause"):
        Budget(None, max_pause=math.inf)
    with pytest.raises(GrowthHubError, match="max_pause"):
        GrowthHubClient(TOKEN, max_pause=-1.0)


@pytest.mark.parametrize(
    ("headers", "spent"),
    [
        ({}, True),  # no evidence: assume the budget
        ({"X-RateLimit-Remaining": "0"}, True),
        ({"X-RateLimit-Remaining": "-5"}, True),
        ({"X-RateLimit-Max": "100"}, True),
        ({"X-RateLimit-Remaining": "1"}, False),
        ({"x-ratelimit-remaining": "37", "x-ratelimit-max": "100"}, False),
    ],
)
def test_only_a_spent_budget_pauses_the_token(headers: dict[str, str], spent: bool) -> None:
    assert parse_rate_headers(headers).spent is spent


@pytest.mark.parametrize(
    ("error", "tries", "elapsed", "expected"),
    [
        (RateLimited(retry_after=86400.0), 1, 0.0, "wait 86400s (Retry-After), beyond"),
        (ServerError(503, headers={"Retry-After": "200"}), 1, 0.0, "wait 200s (Retry-After)"),
        (ServerError(503), 6, 0.0, "gave up after 6 tries"),
        (ServerError(503), 2, 119.9, "gave up after 2 tries, at max_time 120s"),
        (Redirected(302, headers={"Location": "/x"}), 1, 0.0, "not retried"),
        (ContactMismatch(status_code=200, expected="a", received="b"), 1, 0.0, "not retried"),
        (RateLimited(retry_after=3.0), 1, 0.0, 3.0),
    ],
)
def test_the_policy_says_why_it_gives_up(
    error: GrowthHubError, tries: int, elapsed: float, expected: str | float
) -> None:
    policy = RetryPolicy(jitter=lambda v: v)
    decision = policy.decide(error, tries=tries, elapsed=elapsed)
    if isinstance(expected, float):
        assert decision == expected
        assert policy.next_delay(error, tries=tries, elapsed=elapsed) == expected
    else:
        assert isinstance(decision, str)
        assert expected in decision
        assert policy.next_delay(error, tries=tries, elapsed=elapsed) is None


# -- 3. a 429 that is not about the budget -----------------------------------------------------


async def test_429s_with_budget_left_delay_only_their_records_and_the_run_keeps_its_pace() -> None:
    # Five contacts get one 429 each ("Retry-After: 0.2") while the server says 50 requests
    # are left. Pausing the token for each, serially, would add about a second.
    flaky = {f"c{n}" for n in (2, 8, 14, 20, 26)}
    limited: set[str] = set()

    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        cid = contact_of(request)
        if cid in flaky and cid not in limited:
            limited.add(cid)
            headers = {"Retry-After": "0.2", "X-RateLimit-Remaining": "50"}
            return web.Response(status=429, headers=headers)
        return ok(cid)

    rate = Rate(40, 0.2)
    ids = [f"c{n}" for n in range(105)]
    events: list[Event] = []
    loop = asyncio.get_running_loop()
    options = {"rate": rate, "rate_margin": 0.01, "hooks": [events.append]}
    async with serve(answer) as api, client(api, **options) as gh:
        started = loop.time()
        outcomes = await run(gh, ids)
        elapsed = loop.time() - started
    assert all(o.status is Status.UPDATED for o in outcomes.values())
    assert sum(o.attempts for o in outcomes.values()) == len(api.seen) == 110
    assert not [e for e in events if isinstance(e, Paused)]
    floor = len(api.seen) * rate.window / rate.requests  # 0.55 s
    # Five serial pauses would have cost 1.0 s more: well beyond this.
    assert elapsed < floor * 1.2 + 0.15, (elapsed, floor)


@pytest.mark.parametrize("headers", [{}, {"X-RateLimit-Remaining": "0"}])
async def test_a_429_that_spent_the_budget_pauses_the_token_and_pauses_merge(
    headers: dict[str, str],
) -> None:
    # Three 429s arrive together (no headers, or "0 left"), each asking for 0.3 s: the token
    # waits 0.3 s once, not 0.9 s.
    first = {"a", "b", "c"}

    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        cid = contact_of(request)
        if cid in first:
            first.discard(cid)
            await asyncio.sleep(0.02)  # all three in flight together
            return web.Response(status=429, headers={"Retry-After": "0.3", **headers})
        return ok(cid)

    pauses: list[Paused] = []
    limited_at: list[float] = []
    loop = asyncio.get_running_loop()

    def hook(event: Event) -> None:
        if isinstance(event, Paused):
            pauses.append(event)
            limited_at.append(loop.time())

    ids = ["a", "b", "c"] + [f"c{n}" for n in range(9)]
    async with serve(answer) as api, client(api, concurrency=3, hooks=[hook]) as gh:
        outcomes = await run(gh, ids)
    assert all(o.status is Status.UPDATED for o in outcomes.values())
    assert pauses
    assert pauses[0].seconds == 0.3
    later = [s.at for s in api.seen[3:]]
    # Nothing during the pause; everything soon after it (merged: 0.3 s, not 0.9 s).
    assert min(later) >= limited_at[0] + 0.3 - 0.01
    assert min(later) < limited_at[0] + 0.45


# -- 4. a body that trickles ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def trickling_server(
    every: float, first: Callable[[int], bytes | None] | None = None
) -> AsyncIterator[tuple[str, list[float]]]:
    """A raw server: 200 with Content-Length 100000, then one byte every ``every`` seconds.

    ``first(n)``, when given, may answer request number ``n`` (0-based) at once instead.
    """
    starts: list[float] = []
    handlers: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                n = len(starts)
                starts.append(loop.time())
                quick = first(n) if first is not None else None
                if quick is not None:
                    writer.write(quick)
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                )
                while True:
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(every)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", starts
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.wait(list(handlers))
        await server.wait_closed()


async def collect(gh: GrowthHubClient, contact_id: str) -> list[Outcome]:
    return [o async for o in gh.update_contacts([(contact_id, UpdateContact(email="a"))])]


async def test_a_trickling_body_times_out_and_max_time_ends_the_record() -> None:
    loop = asyncio.get_running_loop()
    policy = RetryPolicy(max_tries=50, max_time=0.9, jitter=lambda _: 0.0)
    async with (
        trickling_server(every=0.05) as (url, starts),
        GrowthHubClient(TOKEN, base_url=url, rate=None, timeout=0.3, retry=policy) as gh,
    ):
        started = loop.time()
        with pytest.raises(RequestTimeout):
            # wait_for: a regression fails here instead of hanging for 5000 s
            await asyncio.wait_for(gh.update_contact("c1", UpdateContact(first_name="A")), 5)
        single = loop.time() - started
        started = loop.time()
        [outcome] = await asyncio.wait_for(collect(gh, "c1"), 5)
        whole = loop.time() - started
    assert 0.25 < single < 0.6  # one request: the whole answer within `timeout`
    assert outcome.status is Status.FAILED
    assert outcome.error is not None
    assert "RequestTimeout" in outcome.error
    assert "max_time" in outcome.error
    assert 3 <= outcome.attempts <= 4
    assert len(starts) == 1 + outcome.attempts
    assert whole < 1.3  # max_time 0.9 s: no request outlives it


async def test_max_time_ends_a_retry_still_in_flight() -> None:
    # The first answer is a quick 503; the retry trickles. The client's timeout (5 s) would let
    # it run; the record's max_time (0.6 s) does not.
    loop = asyncio.get_running_loop()
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    policy = RetryPolicy(max_tries=5, max_time=0.6, jitter=lambda _: 0.0)
    async with (
        trickling_server(0.05, lambda n: unavailable if n == 0 else None) as (url, starts),
        GrowthHubClient(TOKEN, base_url=url, rate=None, timeout=5, retry=policy) as gh,
    ):
        started = loop.time()
        [outcome] = await asyncio.wait_for(collect(gh, "c1"), 5)
        elapsed = loop.time() - started
    assert outcome.status is Status.FAILED
    assert outcome.attempts == 2
    assert len(starts) == 2
    assert 0.55 < elapsed < 1.0


# -- 5. records in backoff hold no worker ------------------------------------------------------


async def test_records_waiting_to_retry_free_their_workers_and_keep_contact_order() -> None:
    # Three contacts answer 503 twice; with three workers, sleeping in the worker (as before)
    # held every worker for 0.3 s and then 0.6 s, while 60 healthy records waited.
    broken = {"b0", "b1", "b2"}
    tries: dict[str, int] = {}

    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        cid = contact_of(request)
        tries[cid] = tries.get(cid, 0) + 1
        if cid in broken and tries[cid] <= 2:
            return web.Response(status=503)
        await asyncio.sleep(0.002)
        return ok(cid)

    ids = ["b0", "b1", "b2"] + [f"h{n}" for n in range(60)] + ["b0"]
    policy = RetryPolicy(max_tries=5, base_delay=0.3, max_delay=1.0, jitter=lambda v: v)
    async with serve(answer) as api, client(api, concurrency=3, retry=policy) as gh:
        outcomes = await run(gh, ids)
    assert all(o.status is Status.UPDATED for o in outcomes.values())
    assert [outcomes[n].attempts for n in (1, 2, 3, 64)] == [3, 3, 3, 1]
    healthy_done = max(s.at for s in api.seen if s.path.startswith("/contacts/h"))
    first_retry = min(s.at for s in api.seen[3:] if s.path[-2:] in broken)
    assert healthy_done < first_retry  # every healthy record went while the others waited
    # Per contact, input order: b0's second record only after its first was applied.
    b0 = [msgspec.json.decode(s.body)["firstName"] for s in api.seen if s.path.endswith("/b0")]
    assert b0 == ["n0", "n0", "n0", "n63"]


async def test_cancelling_a_record_that_waits_hands_its_contact_on() -> None:
    broken = True

    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        return web.Response(status=503) if broken else ok(contact_of(request))

    policy = RetryPolicy(max_tries=5, base_delay=5.0, max_delay=5.0, jitter=lambda v: v)
    async with serve(answer) as api, client(api, retry=policy) as gh:
        first = asyncio.ensure_future(gh.submit("c1", UpdateContact(first_name="A")))
        await api.wait_seen(1)
        second = asyncio.ensure_future(gh.submit("c1", UpdateContact(first_name="B")))
        await asyncio.sleep(0.05)
        assert len(api.seen) == 1  # parked behind the first, which waits 5 s
        broken = False
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # The contact is free at once: the parked record goes now, not 5 s later.
        outcome = await asyncio.wait_for(second, 1.0)
    assert outcome.status is Status.UPDATED
    assert outcome.attempts == 1
    assert [msgspec.json.decode(s.body)["firstName"] for s in api.seen] == ["A", "B"]


async def test_closing_the_client_ends_records_that_wait() -> None:
    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        return web.Response(status=503)

    finished: list[Outcome] = []

    def hook(event: Event) -> None:
        if isinstance(event, RecordFinished):
            finished.append(event.outcome)

    policy = RetryPolicy(max_tries=5, base_delay=5.0, max_delay=5.0, jitter=lambda v: v)
    async with serve(answer) as api:
        gh = client(api, retry=policy, hooks=[hook])
        pending = [
            asyncio.ensure_future(gh.submit(cid, UpdateContact(first_name="A")))
            for cid in ("w1", "w2", "w1")
        ]
        await api.wait_seen(2)
        await asyncio.wait_for(gh.close(), 1.0)
        outcomes = await asyncio.gather(*pending)
    assert [o.error for o in outcomes] == ["cancelled"] * 3
    assert [o.attempts for o in outcomes] == [1, 1, 0]
    assert len(finished) == 3


# -- 7. smaller ones ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body"), [(204, b""), (200, b""), (200, b"  \n")])
async def test_a_204_or_an_empty_200_is_success(status: int, body: bytes) -> None:
    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        return web.Response(status=status, body=body)

    async with serve(answer) as api, client(api) as gh:
        [outcome] = (await run(gh, ["c1"])).values()
        response = await gh.update_contact("c2", UpdateContact(first_name="A"))
    assert outcome.status is Status.UPDATED
    assert outcome.attempts == 1
    assert outcome.http_status == status
    assert response.contact is None
    assert len(api.seen) == 2


async def test_a_200_naming_another_contact_is_not_accepted() -> None:
    async def answer(request: web.Request, _: Server) -> web.StreamResponse:
        return ok("someoneElse")

    async with serve(answer) as api, client(api) as gh:
        [outcome] = (await run(gh, ["c1"])).values()
        with pytest.raises(ContactMismatch) as caught:
            await gh.update_contact("c2", UpdateContact(first_name="A"))
    assert outcome.status is Status.FAILED
    assert outcome.http_status == 200
    assert outcome.attempts == 1  # not retried: that could repeat the damage
    assert outcome.error is not None
    assert "'someoneElse'" in outcome.error
    assert "'c1'" in outcome.error
    assert (caught.value.expected, caught.value.received) == ("c2", "someoneElse")
    assert len(api.seen) == 2


@contextlib.asynccontextmanager
async def closing_keep_alive_server(answers: int = 1) -> AsyncIterator[tuple[str, list[str]]]:
    """A raw server that answers ``answers`` requests with keep-alive on a connection, then
    closes it at once.

    Like a server whose keep-alive timeout ends right after an answer: the client's pool still
    holds the connection until its event loop has read the FIN.
    """
    answered: list[str] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            for _ in range(answers):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                cid = lines[0].split(b" ")[1].rsplit(b"/", 1)[-1]
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in lines
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                answered.append(cid.decode())
                body = OK_BODY % cid
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", answered
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.wait(list(handlers))
        await server.wait_closed()


@pytest.mark.parametrize("answers", [1, 3])
async def test_a_keep_alive_connection_the_server_closed_is_no_attempt(answers: int) -> None:
    # 3: the connection is checked on reuse twice, open, before the server closes it (the
    # client keeps what it checks with per connection: it must see the FIN all the same).
    ids = [f"c{n}" for n in range(40)]
    async with (
        closing_keep_alive_server(answers) as (url, answered),
        GrowthHubClient(TOKEN, base_url=url, rate=None, concurrency=2, retry=NO_WAIT) as gh,
    ):
        outcomes = [
            o async for o in gh.update_contacts((c, UpdateContact(first_name="A")) for c in ids)
        ]
    assert all(o.status is Status.UPDATED for o in outcomes)
    # The journal's attempts are the requests the server saw: none spent on a dead connection.
    assert sum(o.attempts for o in outcomes) == len(answered) == len(ids)


async def test_nan_and_infinity_are_refused_locally_never_sent_as_null() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            CustomField(id="f1", value=bad)
    field_ = CustomField(id="f1", value=1.5)
    field_.value = math.nan  # structs are mutable: the encoder checks again
    update = UpdateContact(custom_fields=[field_])
    async with serve() as api, client(api) as gh:
        [outcome] = [o async for o in gh.update_contacts([("c1", update)])]
        with pytest.raises(ValueError, match="finite"):
            await gh.update_contact("c1", update)
        submitted = await gh.submit("c1", update)
    assert api.seen == []  # never sent, so never cleared
    assert outcome.status is Status.REJECTED
    assert outcome.error is not None
    assert "finite" in outcome.error
    assert submitted.status is Status.REJECTED


async def test_after_close_the_client_raises_its_own_error() -> None:
    async with serve() as api:
        gh = client(api)
        await gh.submit("c1", UpdateContact(first_name="A"))
        await gh.close()
        with pytest.raises(ClientClosed):
            await gh.submit("c1", UpdateContact(first_name="A"))
        with pytest.raises(ClientClosed):
            await gh.update_contact("c1", UpdateContact(first_name="A"))
        with pytest.raises(ClientClosed):
            [o async for o in gh.update_contacts([("c1", UpdateContact(first_name="A"))])]
    assert issubclass(ClientClosed, GrowthHubError)
    assert len(api.seen) == 1


# -- found on the way: answers too large to hold ---------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(
    respond: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A raw server that reads one request per connection and lets ``respond`` answer it."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            await respond(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.wait(list(handlers))
        await server.wait_closed()


def huge_answer(size: int, sent: list[int]) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    """A 200 of ``size`` spaces, sent as fast as the client reads; ``sent`` gets the bytes sent."""

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b" " * (256 << 10)
        total = 0
        try:
            while total < size:
                writer.write(chunk)
                await writer.drain()
                total += len(chunk)
        finally:
            sent.append(total)

    return respond


async def test_a_huge_answer_is_not_read_into_memory() -> None:
    size = 64 << 20
    sent: list[int] = []
    respond = huge_answer(size, sent)

    policy = RetryPolicy(max_tries=2, jitter=lambda _: 0.0)
    async with (
        raw_server(respond) as url,
        GrowthHubClient(TOKEN, base_url=url, rate=None, retry=policy) as gh,
    ):
        [outcome] = await asyncio.wait_for(collect(gh, "c1"), 10)
    assert outcome.status is Status.FAILED
    assert outcome.attempts == 2
    assert outcome.error is not None
    assert f"answer over {MAX_ANSWER} bytes" in outcome.error
    assert len(sent) == 2
    assert max(sent) < size // 4  # the client stopped reading, and the server had to stop


async def test_a_gzip_bomb_is_not_inflated_into_memory() -> None:
    bomb = gzip.compress(b" " * (32 << 20))  # 32 MiB of JSON whitespace in about 32 KB

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(bomb), bomb)
        )
        await writer.drain()

    async with (
        raw_server(respond) as url,
        GrowthHubClient(TOKEN, base_url=url, rate=None, retry=NO_WAIT) as gh,
    ):
        with pytest.raises(ResponseError, match="answer over"):
            await gh.update_contact("c1", UpdateContact(first_name="A"))
    assert len(bomb) < MAX_ANSWER // 8


# -- the token endpoint has the same limits as Update Contact ----------------------------------


async def test_a_trickling_token_endpoint_times_out_and_the_refresh_fails_in_time() -> None:
    loop = asyncio.get_running_loop()
    policy = RetryPolicy(max_tries=2, max_time=5, jitter=lambda _: 0.0)
    async with trickling_server(every=0.05) as (url, starts):
        provider = OAuthProvider(
            "client-id",
            "client-secret-Zz",
            "refresh-Yy",
            token_url=f"{url}/token",
            timeout=0.3,
            retry=policy,
        )
        started = loop.time()
        try:
            with pytest.raises(TokenRefreshFailed, match="RequestTimeout"):
                await asyncio.wait_for(provider.token(), 10)  # a regression fails, not hangs
        finally:
            await provider.aclose()
        elapsed = loop.time() - started
    assert len(starts) == 2
    assert elapsed < 1.5  # two tries of 0.3 s and a backoff, not 100000 bytes x 50 ms


async def test_a_huge_token_answer_is_not_read_into_memory() -> None:
    size = 64 << 20
    sent: list[int] = []
    respond = huge_answer(size, sent)

    async with raw_server(respond) as url:
        provider = OAuthProvider(
            "client-id",
            "client-secret-Zz",
            "refresh-Yy",
            token_url=f"{url}/token",
            retry=RetryPolicy(max_tries=1),
        )
        try:
            with pytest.raises(TokenRefreshFailed, match="answer over"):
                await asyncio.wait_for(provider.token(), 10)
        finally:
            await provider.aclose()
    assert max(sent) < size // 4
