"""One budget across processes, kept in Redis (issue 15, items 3 and 4).

Against a real ``redis-server`` (``redis_server``, started by the session) and the sandbox over
loopback, with the window scaled down (20 per 0.5 s). The sandbox is the referee: it counts 429s
and the most requests that arrived within any window (``maxInWindow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.auth import AccessToken, TokenProvider
from growthhub_async.errors import ConfigurationError, RateLimited
from growthhub_async.events import Event, Paused, RecordFinished
from growthhub_async.outcomes import Status
from growthhub_async.ratelimit import Budget, Rate
from growthhub_async.sandbox import Sandbox
from growthhub_async.shared_budget import RedisBudgets, _parse, budget_key
from tests.conftest import TEST_TOKEN, StartSandbox, sandbox_config
from tests.redis_helpers import PASSWORD, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
RATE = "20/0.5s"

# One worker process of a web app: its own client on the shared token and Redis, sending COUNT
# records; prints its outcomes by status. The token comes from the environment, never argv.
CHILD = r"""
import asyncio, collections, json, os, sys
from growthhub_async import GrowthHubClient, UpdateContact

async def main():
    count, prefix = int(sys.argv[1]), sys.argv[2]
    async with GrowthHubClient(
        os.environ["GROWTHHUB_TOKEN"], base_url=os.environ["BASE_URL"], rate=os.environ["RATE"],
        concurrency=10, shared_budget=os.environ["SHARED_BUDGET"],
    ) as gh:
        pairs = [(f"{prefix}{i:06d}", UpdateContact(first_name="Ada")) for i in range(count)]
        statuses = collections.Counter()
        async for outcome in gh.update_contacts(pairs):
            statuses[outcome.status.value] += 1
        print(json.dumps({"statuses": statuses, "admissions": gh.shared_budget.admissions,
                          "fallbacks": gh.shared_budget.fallbacks}))

asyncio.run(main())
"""


async def run_children(base_url: str, redis_url: str, plans: list[tuple[int, str]]) -> list[dict]:
    env = {
        **os.environ,
        "GROWTHHUB_TOKEN": TEST_TOKEN,
        "BASE_URL": base_url,
        "RATE": RATE,
        "SHARED_BUDGET": redis_url,
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(count),
            prefix,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for count, prefix in plans
    ]
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert TEST_TOKEN not in (out + err).decode()
        results.append(json.loads(out))
    return results


@pytest.fixture(autouse=True)
def _empty_redis(redis_server: RedisServer) -> None:
    """Each test starts with an empty Redis: keys name a sandbox by its port, and a port comes
    round again (a daily stop left by one test would stop another's token for an hour)."""
    with redis_server.client() as r:
        r.flushall()


def shared_client(sandbox: Sandbox, shared: str | RedisBudgets, **options: Any) -> GrowthHubClient:
    """A client of ``TEST_TOKEN`` on ``sandbox`` (at ``RATE`` unless told), its budget in
    ``shared``."""
    options.setdefault("rate", RATE)
    return GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, shared_budget=shared, **options)


def updates(prefix: str, count: int) -> list[tuple[str, UpdateContact]]:
    return [(f"{prefix}{i:06d}", UpdateContact(first_name="Ada")) for i in range(count)]


async def test_processes_on_one_token_together_never_exceed_the_limit(
    start_sandbox: StartSandbox, redis_server: RedisServer
) -> None:
    """Three worker processes on one token, each asking for the whole 20 per 0.5 s: the server
    sees no 429 and never more than 20 requests in any 0.5 s (issue 15: two processes without
    Redis saw 3.6-4.3 % 429s and 21 in a window)."""
    sandbox = await start_sandbox(sandbox_config())
    results = await run_children(
        sandbox.base_url, redis_server.url, [(25, "a"), (25, "b"), (25, "c")]
    )
    stats = sandbox.stats()
    assert [r["statuses"] for r in results] == [{"updated": 25}] * 3
    assert sum(r["admissions"] for r in results) == 75  # every request admitted by Redis
    assert all(r["fallbacks"] == 0 for r in results)
    assert stats["rateLimited"] == 0
    assert stats["byStatus"] == {"200": 75}
    assert stats["maxInWindow"] <= 20


