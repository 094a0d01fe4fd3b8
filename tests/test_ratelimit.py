"""Rate parsing, header reading and the pure budget math (time injected), plus the pacer's edge."""

from __future__ import annotations

import asyncio
from bisect import insort

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from growthhub_async.errors import ConfigurationError
from growthhub_async.ratelimit import (
    Budget,
    Pacer,
    Rate,
    RateHeaders,
    default_margin,
    parse_rate,
    parse_rate_headers,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/10s", Rate(100, 10.0)),
        ("25/10s", Rate(25, 10.0)),
        ("50/1s", Rate(50, 1.0)),
        ("50/s", Rate(50, 1.0)),
        ("20/0.5s", Rate(20, 0.5)),
        ("20/.5s", Rate(20, 0.5)),
        (" 7 / 3s ", Rate(7, 3.0)),
        ("25/500ms", Rate(25, 0.5)),
        ("6/1m", Rate(6, 60.0)),
        ("100/10m", Rate(100, 600.0)),
        ("1000/h", Rate(1000, 3600.0)),
        (None, None),
    ],
)
def test_parse_rate(text: str | None, expected: Rate | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "100/10",
        "10/10d",
        "0/10s",
        "10/0s",
        "10/0ms",
        "-1/10s",
        "a/10s",
        "1e3/1s",
        "10/s/s",
    ],
)
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_rate(text)


def test_rate_str_and_passthrough() -> None:
    rate = Rate(20, 0.5)
    assert str(rate) == "20/0.5s"
    assert parse_rate(rate) is rate


def test_default_margin() -> None:
    assert default_margin(10.0) == pytest.approx(0.105)
    assert default_margin(0.5) == pytest.approx(0.010)
    assert default_margin(1000.0) == 0.2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "X-RateLimit-Max": "100",
                "X-RateLimit-Remaining": "42",
                "X-RateLimit-Interval-Milliseconds": "10000",
                "X-RateLimit-Limit-Daily": "200000",
                "X-RateLimit-Daily-Remaining": "199000",
            },
            RateHeaders(100, 42, 10.0, 200_000, 199_000),
        ),
        (
            {"x-ratelimit-max": "25", "x-ratelimit-remaining": " 0 "},
            RateHeaders(limit=25, remaining=0),
        ),
        ({"X-RateLimit-Max": "many", "Content-Type": "x"}, RateHeaders()),
        ({"X-RateLimit-Interval-Milliseconds": "0"}, RateHeaders()),
        ({}, RateHeaders()),
    ],
)
def test_parse_rate_headers(headers: dict[str, str], expected: RateHeaders) -> None:
    assert parse_rate_headers(headers) == expected


def _drive(
    budget: Budget, until: float, step: float = 0.001, rtt: float = 0.0
) -> list[tuple[float, float]]:
    """Send as early as the budget allows, on a simulated clock, each request answered ``rtt``
    later; returns ``(sent, answered)`` per request."""
    now = 0.0
    done: list[tuple[float, float]] = []
    pending: list[float] = []  # answer times to come, ascending
    while now < until:
        while pending and pending[0] <= now:
            budget.complete(pending.pop(0))
        wait = budget.delay(now)
        if wait > 0:
            now = min(now + wait, pending[0]) if pending else now + wait
            continue
        budget.record(now)
        pending.append(now + rtt)
        done.append((now, now + rtt))
        now += step
    return done


def _max_in_window(times: list[float], window: float) -> int:
    # A send exactly one span after another is outside its window; `t - window` can land an ulp
    # below the earlier time, so compare with a tolerance far below the margin (milliseconds).
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("rtt", [0.0, 0.05, 0.4])
def test_budget_never_more_than_n_in_any_window(rtt: float) -> None:
    budget = Budget(Rate(10, 1.0))
    sent = _drive(budget, 10.0, step=0.0, rtt=rtt)
    # The server counts arrivals, somewhere between our send and our answer: both extremes.
    assert _max_in_window([s for s, _ in sent], 1.0) == 10
    assert _max_in_window([a for _, a in sent], 1.0) == 10
    # the achievable pace: N per (W + margin + round trip)
    expected = 10 * 10.0 / (1.0 + budget.margin + rtt)
    assert len(sent) == pytest.approx(expected, abs=10)


