"""The bulk engine: bounded read-ahead, workers per token, per-contact order, retries, outcomes.

How a record travels::

    input (lazy) -> OutcomeStream's reader (at most max_pending records ahead of the consumer)
      -> the token's queue -> one of the token's `concurrency` workers
      -> per-contact gate (one record per contact in flight, input order kept)
      -> pacing (the token's budget) -> PUT -> Outcome
                                             -> transient failure: wait (no worker held),
                                                then back to the front of the queue

Rules, and why:

- **Memory does not grow with the input.** The reader takes a record only while fewer than
  ``max_pending`` of its records are waiting, in flight, or finished but not yet taken by the
  consumer. A consumer that stops reading stops the reader.
- **Per contact, one record in flight, in input order.** A worker that takes a record whose
  contact already has one in flight parks it behind that one; the worker finishing a record
  runs the contact's next parked record itself. Parked records count as pending, so the parking
  is bounded too.
- **Tokens do not wait on each other.** Each token has its own queue, budget and up to
  ``concurrency`` workers (a worker idle between tokens is handed to the next that needs one;
  none is held by a quiet engine). Only the reader is shared: it reads in input order, so a
  token whose records pile up can hold it back once ``max_pending`` of them wait.
- **One outcome per record, none dropped.** Cancelling the consumer (or ``aclose()``, or closing
  the client) stops the reader, ends queued records as ``failed`` (``"cancelled"``, no request)
  and the ones in flight too, with their attempts counted. A request already written is not
  cut then (only closing the client cuts it): it finishes in the background, holding its
  contact's gate, so the contact's next record (of any run or ``submit``) never goes beside it
  (see :meth:`Engine.cancel_job`). Outcomes that the closed stream can no longer yield still
  reach the hooks (:class:`~growthhub_async.events.RecordFinished`) and the stream's
  ``summary``.
- **Retries** follow :class:`~growthhub_async.retry.RetryPolicy`. **A record waiting for its
  retry holds no worker**: the worker goes on with other records, and a timer puts the record
  back at the front of its token's queue when the wait is over. The record keeps its contact's
  gate meanwhile, so later records of that contact still wait for it. A 429 that spent the
  budget also pauses the whole token (the client's lane does it when the answer arrives; see
  rule 4 of :mod:`~growthhub_async.ratelimit`). A token stopped for the day, after repeated
  401s or after a 403 for another location sends nothing more: its records end with the stop's
  status and reason.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from operator import is_
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import msgspec

from growthhub_async.contact_id import MAX_LENGTH, check_contact_id
from growthhub_async.errors import (
    ClientClosed,
    HTTPStatusError,
    InvalidContactId,
    RateLimited,
    Redirected,
    ResponseError,
    TransportError,
)
from growthhub_async.events import (
    Event,
    Hook,
    Listening,
    Paused,
    RateLimitHit,
    RecordFinished,
    RequestFinished,
    RetryScheduled,
    RunFinished,
    needs,
)
from growthhub_async.journal import record_hash, sent_hash
from growthhub_async.models import UpdateContact
from growthhub_async.outcomes import Outcome, Status, Summary, classify_status
from growthhub_async.retry import RetryPolicy, is_transient
from growthhub_async.sources import Record
from growthhub_async.transport import SEND_GATE, NotSent

if TYPE_CHECKING:  # imported by the first spill: tempfile is no run's start-up cost
    from growthhub_async.spill import Spill

__all__ = ["Engine", "Lane", "OutcomeStream", "Record", "RecordInput"]

log = logging.getLogger("growthhub_async")

CANCELLED = "cancelled"
_REFRESHED = Exception("token refreshed")  # a marker: the 401 was answered by a refresh
_REAUTHS = 4  # per record: one refresh, then a fresh token's pauses (the lane stops it first)


RecordInput: TypeAlias = Record | tuple[str, UpdateContact] | Outcome | Any
"""What ``update_contacts`` accepts per item (see :meth:`Engine.prepare`)."""


class Lane(Protocol):
    """What the engine needs of one token (the client's implementation holds the session)."""

    key: str
    stopped: tuple[Status, str] | None

    def take(self) -> float | None:
        """The send time when the budget has room now (counted, and given back at once when
        the token has stopped: see :attr:`stopped`), else ``None``: then ``await acquire()``."""

    async def acquire(self) -> float:
        """Wait for the token's budget; return the send time."""

    def release(self, sent_at: float) -> None:
        """Give back the budget taken by :meth:`acquire` for a request that is not sent."""

    async def request(
        self,
        contact_id: str,
        body: bytes,
        *,
        sent_at: float,
        deadline: float | None = None,
        keep_response: bool = False,
    ) -> tuple[int, Any]:
        """Send one PUT; return ``(status, decoded)`` or raise a typed error.

        ``deadline`` (``loop.time()``): the whole answer must be in by then, or the request
        ends with :class:`~growthhub_async.errors.RequestTimeout`. ``keep_response``: the
        decoded body is given to a caller, so secrets are removed from it first.
        """

    async def refresh(self, error: HTTPStatusError, *, again: bool = False) -> float | None:
        """After the 401 ``error``: the seconds to wait before sending again (0: at once, with
        a newer token; more: a pause before sending again with a fresh one, which the record
        spends waiting like a retry, holding no worker); ``again``: the record had a refresh.

        ``None`` when nothing can be refreshed (no refresher, a scope 401, the token stopped);
        raises an ``HTTPStatusError`` (``TokenRefreshFailed``) when the refresh failed: the
        record's error.
        """

    def pause_remaining(self, now: float) -> float:
        """Seconds left of the token's 429 pause."""

    def quiet(self) -> None:
        """Nothing of this token is queued or running now (its memory may be trimmed)."""


class _State(enum.Enum):
    QUEUED = "queued"  # waiting for a worker; must pass its contact's gate
    READY = "ready"  # holds its contact's gate, waiting for a worker (after a wait, or handed)
    RUNNING = "running"  # a worker runs its attempts
    WAITING = "waiting"  # holds its contact's gate, no worker: a timer wakes it (a retry's wait)
    DONE = "done"


# The states and the one status the hot path names, as plain globals: `_State.RUNNING` is a
# lookup through the enum class's metaclass __getattr__ hook, about 1,000 instructions each,
# several per record (issue 17).
_QUEUED, _READY, _RUNNING, _WAITING, _DONE = _State
_UPDATED = Status.UPDATED


class _Sink(Protocol):
    halted: tuple[Status, str] | None
    """Set when the run stops (:meth:`OutcomeStream.stop`): the outcome of every record that
    has no request on the wire, in place of any further request or retry."""
    keeps_response: bool
    """Whether a record's decoded 2xx body is kept for it (``submit(..., response=True)``);
    never for a bulk run, whose outcomes go to a journal and must not grow with the body."""
    requests_needed: bool
    """Whether one of the sink's own hooks needs :class:`RequestFinished` (see
    :func:`~growthhub_async.events.needs`; the client's hooks are the engine's to ask)."""

    def event(self, event: Event) -> None: ...

    def finish(self, job: _Job, outcome: Outcome) -> None: ...


class _Queue:
    """A token's records waiting for a worker: those that hold their contact's gate (back from
    a wait, or handed on) first, then new ones; each kind in FIFO order. Workers take from it
    without waiting (a worker leaves the token when it is empty), so two deques do what a
    priority queue did, for less per record (issue 17)."""

    __slots__ = ("new", "ready")

    def __init__(self) -> None:
        self.ready: deque[_Job] = deque()
        self.new: deque[_Job] = deque()


class _Job(msgspec.Struct, eq=False):
    """One record in the engine. A struct: its defaults are filled in C, where an ``__init__``
    assigning two dozen slots cost more than the rest of taking a record in (issue 17).
    ``eq=False``: compared and hashed by identity (jobs live in sets)."""

    line: int
    contact_id: str
    body: bytes
    lane: Lane
    sink: _Sink
    token_key: str | None = None
    """The record's own key (``None``: the run's default): what its resume key covers."""
    state: _State = _QUEUED
    attempts: int = 0
    http_status: int | None = None
    reauths: int = 0  # 401s answered by a refresh or a pause (bounded: _REAUTHS)
    resend_after: float = 0.0  # the pause a 401 asked for before the record is sent again
    on_wire: bool = False  # a request of this record is being sent or answered
    written: bool = False  # ... and its connection was ready: it went (or is going) out
    detached: bool = False  # cut with a request written: its outcome is out, the answer not
    timeout: float | None = None  # a submit's deadline: seconds, and when (loop time)
    expires: float | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None  # the error of a cancelled record, if not CANCELLED
    response: Any = None  # the decoded 2xx body, kept only when the sink asks
    task: asyncio.Task[Any] | None = None
    """The worker running this record (set only while its attempts are awaited)."""
    first: float | None = None
    """When the first request went (``loop.time()``): ``max_time`` counts from here."""
    timer: asyncio.TimerHandle | None = None
    """The wake-up of a ``WAITING`` record."""

    def may_send(self) -> bool:
        """The send gate (asked when the connection is ready, right before the request is
        written): not once the record ended, its run stopped or its deadline passed."""
        if self.state is not _RUNNING or self.sink.halted is not None:
            return False
        if self.expires is not None and asyncio.get_running_loop().time() >= self.expires:
            return False
        self.written = True
        return True

    def outcome(self, status: Status, error: str | None) -> Outcome:
        return Outcome(
            line=self.line,
            contact_id=self.contact_id,
            status=status,
            http_status=self.http_status,
            attempts=self.attempts,
            error=error,
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, HTTPStatusError | ResponseError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _status_of(error: BaseException) -> Status:
    # A redirect is `failed` (not final: a resume sends it again once base_url is fixed), not
    # the `bad_request` that other non-transient codes outside the table get.
    if isinstance(error, HTTPStatusError) and not isinstance(error, Redirected):
        return classify_status(error.status_code)
    return Status.FAILED


class Engine:
    """Workers per token over the client's lanes; shared by every run and ``submit``.

    Created by the client on first use; ``close()`` ends everything it started.
    """

    def __init__(
        self,
        lanes: Mapping[str, Lane],
        *,
        policy: RetryPolicy,
        concurrency: int,
        encode: Callable[[UpdateContact], bytes],
        hooks: list[Hook],
        default_token_key: str | None,
    ) -> None:
        self.lanes = lanes
        self.policy = policy
        self.concurrency = concurrency
        self.encode = encode
        self.hooks = hooks  # the client's list: hooks added later are seen
        self.default_token_key = default_token_key
        self.loop = asyncio.get_running_loop()
        self.runs: set[OutcomeStream] = set()
        self._queues: dict[str, _Queue] = {}
        self._waiting: set[_Job] = set()  # records in a retry's wait (their timers run)
        # Per token: the contacts with a record in flight, and their parked records (None until
        # one is parked: most contacts never have one, and a deque per record costs).
        self._active: dict[str, dict[str, deque[_Job] | None]] = {}
        # Workers start when a token has records (up to `concurrency` per token) and end when
        # the engine has nothing to do, so a run over 1,000 locations holds tasks for the
        # records in memory, not 10 per location.
        self._workers: set[asyncio.Task[None]] = set()
        self._live: dict[str, int] = {}  # per token: the workers on its records
        # Workers between two tokens: a worker whose token's queue is empty while others work
        # waits here to be handed the next token that needs one, rather than ending (a task
        # per record cost more than the rest of the engine's step when 1,000 locations each
        # have a record now and then: issue 17). The last busy worker ends them all, so an
        # engine with nothing to do holds no task (issue 13).
        self._idle: deque[asyncio.Future[str | None]] = deque()
        self._busy = 0  # workers alive and not idle
        self._hooks_seen: list[Hook] = []
        self._hooks_need_requests = False
        self.closed = False

    # -- events ----------------------------------------------------------------------------

    @staticmethod
    def call_hooks(hooks: Iterable[Hook], event: Event) -> None:
        """Call each hook that needs ``event`` (:func:`~growthhub_async.events.listens`); one
        that raises is logged and skipped (it must not stop a run)."""
        _call(_listeners(hooks, type(event)), event)

    def broadcast(self, event: Event) -> None:
        """A token-level event: to the client's hooks and to every running stream's."""
        self.call_hooks(self.hooks, event)
        for run in list(self.runs):
            run.token_event(event)

    # -- records in ------------------------------------------------------------------------

    def prepare(
        self, item: RecordInput, position: int, token_key: str | None, sink: _Sink
    ) -> _Job | Outcome:
        """A job for one input item, or its ``rejected`` outcome (never sent).

        Accepted: a :class:`~growthhub_async.sources.Record`; a ``(contact_id, update)`` pair
        (line = ``position``); an :class:`Outcome` (a record already rejected upstream, as the
        input sources yield them), returned as is.
        """
        if type(item) is Record:  # what the input sources yield: no unpacking (issue 17)
            line, contact_id, update, own_key = (
                item.line,
                item.contact_id,
                item.update,
                item.token_key,
            )
        elif isinstance(item, Outcome):
            return item
        else:
            unpacked = _unpack(item, position)
            if isinstance(unpacked, Outcome):
                return unpacked
            line, contact_id, update, own_key = unpacked
        key = (
            own_key
            if own_key is not None
            else token_key
            if token_key is not None
            else self.default_token_key
        )
        problem = _problem(contact_id, update, key)
        lane = self.lanes.get(key if type(key) is str else str(key)) if problem is None else None
        if lane is not None:
            try:
                body = self.encode(update)
            except ValueError as exc:  # a value JSON cannot carry (NaN, infinity)
                problem = str(exc)
            else:
                return _Job(line, contact_id, body, lane, sink, token_key=own_key)
        # The id is shown in the outcome (never sent) unless it is not a string or absurdly long.
        shown = contact_id if isinstance(contact_id, str) and len(contact_id) <= 1024 else None
        if problem is None:
            why = getattr(self.lanes, "why_missing", None)
            problem = why(key) if why is not None else f"unknown token_key {key!r}"
        return _rejected(line, shown, problem)

    def enqueue(self, job: _Job) -> None:
        """Hand a job to its token's workers (started on first use)."""
        if self.closed:
            self._finish(job, job.outcome(Status.FAILED, CANCELLED))
            return
        key = job.lane.key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
            self._active[key] = {}
            self._live[key] = 0
        queue.new.append(job)
        if self._live[key] < self.concurrency:
            self._start_worker(key)

    def _start_worker(self, key: str) -> None:
        """One more worker on ``key``'s records: an idle one if any, else a new task."""
        self._live[key] += 1
        self._busy += 1
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():  # not one whose task was cancelled (and has not run since)
                waiter.set_result(key)
                return
        worker = asyncio.create_task(self._worker(key), name="growthhub-worker")
        self._workers.add(worker)

    def _ready(self, job: _Job) -> None:
        """Put a record that holds its contact's gate at the front of its token's queue."""
        job.state = _READY
        key = job.lane.key
        self._queues[key].ready.append(job)
        if self._live[key] < self.concurrency:
            self._start_worker(key)

    def _wait(self, job: _Job, delay: float) -> None:
        """Park a record for a retry's wait without a worker; a timer makes it ready again."""
        job.state = _WAITING
        job.timer = self.loop.call_later(delay, self._wake, job)
        self._waiting.add(job)

    def _wake(self, job: _Job) -> None:
        job.timer = None
        if self.closed:
            return  # still in _waiting: close() ends it
        self._waiting.discard(job)
        if job.state is _WAITING:
            self._ready(job)

    def _hand_on(self, job: _Job) -> None:
        """A record that held its contact's gate ended without a worker: the next one goes."""
        following = self._next_parked(self._active[job.lane.key], job.contact_id)
        if following is not None:
            self._ready(following)

    def cancel_job(self, job: _Job, reason: str = CANCELLED) -> None:
        """End a job as ``failed`` (``reason``, by default ``"cancelled"``): at once if queued,
        via its worker if running.

        A running record is cancelled by cancelling the worker that runs it, once: the worker is
        suspended inside that record's attempts (see :meth:`_work`), so the cancellation lands
        there, and the worker takes it back (``uncancel``) and goes on with its next record. A
        record waiting for a retry (no worker) ends at once, and its contact's next record goes.

        A record whose request is written (on the wire, answer pending) is not cut: it ends now
        (its outcome to its caller and the hooks), and its request goes on in the background
        until answered or its own ``timeout``, holding its contact's gate meanwhile. The
        server may be applying it: the contact's next record must not be in flight beside it
        and land first (the same rule as :meth:`OutcomeStream.stop`). Only :meth:`close` cuts
        a request on the wire.
        """
        if job.state is _QUEUED:
            self._finish(job, job.outcome(Status.FAILED, reason))
        elif job.state in (_WAITING, _READY):
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            self._waiting.discard(job)
            self._finish(job, job.outcome(Status.FAILED, reason))
            if not self.closed:
                self._hand_on(job)
        elif job.state is _RUNNING and job.on_wire and job.written and not job.detached:
            job.detached = True  # _attempts sees it when the answer comes: nothing more is sent
            self._finish(job, job.outcome(Status.FAILED, reason))
        elif job.state is _RUNNING and job.task is not None and not job.cancel_requested:
            job.cancel_requested = True
            job.cancel_reason = reason
            job.task.cancel()

    async def submit(
        self,
        line: int,
        contact_id: str,
        update: UpdateContact,
        token_key: str | None,
        *,
        # Not asyncio.timeout (ASYNC109): that would raise, and the record's outcome, which
        # says whether it was sent, would be lost; the deadline ends the record instead.
        timeout: float | None = None,  # noqa: ASYNC109
        response: bool = False,
        started: float | None = None,
    ) -> Outcome:
        """One record through the workers; see ``GrowthHubClient.submit``.

        ``timeout``: seconds from now (from ``started``, a ``loop.time()``, if given) after
        which the record ends ``failed`` whatever its
        state (:func:`deadline_reason` says how far it got); ``response``: the outcome carries
        the decoded 2xx body (the hooks get the outcome without it).
        """
        loop = self.loop
        future: asyncio.Future[Outcome] = loop.create_future()
        sink = _FutureSink(future, self, keeps_response=response)
        prepared = self.prepare(Record(line, contact_id, update, token_key), line, None, sink)
        if isinstance(prepared, Outcome):
            self.call_hooks(self.hooks, RecordFinished(outcome=prepared, token_key=token_key))
            return prepared
        expiry = None
        if timeout is not None:
            # The timer ends a record that is waiting; the worker also looks at `expires` right
            # before sending (the timer runs late on a busy loop, after the worker's turn).
            now = loop.time()
            prepared.timeout = timeout
            prepared.expires = (started if started is not None else now) + timeout
            expiry = loop.call_later(max(prepared.expires - now, 0.0), self._expire, prepared)
        self.enqueue(prepared)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel_job(prepared)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    def _expire(self, job: _Job) -> None:
        """A submitted record's deadline has passed: end it, saying how far it got."""
        if job.state is not _DONE:
            self.cancel_job(job, deadline_reason(job))

    # -- workers ---------------------------------------------------------------------------

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        if job.state is _DONE:
            return
        job.state = _DONE
        job.task = None
        job.sink.finish(job, outcome)

    async def _worker(self, key: str | None) -> None:
        counted = True  # in self._busy: not while idle, nor once it ends
        try:
            while key is not None:
                try:
                    await self._work(key)
                finally:
                    self._leave(key)
                if self.closed:
                    break
                counted = False
                self._busy -= 1
                key = await self._between()  # a key: counted busy again, by whoever handed it
                counted = key is not None
        finally:
            if counted:
                self._busy -= 1
            worker = asyncio.current_task()
            if not self.closed and worker is not None:
                self._workers.discard(worker)

    def _leave(self, key: str) -> None:
        """A worker is done with ``key``'s records (its queue is empty, or the worker ends)."""
        self._live[key] -= 1
        if not self._live[key] and not self.closed:
            self._lanes_quiet(key)

    async def _between(self) -> str | None:
        """The next token for a worker whose token's queue is empty (not counted busy now):
        wait idle while others work (records come in bursts, and a token that needs a worker
        hands it its key); ``None``: end. No more workers wait idle than others are busy (rt17c:
        under traffic that never pauses, a burst's workers stayed idle as long as it lasted),
        so with none busy the engine is quiet and every idle worker ends."""
        busy = self._busy
        if len(self._idle) >= busy:
            while len(self._idle) > busy:
                idle = self._idle.popleft()
                if not idle.done():  # not one whose task was cancelled (it ends by itself)
                    idle.set_result(None)
            return None
        waiter: asyncio.Future[str | None] = self.loop.create_future()
        self._idle.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter in self._idle:
                self._idle.remove(waiter)
            elif not waiter.cancelled() and (key := waiter.result()) is not None:
                # Handed a key (and counted busy), cancelled before working on it: its record
                # needs another worker.
                self._busy -= 1
                self._leave(key)
                queue = self._queues[key]
                if (queue.ready or queue.new) and not self.closed:
                    self._start_worker(key)
            raise

    def _lanes_quiet(self, key: str) -> None:
        lane = self.lanes.get(key)
        queue = self._queues[key]
        if lane is not None and not queue.ready and not queue.new:
            if not self._active[key]:
                self._active[key] = {}  # a dict keeps its largest size: let it go
            lane.quiet()

    async def _work(self, key: str) -> None:  # noqa: PLR0912, PLR0915 (each record inline)
        worker = asyncio.current_task()
        assert worker is not None
        queue = self._queues[key]
        ready, new = queue.ready, queue.new
        active = self._active[key]
        while ready or new:
            job = ready.popleft() if ready else new.popleft()
            contact_id = job.contact_id
            if job.state is _QUEUED:
                if contact_id in active:
                    parked = active[contact_id]
                    if parked is None:
                        parked = active[contact_id] = deque()
                    parked.append(job)  # whoever ends this contact's record takes it next
                    continue
                active[contact_id] = None
            elif job.state is not _READY:
                continue  # cancelled while queued: its outcome is out already
            while True:
                # The record runs inline in its worker: a task per record (and asyncio.wait on
                # it) cost more CPU than the rest of the engine's own per-record work, and a
                # coroutine of its own here one more frame on each resumption (issue 17).
                # Cancelling one record is cancelling the worker while it runs that record
                # (cancel_job), which is only ever the case between the two assignments of
                # `job.task` below, with no suspension point outside `_attempts`: the
                # cancellation can only land in this record's attempts.
                job.state = _RUNNING
                job.task = worker
                try:
                    result = await self._attempts(job)
                except asyncio.CancelledError:
                    job.task = None
                    if job.cancel_requested:
                        worker.uncancel()  # ours, from cancel_job
                    cut = job.outcome(Status.FAILED, job.cancel_reason or CANCELLED)
                    if worker.cancelling() or self.closed:
                        # Someone else cancels the worker too (the engine is closing, or the
                        # loop is shutting down): end this record, then let the worker stop.
                        self._finish(job, cut)
                        raise
                    result = cut
                except Exception as exc:  # a bug of ours: this record fails, not the run
                    job.task = None
                    log.exception("internal error on line %d", job.line)
                    error = f"internal error: {type(exc).__name__}: {exc}"
                    result = job.outcome(Status.FAILED, error)
                else:
                    job.task = None
                    if job.cancel_requested and worker.cancelling():
                        # The attempts swallowed our cancellation and ended on their own: take
                        # it back, or it would hit the worker's next record.
                        worker.uncancel()
                        if not isinstance(result, Outcome):
                            result = job.outcome(Status.FAILED, job.cancel_reason or CANCELLED)
                if not isinstance(result, Outcome) and job.sink.halted is not None:
                    result = job.outcome(*job.sink.halted)  # the run stops: no retry
                if not isinstance(result, Outcome):
                    self._wait(job, result)
                    break  # it waits for a retry, still holding the gate; this worker goes on
                self._finish(job, result)
                following = self._next_parked(active, contact_id)
                if following is None:
                    break
                job = following

    @staticmethod
    def _next_parked(active: dict[str, deque[_Job] | None], contact_id: str) -> _Job | None:
        parked = active[contact_id]
        while parked:
            job = parked.popleft()
            if job.state is _QUEUED:
                return job
        del active[contact_id]
        return None

    async def _attempts(self, job: _Job) -> Outcome | float:
        """Send one record until it has a final outcome, or until it must wait to retry.

        Returns the outcome, or the seconds to wait before the next try (spent without a
        worker; see :meth:`_wait`).
        """
        lane = job.lane
        loop = self.loop
        policy = self.policy
        while True:
            halt = _held_back(job, loop)
            if halt is None:
                taken = lane.take()
                sent_at = taken if taken is not None else await lane.acquire()
                # Taken at once, only the token may have stopped (its slot is back already);
                # else anything may have changed while we waited for the budget.
                halt = lane.stopped if taken is not None else _held_back(job, loop, sent_at)
            if halt is not None:
                return job.outcome(*halt)
            job.first = sent_at if job.first is None else job.first
            job.attempts += 1
            # max_time holds while a retry is in flight too, so a record is over at most
            # max_time after its first request (or after the first request's own timeout).
            deadline = job.first + policy.max_time if job.attempts > 1 else None
            # One request. Sent from here, not from a coroutine of its own: that was one more
            # frame on each of the request's resumptions (issue 17). Its failures: _failed.
            error: BaseException | None
            job.on_wire = True
            job.written = False
            gate = SEND_GATE.set(job.may_send)
            try:
                try:
                    job.http_status, decoded = await lane.request(
                        job.contact_id,
                        job.body,
                        sent_at=sent_at,
                        deadline=deadline,
                        keep_response=job.sink.keeps_response,
                    )
                finally:
                    SEND_GATE.reset(gate)
            except BaseException as exc:  # noqa: BLE001 (_failed re-raises what is not ours)
                error = await self._failed(job, sent_at, exc)
            else:
                job.on_wire = job.written = False
                if job.sink.keeps_response and not job.detached:
                    job.response = decoded
                self._answered(job, sent_at, None)
                error = None
            if isinstance(error, NotSent) or job.detached:
                # Held back at the last moment (nothing went out), or cut with its request on
                # the wire (its caller has its outcome): _held_back ends it above.
                job.attempts -= isinstance(error, NotSent)
                continue
            if error is None:
                return job.outcome(_UPDATED, None)
            after = self._after(job, error)
            if after is not None:
                return after

    def _after(self, job: _Job, error: BaseException) -> Outcome | float | None:
        """What a record does after its request failed with ``error``: end (its outcome), wait
        that many seconds (spent without a worker), or ``None``: go again at once (the top of
        :meth:`_attempts` ends it if its token stopped meanwhile)."""
        lane = job.lane
        if error is _REFRESHED:
            if job.resend_after > 0:
                delay, job.resend_after = job.resend_after, 0.0
                return delay  # waits like a retry: the worker is free meanwhile
            return None
        if not is_transient(error):
            return job.outcome(_status_of(error), _describe(error))
        limited = isinstance(error, RateLimited)
        if limited:
            job.sink.event(
                RateLimitHit(
                    line=job.line,
                    contact_id=job.contact_id,
                    token_key=lane.key,
                    retry_after=getattr(error, "retry_after", None),
                )
            )
        if lane.stopped is not None:
            return None  # ends at the top, with the token's reason
        now = self.loop.time()
        assert job.first is not None  # set before the first request
        decision = self.policy.decide(
            error,
            tries=job.attempts,
            elapsed=now - job.first,
            # A 429 without Retry-After waits out the token's pause, if it caused one.
            hint=(lane.pause_remaining(now) or None) if limited else None,
            now=time.time(),
        )
        if isinstance(decision, str):
            return job.outcome(Status.FAILED, f"{_describe(error)} ({decision})")
        job.sink.event(
            RetryScheduled(
                line=job.line,
                contact_id=job.contact_id,
                token_key=lane.key,
                attempt=job.attempts,
                delay=decision,
                error=_describe(error),
                http_status=job.http_status,
            )
        )
        return decision if decision > 0 else None

    def _requests_needed(self) -> bool:
        """Whether one of the client's hooks needs :class:`RequestFinished`: asked again only
        when the hooks changed (the list is the client's, and may be changed directly)."""
        hooks = self.hooks
        if not _same_hooks(hooks, self._hooks_seen):
            self._hooks_seen = hooks.copy()
            self._hooks_need_requests = needs(hooks, RequestFinished)
        return self._hooks_need_requests

    def _answered(self, job: _Job, sent_at: float, error: BaseException | None) -> None:
        """Announce one request's end (:class:`RequestFinished`): telemetry's HTTP spans, built
        only while a hook needs it. Not for a record cut while its request was on the wire: its
        outcome (and its span) are out already, and a late request event would open a record
        span that nothing ends."""
        if job.detached or not (job.sink.requests_needed or self._requests_needed()):
            return
        job.sink.event(
            RequestFinished(
                line=job.line,
                contact_id=job.contact_id,
                token_key=job.lane.key,
                attempt=job.attempts,
                sent_at=sent_at,
                duration=self.loop.time() - sent_at,
                http_status=job.http_status,
                error=None if error is None else type(error).__name__,
            )
        )

    async def _failed(self, job: _Job, sent_at: float, exc: BaseException) -> BaseException:
        """A request of :meth:`_attempts` ended in ``exc``: the error to act on (``_REFRESHED``:
        send again; :class:`NotSent`: the send gate held it back, see :meth:`_Job.may_send`).
        Anything else (a cancellation, a bug) is raised again. The record stays on the wire
        until this returns: during a token refresh too, which is never cut short."""
        try:
            if isinstance(exc, HTTPStatusError):
                job.http_status = exc.status_code
                self._answered(job, sent_at, exc)
                if exc.status_code == 401 and job.reauths < _REAUTHS:
                    if job.sink.halted is not None or job.detached:
                        return _REFRESHED  # the run stops: no refresh, no re-send (ends halted)
                    try:
                        delay = await job.lane.refresh(exc, again=job.reauths > 0)
                        if delay is not None:
                            job.reauths += 1
                            job.resend_after = delay
                            return _REFRESHED
                    except HTTPStatusError as failed:  # the refresh failed: its reason is ours
                        return failed
                return exc
            if isinstance(exc, NotSent):  # the send gate held it back: nothing went out
                return exc
            if isinstance(exc, TransportError | ResponseError):
                job.http_status = exc.status_code if isinstance(exc, ResponseError) else None
                self._answered(job, sent_at, exc)
                return exc
            if isinstance(exc, asyncio.CancelledError) and not job.written:
                job.attempts -= 1  # cut before its connection was ready: nothing went out
            raise exc
        finally:
            job.on_wire = job.written = False

    def load(self) -> dict[str, tuple[int, int]]:
        """Per token key, ``(queued, in_flight)`` now: records waiting for a worker (new ones,
        those parked behind their contact's record, those waiting to retry) and records a
        worker is on (pacing, on the wire). Read by telemetry's gauges when they are collected,
        never on a record's path."""
        waiting: dict[str, int] = {}
        for job in self._waiting:
            waiting[job.lane.key] = waiting.get(job.lane.key, 0) + 1
        load = {}
        for key, queue in self._queues.items():
            active = self._active[key]  # contacts whose record is running, waiting or ready
            parked = sum(len(jobs) for jobs in active.values() if jobs)
            # Back from a retry's wait, in the queue again: waiting for a worker.
            ready = len(queue.ready)
            held = waiting.get(key, 0)
            load[key] = (ready + len(queue.new) + parked + held, max(0, len(active) - held - ready))
        return load

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every reader and worker; every record taken ends with an outcome."""
        if self.closed:
            return
        self.closed = True
        feeders = [t for run in list(self.runs) if (t := run.stop_reading()) is not None]
        if feeders:
            await asyncio.wait(feeders)
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.wait(workers)
        for job in list(self._waiting):
            self.cancel_job(job)
        for key, queue in self._queues.items():
            for job in (*queue.ready, *queue.new):
                if job.state in (_QUEUED, _READY):
                    self._finish(job, job.outcome(Status.FAILED, CANCELLED))
            queue.ready.clear()
            queue.new.clear()
            for parked in self._active[key].values():
                for job in parked or ():
                    if job.state is _QUEUED:
                        self._finish(job, job.outcome(Status.FAILED, CANCELLED))
            self._active[key].clear()
        for run in list(self.runs):  # every record has its outcome: the run ends (its span)
            run.finished()


def _same_hooks(hooks: list[Hook], seen: list[Hook]) -> bool:
    """Whether ``hooks`` holds the very objects of ``seen``, in order. By identity: a hook
    replaced by an equal object is a change (rt17d: compared with ``==``, the replacement got
    no event and the hook it replaced kept getting them). ``seen`` holds its hooks alive, so
    no new object can take one's place at its address."""
    return len(hooks) == len(seen) and all(map(is_, hooks, seen))


def _listeners(hooks: Iterable[Hook], kind: type) -> tuple[Hook, ...]:
    """The hooks that need events of ``kind``, in order; a :func:`listens` hook as its own
    function (a call frame less per event)."""
    return tuple(
        hook.__wrapped__ if type(hook) is Listening else hook
        for hook in hooks
        if type(hook) is not Listening or kind in hook.kinds
    )


def _call(hooks: Iterable[Hook], event: Event) -> None:
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            log.exception("event hook %r raised on %s", hook, type(event).__name__)


def _unpack(item: Any, position: int) -> tuple[int, Any, Any, str | None] | Outcome:
    if isinstance(item, Record):
        return item.line, item.contact_id, item.update, item.token_key
    if isinstance(item, tuple) and len(item) == 2:
        return position, item[0], item[1], None
    return _rejected(
        position, None, f"not a record: {type(item).__name__} (want a Record or a pair)"
    )


def _problem(contact_id: Any, update: Any, key: str | None) -> str | None:
    # The usual id (ASCII letters and digits) passes check_contact_id's first test: asked here,
    # that is a call fewer per record (issue 17).
    if not (
        type(contact_id) is str
        and contact_id.isascii()
        and contact_id.isalnum()
        and len(contact_id) <= MAX_LENGTH
    ):
        try:
            check_contact_id(contact_id)
        except InvalidContactId as exc:
            return str(exc)
    if not isinstance(update, UpdateContact):
        return f"not an UpdateContact: {type(update).__name__}"
    if key is None:
        return "no token_key given, and several tokens exist"
    return None


def _rejected(line: int, contact_id: str | None, error: str) -> Outcome:
    return Outcome(line=line, contact_id=contact_id, status=Status.REJECTED, error=error)


def _held_back(
    job: _Job, loop: asyncio.AbstractEventLoop, sent_at: float | None = None
) -> tuple[Status, str] | None:
    """Why a record may send nothing more (its outcome's status and error), or ``None``: its
    token or its run stopped, its deadline passed, or it was cut (its outcome is out).
    ``sent_at``: the budget was taken for it, and goes back (the lane's acquire gave it back
    already if the token stopped)."""
    halt: tuple[Status, str] | None
    if job.state is not _RUNNING:
        halt = Status.FAILED, job.cancel_reason or CANCELLED
    else:
        halt = job.lane.stopped or job.sink.halted
        if halt is None and job.expires is not None and loop.time() >= job.expires:
            halt = Status.FAILED, deadline_reason(job)
    if halt is not None and sent_at is not None and job.lane.stopped is None:
        job.lane.release(sent_at)
    return halt


def deadline_reason(job: _Job) -> str:
    """The error of a submitted record whose deadline (``job.timeout`` seconds) passed.

    Always starts with ``"deadline"``, so that a caller can tell it from other failures (a web
    handler answers 504 for it). A record that had sent nothing says so: it never will.
    """
    timeout = job.timeout or 0.0
    if job.on_wire and job.written:
        return (
            f"deadline ({timeout:g} s) passed with a request in flight: the server may have "
            f"applied it (its answer is not awaited; the contact's next record waits for it)"
        )
    sent = job.attempts - (1 if job.on_wire else 0)  # one being connected has not gone out
    if sent and job.http_status is not None:
        return (
            f"deadline ({timeout:g} s) passed waiting to retry, after {sent} "
            f"request(s) (last answer HTTP {job.http_status})"
        )
    if sent:
        return f"deadline ({timeout:g} s) passed waiting to retry, after {sent} request(s)"
    return f"deadline ({timeout:g} s) passed before the record could be sent: not sent"


class _FutureSink:
    """Where a ``submit`` job's outcome goes: the awaiting future, and the client's hooks."""

    halted: tuple[Status, str] | None = None  # a submit is never stopped, only cancelled
    requests_needed = False  # a submit's hooks are the client's: the engine asks them

    def __init__(
        self, future: asyncio.Future[Outcome], engine: Engine, *, keeps_response: bool = False
    ) -> None:
        self.future = future
        self.engine = engine
        self.keeps_response = keeps_response

    def event(self, event: Event) -> None:
        Engine.call_hooks(self.engine.hooks, event)

    def finish(self, job: _Job, outcome: Outcome) -> None:
        # The hooks (a journal, a state) get the outcome without the body: only the caller
        # who asked for it holds it.
        Engine.call_hooks(
            self.engine.hooks, RecordFinished(outcome=outcome, token_key=job.lane.key)
        )
        if job.response is not None and outcome.status is Status.UPDATED:
            outcome = msgspec.structs.replace(outcome, response=job.response)
        job.response = None
        if not self.future.done():
            self.future.set_result(outcome)


class _FeedDone:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


_END: Any = object()  # the end of the input (a sentinel no item can be)
_BATCH = 64  # records a side-by-side reader takes before letting the workers run
_spilled = msgspec.msgpack.Encoder().encode
_unspilled = msgspec.msgpack.Decoder(tuple[int, str, str | None, str, bytes]).decode


class OutcomeStream:
    """The outcomes of one ``update_contacts`` run, in completion order.

    Iterate it (``async for outcome in stream``), ideally inside ``async with`` so that leaving
    early (``break``, an exception) stops the run at once::

        async with gh.update_contacts(records) as stream:
            async for outcome in stream:
                ...
        print(stream.summary)

    Exactly one outcome per input record. Input is read lazily (at most ``max_pending`` records
    ahead of the consumer). If the input itself raises, the outcomes of the records read so
    far come first, then the exception. Cancelling the task that awaits the next outcome stops
    the run like :meth:`aclose`: queued records end ``failed`` (``"cancelled"``) without a
    request, records in flight end ``failed`` (``"cancelled"``) at once (a request already
    written finishes in the background, holding its contact, until the client is closed);
    their outcomes go to the hooks and the :attr:`summary`.

    **Side by side** (``side_by_side=True``, issue 13): records of many tokens (locations)
    progress at once whatever the input order, a file sorted by location included. The reader
    then runs ahead of the workers: each token holds at most ``max_pending`` records in memory,
    all tokens together at most ``max_held`` (never less than two per token seen), and a record
    that finds no room goes to a spill file (:class:`~growthhub_async.spill.Spill`, in
    ``spill_dir``) as the bytes it will be sent as. Room that frees goes round robin to the
    tokens with spilled records, so a token with 100,000 records never starves one with 10.
    Records still in the spill file when the run is stopped (:meth:`stop_input`, ``aclose``)
    count as not read: they get no outcome (a resumed job sends them).
    """

    keeps_response = False  # a run's outcomes never carry the 2xx body (see _Sink)

    def __init__(
        self,
        engine: Callable[[], Engine],
        records: Iterable[RecordInput] | AsyncIterable[RecordInput],
        *,
        token_key: str | None,
        hooks: Iterable[Hook],
        max_pending: int,
        side_by_side: bool = False,
        max_held: int = 1000,
        spill_dir: str | None = None,
        record_hashes: bool = False,
        known_hashes: dict[int, bytes] | None = None,
    ) -> None:
        self._get_engine = engine
        self._engine: Engine | None = None
        self._records = records
        self._token_key = token_key
        self._hooks = list(hooks)
        self.requests_needed = needs(self._hooks, RequestFinished)
        self._hooks_seen: list[Hook] | None = None  # the client's hooks when _listeners was made
        self._listeners: dict[type, tuple[Hook, ...]] = {}
        self._max_pending = max_pending
        self.summary = Summary()
        """Counts of this run; ``elapsed`` and ``rate`` are final once the stream has ended."""
        # Outcomes not yet taken by the consumer, and the consumer waiting for one (a deque and
        # a future: an asyncio.Queue cost several calls per record for the same, issue 17).
        self._results: deque[Outcome | _FeedDone] = deque()
        self._consumer: asyncio.Future[None] | None = None
        self._discard = False  # drain(): outcomes go to the hooks and the summary only
        # Room for the reader: records it may still take (max_pending minus those read whose
        # outcome the consumer has not taken), and the reader waiting for room.
        self._free = max_pending
        self._reader_waits: asyncio.Future[None] | None = None
        self._jobs: set[_Job] = set()
        self._outstanding = 0  # read from input, outcome not yet yielded
        self._feeder: asyncio.Task[None] | None = None
        self._feed_done = False
        self._feed_error: BaseException | None = None
        self._closed = False
        self._drained: asyncio.Event | None = None
        self._started_at = 0.0
        self.halted: tuple[Status, str] | None = None
        """Set by :meth:`stop`: what records without a request on the wire end with."""
        self._record_hashes = record_hashes
        # Resume keys by line of records the input replaced (a state's unchanged outcome or
        # changed fields): what the engine has is then not the record it must hash.
        self._known_hashes = known_hashes
        self._side_by_side = side_by_side
        self._max_held = max_held
        self._spill_dir = spill_dir
        self._spill: Spill | None = None
        self._load: dict[str, int] = {}  # per token: records in memory, outcome not yet out
        self._alive = 0  # all tokens together
        self._turns: deque[str] = deque()  # tokens with spilled records and room, round robin
        self._in_turns: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._input_stopped = False
        self._position = 0

    # -- sink for the engine ---------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        """To the client's hooks, then the run's own: those that need ``event``, as worked out
        once per kind of event (per record, the hooks' filters cost more than the hooks;
        issue 17), again whenever the client's list changes (it may be changed directly)."""
        assert self._engine is not None
        hooks = self._engine.hooks
        if self._hooks_seen is None or not _same_hooks(hooks, self._hooks_seen):
            self._hooks_seen = hooks.copy()
            self._listeners.clear()
        kind = type(event)
        listeners = self._listeners.get(kind)
        if listeners is None:
            listeners = self._listeners[kind] = _listeners((*hooks, *self._hooks), kind)
        _call(listeners, event)

    def _put(self, item: Outcome | _FeedDone) -> None:
        """An outcome (or the reader's end) for the consumer; wakes it if it waits."""
        if self._discard and type(item) is not _FeedDone:
            self._taken()
            if self._outstanding:
                return  # the consumer waits for the end only
        else:
            self._results.append(item)
        waiter = self._consumer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def event(self, event: Event) -> None:
        """A record-level event of this run (counted in the summary)."""
        if isinstance(event, RetryScheduled):
            self.summary.retries += 1
        elif isinstance(event, RateLimitHit):
            self.summary.rate_limited += 1
        self._emit(event)

    def token_event(self, event: Event) -> None:
        """A token-level event (pause, stop): to this run's own hooks, a pause to the summary."""
        if isinstance(event, Paused):
            ends = asyncio.get_running_loop().time() - self._started_at + event.seconds
            self.summary.paused_until = max(self.summary.paused_until, ends)
        Engine.call_hooks(self._hooks, event)

    def finish(self, job: _Job | None, outcome: Outcome) -> None:
        """A record of this run has its outcome."""
        digest = None
        if self._record_hashes:
            known = self._known_hashes
            digest = known.pop(outcome.line, None) if known else None
            if digest is None:
                digest = (
                    record_hash(outcome)
                    if job is None
                    else sent_hash(job.contact_id, job.token_key, job.body)
                )
        if job is not None:
            self._jobs.discard(job)
            if self._side_by_side:
                self._freed(job.lane.key)
        self.summary.add(outcome)
        self._emit(
            RecordFinished(
                outcome=outcome, token_key=job.lane.key if job else None, record_hash=digest
            )
        )
        if not self._closed:
            self._put(outcome)
        elif not self._jobs and self._drained is not None:
            self._drained.set()

    # -- the reader ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._feeder is not None:
            return
        engine = self._engine = self._get_engine()
        if engine.closed:
            raise ClientClosed("the client is closed: it sends nothing more")
        engine.runs.add(self)
        self._started_at = engine.loop.time()
        feed = self._feed_side_by_side(engine) if self._side_by_side else self._feed(engine)
        self._feeder = asyncio.create_task(feed, name="growthhub-reader")

    async def _feed(self, engine: Engine) -> None:
        error: BaseException | None = None
        try:
            position = 0
            records = self._records
            # A plain iterable is read directly: wrapping it in an async generator cost a
            # coroutine step per record for nothing (reading it never waits).
            items = iter(records) if not isinstance(records, AsyncIterable) else None
            aitems = aiter(records) if isinstance(records, AsyncIterable) else None
            while True:
                # Room first, then the item: an item taken from the input always gets an
                # outcome, even when the reader is cancelled while waiting for room.
                while self._free <= 0:
                    self._reader_waits = engine.loop.create_future()
                    try:
                        await self._reader_waits
                    finally:
                        self._reader_waits = None
                self._free -= 1
                if items is not None:
                    item = next(items, _END)
                else:
                    assert aitems is not None
                    item = await anext(aitems, _END)
                if item is _END:
                    break
                position += 1
                self._outstanding += 1
                prepared = engine.prepare(item, position, self._token_key, self)
                if isinstance(prepared, Outcome):
                    self.finish(None, prepared)
                else:
                    self._jobs.add(prepared)
                    engine.enqueue(prepared)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (the caller's input; re-raised to the consumer)
            error = exc
        finally:
            self._put(_FeedDone(error))

    # -- the side-by-side reader (issue 13) -------------------------------------------------

    def _room(self, key: str) -> bool:
        """Whether a record of ``key`` may be held in memory now."""
        return self._load.get(key, 0) < self._max_pending and self._alive < max(
            self._max_held, 2 * len(self._load)
        )

    def _admit(self, engine: Engine, job: _Job) -> None:
        key = job.lane.key
        self._load[key] = self._load.get(key, 0) + 1
        self._alive += 1
        self._outstanding += 1
        self._jobs.add(job)
        engine.enqueue(job)

    def _freed(self, key: str) -> None:
        """A record of ``key`` is over: room for a spilled one of it (or of another token)."""
        self._alive -= 1
        left = self._load[key] - 1
        # The token stays known while it has spilled records: it keeps its turn and its share.
        if left or (self._spill is not None and self._spill.count(key)):
            self._load[key] = left
        else:
            del self._load[key]
        if self._spill is not None and self._spill.count(key) and key not in self._in_turns:
            self._turns.append(key)
            self._in_turns.add(key)
        if self._wake is not None:
            self._wake.set()

    def _spill_job(self, job: _Job) -> None:
        if self._spill is None:
            from growthhub_async.spill import Spill  # noqa: PLC0415

            self._spill = Spill(self._spill_dir)
        key = job.lane.key
        self._spill.push(key, _spilled((job.line, job.contact_id, job.token_key, key, job.body)))
        self._load.setdefault(key, 0)
        if key not in self._in_turns:
            self._turns.append(key)
            self._in_turns.add(key)

    def _take_turns(self, engine: Engine) -> None:
        """Admit spilled records, one per token in turn, while there is room."""
        spill = self._spill
        turns = self._turns
        while turns and spill is not None and not self._input_stopped:
            key = turns[0]
            if self._load.get(key, 0) >= self._max_pending:
                turns.popleft()  # full: it gets its turn back when one of its records ends
                self._in_turns.discard(key)
                continue
            if not self._room(key):
                return  # no room at all: wait for a record to end
            turns.popleft()
            payload = spill.pop(key)
            if payload is None:
                self._in_turns.discard(key)
                continue
            line, contact_id, token_key, lane_key, body = _unspilled(payload)
            lane = engine.lanes[lane_key]
            self._admit(engine, _Job(line, contact_id, body, lane, self, token_key=token_key))
            if spill.count(key):
                turns.append(key)
            else:
                self._in_turns.discard(key)

    async def _read_batch(
        self,
        engine: Engine,
        items: Iterator[RecordInput] | None,
        aitems: AsyncIterator[RecordInput] | None,
    ) -> bool:
        """Read up to ``_BATCH`` records: each held, spilled or rejected; ``False`` at the end."""
        for _ in range(_BATCH):
            if items is not None:
                item = next(items, _END)
            else:
                assert aitems is not None
                item = await anext(aitems, _END)
            if item is _END:
                return False
            self._position += 1
            prepared = engine.prepare(item, self._position, self._token_key, self)
            if isinstance(prepared, Outcome):
                self._outstanding += 1
                self.finish(None, prepared)
            elif prepared.lane.key not in self._in_turns and self._room(prepared.lane.key):
                self._admit(engine, prepared)
            else:
                self._spill_job(prepared)
            if self._input_stopped:
                break
        return True

    async def _feed_side_by_side(self, engine: Engine) -> None:
        self._wake = wake = asyncio.Event()
        error: BaseException | None = None
        try:
            records = self._records
            items = iter(records) if not isinstance(records, AsyncIterable) else None
            aitems = aiter(records) if isinstance(records, AsyncIterable) else None
            reading = True
            while not self._input_stopped:
                wake.clear()
                self._take_turns(engine)
                if reading and len(self._results) < self._max_held:
                    reading = await self._read_batch(engine, items, aitems)
                    await asyncio.sleep(0)  # the workers' turn (a plain iterable never waits)
                    continue
                if not reading and (self._spill is None or not self._spill.total):
                    break
                await wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (the caller's input; re-raised to the consumer)
            error = exc
        finally:
            if self._spill is not None:
                self._spill.close()
            self._put(_FeedDone(error))

    def left_by_token(self) -> dict[str, int]:
        """Records read and not finished, by token key (held in memory or spilled): the
        locations at work, for a progress display. Side by side only (else empty)."""
        spill = self._spill
        return {
            key: load + (spill.count(key) if spill is not None else 0)
            for key, load in self._load.items()
        }

    def stop_input(self) -> None:
        """Read no more records and admit no spilled ones; records taken go on to their end.

        Records still in the spill file count as never read (no outcome): a resumed job sends
        them. Without ``side_by_side``, the same as the input ending here.
        """
        self._input_stopped = True
        if self._wake is not None:
            self._wake.set()

    def stop_reading(self) -> asyncio.Task[None] | None:
        """Cancel the reader (the engine is closing); returns it for awaiting."""
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()
            return self._feeder
        return None

    # -- the consumer ----------------------------------------------------------------------

    def __aiter__(self) -> OutcomeStream:
        return self

    async def __anext__(self) -> Outcome:
        if self._closed:
            raise StopAsyncIteration
        self._start()
        results = self._results
        try:
            while True:
                if self._feed_done and self._outstanding == 0:
                    self._end()
                    if self._feed_error is not None:
                        error, self._feed_error = self._feed_error, None
                        raise error
                    raise StopAsyncIteration
                if not results:
                    if self._consumer is not None:
                        raise RuntimeError("this stream is being read by another task already")
                    assert self._engine is not None
                    self._consumer = self._engine.loop.create_future()
                    try:
                        await self._consumer
                    finally:
                        self._consumer = None
                    continue  # an outcome, the reader's end, or (drain) the last outcome out
                item = results.popleft()
                if isinstance(item, _FeedDone):
                    self._feed_done = True
                    self._feed_error = item.error
                    continue
                self._taken()
                return item
        except asyncio.CancelledError:
            await self.aclose()
            raise

    def _taken(self) -> None:
        """An outcome is out of the stream: room for the reader."""
        self._outstanding -= 1
        self._free += 1
        reader = self._reader_waits
        if reader is not None and not reader.done():
            reader.set_result(None)
        if self._wake is not None:
            self._wake.set()  # room in the results: the reader may go on

    async def drain(self) -> None:
        """Run to the end without yielding the outcomes: for a caller that needs only the
        hooks (a journal) and the :attr:`summary`. Outcomes go nowhere else, so the stream
        costs less per record than ``async for`` (issue 17). Ends as iterating would: the
        input's error is raised, a cancellation stops the run (:meth:`aclose`)."""
        self._discard = True
        async for _ in self:
            pass

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
        self.finished()

    def finished(self) -> None:
        """The run is over (its records all have outcomes): ``RunFinished``, once.

        Also called by the engine as the client closes, for a run left without ``aclose`` (a
        ``break`` out of the loop without ``async with``): its outcomes may still be read."""
        if self._engine is not None and self in self._engine.runs:
            self._engine.runs.discard(self)
            self.summary.elapsed = asyncio.get_running_loop().time() - self._started_at
            self._emit(RunFinished(summary=self.summary))

    def stop(self) -> None:
        """Take no more records and send no more requests; let those on the wire finish.

        The reader stops; every record of this run that has no request on the wire (queued,
        waiting for its budget or for a retry) ends ``failed`` (``"cancelled"``) at once, and so
        does a record whose answer comes back asking for more (a retry, a token refresh and
        re-send): no request goes after the stop. The stream then ends once the requests on the
        wire are answered. For a graceful stop on
        SIGTERM; :meth:`aclose` ends those on the wire too, at once (their requests finish in
        the background, or are cut by the client's ``close()``). Records still in a spill file
        are not read (:meth:`stop_input`): no outcome, a resumed job sends them.
        """
        self.stop_input()
        if self._feeder is None or self._closed:
            return
        assert self._engine is not None
        self.halted = (Status.FAILED, CANCELLED)
        if not self._feeder.done():
            self._feeder.cancel()
        for job in list(self._jobs):
            if not job.on_wire:
                self._engine.cancel_job(job)

    async def aclose(self) -> None:
        """Stop the run; every record read ends with an outcome (see the class docstring)."""
        if self._closed:
            return
        self._closed = True
        if self._feeder is None:
            return
        assert self._engine is not None
        if not self._feeder.done():
            self._feeder.cancel()
            await asyncio.wait((self._feeder,))
        self._drained = asyncio.Event()
        for job in list(self._jobs):
            self._engine.cancel_job(job)
        if self._jobs:
            await self._drained.wait()
        self._end()

    async def __aenter__(self) -> OutcomeStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
