"""Typed events of the bulk engine, handed to hooks as frozen value objects (msgspec structs).

Hooks are plain callables ``hook(event) -> None``, called inline on the event loop: keep them
quick (update a counter, redraw a bar, write a log line). A hook that raises is logged and
ignored; it never stops the run. Match on the class::

    def on_event(event: Event) -> None:
        match event:
            case RecordFinished(outcome=outcome):
                bar.advance()
            case Paused(token_key=key, seconds=seconds):
                log.info("token %s paused for %.1fs", key, seconds)

``token_key`` is the *name* of a token (``"default"``, or a key of ``tokens={...}``), never the
token itself. No event holds a secret.

A hook may say which events it needs with :func:`listens`: it then gets only those, and the
engine builds a :class:`RequestFinished`, one per HTTP request, only while some hook needs it
(a hook without :func:`listens` gets every event).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeAlias, TypeVar, cast

import msgspec

from growthhub_async.outcomes import Outcome, Status, Summary

__all__ = [
    "Event",
    "Hook",
    "Paused",
    "RateLimitHit",
    "RecordFinished",
    "RequestFinished",
    "RetryScheduled",
    "RunFinished",
    "TokenStopped",
    "listens",
    "needs",
]


class _Event(msgspec.Struct, frozen=True, kw_only=True):
    """The events' base: msgspec structs, built in C (a frozen dataclass's ``__init__``, one
    ``object.__setattr__`` per field, cost a record about 0.5 us: issue 17). ``gc=False`` on
    those that hold only values: no cycle can run through them."""


class RecordFinished(_Event, frozen=True, kw_only=True, gc=False):
    """A record has its final outcome (also for records ended by cancellation)."""

    outcome: Outcome
    token_key: str | None
    record_hash: bytes | None = None
    """The record's resume key (see :func:`~growthhub_async.journal.record_hash`), when the run
    was asked for it (``update_contacts(..., record_hashes=True)``) and the record was sent or
    queued; ``None`` for records rejected before."""


class RequestFinished(_Event, frozen=True, kw_only=True, gc=False):
    """One HTTP request of a record has its answer (or failed): one event per attempt.

    ``sent_at`` is when the request went (the event loop's clock, ``loop.time()``), ``duration``
    the seconds until its answer or failure. ``http_status`` is the answer's status (``None``
    when none came: a dropped connection, a timeout); ``error`` the failure's type when the
    request did not succeed (``"RateLimited"``, ``"ServerError"``, ``"ConnectionFailed"``,
    ``"RequestTimeout"``, ...), never a message. A request cancelled on the wire (the run
    stopped) has no event. Telemetry's HTTP spans and its duration histogram come from these.
    """

    line: int
    contact_id: str
    token_key: str
    attempt: int
    sent_at: float
    duration: float
    http_status: int | None
    error: str | None


class RetryScheduled(_Event, frozen=True, kw_only=True, gc=False):
    """A transient failure; the record will be sent again after ``delay`` seconds.

    ``attempt`` is the number of requests already sent for the record; ``error`` says why
    (``"HTTP 503: Service Unavailable"``, ``"ConnectionFailed: ..."``). For a 429 the delay is
    the server's ``Retry-After``, else what is left of the token's pause (see :class:`Paused`).
    A waiting record holds no worker: the others go on meanwhile.
    """

    line: int
    contact_id: str
    token_key: str
    attempt: int
    delay: float
    error: str
    http_status: int | None


class RateLimitHit(_Event, frozen=True, kw_only=True, gc=False):
    """The server answered 429 for a record; ``retry_after`` is what it asked for, if anything."""

    line: int
    contact_id: str
    token_key: str
    retry_after: float | None


class Paused(_Event, frozen=True, kw_only=True, gc=False):
    """Every worker of a token stops sending for ``seconds`` (after a 429 that spent the budget).

    ``seconds`` is the pause as applied: the server's ``Retry-After`` (or the rest of the window)
    bounded by the client's ``max_pause``; ``reason`` says when it was cut short. A pause that
    overlaps one already running extends it to the later end (never adds to it), and only an
    extension is announced.
    """

    token_key: str
    seconds: float
    reason: str


class TokenStopped(_Event, frozen=True, kw_only=True, gc=False):
    """A token sends no more requests: its remaining records end with ``status`` and ``reason``.

    Happens when the daily limit is reached (``failed``, ``"daily limit reached"``) or after
    repeated 401s (``unauthorized``).
    """

    token_key: str
    status: Status
    reason: str


class RunFinished(_Event, frozen=True, kw_only=True):
    """An ``update_contacts`` run has ended (every record read has its outcome).

    Sent to the run's own hooks and the client's, once, when the stream ends: exhausted,
    stopped or closed. ``summary`` holds the run's counts and ``elapsed`` seconds.
    """

    summary: Summary


Event: TypeAlias = (
    RecordFinished
    | RequestFinished
    | RetryScheduled
    | RateLimitHit
    | Paused
    | TokenStopped
    | RunFinished
)
"""Any event of the engine."""

Hook: TypeAlias = Callable[[Event], None]
"""A subscriber: called inline, on the event loop, once per event."""


_H = TypeVar("_H", bound=Callable[..., Any])


class Listening:
    """A hook with the events it needs (what :func:`listens` makes): called like the hook.

    A wrapper rather than an attribute on the hook: a hook may have an ``events`` attribute of
    its own (a recorder's list, a counter, a mock), and a bound method takes no attribute. In a
    class body it binds like the method it wraps; two wrappers of equal hooks are equal (so
    ``remove_hook(obj.method)`` finds the one ``add_hook(obj.method)`` added)."""

    __slots__ = ("__wrapped__", "kinds")

    def __init__(self, hook: Callable[[Any], None], kinds: frozenset[type]) -> None:
        self.__wrapped__ = hook
        self.kinds = kinds

    def __call__(self, event: Any) -> None:
        self.__wrapped__(event)

    def __get__(self, obj: object, owner: type | None = None) -> Listening:
        if obj is None:
            return self
        return Listening(self.__wrapped__.__get__(obj, owner), self.kinds)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Listening)
            and self.__wrapped__ == other.__wrapped__
            and self.kinds == other.kinds
        )

    def __hash__(self) -> int:
        return hash((self.__wrapped__, self.kinds))

    def __repr__(self) -> str:
        names = ", ".join(sorted(kind.__name__ for kind in self.kinds))
        return f"<listens({names}) {self.__wrapped__!r}>"


def listens(*kinds: type) -> Callable[[_H], _H]:
    """Mark a hook as needing only the events of ``kinds``: it is called with those only::

        @listens(RecordFinished)
        def on_event(event: Event) -> None: ...

        client.add_hook(listens(RecordFinished, RunFinished)(recorder.append))

    Events nobody needs are then not built (issue 17: a :class:`RequestFinished` per request
    is built only for telemetry, or for a hook that asks for it). Returns a
    :class:`Listening` that calls the hook (a method in a class body stays a method)."""
    marked = frozenset(kinds)

    def mark(hook: _H) -> _H:
        return cast(_H, Listening(hook, marked))

    return mark


def needs(hooks: Iterable[Hook], kind: type) -> bool:
    """Whether any of ``hooks`` needs events of ``kind`` (one not made by :func:`listens` needs
    every event)."""
    for hook in hooks:  # noqa: SIM110 (a loop, not any(): it runs per request, issue 17)
        if type(hook) is not Listening or kind in hook.kinds:
            return True
    return False
