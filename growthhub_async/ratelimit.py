"""Rate budgets: the ``"N/Ws"`` setting, the ``X-RateLimit-*`` headers, and the pacing rules.

The rules (one :class:`Budget` per token; pure, every method takes ``now`` in seconds of a
monotonic clock):

1. **Never more than N requests in any window of W seconds**, sliding or fixed. The server
   counts a request when it *arrives*, which is after we send it and before we see its answer.
   So a request may go only when fewer than N of ours are in flight or were *answered* (or
   failed) in the last ``W + margin`` seconds: then the N-th request back arrived before its
   answer, and this one arrives after it is sent, at least a window later. This holds whatever
   the network latency and however long the event loop stalls between deciding and writing (a
   log of send times alone cannot promise that: a loaded machine let it put N + 1 into a
   server window). The margin (1 % of W plus 5 ms, at most 0.2 s) covers the server's clock
   granularity. The cost is the round trip of the request N back: the best pace is
   ``N / (W + margin + RTT)``, 0.98 of the limit for a 1 s window on loopback.
2. **No bursts.** aiolimiter's default ``AsyncLimiter(N, W)`` lets N through at once after an
   idle spell and then refills continuously, which can put up to about 2N requests into one
   sliding window; it is not used that way. :class:`Pacer` uses an ``AsyncLimiter(2, 2g)``, a
   bucket of capacity two draining one request every ``g = 0.9 W / N``, as a smoother: requests
   go one every ``g`` on average, at most two together. With a bucket of one, every timer that
   fires late (up to a millisecond) pushed all later requests back, and the pace settled near
   0.95 of the limit; the second slot lets a late request be caught up. The average spacing is
   slightly tighter than ``W / N`` for the same reason; rule 1 still caps every window. A gap
   under :data:`MIN_SMOOTHING_GAP` (1 ms, the event loop's timer resolution) is not smoothed at
   all: timers cannot space it, only spin.
3. **The server's headers steer the pace.** ``X-RateLimit-Remaining`` says how much of the
   window's budget is left; ``limit - remaining`` is what the server counted, and whatever our
   own log does not explain was spent by someone else (another client with the same
   token/location). Until that estimate expires (one window later) our own limit shrinks by
   it, and requests spread ``span / limit`` apart, so we slow down *before* a 429.
4. **A 429 pauses the whole token only when the budget is spent**: when its
   ``X-RateLimit-Remaining`` is 0 (or it has no such header: no evidence either way). A 429 that
   says budget is left is about something else (one contact, a proxy): only its record waits.
   The pause lasts until ``Retry-After``, or else until our oldest request in the window leaves
   it (the rest of the window), and never longer than :attr:`Budget.pause_cap` (the window's
   length unless configured): one ``Retry-After: 86400`` must not stall every record for a day.
   Pauses merge (the later end wins), never add up; every worker of the token waits together.
5. ``X-RateLimit-Daily-Remaining: 0`` marks the day's budget spent (:attr:`Budget.daily_exhausted`);
   the engine stops the token.

With ``rate=None`` there is no client-side pacing (rules 1-3 off); 429 pauses and the daily
stop still apply.
"""

from __future__ import annotations

import asyncio
import math
import re
from bisect import bisect_right, insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from aiolimiter import AsyncLimiter
from multidict import CIMultiDict, CIMultiDictProxy, istr

from growthhub_async.errors import ConfigurationError

__all__ = [
    "DEFAULT_MAX_PAUSE",
    "Budget",
    "Pacer",
    "Pacing",
    "Rate",
    "RateHeaders",
    "default_margin",
    "parse_rate",
    "parse_rate_headers",
    "smoother",
]

SMOOTHING: Final = 0.9
"""The smoother's gap between two requests, as a fraction of ``W / N`` (rule 2)."""

MIN_SMOOTHING_GAP: Final = 0.001
"""Seconds: a smoother gap shorter than this (rates above about 900 per second) is not used."""

DEFAULT_MAX_PAUSE: Final = 60.0
"""Seconds: the longest 429 pause of a token when no window is known (no rate, no headers)."""

