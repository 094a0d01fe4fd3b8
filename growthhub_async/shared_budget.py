"""One rate budget for several processes on one token, kept in Redis (issue 15).

``GrowthHubClient(..., shared_budget="redis://host:6379/0")`` paces each token with a
:class:`SharedPacer`, the Redis implementation of :class:`~growthhub_async.ratelimit.Pacing`
(the in-process one is :class:`~growthhub_async.ratelimit.Pacer`). The rules are those of
:mod:`~growthhub_async.ratelimit`, with the window held in Redis instead of in one process:

1. **The window** is a sorted set of entries, one per request of *any* process on the token,
   each scored with the time until which it counts, in Redis's own clock (``TIME`` inside the
   scripts, never a host's clock). A request is admitted by one Lua script, atomically: drop
   the entries whose time has passed; when fewer than ``N`` are left, add one scored with a
   *lease* (now + the client's ``timeout`` + the span + 1 s) and go. When the answer comes, a
   second script re-scores the entry to *answer time + span* (the answer time: Redis's now less
   how long ago, by this host's monotonic clock, the answer came). So, as in one process, a request
   counts from before its send until a span after its answer, and a request goes only when
   fewer than ``N`` requests of all processes are in flight or were answered within the last
   span: the ``N``-th one back arrived at the server before its answer, at least a span before
   this one arrives. A process that dies mid-request leaves its entry until the lease ends,
   which is after the request's answer could have come (the client's ``timeout`` bounds it).
   The span is the window plus the margin of rule 1.
2. **The 429 pause** of one process (a 429 that spent the budget, rule 4) is a key holding the
   pause's end; every process's next admission waits it out.
3. **The daily stop** (``X-RateLimit-Daily-Remaining: 0``, rule 5) is a key that lives
   :attr:`RedisBudgets.daily_stop` seconds (an hour): every process that asks for a request
   meanwhile stops the token as if it had seen the header itself.
4. **Keys** are ``growthhub:{H}:window|pause|daily|epoch|procs``, ``H`` the first 32 hex digits
   of SHA-256 over a constant prefix, the API's base URL and the token (or, for a token that is
   not fixed, such as OAuth or one minted per location, the token's key: its location id). The
   token itself is never in Redis. ``{H}`` is a hash tag (one token's keys would share a
   Cluster slot). Every key expires on its own (the window a lease after its last write).

**When Redis cannot be reached** (refused, timed out, an error answer, a wrong password), the
client does not stop: it logs one warning, paces each token in this process at a safe share of
the rate (:attr:`RedisBudgets.fallback_share`, and never more than one over the number of
processes Redis last counted on the token), and probes Redis with ``PING`` after 0.2 s, then
doubling up to :attr:`RedisBudgets.probe_max`. When it answers, pacing goes back to Redis (the
recovery is logged once too), and each process first hands Redis the requests it sent on its own
that still count (a Redis that restarted lost the window: an *epoch* key tells the processes,
and each re-adds its own). Writes that fail (an answer's re-scoring) are dropped: the entry then
counts until its lease ends, later than it needed to, never earlier.

What the shared budget does not see: a sender on the same token that does not use it (its
requests reach us only as 429s, which pause every process). In one process, the headers'
``X-RateLimit-Remaining`` estimate of such a sender (rule 3) is used; shared, it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import re
import secrets
import urllib.parse
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final

from growthhub_async.errors import ConfigurationError
from growthhub_async.ratelimit import Budget, Pacer, Rate, RateHeaders, smoother
from growthhub_async.redact import Redactor

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["DEFAULT_FALLBACK_SHARE", "RedisBudgets", "SharedPacer", "budget_key"]

log = logging.getLogger("growthhub_async")

DEFAULT_FALLBACK_SHARE: Final = 0.25
"""The share of a token's rate one process takes while Redis is unreachable: safe for up to four
processes on the token (``uvicorn --workers 4``, gunicorn's usual count on two cores), and
lowered to one over the number of processes Redis last counted when that is more."""

_HASH_PREFIX: Final = b"growthhub-async shared budget v1\0"
_POLL: Final = 0.01  # seconds between looks while every slot of the window is in flight
_PROBE_FIRST: Final = 0.2
_PROCESS_TTL_US: Final = 60_000_000  # a process counts on a token for a minute after asking
_STABLE: Final = 60.0
"""Seconds Redis must keep working after it answered again for a new failure to be a new outage
(a new warning): a Redis that flaps is one outage, logged once (the flaps at DEBUG)."""

# The scripts: time is Redis's (TIME), in microseconds (exact in a Lua double up to 2^53).
# Replies: integers only (Lua numbers become truncated integers in Redis's reply).
_ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[4], epoch)
end
redis.call('PEXPIRE', KEYS[4], 86400000)
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('PEXPIRE', KEYS[5], math.floor(tonumber(ARGV[8]) / 1000))
local procs = redis.call('ZCARD', KEYS[5])
if ARGV[9] == '1' then
  for i = 10, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i]), ARGV[i + 1])
  end
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
elseif epoch ~= ARGV[3] then
  return {4, 0, epoch, procs}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {3, 0, epoch, procs}
end
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then
  return {2, math.floor(pause - now), epoch, procs}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
  return {0, 0, epoch, procs}
end
local first = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return {1, math.floor(tonumber(first[2]) - now) + 1, epoch, procs}
"""

_COMPLETE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local answered = now - math.max(0, tonumber(ARGV[3]))
return redis.call('ZADD', KEYS[1], 'XX', 'CH', answered + tonumber(ARGV[1]), ARGV[2])
"""

_PAUSE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seconds = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + seconds > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', now + seconds), 'PX',
             math.floor(seconds / 1000) + 1000)
  return 1
end
return 0
"""

_DAILY: Final = """
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
return 1
"""

_RELEASE: Final = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# Keeps this process's unanswered entries counting: each present one is re-scored to now + the
# lease when that is later (a request may wait for its token longer than its lease).
_RENEW: Final = """
local t = redis.call('TIME')
local end_ = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < end_ then
    redis.call('ZADD', KEYS[1], 'XX', end_, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return renewed
"""

# The probe writes, as the admission does: a Redis that answers PING but refuses writes (a
# read-only replica, a full one under noeviction, CLIENT PAUSE WRITE) is not back. Its reply
# must be the nonce it was given, or the server is not a Redis we can use.
_PROBE: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', 10000)
return ARGV[1]
"""

_SCRIPTS: Final = {
    "admit": _ADMIT,
    "complete": _COMPLETE,
    "pause": _PAUSE,
    "daily": _DAILY,
    "release": _RELEASE,
    "probe": _PROBE,
    "renew": _RENEW,
}
_SHAS: Final = {
    name: hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    for name, text in _SCRIPTS.items()
}

GRANTED, WINDOW, PAUSED, DAILY, EPOCH = range(5)


def budget_key(base_url: str, identity: str) -> str:
    """``growthhub:{H}:``, the prefix of one token's keys (``H``: see rule 4 of the module)."""
    digest = hashlib.sha256(_HASH_PREFIX + f"{base_url}\0{identity}".encode()).hexdigest()
    return f"growthhub:{{{digest[:32]}}}:"


class _Unavailable(Exception):
    """Redis did not answer (the store has logged it and is probing)."""


class _Failed(Exception):
    """One script call failed; ``reason`` says how (may hold the password: redact it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_UNPARSABLE: Final = (
    "the shared_budget URL could not be parsed: percent-encode reserved characters in the"
    " password (# / ? @ : %), and give redis://[[user]:password@]host[:port][/db],"
    " rediss://... or unix:///path/to/socket[?db=N]"
)
_SECRET_PARAMS: Final = ("pass", "secret", "token", "auth", "key")  # query keys shown as ***


def _parse(url: str) -> tuple[str, list[str]]:
    """The URL as shown (rendered from its parsed parts, every password replaced by ``***``),
    and the passwords it holds (to be redacted from any error text).

    Raises :class:`ConfigurationError` naming what is wrong, never quoting the URL: an
    unencoded ``#``, ``/`` or ``?`` in a password, or a character NFKC changes, would otherwise
    put (part of) the password in the message.
    """
    if not isinstance(url, str):
        raise ConfigurationError("shared_budget must be a redis://, rediss:// or unix:// URL")
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        username, password, host, port = parts.username, parts.password, parts.hostname, parts.port
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise ConfigurationError(_UNPARSABLE) from None
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError("shared_budget must be a redis://, rediss:// or unix:// URL")
    secrets_ = [password] if password else []
    secrets_ += [v for k, v in query if any(s in k.lower() for s in _SECRET_PARAMS) and v]
    path = parts.path
    if parts.fragment or (scheme != "unix" and (not host or not re.fullmatch(r"(/\d*)?", path))):
        # A '#', '/' or '?' in a password cut the URL there: what follows is not a host or a db.
        raise ConfigurationError(_UNPARSABLE)
    shown = scheme + "://"
    if username or password:
        shown += urllib.parse.quote(username or "", safe="") + (":***" if password else "") + "@"
    if host:
        shown += f"[{host}]" if ":" in host else host
    if port is not None:
        shown += f":{port}"
    shown += urllib.parse.quote(path, safe="/")
    if query:
        shown += "?" + "&".join(
            f"{urllib.parse.quote(k, safe='')}="
            + ("***" if any(s in k.lower() for s in _SECRET_PARAMS) else urllib.parse.quote(v))
            for k, v in query
        )
    passwords = set(secrets_) | {urllib.parse.unquote(s) for s in secrets_}
    return shown, sorted(passwords, key=len, reverse=True)


class RedisBudgets:
    """The Redis store of a client's shared budgets: one connection pool for all its tokens.

    ``url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix://path``. The password is a secret: it appears in no repr, log or error (the URL is
    shown as ``redis://:***@host``). ``fallback_share``: the share of a token's rate this
    process takes while Redis is unreachable (see :data:`DEFAULT_FALLBACK_SHARE`).
    ``timeout``: seconds for one Redis command (and to connect) before it counts as
    unreachable. ``probe_max``: the longest pause between two probes. ``daily_stop``: how long
    the daily stop is kept.

    A client given a URL makes its own and closes it; one given this object leaves closing it
    (:meth:`aclose`) to the caller. Counters for tests and monitoring: :attr:`fallbacks`
    (times Redis was found unreachable), :attr:`recoveries` (times it answered again),
    :attr:`admissions` (requests admitted by Redis) and :attr:`local_admissions` (admitted in
    this process while it was not).
    """

    def __init__(
        self,
        url: str,
        *,
        fallback_share: float = DEFAULT_FALLBACK_SHARE,
        timeout: float = 0.5,
        probe_max: float = 5.0,
        daily_stop: float = 3600.0,
    ) -> None:
        self.url, passwords = _parse(url)
        """The URL as shown: rendered from its parts, every password replaced by ``***``."""
        if not (isinstance(fallback_share, float | int) and 0 < fallback_share <= 1):
            raise ConfigurationError("fallback_share must be in (0, 1]")
        if not (timeout > 0 and probe_max > 0 and daily_stop > 0):
            raise ConfigurationError("timeout, probe_max and daily_stop must be positive")
        try:
            import redis.asyncio  # noqa: F401, PLC0415 (an optional extra)
        except ImportError:
            raise ConfigurationError(
                "shared_budget needs the redis package: pip install 'growthhub-async[redis]'"
            ) from None
        self.fallback_share = float(fallback_share)
        self.timeout = timeout
        self.probe_max = probe_max
        self.daily_stop = daily_stop
        self._url = url
        self.redactor = Redactor()
        """The password, removed from any text the store logs."""
        for password in passwords:
            self.redactor.add(password)
        try:
            self._redis: Redis = self._connect()  # no connection yet: only the pool
            pool = self._redis.connection_pool
            pool.connection_class(**pool.connection_kwargs)  # its options, checked now (no I/O)
        except (ValueError, TypeError) as exc:  # a bad option; the message never shows the URL
            raise ConfigurationError(
                f"shared_budget URL is not valid: {self.redactor(str(exc))}"
            ) from None
        self.process = secrets.token_hex(8)
        """This process's (this store's) name in Redis: random, says nothing about the host."""
        self.fallbacks = 0
        self.recoveries = 0
        self.admissions = 0
        self.local_admissions = 0
        self.generation = 0
        """Counts recoveries: a pacer that saw another generation hands Redis its requests."""
        self._down = False
        self._back_at: float | None = None  # loop time Redis last answered again
        self._flapping = False  # this outage began within _STABLE of the last one's end
        self._probe: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._keepers: set[asyncio.Task[None]] = set()  # lease keepers: cancelled on close
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisBudgets {self.url} {'unreachable' if self._down else 'reachable'}>"

    @property
    def available(self) -> bool:
        """Whether pacing goes through Redis now (``False`` from a failure until a probe
        answers, and once closed)."""
        return not (self._down or self._closed)

    def _connect(self) -> Redis:
        from redis.asyncio import Redis  # noqa: PLC0415 (an optional extra)
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415

        # One retry on a fresh connection: a pooled one may be dead after a restart.
        return Redis.from_url(
            self._url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
        )

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script ``name``: ``EVALSHA``, and ``EVAL`` (which loads it) on ``NOSCRIPT``.

        Raises :class:`_Unavailable` when Redis fails in any way (after noting it, once).
        """
        if self._down or self._closed:
            raise _Unavailable
        try:
            return await self._call(name, keys, args)
        except _Failed as exc:
            self.unusable(exc.reason)
            raise _Unavailable from None

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError, RedisError  # noqa: PLC0415

        client = self._redis
        try:
            try:
                return await client.evalsha(_SHAS[name], len(keys), *keys, *args)
            except NoScriptError:
                return await client.eval(_SCRIPTS[name], len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}") from None

    def unusable(self, reason: str) -> None:
        """Redis failed (no answer, an error, an answer that makes no sense): pace in this
        process until a probe's script call succeeds. One warning per outage: a failure
        within :data:`_STABLE` seconds of Redis answering again continues the last outage."""
        if self._down or self._closed:
            return
        self._down = True
        self.fallbacks += 1
        now = asyncio.get_running_loop().time()
        self._flapping = self._back_at is not None and now - self._back_at < _STABLE
        log.log(
            logging.DEBUG if self._flapping else logging.WARNING,
            "shared budget: Redis at %s is unreachable (%s); each token is paced in this process"
            " at %g of its rate until Redis answers again",
            self.url,
            self.redactor(reason),
            self.fallback_share,
        )
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        delay = _PROBE_FIRST
        key = f"growthhub:probe:{self.process}"
        while True:
            await asyncio.sleep(delay)
            nonce = secrets.token_hex(8)
            try:
                reply = await self._call("probe", [key], [nonce])
            except _Failed:
                reply = None
            if reply not in (nonce, nonce.encode()):
                delay = min(2 * delay, self.probe_max)
                continue
            self._down = False
            self.recoveries += 1
            self.generation += 1
            self._back_at = asyncio.get_running_loop().time()
            log.log(
                logging.DEBUG if self._flapping else logging.WARNING,
                "shared budget: Redis at %s answers again; pacing goes back to it",
                self.url,
            )
            return

    def spawn(self, write: Coroutine[Any, Any, None]) -> None:
        """Run a write in the background (an answer's re-scoring, a pause, a daily stop)."""
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def keep(self, task: asyncio.Task[None]) -> None:
        """A pacer's lease keeper: cancelled (not waited for) on close."""
        self._keepers.add(task)
        task.add_done_callback(self._keepers.discard)

    async def aclose(self) -> None:
        """Finish the writes under way (at most ``timeout``), stop probing, close the pool."""
        if self._closed:
            return
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=self.timeout)
        self._closed = True
        tasks = [*self._writes, *self._keepers, *([self._probe] if self._probe else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()

    def pacer(self, base_url: str, identity: str, budget: Budget, *, lease: float) -> SharedPacer:
        """The pacer of one token (``identity``: the token, or its location id; hashed)."""
        return SharedPacer(self, budget_key(base_url, identity), budget, lease=lease)


class SharedPacer:
    """One token's budget in Redis (see the module), with this process's view in ``budget``."""

    def __init__(self, store: RedisBudgets, prefix: str, budget: Budget, *, lease: float) -> None:
        if budget.rate is None:
            raise ConfigurationError("shared_budget needs a rate")
        self.store = store
        self.budget = budget
        self._rate: Rate = budget.rate
        self._keys = [prefix + name for name in ("window", "pause", "daily", "epoch", "procs")]
        self._span_us = math.ceil(budget.span * 1e6)
        self._lease_us = math.ceil((lease + budget.span + 1.0) * 1e6)
        self._keep_ms = self._lease_us // 1000 + 1000
        self._smoother = smoother(self._rate)
        self._lock = asyncio.Lock()
        self._pending: deque[str | None] = deque()  # our admitted requests not answered yet
        self._ids = itertools.count()
        self._epoch = ""
        self._generation = -1  # never seen: hand Redis what we hold on the first admission
        self._processes = 0
        self._local: Pacer | None = None
        self._local_from = 0.0  # loop time this process's fallback share may start
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SharedPacer {self._rate} via {self.store!r}>"

    def _member(self) -> str:
        return f"{self.store.process}:{next(self._ids)}"

    def _share(self) -> float:
        share = self.store.fallback_share
        if self._processes > 1:
            share = min(share, 1 / self._processes)
        return share

    def take(self) -> float | None:
        """Never without Redis's word: every request is admitted by its script."""
        return None

    async def acquire(self) -> float:
        """Wait for Redis's window (or, while it is unreachable, the local share); count the
        request; return its send time (``loop.time()``)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._smoother is not None:
                await self._smoother.acquire()
            while True:
                if not self.store.available:
                    return await self._acquire_locally()
                if self._local is not None:  # Redis is back
                    self._local = None
                    self.budget.rate = self._rate
                try:
                    status, wait = await self._admit(loop)
                except _Unavailable:
                    continue
                now = loop.time()
                if status in (GRANTED, DAILY):
                    if status == DAILY:
                        # Nothing was admitted: the client stops the token and gives this
                        # slot back at once, which takes this marker, not another's entry.
                        self.budget.daily_exhausted = True
                        self._pending.appendleft(None)
                    else:
                        self.store.admissions += 1
                    self.budget.record(now)
                    return now
                if status == PAUSED:
                    # Another process's 429 pause, at most our own cap at a time (then we look
                    # again): our view, so a 429's retry waits it out too.
                    wait = min(wait, self.budget.pause_cap)
                    self.budget.pause(now + wait)
                elif status == WINDOW and wait > self.budget.span:
                    wait = _POLL  # the slot to free is in flight: look again soon
                if status != EPOCH:
                    await asyncio.sleep(wait)

    def fallback_rate(self) -> Rate:
        """This process's rate while Redis is unreachable: the share of the token's rate,
        never rounded up. ``N * share`` requests per window when that is at least one; below
        one, one request per ``window / (N * share)`` seconds (a longer window), so the share's
        average holds (rounding up to one per window let four processes at 3/1 s send 4)."""
        exact = self._rate.requests * self._share()
        if exact >= 1:
            return Rate(math.floor(exact), self._rate.window)
        return Rate(1, self._rate.window / exact)

    async def _acquire_locally(self) -> float:
        loop = asyncio.get_running_loop()
        if self._local is None:
            # Entering the fallback: this process knows only its own requests of the last
            # window, not the others'. It counts that window as spent by them and sends
            # nothing for one span (window plus margin): the others' requests admitted through
            # Redis are then out of the window before this one's share starts.
            self._local_from = loop.time() + self._span_us / 1e6
            self.budget.rate = self.fallback_rate()
            self._local = Pacer(self.budget)
        if (wait := self._local_from - loop.time()) > 0:
            await asyncio.sleep(wait)
        sent_at = await self._local.acquire()
        self._pending.append(None)
        self.store.local_admissions += 1
        return sent_at

    async def _admit(self, loop: asyncio.AbstractEventLoop) -> tuple[int, float]:
        store = self.store
        member = self._member()
        limit = self._rate.requests
        if self.budget.server_limit is not None:
            limit = min(limit, self.budget.server_limit)
        args: list[Any] = [
            limit,
            self._lease_us,
            self._epoch,
            secrets.token_hex(8),
            member,
            store.process,
            self._keep_ms,
            _PROCESS_TTL_US,
        ]
        adopted: list[str | None] | None = None
        if self._generation != store.generation or not self._epoch:
            # Redis may have lost the window (restarted) or never held our requests (they went
            # while it was unreachable): hand it those that still count.
            answered, in_flight = self.budget.counted(loop.time())
            adopted = [self._member() for _ in range(in_flight)]
            args.append("1")
            for left in answered:
                args += [math.ceil(left * 1e6), self._member()]
            for name in adopted:
                args += [self._lease_us, name]
        else:
            args.append("0")
        admission = asyncio.ensure_future(store.run("admit", self._keys, args))
        try:
            reply = await asyncio.shield(admission)
        except asyncio.CancelledError:
            # The caller gave up (a deadline, a disconnect) while Redis was deciding: an entry
            # it may have added goes again, or it would hold a slot until its lease ends.
            admission.add_done_callback(lambda _: self._release(admission, member))
            raise
        checked = self._checked(reply)
        if checked is None:
            store.unusable("an unexpected answer to the admission script")
            raise _Unavailable
        status, wait_us, epoch, processes = checked
        self._epoch = epoch
        self._processes = processes
        if adopted is not None:
            self._pending = deque(adopted)
            self._generation = store.generation
        if status == GRANTED:
            self._pending.append(member)
            if self._keeper is None:
                self._keeper = asyncio.get_running_loop().create_task(self._keep_leases())
                store.keep(self._keeper)
        elif status == EPOCH:
            self._generation = -1  # adopt on the next call
        return status, wait_us / 1e6

    def _checked(self, reply: Any) -> tuple[int, int, str, int] | None:
        """The admission's reply, or ``None`` when it is not what the script returns: four
        items, a known status, a wait within bounds (a pause at most the daily stop's
        :attr:`RedisBudgets.daily_stop`, a window's wait at most a lease), an epoch, a count."""
        if not isinstance(reply, list | tuple) or len(reply) != 4:
            return None
        status, wait_us, epoch, processes = reply
        if not all(type(x) is int for x in (status, wait_us, processes)):
            return None
        if not isinstance(epoch, bytes | str) or not 0 < len(epoch) <= 64:
            return None
        longest = {
            GRANTED: 0,
            WINDOW: self._lease_us + 1,
            PAUSED: math.ceil(self.store.daily_stop * 1e6),
            DAILY: 0,
            EPOCH: 0,
        }.get(status)
        if longest is None or not 0 <= wait_us <= longest or processes < 0:
            return None
        text = epoch.decode(errors="replace") if isinstance(epoch, bytes) else epoch
        return status, wait_us, text, processes

    async def _keep_leases(self) -> None:
        """While this process has requests admitted and not answered, renew their entries
        every third of a lease: a request's entry must count until its answer, however long
        it waited after admission (a slow TokenProvider: a vault, an OAuth refresh, a minted
        location token). A process that dies stops renewing: its entries end a lease later."""
        try:
            while members := [m for m in self._pending if m is not None]:
                await asyncio.sleep(self._lease_us / 3e6)
                members = [m for m in self._pending if m is not None]
                if members and self.store.available:
                    await self._write("renew", [self._keys[0]], [self._lease_us, *members])
        finally:
            self._keeper = None

    def _release(self, admission: asyncio.Future[Any], member: str) -> None:
        if admission.cancelled() or admission.exception() is not None:
            return
        checked = self._checked(admission.result())
        if checked is not None and checked[0] == GRANTED and self.store.available:
            self.store.spawn(self._write("release", [self._keys[0]], [member]))

    def complete(self, now: float) -> None:
        """The answer came: the entry now counts until a span from now (Redis's clock)."""
        self.budget.complete(now)
        member = self._pending.popleft() if self._pending else None
        if member is not None and self.store.available:
            self.store.spawn(self._completed(member, now))

    async def _completed(self, member: str, answered: float) -> None:
        # How long ago the answer came, by this host's monotonic clock (a duration, so no
        # skew): the write's own delay does not hold the slot. Measured before the script
        # runs, so the entry ends a little later than it could, never earlier.
        ago = asyncio.get_running_loop().time() - answered
        args = [self._span_us, member, max(0, math.floor(ago * 1e6))]
        await self._write("complete", [self._keys[0]], args)

    async def _write(self, name: str, keys: list[str], args: list[Any]) -> None:
        with contextlib.suppress(_Unavailable):
            await self.store.run(name, keys, args)

    def observe(self, headers: RateHeaders, *, sent_at: float, now: float) -> None:
        """Learn the server's limit and the daily stop. ``X-RateLimit-Remaining`` is not used
        to guess at other senders: the other processes are in the window already."""
        was = self.budget.daily_exhausted
        own = RateHeaders(
            limit=headers.limit,
            interval=headers.interval,
            daily_limit=headers.daily_limit,
            daily_remaining=headers.daily_remaining,
        )
        self.budget.observe(own, sent_at=sent_at, now=now)
        if self.budget.daily_exhausted and not was and self.store.available:
            ttl = math.ceil(self.store.daily_stop * 1000)
            self.store.spawn(self._write("daily", [self._keys[2]], [ttl]))

    def pause(self, until: float, now: float) -> bool:
        """Pause every process on the token until ``until`` (this process at once)."""
        extended = self.budget.pause(until)
        if extended and self.store.available:
            seconds = math.ceil((until - now) * 1e6)
            self.store.spawn(self._write("pause", [self._keys[1]], [seconds]))
        return extended

    async def aclose(self) -> None:
        """The store finishes the writes (:meth:`RedisBudgets.aclose`)."""