async def test_keys_are_hashes_and_hold_no_secret(
    start_sandbox: StartSandbox, redis_server: RedisServer
) -> None:
    sandbox = await start_sandbox(sandbox_config())
    async with shared_client(sandbox, redis_server.url) as gh:
        async for _ in gh.update_contacts(updates("k", 5)):
            pass
        assert PASSWORD not in repr(gh)
        assert PASSWORD not in repr(gh.shared_budget)
        assert gh.shared_budget is not None
        assert gh.shared_budget.url.endswith(f":***@127.0.0.1:{redis_server.port}/0")
    prefix = budget_key(str(gh.base_url), TEST_TOKEN)
    assert prefix.startswith("growthhub:{")
    assert len(prefix) == len("growthhub:{}:") + 32
    with redis_server.client() as r:
        keys = [k.decode() for k in r.keys(prefix + "*")]
        assert sorted(keys) == [prefix + n for n in ("epoch", "procs", "window")]
        everything = b"".join(r.keys("*"))
        for key in r.keys("*"):
            kind = r.type(key)
            if kind == b"zset":
                everything += b"".join(m for m, _ in r.zrange(key, 0, -1, withscores=True))
            elif kind == b"string":
                everything += r.get(key) or b""
        assert TEST_TOKEN.encode() not in everything
        assert r.pttl(prefix + "window") > 0  # every key expires on its own