_PRUNE_MIN: Final = 256  # the send-time log is never pruned below this length
_POLL: Final = 0.005  # how often to look again while every slot of the window is in flight

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)?\s*(ms|s|m|h)\s*", re.ASCII)
_UNIT: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``requests`` requests in any ``window`` seconds (per token)."""

    requests: int
    window: float

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ConfigurationError(f"rate needs at least 1 request per window, not {self}")
        if not (math.isfinite(self.window) and self.window > 0):
            raise ConfigurationError(f"rate window must be a positive number of seconds: {self}")

    def __str__(self) -> str:
        return f"{self.requests}/{self.window:g}s"


def parse_rate(value: str | Rate | None) -> Rate | None:
    """Parse ``"N/W<unit>"`` (``"100/10s"``, ``"50/s"``, ``"20/0.5s"``, ``"25/500ms"``,
    ``"6/1m"``, ``"1000/h"``); ``None`` stays. The command line's ``--rate`` options (``update``
    and ``sandbox``) read the same grammar.

    Raises :class:`~growthhub_async.errors.ConfigurationError` for anything else.
    """
    if value is None or isinstance(value, Rate):
        return value
    m = _RATE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigurationError(
            f"rate must look like '100/10s' (N requests per duration in ms, s, m or h),"
            f" not {value!r}"
        )
    window = float(m.group(2) or 1) * _UNIT[m.group(3)]
    return Rate(int(m.group(1)), window)


def default_margin(window: float) -> float:
    """The safety margin added to a window: 1 % of it plus 5 ms, at most 0.2 s (rule 1).

    Enough for the spread of network latency between consecutive requests (the server counts
    arrivals, we count sends); should a 429 come anyway, rule 4 pauses and the record is retried.
    """
    return min(0.2, 0.01 * window + 0.005)


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """The ``X-RateLimit-*`` headers of one response; ``None`` where absent or unreadable."""

    limit: int | None = None
    """``X-RateLimit-Max``: requests allowed per interval."""
    remaining: int | None = None
    """``X-RateLimit-Remaining``: requests left in the current interval."""
    interval: float | None = None
    """``X-RateLimit-Interval-Milliseconds``, in seconds."""
    daily_limit: int | None = None
    """``X-RateLimit-Limit-Daily``."""
    daily_remaining: int | None = None
    """``X-RateLimit-Daily-Remaining``."""

    @property
    def spent(self) -> bool:
        """Whether these headers leave the window's budget spent: ``remaining`` is 0, or unknown.

        A 429 with budget left is not about the budget (rule 4): it pauses only its record.
        """
        return self.remaining is None or self.remaining <= 0


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


_RATE_HEADERS: Final = (
    "X-RateLimit-Max",
    "X-RateLimit-Remaining",
    "X-RateLimit-Interval-Milliseconds",
    "X-RateLimit-Limit-Daily",
    "X-RateLimit-Daily-Remaining",
)


# Case-insensitive names made once: aiohttp's headers then skip folding each name per lookup
# (five lookups cost half as much; issue 17).
_MAX, _REMAINING, _INTERVAL, _DAILY_LIMIT, _DAILY_REMAINING = (istr(n) for n in _RATE_HEADERS)
NO_RATE_HEADERS: Final = RateHeaders()
"""What :func:`parse_rate_headers` returns for an answer without any of the headers (the same
object each time: a caller may skip what such an answer cannot teach)."""


def parse_rate_headers(headers: Mapping[str, str]) -> RateHeaders:
    """Read the ``X-RateLimit-*`` headers (names case-insensitive, bad values ignored)."""
    # aiohttp's headers look names up case-insensitively: five lookups, no copy per answer
    # (written out: a comprehension's frame cost more than the lookups, issue 17).
    get = headers.get
    limit = get(_MAX)
    remaining = get(_REMAINING)
    interval_text = get(_INTERVAL)
    daily_limit = get(_DAILY_LIMIT)
    daily_remaining = get(_DAILY_REMAINING)
    if (
        limit is None
        and remaining is None
        and interval_text is None
        and daily_limit is None
        and daily_remaining is None
    ):
        if isinstance(headers, CIMultiDictProxy | CIMultiDict):
            return NO_RATE_HEADERS  # aiohttp's answer: case-insensitive, so none there
        # A plain mapping, perhaps with other capitalisation
        lower = {k.lower(): v for k, v in headers.items() if k[:12].lower() == "x-ratelimit-"}
        limit, remaining, interval_text, daily_limit, daily_remaining = (
            lower.get(name.lower()) for name in _RATE_HEADERS
        )
    interval_ms = _int(interval_text)
    return RateHeaders(
        limit=_int(limit),
        remaining=_int(remaining),
        interval=interval_ms / 1000 if interval_ms is not None and interval_ms > 0 else None,
        daily_limit=_int(daily_limit),
        daily_remaining=_int(daily_remaining),
    )


class Budget:
    """One token's pacing state (rules 1-5 of this module). Pure: time is always passed in."""

    def __init__(
        self, rate: Rate | None, *, margin: float | None = None, max_pause: float | None = None
    ) -> None:
        self.margin = margin if margin is not None else default_margin(rate.window) if rate else 0.0
        if self.margin < 0:
            raise ConfigurationError("rate margin must not be negative")
        self.rate = rate
        if max_pause is not None and not (math.isfinite(max_pause) and max_pause >= 0):
            raise ConfigurationError("max_pause must be a non-negative number of seconds")
        self.max_pause = max_pause
        self.daily_exhausted = False
        """``X-RateLimit-Daily-Remaining`` reached 0: the token must stop."""
        self.paused_until = -math.inf
        """Monotonic time before which no request may go (a 429 pause)."""
        self._sent: list[float] = []  # our send times, ascending; two spans kept (see observe)
        self._prune_at = _PRUNE_MIN
        self._answered: list[float] = []  # when our answers (or failures) came, ascending
        self._answered_prune_at = _PRUNE_MIN
        self._open = 0  # sent, not answered yet
        self._server_limit: int | None = None
        self._server_window: float | None = None
        self._foreign = 0
        self._foreign_until = -math.inf
        self._foreign_at = -math.inf

    @property
    def rate(self) -> Rate | None:
        """The rate paced against (``None``: no pacing); a shared budget swaps it for its
        fallback while its store is out of reach."""
        return self._rate

    @rate.setter
    def rate(self, rate: Rate | None) -> None:
        self._rate = rate
        # Read per request: worked out once (a property per read cost more than the budget's
        # own arithmetic, issue 17). The margin never changes.
        self._span = rate.window + self.margin if rate else 0.0
        self._requests = rate.requests if rate else 0

    @property
    def span(self) -> float:
        """The window we pace against: the rate's window plus the margin (0 without a rate)."""
        return self._span

    @property
    def foreign(self) -> int:
        """Requests in the server's window that someone else sent, as last estimated."""
        return self._foreign

    def limit(self, now: float) -> int | None:
        """How many of our requests may be in one span now (``None``: no pacing)."""
        if self._rate is None:
            return None
        limit = self._requests
        server = self._server_limit
        if server is not None and server < limit:
            limit = server
        if now < self._foreign_until:
            limit -= self._foreign
        return limit if limit > 1 else 1

    @property
    def server_limit(self) -> int | None:
        """``X-RateLimit-Max`` as last seen, or ``None``."""
        return self._server_limit

    def counted(self, now: float) -> tuple[list[float], int]:
        """What rule 1 counts now: for each answered request still in the span, the seconds
        until it leaves it; and how many are in flight. (A shared budget hands these to its
        store when the store lost them: see :mod:`~growthhub_async.shared_budget`.)"""
        span = self.span
        answered = self._answered
        return [a + span - now for a in answered[bisect_right(answered, now - span) :]], self._open

    def sent_within(self, start: float, end: float) -> int:
        """How many of our requests went in the interval ``(start, end]``."""
        return bisect_right(self._sent, end) - bisect_right(self._sent, start)

    @property
    def in_flight(self) -> int:
        """Our requests sent (:meth:`record`) and not yet answered (:meth:`complete`)."""
        return self._open

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request may go; 0 when it may go now."""
        wait = self.paused_until - now
        limit = self.limit(now)
        if limit is not None:
            span = self._span
            answered = self._answered
            inside = self._open + len(answered)  # at most: the answers kept span two windows
            if inside >= limit:
                inside -= bisect_right(answered, now - span)  # those older than a span
            if inside >= limit:
                room = limit - self._open
                if room > 0:
                    # The `room`-th latest answer must leave the span first (rule 1).
                    wait = max(wait, answered[-room] + span - now)
                else:
                    # Every slot is in flight: look again once an answer may have come.
                    wait = max(wait, min(_POLL, span / limit))
            if limit < self._requests and self._sent:
                # Shared budget: spread our smaller share evenly (rule 3).
                wait = max(wait, self._sent[-1] + span / limit - now)
        return wait if wait > 1e-9 else 0.0

    def admit(self, now: float) -> bool:
        """:meth:`record` a request now if :meth:`delay` lets it go now; whether it did. The
        usual case of a budget with room (fewer requests in the span than the limit, no pause)
        without the rest of ``delay``'s arithmetic (issue 17)."""
        roomy = (
            self._rate is not None
            and now >= self.paused_until
            and (self._server_limit is None or self._server_limit >= self._requests)
            and now >= self._foreign_until
            and self._open + len(self._answered) < self._requests
        )
        if not roomy and self.delay(now) > 0:
            return False
        self.record(now)
        return True

    def record(self, now: float) -> None:
        """Note that a request goes now; :meth:`complete` must follow when its answer comes."""
        if self._rate is None:
            return
        self._open += 1
        self._sent.append(now)
        # Keep two spans: `observe` counts ours around a send time up to a span in the past.
        # Prune once the log has doubled since the last prune (amortised O(1) per request):
        # never by the rate's N alone, or a generous rate (1000000/1s) kept every send time
        # of a run, 1,000,000 records growing the process by ~30 MB.
        if len(self._sent) >= self._prune_at:
            horizon = now - 2 * self.span
            del self._sent[: bisect_right(self._sent, horizon)]
            self._prune_at = max(_PRUNE_MIN, 2 * len(self._sent))

    def complete(self, now: float) -> None:
        """Note that the answer to a recorded request came now (or that it failed, or was
        abandoned): from here on it counts for one span, then frees its slot (rule 1)."""
        if self._rate is None:
            return
        if self._open > 0:
            self._open -= 1
        answered = self._answered
        if not answered or now >= answered[-1]:
            answered.append(now)  # answers mostly come in time order
        else:
            insort(answered, now)
        if len(answered) >= self._answered_prune_at:
            horizon = now - 2 * self.span
            del self._answered[: bisect_right(self._answered, horizon)]
            self._answered_prune_at = max(_PRUNE_MIN, 2 * len(self._answered))

    def trim(self, now: float) -> None:
        """Forget send and answer times older than two spans, whatever the prune schedule.

        A token that has gone quiet keeps its last burst's times until its next request; with
        1,000 locations that sent a burst each and stopped, that was ~100 KB per location at a
        generous rate (issue 13). The client calls this once a quiet token's times are stale.
        """
        horizon = now - 2 * self.span
        del self._sent[: bisect_right(self._sent, horizon)]
        del self._answered[: bisect_right(self._answered, horizon)]
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._sent))
        self._answered_prune_at = max(_PRUNE_MIN, 2 * len(self._answered))

    def observe(self, headers: RateHeaders, *, sent_at: float, now: float) -> None:
        """Learn from the headers of the response to a request sent at ``sent_at``."""
        if headers.daily_remaining is not None and headers.daily_remaining <= 0:
            self.daily_exhausted = True
        if headers.limit is not None and headers.limit > 0:
            self._server_limit = headers.limit
        if headers.interval is not None:
            self._server_window = headers.interval
        if self.rate is None or headers.limit is None or headers.remaining is None:
            return
        if sent_at < self._foreign_at:
            return  # an older answer overtaken by a newer one: the newer view wins
        used = headers.limit - max(0, headers.remaining)
        ours = self.sent_within(sent_at - self.span, sent_at)
        self._foreign_at = sent_at
        self._foreign = max(0, used - ours)
        self._foreign_until = now + self.span

    def rest_of_window(self, now: float) -> float:
        """Seconds until our oldest request in the window leaves it (a whole window if none)."""
        if self.rate is None:
            return self._server_window if self._server_window is not None else 1.0
        span = self.span
        first = bisect_right(self._sent, now - span)
        if first < len(self._sent):
            return max(self._sent[first] + span - now, span / self.rate.requests)
        return span

    @property
    def pause_cap(self) -> float:
        """The longest one 429 may pause the token (rule 4): ``max_pause`` when configured, else
        our window with its margin (after a window the server's count has started over), else
        the server's ``X-RateLimit-Interval`` but at most :data:`DEFAULT_MAX_PAUSE` (a header
        claiming a window of a day must not buy a pause of a day), else that default."""
        if self.max_pause is not None:
            return self.max_pause
        if self.rate is not None:
            return self.span
        if self._server_window is not None:
            return min(self._server_window, DEFAULT_MAX_PAUSE)
        return DEFAULT_MAX_PAUSE

    def pause(self, until: float) -> bool:
        """Send nothing before ``until``; returns whether this extended the pause."""
        if until > self.paused_until:
            self.paused_until = until
            return True
        return False


