"""The retry policy: what is transient, Retry-After (seconds, HTTP date), jittered backoff."""

from __future__ import annotations

import random

import pytest

from growthhub_async.errors import (
    BadRequest,
    ConfigurationError,
    ConnectionFailed,
    Forbidden,
    GrowthHubError,
    HTTPStatusError,
    InvalidContactId,
    NotFound,
    RateLimited,
    RequestTimeout,
    ResponseError,
    ServerError,
    Unauthorized,
    UnprocessableEntity,
    error_for_status,
)
from growthhub_async.retry import (
    RetryPolicy,
    header_value,
    is_transient,
    parse_retry_after,
    retry_after_of,
)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (RateLimited(), True),
        (ServerError(500), True),
        (ServerError(502), True),
        (ServerError(503), True),
        (ServerError(504), True),
        (HTTPStatusError(408), True),
        (ConnectionFailed("reset"), True),
        (RequestTimeout("slow"), True),
        (ResponseError("truncated", status_code=200), True),
        (BadRequest(400), False),
        (Unauthorized(401), False),
        (Forbidden(403), False),
        (NotFound(404), False),
        (UnprocessableEntity(422), False),
        (HTTPStatusError(409), False),
        (InvalidContactId("x"), False),
        (GrowthHubError("x"), False),
        (ValueError("x"), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 500, 502, 503, 504])
def test_is_transient_follows_the_status_table(status: int) -> None:
    assert is_transient(error_for_status(status)(status)) is (status in (429, 500, 502, 503, 504))


NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DATE = "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("value", "date", "now", "expected"),
    [
        ("3", None, None, 3.0),
        (" 0 ", None, None, 0.0),
        ("1.5", None, None, 1.5),
        ("-1", None, None, None),
        ("nan", None, None, None),
        ("soon", None, None, None),
        ("", None, None, None),
        (None, None, None, None),
        ("Tue, 14 Nov 2023 22:13:30 GMT", DATE, None, 10.0),  # against the server's Date
        ("Tue, 14 Nov 2023 22:13:30 GMT", None, NOW, 10.0),  # against our clock
        ("Tue, 14 Nov 2023 22:13:30 GMT", "garbage", NOW, 10.0),
        ("Tue, 14 Nov 2023 22:13:10 GMT", DATE, None, 0.0),  # in the past
        ("Tue, 14 Nov 2023 22:13:30 GMT", None, None, None),  # no reference
    ],
)
def test_parse_retry_after(
    value: str | None, date: str | None, now: float | None, expected: float | None
) -> None:
    assert parse_retry_after(value, date=date, now=now) == expected


def test_retry_after_of() -> None:
    assert retry_after_of(RateLimited(retry_after=2.0)) == 2.0
    assert retry_after_of(RateLimited(headers={"retry-after": "4"})) == 4.0
    assert retry_after_of(ServerError(503, headers={"Retry-After": "7"})) == 7.0
    assert retry_after_of(ServerError(503)) is None
    assert retry_after_of(ConnectionFailed("x")) is None


def test_header_value_is_case_insensitive() -> None:
    assert header_value({"retry-after": "1"}, "Retry-After") == "1"
    assert header_value({"Retry-After": "2"}, "Retry-After") == "2"
    assert header_value({}, "Retry-After") is None


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=lambda v: v)
    assert [policy.backoff_delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_bounds_with_injected_random() -> None:
    rng = random.Random(7)
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, jitter=lambda v: rng.uniform(0, v))
    for n in range(1, 10):
        cap = min(4.0, 0.5 * 2 ** (n - 1))
        for _ in range(50):
            assert 0.0 <= policy.backoff_delay(n) <= cap


def test_default_jitter_is_full_jitter() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0)
    values = {policy.backoff_delay(1) for _ in range(50)}
    assert all(0.0 <= v <= 1.0 for v in values)
    assert len(values) > 1


@pytest.mark.parametrize(
    ("error", "tries", "elapsed", "hint", "expected"),
    [
        (ServerError(503), 1, 0.0, None, 0.5),  # backoff (no jitter here)
        (ServerError(503), 3, 0.0, None, 2.0),
        (ServerError(503, headers={"Retry-After": "9"}), 1, 0.0, None, 9.0),
        (RateLimited(retry_after=4.0), 1, 0.0, 0.3, 4.0),  # Retry-After beats the hint
        (RateLimited(), 1, 0.0, 0.3, 0.3),  # the rest of the window
        (ConnectionFailed("reset"), 1, 0.0, None, 0.5),
        (ServerError(503), 5, 0.0, None, None),  # max_tries reached
        (ServerError(503), 1, 9.8, None, None),  # would start after max_time
        (RateLimited(retry_after=60.0), 1, 0.0, None, None),  # Retry-After beyond max_time
        (NotFound(404), 1, 0.0, None, None),  # never retried
        (UnprocessableEntity(422), 1, 0.0, None, None),
        (Unauthorized(401), 1, 0.0, None, None),
    ],
)
def test_next_delay(
    error: BaseException, tries: int, elapsed: float, hint: float | None, expected: float | None
) -> None:
    policy = RetryPolicy(max_tries=5, max_time=10.0, base_delay=0.5, jitter=lambda v: v)
    assert policy.next_delay(error, tries=tries, elapsed=elapsed, hint=hint) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"max_tries": 0}, {"max_time": -1.0}, {"base_delay": float("nan")}, {"max_delay": -2.0}],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
