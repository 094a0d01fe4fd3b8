"""Rate-limit math of the sandbox: pure, every method takes ``now`` (seconds, monotonic).

HighLevel limits each app and location to a burst window (100 requests per 10 s) and a daily
total (200,000); whether the burst window is fixed or sliding is undocumented, so both exist:

- ``fixed``: a window opens with the first request after the previous window closed and admits
  ``limit`` requests until it closes ``window`` seconds later.
- ``sliding``: a request is admitted when fewer than ``limit`` admitted requests arrived in the
  last ``window`` seconds (the half-open interval ``(now - window, now]``).

The daily limit is a fixed window of ``day`` seconds, opened like the fixed burst window.
Only admitted requests use budget; a refused one (429) does not.

:class:`ArrivalMeter` is the server's own referee: it measures the most requests that arrived
within any interval of ``window`` seconds, whatever the limiter did with them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["ArrivalMeter", "Budget", "Decision", "retry_after_header"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer for one request, with what the ``X-RateLimit-*`` headers report."""

    allowed: bool
    remaining: int
    """Requests left in the burst window after this one."""
    daily_remaining: int
    """Requests left today after this one."""
    retry_after: float
    """Seconds until a refused request could be admitted (0 when allowed)."""


class Budget:
    """The burst window and daily limit of one token."""

    __slots__ = (
        "_day_count",
        "_day_start",
        "_fixed_count",
        "_fixed_start",
        "_sliding",
        "daily_limit",
        "day",
        "limit",
        "mode",
        "window",
    )

    def __init__(
        self,
        limit: int,
        window: float,
        mode: Literal["fixed", "sliding"] = "sliding",
        daily_limit: int = 200_000,
        day: float = 86_400.0,
    ) -> None:
        if limit < 1 or daily_limit < 1 or window <= 0 or day <= 0:
            raise ValueError("limits must be at least 1 and windows positive")
        if mode not in ("fixed", "sliding"):
            raise ValueError(f"mode must be 'fixed' or 'sliding', not {mode!r}")
        self.limit = limit
        self.window = window
        self.mode = mode
        self.daily_limit = daily_limit
        self.day = day
        self._fixed_start = -math.inf
        self._fixed_count = 0
        self._sliding: deque[float] = deque()
        self._day_start = -math.inf
        self._day_count = 0

    def _expire(self, now: float) -> None:
        if now >= self._day_start + self.day:
            self._day_count = 0
        if self.mode == "fixed":
            if now >= self._fixed_start + self.window:
                self._fixed_count = 0
        else:
            # Written as in _burst_wait (oldest + window <= now), so that float rounding can
            # never make the two disagree about whether the oldest request has left.
            window = self.window
            times = self._sliding
            while times and times[0] + window <= now:
                times.popleft()

    def _used(self) -> int:
        return self._fixed_count if self.mode == "fixed" else len(self._sliding)

    def _burst_wait(self, now: float) -> float:
        if self._used() < self.limit:
            return 0.0
        if self.mode == "fixed":
            return self._fixed_start + self.window - now
        # The oldest admitted request leaves the window at oldest + window.
        return self._sliding[0] + self.window - now

    def peek(self, now: float) -> Decision:
        """What a request arriving at ``now`` would be told, without using any budget."""
        self._expire(now)
        burst_wait = self._burst_wait(now)
        day_wait = self._day_start + self.day - now if self._day_count >= self.daily_limit else 0.0
        wait = max(burst_wait, day_wait)
        return Decision(
            allowed=wait <= 0.0,
            remaining=self.limit - self._used(),
            daily_remaining=self.daily_limit - self._day_count,
            retry_after=max(wait, 0.0),
        )

    def acquire(self, now: float) -> Decision:
        """Admit a request arriving at ``now`` if the budget allows, using one unit of it."""
        decision = self.peek(now)
        if not decision.allowed:
            return decision
        if self._day_count == 0:
            self._day_start = now
        self._day_count += 1
        if self.mode == "fixed":
            if self._fixed_count == 0:
                self._fixed_start = now
            self._fixed_count += 1
        else:
            self._sliding.append(now)
        return Decision(
            allowed=True,
            remaining=decision.remaining - 1,
            daily_remaining=decision.daily_remaining - 1,
            retry_after=0.0,
        )


class ArrivalMeter:
    """The most arrivals seen within any interval of ``window`` seconds (a true sliding max)."""

    __slots__ = ("_times", "max_seen", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self.max_seen = 0

    def arrive(self, now: float) -> int:
        """Record an arrival at ``now``; returns how many arrived in ``(now - window, now]``."""
        times = self._times
        times.append(now)
        window = self.window
        while times[0] + window <= now:
            times.popleft()
        count = len(times)
        self.max_seen = max(self.max_seen, count)
        return count


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as HTTP wants it: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds - 1e-9)))