def smoother(rate: Rate | None) -> AsyncLimiter | None:
    """Rule 2's smoother for ``rate``, or ``None`` where it cannot space anything.

    Below the event loop's timer resolution the smoother only spins (uvloop's clock ticks in
    whole milliseconds, so aiolimiter re-arms a timer that fires at once until the tick,
    capping a run near 1,000 requests/s at 100 % CPU). Rule 1's log still caps every window.
    Create it inside the running loop.
    """
    gap = SMOOTHING * rate.window / rate.requests if rate is not None else 0.0
    return AsyncLimiter(2, 2 * gap) if gap >= MIN_SMOOTHING_GAP else None


class Pacing(Protocol):
    """One token's budget as the client uses it: the one protocol of its two implementations,
    :class:`Pacer` (in this process, the default) and
    :class:`~growthhub_async.shared_budget.SharedPacer` (in Redis, for several processes).

    ``budget`` is this process's view (its log, the 429 pause as far as it knows, the daily
    stop): the client reads ``pause_remaining``, ``rest_of_window`` and ``daily_exhausted``
    there whichever implementation paces.
    """

    budget: Budget

    def take(self) -> float | None:
        """The send time (``loop.time()``, the request counted) when one may go now without
        waiting; ``None`` when the caller must ``await acquire()`` instead. No await: the
        usual case of a budget with room costs no coroutine (issue 17)."""

    async def acquire(self) -> float:
        """Wait for the budget, count the request, return its send time (``loop.time()``)."""

    def complete(self, now: float) -> None:
        """The answer to an acquired request came (or it failed or was abandoned) at ``now``."""

    def observe(self, headers: RateHeaders, *, sent_at: float, now: float) -> None:
        """Learn from the headers of the answer to a request sent at ``sent_at``."""

    def pause(self, until: float, now: float) -> bool:
        """A 429 that spent the budget: send nothing before ``until``; whether this extended
        the pause."""

    async def aclose(self) -> None:
        """Let go of what it holds (pending writes to a shared store)."""


