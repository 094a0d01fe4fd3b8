"""The sandbox's rate-limit math, table-driven, no server and no clock: time is a parameter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growthhub_async.sandbox.ratelimit import ArrivalMeter, Budget, retry_after_header

# (mode, limit, window, arrival times, expected admitted flags, expected remaining after each)
CASES = [
    (
        "fixed",
        3,
        1.0,
        [0.0, 0.1, 0.2, 0.3, 0.99, 1.0, 1.1],
        [True, True, True, False, False, True, True],
        [2, 1, 0, 0, 0, 2, 1],
    ),
    (
        # The fixed window opens with its first request, not on a grid.
        "fixed",
        2,
        1.0,
        [0.5, 1.2, 1.4, 1.5, 2.2],
        [True, True, False, True, True],
        [1, 0, 0, 1, 0],
    ),
    (
        "sliding",
        3,
        1.0,
        [0.0, 0.1, 0.2, 0.3, 1.0, 1.05, 1.1, 1.2],
        [True, True, True, False, True, False, True, True],
        [2, 1, 0, 0, 0, 0, 0, 0],
    ),
    (
        # Sliding: a burst straddling a fixed boundary is still refused.
        "sliding",
        2,
        1.0,
        [0.9, 0.95, 1.0, 1.85, 1.9, 1.95],
        [True, True, False, False, True, True],
        [1, 0, 0, 0, 0, 0],
    ),
]


@pytest.mark.parametrize(("mode", "limit", "window", "times", "allowed", "remaining"), CASES)
def test_burst_window(  # noqa: PLR0917 - one parameter per column of the table
    mode: str,
    limit: int,
    window: float,
    times: list[float],
    allowed: list[bool],
    remaining: list[int],
) -> None:
    budget = Budget(limit, window, mode)  # type: ignore[arg-type]
    decisions = [budget.acquire(t) for t in times]
    assert [d.allowed for d in decisions] == allowed
    assert [d.remaining for d in decisions] == remaining


@pytest.mark.parametrize(
    ("mode", "times", "now", "wait"),
    [
        ("fixed", [0.0, 0.2], 0.5, 0.5),  # the window opened at 0.0 closes at 1.0
        ("sliding", [0.0, 0.2], 0.5, 0.5),  # 0.0 leaves the window at 1.0
        ("sliding", [0.3, 0.6], 0.9, 0.4),
        ("fixed", [0.3, 0.6], 0.9, 0.4),
    ],
)
def test_retry_after_is_time_until_a_slot_frees(
    mode: str, times: list[float], now: float, wait: float
) -> None:
    budget = Budget(2, 1.0, mode)  # type: ignore[arg-type]
    for t in times:
        assert budget.acquire(t).allowed
    decision = budget.acquire(now)
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(wait)
    assert budget.acquire(now + wait + 1e-9).allowed


def test_daily_limit_counts_admitted_requests_only() -> None:
    budget = Budget(2, 1.0, "fixed", daily_limit=3, day=100.0)
    assert [budget.acquire(t).allowed for t in (0.0, 0.1, 0.2)] == [True, True, False]
    assert budget.acquire(1.0).daily_remaining == 0
    refused = budget.acquire(2.0)
    assert not refused.allowed
    assert refused.daily_remaining == 0
    assert refused.retry_after == pytest.approx(98.0)
    assert budget.acquire(100.0).daily_remaining == 2


def test_peek_uses_no_budget() -> None:
    budget = Budget(2, 1.0)
    assert budget.peek(0.0).remaining == 2
    assert budget.peek(0.0).remaining == 2
    assert budget.acquire(0.0).remaining == 1


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="limits"):
        Budget(0, 1.0)
    with pytest.raises(ValueError, match="mode"):
        Budget(1, 1.0, "leaky")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (9.5, "10")]
)
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


def _brute_max(times: list[float], window: float) -> int:
    return max(sum(1 for s in times if s <= t < s + window) for t in times)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=60),
    window=st.floats(0.1, 3.0),
)
def test_arrival_meter_is_the_true_sliding_maximum(gaps: list[float], window: float) -> None:
    times: list[float] = []
    now = 0.0
    meter = ArrivalMeter(window)
    for gap in gaps:
        now += gap
        times.append(now)
        meter.arrive(now)
    assert meter.max_seen == _brute_max(times, window)


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(["fixed", "sliding"]),
    limit=st.integers(1, 8),
    gaps=st.lists(st.floats(0.0, 0.7, allow_nan=False), min_size=1, max_size=80),
)
def test_admitted_requests_never_exceed_the_limit_in_any_window(
    mode: str, limit: int, gaps: list[float]
) -> None:
    window = 1.0
    budget = Budget(limit, window, mode)  # type: ignore[arg-type]
    admitted: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        if budget.acquire(now).allowed:
            admitted.append(now)
    if admitted:
        # Sliding: never more than limit in any window. Fixed: at most twice that across a
        # boundary, the known weakness of fixed windows.
        bound = limit if mode == "sliding" else 2 * limit
        assert _brute_max(admitted, window) <= bound
