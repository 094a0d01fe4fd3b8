"""What both example apps share: settings from the environment, one client per process, the
request body, and the HTTP answer for an :class:`~growthhub_async.Outcome`.

Environment variables (the token never on a command line, where ``ps`` shows it):

- ``GROWTHHUB_TOKEN`` (required): the Private Integration Token;
- ``GROWTHHUB_BASE_URL``: the API root (default ``https://services.leadconnectorhq.com``);
- ``GROWTHHUB_RATE``: the client's pace per token, ``N/<duration>`` (default ``100/10s``);
- ``GROWTHHUB_CONCURRENCY``: requests in flight per process (default 10);
- ``GROWTHHUB_DEADLINE``: seconds a request may wait for its update, queue included (default
  10, below 1e9: the rule ``submit(timeout=)`` applies); after it the answer is 504 and an
  update that had not started is never sent;
- ``GROWTHHUB_SHARED_BUDGET``: a Redis URL, one rate budget for every worker process on the
  token (``GrowthHubClient(shared_budget=...)``); unset, each process paces alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from growthhub_async import ConfigurationError, GrowthHubClient, Outcome, Status, UpdateContact
from growthhub_async.client import DEFAULT_BASE_URL, check_timeout
from growthhub_async.models import decode_update
from growthhub_async.ratelimit import parse_rate

__all__ = [
    "MAX_BODY",
    "Settings",
    "answer",
    "cancelled_body",
    "invalid_body",
    "make_client",
    "read_update",
]

MAX_BODY: Final = 1 << 20
"""The largest request body the apps read (1 MiB); a larger one is answered 413."""

# The answer for each outcome: the caller's mistakes are 4xx; our token's and the API's
# troubles are 5xx (a 401 from the API is not the caller's 401: it is our credential).
_HTTP_STATUS: Final[Mapping[Status, int]] = {
    Status.UPDATED: 200,
    Status.UNCHANGED: 200,
    Status.REJECTED: 422,  # never sent: the body or the contact id failed local validation
    Status.INVALID: 422,  # the API's 422
    Status.BAD_REQUEST: 400,
    Status.NOT_FOUND: 404,
    Status.UNAUTHORIZED: 502,  # our token was refused
    Status.FAILED: 503,  # retries ran out, the daily limit, the app shutting down
}


@dataclass(frozen=True)
class Settings:
    """The apps' settings, from the environment (see the module's documentation)."""

    token: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    rate: str = "100/10s"
    concurrency: int = 10
    deadline: float = 10.0
    shared_budget: str | None = field(default=None, repr=False)  # a URL may hold a password

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read the settings; a missing token, a malformed number or rate, or a deadline that
        ``submit`` would refuse raises ``RuntimeError`` naming the variable (the token's value
        never): at start-up, not on every request."""
        token = environ.get("GROWTHHUB_TOKEN", "")
        if not token:
            raise RuntimeError("GROWTHHUB_TOKEN is not set: the app needs the API token")
        deadline = _number(environ, "GROWTHHUB_DEADLINE", 10.0)
        rate = environ.get("GROWTHHUB_RATE") or "100/10s"
        concurrency = _number(environ, "GROWTHHUB_CONCURRENCY", 10)
        try:
            check_timeout(deadline)  # the rule submit() applies to it, once here
        except ConfigurationError as exc:
            raise RuntimeError(f"GROWTHHUB_DEADLINE: {exc}") from None
        try:
            parse_rate(rate)
        except ConfigurationError as exc:
            raise RuntimeError(f"GROWTHHUB_RATE: {exc}") from None
        if concurrency != int(concurrency):
            raise RuntimeError(f"GROWTHHUB_CONCURRENCY must be a whole number, not {concurrency!r}")
        return cls(
            token=token,
            base_url=environ.get("GROWTHHUB_BASE_URL") or DEFAULT_BASE_URL,
            rate=rate,
            concurrency=int(concurrency),
            deadline=deadline,
            shared_budget=environ.get("GROWTHHUB_SHARED_BUDGET") or None,
        )


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise RuntimeError(f"{name} must be a positive number, not {text!r}")
    return value


def make_client(settings: Settings) -> GrowthHubClient:
    """The process's one client: open it in the app's lifespan, close it at shutdown."""
    options: dict[str, Any] = {}
    if settings.shared_budget is not None:
        # One budget in Redis for every worker process (README, "Several processes"). Passed
        # only when the variable is set, so that this file also runs on a growthhub-async
        # without the parameter as long as the variable is unset.
        options["shared_budget"] = settings.shared_budget
    return GrowthHubClient(
        settings.token,
        base_url=settings.base_url,
        rate=settings.rate,
        concurrency=settings.concurrency,
        **options,
    )


def read_update(body: bytes) -> UpdateContact | str:
    """The request body as an ``UpdateContact`` (API field names, as the API takes them), or
    the message naming what is wrong (the field's path), for a 422 before anything is sent."""
    if len(body) > MAX_BODY:
        return f"the body is larger than {MAX_BODY} bytes"
    try:
        return decode_update(body)
    except msgspec.DecodeError as exc:  # ValidationError included: it names the field
        return str(exc)


def answer(outcome: Outcome) -> tuple[int, bytes]:
    """The HTTP status and JSON body for an outcome: the outcome itself (``to_json()``, with
    the updated contact under ``response.contact`` when ``submit(..., response=True)``). A
    contact that cannot be encoded (whatever the server put in it) is left out: the answer
    is the outcome without it, never a 500.

    ``failed`` is 503, except a passed deadline (the error starts with ``"deadline"``): 504.
    """
    code = _HTTP_STATUS[outcome.status]
    if outcome.status is Status.FAILED and (outcome.error or "").startswith("deadline"):
        code = 504
    try:
        return code, outcome.to_json()
    except (RecursionError, ValueError, TypeError):  # msgspec.EncodeError is a ValueError
        return code, msgspec.structs.replace(outcome, response=msgspec.UNSET).to_json()


def cancelled_body(contact_id: str) -> dict[str, Any]:
    """The JSON body of a 503 for a handler that the server cancelled (its graceful shutdown
    timed out): the update was cancelled with it, and may have been applied if it was in
    flight; how many requests went is not known here."""
    return {
        "contactId": contact_id,
        "status": Status.FAILED.value,
        "attempts": None,
        "error": "cancelled: the server is shutting down (the update may have been applied)",
    }


def invalid_body(contact_id: str, message: str) -> dict[str, Any]:
    """The JSON body of a 422 for a request body that is not an Update Contact body: the keys
    of an outcome's, nothing sent."""
    return {
        "contactId": contact_id,
        "status": Status.REJECTED.value,
        "attempts": 0,
        "error": message,
    }