def test_budget_waits_while_every_slot_is_in_flight() -> None:
    budget = Budget(Rate(3, 1.0), margin=0.0)
    for t in (0.0, 0.1, 0.2):
        budget.record(t)
    assert budget.in_flight == 3
    assert 0 < budget.delay(5.0) <= 0.01  # no answer yet, however late: look again soon
    budget.complete(5.0)  # the first answer came at 5.0: it counts until 6.0
    assert budget.delay(5.0) == pytest.approx(1.0)
    budget.complete(5.5)
    budget.complete(5.6)
    assert budget.delay(6.0) == 0.0  # the answer at 5.0 has left the window: one slot free


def test_budget_without_rate_never_waits() -> None:
    budget = Budget(None)
    assert budget.limit(0.0) is None
    for t in range(100):
        budget.record(float(t))
    assert budget.delay(0.0) == 0.0
    assert budget.span == 0.0


def test_budget_pause_and_rest_of_window() -> None:
    budget = Budget(Rate(4, 1.0), margin=0.0)
    for t in (0.0, 0.1, 0.2):
        budget.record(t)
    assert budget.rest_of_window(0.5) == pytest.approx(0.5)  # the send at 0.0 leaves at 1.0
    assert budget.rest_of_window(5.0) == 1.0  # nothing of ours in the window: a whole one
    assert budget.pause(3.0)
    assert not budget.pause(2.0)  # a shorter pause does not shorten it
    assert budget.delay(1.0) == pytest.approx(2.0)
    assert budget.delay(3.0) == 0.0


def test_budget_rest_of_window_without_rate_uses_header_interval() -> None:
    budget = Budget(None)
    assert budget.rest_of_window(0.0) == 1.0
    budget.observe(RateHeaders(interval=0.25), sent_at=0.0, now=0.0)
    assert budget.rest_of_window(0.0) == 0.25


def test_budget_shared_with_another_client_slows_down() -> None:
    budget = Budget(Rate(10, 1.0), margin=0.0)
    budget.record(0.0)
    # The server counted 6 in its window; only 1 was ours: 5 belong to someone else.
    budget.observe(RateHeaders(limit=10, remaining=4), sent_at=0.0, now=0.01)
    assert budget.foreign == 5
    assert budget.limit(0.02) == 5
    # Our share (5 per window) is spread evenly: 0.2 s apart.
    assert budget.delay(0.01) == pytest.approx(0.19)
    # The estimate expires a window later.
    assert budget.limit(1.5) == 10


def test_budget_alone_sees_no_foreign_use() -> None:
    budget = Budget(Rate(10, 1.0))
    for i in range(5):
        budget.record(i * 0.1)
    budget.observe(RateHeaders(limit=10, remaining=5), sent_at=0.4, now=0.41)
    assert budget.foreign == 0
    assert budget.limit(0.5) == 10


def test_budget_older_answers_do_not_override_newer() -> None:
    budget = Budget(Rate(10, 1.0), margin=0.0)
    budget.record(0.0)
    budget.record(0.1)
    budget.observe(RateHeaders(limit=10, remaining=8), sent_at=0.1, now=0.2)
    budget.observe(RateHeaders(limit=10, remaining=0), sent_at=0.0, now=0.3)  # stale
    assert budget.foreign == 0


def test_budget_server_limit_lower_than_ours_wins() -> None:
    budget = Budget(Rate(100, 10.0))
    budget.observe(RateHeaders(limit=25, remaining=25), sent_at=0.0, now=0.0)
    assert budget.limit(0.0) == 25


def test_budget_daily_exhausted() -> None:
    budget = Budget(Rate(10, 1.0))
    budget.observe(RateHeaders(daily_remaining=3), sent_at=0.0, now=0.0)
    assert not budget.daily_exhausted
    budget.observe(RateHeaders(daily_remaining=0), sent_at=0.0, now=0.0)
    assert budget.daily_exhausted