async def test_a_429_in_one_process_pauses_the_others(
    start_sandbox: StartSandbox, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """Someone outside the budget spends the window; process A meets the 429 (budget spent)
    and pauses; process B, which had not met it, waits the pause out before sending."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=3))
    events: list[Event] = []
    # Two processes' clients: each its own store (connection pool, process name in Redis).
    a = shared_client(sandbox, RedisBudgets(redis_server.url), rate="3/0.5s", hooks=[events.append])
    b = shared_client(sandbox, RedisBudgets(redis_server.url), rate="3/0.5s")
    stores = [a.shared_budget, b.shared_budget]
    try:
        async with a, b:
            headers = {"Authorization": f"Bearer {TEST_TOKEN}", "Version": "2021-07-28"}
            for i in range(3):  # a sender deaf to the budget spends it
                async with http.put(
                    f"{sandbox.base_url}/contacts/deaf{i}", json={"firstName": "X"}, headers=headers
                ) as resp:
                    assert resp.status == 200
            with pytest.raises(RateLimited):
                await a.update_contact("pa", UpdateContact(first_name="A"))
            assert any(isinstance(e, Paused) for e in events)
            await asyncio.sleep(0.05)  # the pause reaches Redis
            started = time.monotonic()
            await b.update_contact("pb", UpdateContact(first_name="B"))
            waited = time.monotonic() - started
    finally:
        for store in stores:
            assert store is not None
            await store.aclose()
    assert waited >= 0.35  # the pause: the window's rest, about 0.5 s
    assert sandbox.stats()["byStatus"] == {"200": 4, "429": 1}


async def test_the_daily_stop_is_shared(
    start_sandbox: StartSandbox, redis_server: RedisServer
) -> None:
    """A's answers say the day's budget is spent; B then sends nothing: its record ends failed
    with the reason, and the server sees no request from it."""
    sandbox = await start_sandbox(sandbox_config(daily_limit=3))
    async with shared_client(sandbox, redis_server.url) as a:
        outcomes = [o async for o in a.update_contacts(updates("d", 3))]
        assert {o.status for o in outcomes} == {Status.UPDATED}
        await asyncio.sleep(0.05)  # the stop reaches Redis
    assert sandbox.stats()["requests"] == 3
    async with shared_client(sandbox, redis_server.url) as b:
        outcome = await b.submit("late1", UpdateContact(first_name="B"))
    assert outcome.status is Status.FAILED
    assert outcome.error is not None
    assert "daily limit reached" in outcome.error
    assert outcome.attempts == 0
    assert sandbox.stats()["requests"] == 3


async def test_redis_killed_mid_run_falls_back_once_and_comes_back(
    start_sandbox: StartSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis dies (SIGKILL) mid-run and comes back empty on the same port: every record still
    ends updated, one warning is logged, the process paces itself at its share meanwhile (5 of
    20 per 0.5 s), and goes back to Redis (admissions through it resume)."""
    caplog.set_level(logging.WARNING, logger="growthhub_async")
    server = RedisServer(tmp_path)
    server.start()
    sandbox = await start_sandbox(sandbox_config())
    finished: list[float] = []
    loop = asyncio.get_running_loop()
    fifteen = asyncio.Event()

    def hook(event: Event) -> None:
        if isinstance(event, RecordFinished):
            finished.append(loop.time())
            if len(finished) == 15:
                fifteen.set()

    store = RedisBudgets(server.url, probe_max=0.3)
    try:
        async with shared_client(sandbox, store, hooks=[hook]) as gh:
            stream = gh.update_contacts(updates("r", 70))

            async def outage() -> tuple[float, float, int]:
                await fifteen.wait()
                before = store.admissions
                server.stop()
                down = loop.time()
                await asyncio.sleep(1.0)
                up = loop.time()
                server.start()
                return down, up, before

            task = asyncio.create_task(outage())
            outcomes = [o async for o in stream]
            down, up, before = await task
    finally:
        await store.aclose()
        server.stop()
    assert [o.status for o in outcomes] == [Status.UPDATED] * 70
    warnings = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert PASSWORD not in caplog.text
    assert store.fallbacks == 1
    assert store.recoveries == 1
    assert store.local_admissions > 0
    assert store.admissions > before  # back in Redis after the restart
    # While Redis was away: at most the share (5 per 0.5 s), plus those already in flight.
    during = [t for t in finished if down + 0.1 < t <= up]
    assert len(during) <= 5 * 2 + 10
    assert sandbox.stats()["rateLimited"] == 0


async def test_no_redis_at_all_falls_back_and_never_shows_the_password(
    start_sandbox: StartSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="growthhub_async")
    sandbox = await start_sandbox(sandbox_config())
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    async with shared_client(sandbox, url) as gh:
        outcomes = [o async for o in gh.update_contacts(updates("n", 8))]
        text = repr(gh) + repr(gh.shared_budget)
    assert [o.status for o in outcomes] == [Status.UPDATED] * 8
    assert len([r for r in caplog.records if "is unreachable" in r.getMessage()]) == 1
    assert PASSWORD not in caplog.text + text
    assert gh.shared_budget is not None
    assert gh.shared_budget.local_admissions == 8


async def test_a_wrong_password_falls_back_and_is_not_shown(
    start_sandbox: StartSandbox, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="growthhub_async")
    sandbox = await start_sandbox(sandbox_config())
    wrong = "not-the-password-93x"
    url = f"redis://:{wrong}@127.0.0.1:{redis_server.port}/0"
    async with shared_client(sandbox, url) as gh:
        outcome = await gh.submit("w1", UpdateContact(first_name="W"))
    assert outcome.status is Status.UPDATED
    (warning,) = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert "Authentication" in warning.getMessage() or "auth" in warning.getMessage().lower()
    assert wrong not in caplog.text


async def test_scripts_flushed_from_redis_are_loaded_again(
    start_sandbox: StartSandbox, redis_server: RedisServer
) -> None:
    """EVALSHA answered NOSCRIPT (a restart, SCRIPT FLUSH): EVAL loads it, no fallback."""
    sandbox = await start_sandbox(sandbox_config())
    async with shared_client(sandbox, redis_server.url) as gh:
        await gh.submit("s1", UpdateContact(first_name="S"))
        with redis_server.client() as r:
            r.script_flush()
        await gh.submit("s2", UpdateContact(first_name="S"))
        assert gh.shared_budget is not None
        assert gh.shared_budget.fallbacks == 0
        assert gh.shared_budget.admissions == 2


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="needs a rate"):
        GrowthHubClient(TEST_TOKEN, rate=None, shared_budget="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match="redis://"):
        GrowthHubClient(TEST_TOKEN, shared_budget="http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="fallback_share"):
        RedisBudgets("redis://127.0.0.1:1/0", fallback_share=0)
    with pytest.raises(ConfigurationError, match="could not be parsed") as bad:
        RedisBudgets(f"redis://:{PASSWORD}@127.0.0.1:99999/0")
    assert PASSWORD not in str(bad.value)
    # Another token, another URL: other keys; never the token in the key.
    one = budget_key("http://127.0.0.1:1", "tok-a")
    assert one == budget_key("http://127.0.0.1:1", "tok-a")
    assert one != budget_key("http://127.0.0.1:1", "tok-b")
    assert one != budget_key("http://127.0.0.1:2", "tok-a")
    assert "tok-a" not in one


async def test_a_redis_that_never_answers_falls_back_within_its_timeout(
    start_sandbox: StartSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that accepts connections and never answers (a hung server, a black hole): each
    command gives up after ``timeout``, the records go at the share, and closing waits no more
    than the timeout for the writes under way."""
    caplog.set_level(logging.WARNING, logger="growthhub_async")
    sandbox = await start_sandbox(sandbox_config())
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # never answers

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisBudgets(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    started = time.monotonic()
    try:
        async with shared_client(sandbox, store) as gh:
            outcomes = [o async for o in gh.update_contacts(updates("h", 6))]
        await store.aclose()
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()
    elapsed = time.monotonic() - started
    assert [o.status for o in outcomes] == [Status.UPDATED] * 6
    assert store.fallbacks == 1
    assert store.local_admissions == 6
    assert elapsed < 3  # 6 records at 5 per 0.5 s, plus one timeout; not one per request
    assert len([r for r in caplog.records if "is unreachable" in r.getMessage()]) == 1


async def test_the_fallback_share_shrinks_with_the_processes_redis_counted(
    redis_server: RedisServer,
) -> None:
    """Six processes asked for this token lately: one falling back takes a sixth, not the
    default quarter (and never more than the configured share)."""
    stores = [RedisBudgets(redis_server.url) for _ in range(6)]
    try:
        pacers = [
            store.pacer("http://127.0.0.1:9", "share-token", Budget(Rate(60, 1.0)), lease=5.0)
            for store in stores
        ]
        for pacer in pacers:
            sent_at = await pacer.acquire()
            pacer.complete(sent_at)
        assert pacers[-1]._share() == pytest.approx(1 / 6)
        alone = RedisBudgets(redis_server.url, fallback_share=0.1)
        stores.append(alone)
        few = alone.pacer("http://127.0.0.1:9", "share-token", Budget(Rate(60, 1.0)), lease=5.0)
        await few.acquire()
        assert few._share() == pytest.approx(0.1)
    finally:
        for store in stores:
            await store.aclose()


async def test_a_caller_that_gives_up_while_redis_decides_leaves_no_slot_taken(
    redis_server: RedisServer,
) -> None:
    """A web handler's deadline (or a disconnect) cancels the wait while Redis is admitting it:
    the entry Redis added is removed, not left to hold a slot until its lease ends. Redis's
    answers pass through a proxy that holds them back 0.3 s."""
    writers: list[asyncio.StreamWriter] = []
    pipes: list[asyncio.Task[None]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float):
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def proxy(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", redis_server.port)
        writers.extend((client_w, redis_w))
        pipes.append(asyncio.create_task(pipe(client_r, redis_w, 0.0)))
        pipes.append(asyncio.create_task(pipe(redis_r, client_w, 0.3)))

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisBudgets(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", timeout=2.0)
    base = "http://127.0.0.1:8"
    pacer = store.pacer(base, "cancel-token", Budget(Rate(5, 1.0)), lease=5.0)
    key = budget_key(base, "cancel-token") + "window"
    try:
        sent_at = await pacer.acquire()  # the first: its entry stays (answered below)
        pacer.complete(sent_at)
        await asyncio.wait(set(store._writes))  # the answer's write: its connection is free
        waiter = asyncio.create_task(pacer.acquire())
        await asyncio.sleep(0.15)  # the admission has reached Redis; its answer is held
        with redis_server.client() as r:
            assert r.zcard(key) == 2  # admitted, in Redis's view
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.8)  # the answer comes; the entry is released
        with redis_server.client() as r:
            assert r.zcard(key) == 1  # only the first
    finally:
        await store.aclose()
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*pipes)
        await server.wait_closed()


async def test_no_form_of_the_password_is_shown(caplog: pytest.LogCaptureFixture) -> None:
    """The password as userinfo or as a ``password=`` query parameter (redis-py's unix-socket
    form, any case) is masked in the repr, ``url`` and the fallback warning (red team rt15, 1)."""
    caplog.set_level(logging.WARNING, logger="growthhub_async")
    secret = "s3cr3t-redis-pw"
    urls = [
        f"unix:///nonexistent/redis.sock?db=0&password={secret}",
        f"redis://127.0.0.1:{free_port()}/0?password={secret}",
        f"redis://user:{secret}@127.0.0.1:{free_port()}/0",
    ]
    for url in urls:
        store = RedisBudgets(url, timeout=0.2)
        try:
            pacer = store.pacer("http://127.0.0.1:9", "pw-token", Budget(Rate(50, 0.1)), lease=1)
            await pacer.acquire()  # Redis fails: the warning names the URL
            text = repr(store) + store.url + repr(pacer)
        finally:
            await store.aclose()
        assert "***" in store.url
        assert secret not in text
    assert len([r for r in caplog.records if "is unreachable" in r.getMessage()]) == 3
    assert secret not in caplog.text
    with pytest.raises(ConfigurationError, match="not valid") as bad:  # redis-py's name only
        RedisBudgets(f"redis://127.0.0.1:1/0?PassWord={secret}")
    assert secret not in str(bad.value)
    assert "PassWord=***" in _parse(f"redis://h/0?PassWord={secret}")[0]


@pytest.mark.parametrize(
    "password",
    ["Pa55\u2100word-XYZ", "Tr0ub4dor\uff03x", "Xk9Lq2#fL8", "Xk9Lq2/fL8", "12345?fL8", "1234#x"],
)
def test_a_malformed_url_is_refused_without_quoting_it(password: str) -> None:
    """A character NFKC changes, or an unencoded ``#``, ``/``, ``?``, in the password: a
    ConfigurationError saying what to do, with no part of the password (red team rt15, 2)."""
    with pytest.raises(ConfigurationError, match="could not be parsed") as bad:
        GrowthHubClient(
            TEST_TOKEN,
            base_url="http://127.0.0.1:9",
            rate="20/1s",
            shared_budget=f"redis://:{password}@redis.internal:6379/0",
        )
    text = "".join(traceback.format_exception(bad.value))  # as a start-up traceback shows it
    pieces = re.split("[\u2100\uff03#/?]", password)
    for piece in {password, *pieces}:
        assert len(piece) < 4 or piece not in text


async def test_falling_back_first_waits_out_the_window_the_others_may_have_spent(
    tmp_path: Path,
) -> None:
    """A sends a full window (20 per 0.5 s) through Redis, Redis dies, C (idle until then)
    falls back: C's first request goes no sooner than a window after A's last, or the server
    saw 20 + C's share in one window (red team rt15, 3: 24 in a window at 20/1 s)."""
    server = RedisServer(tmp_path)
    server.start()
    a, c = RedisBudgets(server.url, timeout=0.2), RedisBudgets(server.url, timeout=0.2)
    rate = Budget(Rate(20, 0.5)).rate
    assert rate is not None
    try:
        pa = a.pacer("http://127.0.0.1:9", "t3", Budget(rate), lease=1.0)
        pc = c.pacer("http://127.0.0.1:9", "t3", Budget(rate), lease=1.0)
        sends = [await pa.acquire() for _ in range(20)]
        for sent in sends:
            pa.complete(sent)
        server.stop()
        theirs = [await pc.acquire() for _ in range(5)]
    finally:
        await a.aclose()
        await c.aclose()
        server.stop()
    assert c.fallbacks == 1
    assert c.local_admissions == 5
    assert min(theirs) - max(sends) >= 0.5


async def test_the_fallback_share_is_never_rounded_up() -> None:
    """At 3 per window a quarter is 0.75 request: one per 4/3 of a window, not one per window
    (red team rt15, 4: four processes sent 4 per window against 3)."""
    store = RedisBudgets(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        pacer = store.pacer("http://127.0.0.1:9", "t4", Budget(Rate(3, 0.15)), lease=1.0)
        one = pacer.fallback_rate()
        assert (one.requests, one.window) == (1, pytest.approx(0.2))
        big = store.pacer("http://127.0.0.1:9", "t4b", Budget(Rate(20, 1.0)), lease=1.0)
        big._processes = 30
        assert big.fallback_rate().window == pytest.approx(1.5)
        assert big.fallback_rate().requests == 1
        big._processes = 4
        assert big.fallback_rate() == Rate(5, 1.0)
        sends = []
        for _ in range(3):
            sends.append(await asyncio.wait_for(pacer.acquire(), 2))
            pacer.complete(sends[-1])  # answered at once
    finally:
        await store.aclose()
    gaps = [later - earlier for earlier, later in itertools.pairwise(sends)]
    assert min(gaps) >= 0.2 - 0.01  # one per 0.2 s (plus the margin), never one per 0.15 s


async def test_a_redis_that_answers_ping_but_refuses_writes_is_one_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only replica (PING answers, every script that writes fails): one warning, no
    flapping back on a PING; back only when a script succeeds; a relapse soon after is the same
    outage, not another warning (red team rt15, 7: 24 + 23 warnings in 11.6 s)."""
    caplog.set_level(logging.WARNING, logger="growthhub_async")
    server = RedisServer(tmp_path)
    server.start()
    store = RedisBudgets(server.url, timeout=0.3, probe_max=0.1)
    pacer = store.pacer("http://127.0.0.1:9", "t7", Budget(Rate(50, 0.1)), lease=1.0)
    dead_master = str(free_port())
    try:
        with server.client() as r:
            r.execute_command("REPLICAOF", "127.0.0.1", dead_master)
            assert r.ping()
        for _ in range(10):
            pacer.complete(await pacer.acquire())
            await asyncio.sleep(0.08)  # some ten probes meanwhile
        assert (store.fallbacks, store.recoveries) == (1, 0)
        with server.client() as r:
            r.execute_command("REPLICAOF", "NO", "ONE")
        await asyncio.sleep(0.3)
        assert store.available
        pacer.complete(await pacer.acquire())
        assert store.admissions == 1
        with server.client() as r:
            r.execute_command("REPLICAOF", "127.0.0.1", dead_master)
        for _ in range(3):
            pacer.complete(await pacer.acquire())
    finally:
        await store.aclose()
        server.stop()
    assert store.fallbacks == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "is unreachable" in m]) == 1
    assert len([m for m in messages if "answers again;" in m]) == 1


GARBAGE = {
    "int": b":1\r\n",
    "short": b"*2\r\n:0\r\n:0\r\n",
    "status9": b"*4\r\n:9\r\n:0\r\n$1\r\nx\r\n:1\r\n",
    "pause": b"*4\r\n:2\r\n:1000000000000000\r\n$1\r\nx\r\n:1\r\n",
}


@pytest.mark.parametrize("kind", GARBAGE)
async def test_an_unexpected_answer_from_redis_falls_back(kind: str) -> None:
    """A server speaking RESP that answers the scripts with an integer, a short list, an
    unknown status or a pause of 30 years: Redis counts as unavailable, the requests go at the
    share, nothing raises or hangs (red team rt15, 8)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                args = []
                for _ in range(int(line[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                command = args[0].upper()
                evaluate = command in (b"EVALSHA", b"EVAL")
                writer.write(GARBAGE[kind] if evaluate else b"+OK\r\n")
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisBudgets(f"redis://127.0.0.1:{port}/0", timeout=0.3, probe_max=0.1)
    try:
        pacer = store.pacer("http://127.0.0.1:9", "t8", Budget(Rate(50, 0.1)), lease=1.0)
        for _ in range(3):
            pacer.complete(await asyncio.wait_for(pacer.acquire(), 2))
        await asyncio.sleep(0.3)  # probes get the same garbage: not back
        assert (store.fallbacks, store.recoveries, store.local_admissions) == (1, 0, 3)
    finally:
        await store.aclose()
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


class SlowVault(TokenProvider):
    """A token from a vault: the first look-up takes ``delay`` seconds, then it is cached."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._got: asyncio.Future[AccessToken] | None = None

    async def _fetch(self) -> AccessToken:
        await asyncio.sleep(self.delay)
        return AccessToken(TEST_TOKEN)

    async def token(self) -> AccessToken:
        if self._got is None:
            self._got = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._got)


async def test_an_entry_counts_while_its_request_waits_for_a_slow_token(
    start_sandbox: StartSandbox, redis_server: RedisServer
) -> None:
    """A's 20 requests are admitted, then wait 2.2 s for the token, longer than their lease
    (timeout 0.2 + window + 1 s): their entries are renewed, so B, starting at 1.9 s, waits for
    them instead of filling the window beside them (red team rt15, 5: 20 in a window of 10)."""
    sandbox = await start_sandbox(sandbox_config())

    async def process(provider: TokenProvider, prefix: str, start: float) -> list[Status]:
        async with GrowthHubClient(
            provider,
            base_url=sandbox.base_url,
            rate=RATE,
            timeout=0.2,
            concurrency=20,
            shared_budget=redis_server.url,
        ) as gh:
            await asyncio.sleep(start)
            pairs = updates(prefix, 20)
            outcomes = await asyncio.gather(*[gh.submit(c, u) for c, u in pairs])
        return [o.status for o in outcomes]

    a, b = await asyncio.gather(process(SlowVault(2.2), "a", 0), process(SlowVault(0), "b", 1.9))
    assert a == b == [Status.UPDATED] * 20
    stats = sandbox.stats()
    assert stats["rateLimited"] == 0
    assert stats["maxInWindow"] <= 20
