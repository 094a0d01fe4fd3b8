"""What is retried, and after how long. Pure, and the only user of the ``backoff`` package.

Retried (transient): the statuses that :func:`~growthhub_async.outcomes.classify_status` maps
to ``failed`` (408, 429, 5xx: one table for "what we retry" and "what we report as failed"),
every :class:`~growthhub_async.errors.TransportError` (refused or dropped connections,
timeouts), and :class:`~growthhub_async.errors.ResponseError` (a 200 whose body is not the API's
JSON, most likely an answer truncated by a proxy, or ``succeded: false``).

Never retried: 400, 403, 404, 422 (the same request gets the same answer), and 401, which is
final unless a token refresher is configured (the engine then refreshes once and retries; that
retry is not counted here). Nor a 3xx (:class:`~growthhub_async.errors.Redirected`: the API
never redirects, and the same request would be redirected again) or a 2xx naming another contact
(:class:`~growthhub_async.errors.ContactMismatch`: sending it again could repeat the damage).

Retrying is safe because ``PUT /contacts/{id}`` is idempotent: sending the same body twice
leaves the contact as sending it once does, so a request that timed out, whose fate we cannot
know, may simply be sent again.

The delay before retry number *n* (1-based):

- the server's ``Retry-After`` when it gave one (seconds, or an HTTP date read against the
  response's own ``Date`` header, else against the wall-clock time passed in);
- else a *hint* from the caller (for a 429: the rest of the rate window);
- else exponential with full jitter: ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))``
  (``backoff.expo`` and ``backoff.full_jitter``; the jitter function is injectable for tests).

A record gives up after ``max_tries`` requests, or when the next try would start more than
``max_time`` seconds after its first one: at once, then, however long the server asks to wait
(a ``Retry-After: 86400`` ends the record now, with that reason, rather than in a day). The
engine also ends a request still in flight at ``max_time`` (see ``GrowthHubClient``).
"""

from __future__ import annotations

import email.utils
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import backoff

from growthhub_async.errors import (
    ConfigurationError,
    ContactMismatch,
    HTTPStatusError,
    RateLimited,
    ResponseError,
    TransportError,
)
from growthhub_async.outcomes import Status, classify_status

__all__ = [
    "RetryPolicy",
    "header_value",
    "is_transient",
    "parse_retry_after",
    "retry_after_of",
]


def is_transient(error: BaseException) -> bool:
    """Whether sending the same request again may succeed."""
    if isinstance(error, HTTPStatusError):
        return classify_status(error.status_code) is Status.FAILED
    if isinstance(error, ContactMismatch):
        return False
    return isinstance(error, TransportError | ResponseError)


def parse_retry_after(
    value: str | None, *, date: str | None = None, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date.

    An HTTP date is measured against ``date`` (the response's ``Date`` header, the server's own
    clock, so client clock skew does not matter) or else ``now`` (Unix seconds). Returns
    ``None`` when absent or unreadable, 0 for a date in the past.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    reference = now
    if date is not None:
        try:
            reference = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            reference = now
    if reference is None:
        return None
    return max(0.0, when - reference)


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name (for plain dicts; aiohttp's are already)."""
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def retry_after_of(error: BaseException, *, now: float | None = None) -> float | None:
    """The server's ``Retry-After`` for an error (a 429's parsed value, or a 503's header)."""
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return error.retry_after
    if isinstance(error, HTTPStatusError):
        return parse_retry_after(
            header_value(error.headers, "Retry-After"),
            date=header_value(error.headers, "Date"),
            now=now,
        )
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one record. Immutable; share one across the client.

    ``jitter`` maps the capped exponential value to the actual wait (full jitter by default);
    pass ``lambda v: v`` for deterministic waits or ``lambda v: 0.0`` to turn waits off in tests.
    """

    max_tries: int = 6
    """Requests per record, the first included."""
    max_time: float = 120.0
    """Seconds from a record's first request after which no new try starts."""
    base_delay: float = 0.5
    """The exponential schedule's first value, before jitter."""
    max_delay: float = 30.0
    """The cap of the exponential schedule (``Retry-After`` is honoured beyond it)."""
    jitter: Callable[[float], float] = field(default=backoff.full_jitter, compare=False)

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ConfigurationError("max_tries must be at least 1")
        for name in ("max_time", "base_delay", "max_delay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")

    def backoff_delay(self, retry: int) -> float:
        """The jittered exponential wait before retry number ``retry`` (1-based)."""
        schedule = backoff.expo(base=2, factor=self.base_delay, max_value=self.max_delay)
        next(schedule)  # backoff's generators yield None first (their .send() priming step)
        value = next(itertools.islice(schedule, max(0, retry - 1), None))
        return max(0.0, self.jitter(value))

    def next_delay(
        self,
        error: BaseException,
        *,
        tries: int,
        elapsed: float,
        hint: float | None = None,
        now: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next try, or ``None`` to give up.

        ``tries`` is how many requests were sent for the record, ``elapsed`` the seconds since
        its first one, ``hint`` the caller's estimate when the server gave no ``Retry-After``
        (the rest of a token's pause after a 429), ``now`` Unix seconds for HTTP dates.
        """
        decision = self.decide(error, tries=tries, elapsed=elapsed, hint=hint, now=now)
        return decision if isinstance(decision, float) else None

    def decide(
        self,
        error: BaseException,
        *,
        tries: int,
        elapsed: float,
        hint: float | None = None,
        now: float | None = None,
    ) -> float | str:
        """:meth:`next_delay`, with the reason instead of ``None``: a delay, or why not.

        The reason completes the record's error message: ``"not retried"``, ``"gave up after 6
        tries"``, or that the server asked for a wait beyond ``max_time``.
        """
        if not is_transient(error):
            return "not retried"
        if tries >= self.max_tries:
            return f"gave up after {tries} tries"
        delay = retry_after_of(error, now=now)
        asked = delay is not None
        if delay is None:
            delay = hint if hint is not None else self.backoff_delay(tries)
        if elapsed + delay > self.max_time:
            if asked:
                return (
                    f"the server asks to wait {delay:g}s (Retry-After), beyond the retry"
                    f" budget of {self.max_time:g}s; gave up after {tries} tries"
                )
            return f"gave up after {tries} tries, at max_time {self.max_time:g}s"
        return float(delay)