def test_budget_rejects_negative_margin() -> None:
    with pytest.raises(ConfigurationError):
        Budget(Rate(1, 1.0), margin=-1.0)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 30),
    window=st.floats(0.05, 20.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
    rtts=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=200),
    where=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200),
    foreign=st.lists(st.integers(0, 40), max_size=200),
)
def test_budget_property_never_exceeds_limit(
    *,
    n: int,
    window: float,
    gaps: list[float],
    rtts: list[float],
    where: list[float],
    foreign: list[int],
) -> None:
    """Whatever the send pattern, round trips and the server's reports, the server never sees
    more than N arrivals in a window, wherever between send and answer each one arrives."""
    budget = Budget(Rate(n, window))
    now = 0.0
    requests: list[tuple[float, float]] = []
    pending: list[float] = []
    for i, gap in enumerate(gaps):
        now += gap * window
        while True:
            while pending and pending[0] <= now:
                budget.complete(pending.pop(0))
            wait = budget.delay(now)
            assert wait >= 0
            if wait == 0:
                break
            now = min(now + wait, pending[0]) if pending else now + wait
        budget.record(now)
        answered = now + rtts[i % len(rtts)] * window
        insort(pending, answered)
        requests.append((now, answered))
        if i < len(foreign):
            remaining = n - min(n, foreign[i] + budget.sent_within(now - budget.span, now))
            budget.observe(RateHeaders(limit=n, remaining=remaining), sent_at=now, now=now)
    for arrivals in (
        [s for s, _ in requests],
        [a for _, a in requests],
        [s + (a - s) * where[i % len(where)] for i, (s, a) in enumerate(requests)],
    ):
        # strictly fewer than N+1 in any half-open window of W
        assert _max_in_window(sorted(arrivals), window) <= n


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 30),
    window=st.floats(0.05, 20.0),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["try", "answer", "observe", "pause"]),
            st.floats(0.0, 2.0),
            st.integers(0, 40),
        ),
        min_size=1,
        max_size=200,
    ),
)
def test_budget_admit_decides_as_delay_does(
    *, n: int, window: float, steps: list[tuple[str, float, int]]
) -> None:
    """``admit`` (the pacer's no-wait path, issue 17) lets a request go exactly when ``delay``
    says 0, and records it only then, whatever the budget has seen: answers, the server's
    limit and foreign use, pauses. Two budgets fed the same steps: one asks ``admit``, the
    other ``delay`` then ``record``."""
    fast, slow = Budget(Rate(n, window)), Budget(Rate(n, window))
    now = 0.0
    for action, gap, count in steps:
        now += gap * window
        if action == "try":
            expected = slow.delay(now) <= 0
            if expected:
                slow.record(now)
            assert fast.admit(now) is expected
        elif action == "answer":
            for budget in (fast, slow):
                if budget.in_flight:
                    budget.complete(now)
        elif action == "observe":
            headers = RateHeaders(limit=max(1, count), remaining=max(0, n - count))
            for budget in (fast, slow):
                budget.observe(headers, sent_at=now, now=now)
        else:
            for budget in (fast, slow):
                budget.pause(now + gap * window)
        assert fast.in_flight == slow.in_flight
        assert fast.delay(now) == slow.delay(now)


async def test_pacer_spaces_requests_and_caps_the_window() -> None:
    """The edge: real loop clock, a scaled-down window; no burst after idling."""
    budget = Budget(Rate(10, 0.2))
    pacer = Pacer(budget)
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(25):
        times.append(await pacer.acquire())
        budget.complete(loop.time())  # answered at once
    assert _max_in_window(times, 0.2) <= 10
    # The smoother: at most two requests together (its bucket holds two), never three within
    # one spacing, and one every 0.9 * W / N on average until the window's cap (10) binds.
    assert _max_in_window(times, 0.9 * 0.02 - 1e-3) <= 2
    first_ten = times[9] - times[0]
    assert first_ten >= 8 * 0.9 * 0.02 - 2e-3


async def test_pacer_pause_holds_every_acquirer() -> None:
    budget = Budget(None)
    pacer = Pacer(budget)
    loop = asyncio.get_running_loop()
    start = loop.time()
    budget.pause(start + 0.1)
    times = await asyncio.gather(*(pacer.acquire() for _ in range(5)))
    assert min(times) >= start + 0.1


def test_rate_headers_from_aiohttp_headers_in_any_case() -> None:
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "x-ratelimit-max": "100",
                "X-RATELIMIT-REMAINING": "7",
                "X-RateLimit-Interval-Milliseconds": "10000",
                "x-ratelimit-limit-daily": "200000",
                "X-RateLimit-Daily-Remaining": "oops",
            }
        )
    )
    assert parse_rate_headers(headers) == RateHeaders(
        limit=100, remaining=7, interval=10.0, daily_limit=200000, daily_remaining=None
    )
    assert parse_rate_headers({"x-ratelimit-remaining": "3"}) == RateHeaders(remaining=3)