class Pacer:
    """The edge over a :class:`Budget`: waits on the event loop's clock, smooths with aiolimiter.

    ``await pacer.acquire()`` returns when one request may go, and records it. Acquirers queue
    in FIFO order behind one lock, so a pause (429) holds every worker of the token together.
    Create it inside the running loop (aiolimiter binds to the loop of first use).
    """

    complete: Callable[[float], None]
    observe: Callable[..., None]

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._smoother = smoother(budget.rate)
        self._lock = asyncio.Lock()
        self._queued = 0  # acquirers in the slow path: holding the lock or waiting for it
        self._time = asyncio.get_running_loop().time
        # The answer came now (rule 1); learn from its headers (rules 3 and 5): the budget's
        # own methods, bound here, one call frame fewer each per request (issue 17).
        self.complete = budget.complete
        self.observe = budget.observe

    def pause(self, until: float, now: float) -> bool:
        """Pause the token until ``until`` (rule 4)."""
        return self.budget.pause(until)

    async def aclose(self) -> None:
        """Nothing to let go of in one process."""

    def take(self) -> float | None:
        """Nobody is ahead and nothing to smooth: when the budget lets a request go now, it goes
        without the lock (no await, so no one can slip in between the look and the record).
        Taking the lock per request cost more than the budget's own arithmetic."""
        if not self._queued and self._smoother is None:
            now = self._time()
            if self.budget.admit(now):
                return now
        return None

    async def acquire(self) -> float:
        """Wait for the budget, record the request, and return its send time (``loop.time()``)."""
        taken = self.take()
        if taken is not None:
            return taken
        self._queued += 1
        try:
            return await self._acquire_in_turn(asyncio.get_running_loop())
        finally:
            self._queued -= 1

    async def _acquire_in_turn(self, loop: asyncio.AbstractEventLoop) -> float:
        async with self._lock:
            smoothed = self._smoother is None
            while True:
                wait = self.budget.delay(loop.time())
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if not smoothed:
                    assert self._smoother is not None
                    await self._smoother.acquire()
                    smoothed = True
                    continue  # a pause may have begun while we waited: look again
                now = loop.time()
                self.budget.record(now)
                return now
