"""The bulk job behind ``growthhub-async update`` (and ``demo``): an input file in, a journal out.

:func:`run_job` streams the input (:func:`~growthhub_async.sources.open_source`), hands every
item to :meth:`GrowthHubClient.update_contacts` and writes each outcome to the journal
(:class:`~growthhub_async.journal.Journal`) the moment it exists: from the run's
``RecordFinished`` hook, which the engine calls for every record, rejected and cancelled ones
included. Writing from the hook rather than from the stream's iteration means that records ended
by a stop (``failed``, ``"cancelled"``) are journaled too, and that the window between "the
server has it" and "the journal has it" is as short as it can be: only requests in flight.

Stopping. On SIGINT or SIGTERM the job stops reading the input, lets the records already taken
finish for up to ``grace`` seconds (a second signal cuts that short), then cancels what is left
(those end ``failed``, ``"cancelled"``, and a resumed run sends them again), closes the journal
and says how to resume. The reader takes at most a few records per worker ahead of the
workers, so "already taken" is a handful, not thousands.

Exit statuses: :data:`EXIT_OK` (every record updated; with ``dry_run``, every record valid),
:data:`EXIT_NOT_ALL` (some record was not, or the run was interrupted), :data:`EXIT_FATAL`
(usage or fatal errors, which :func:`run_job` raises as
:class:`~growthhub_async.errors.GrowthHubError` before anything is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, TypeAlias, cast

from growthhub_async.auth import TokenProvider
from growthhub_async.client import DEFAULT_BASE_URL, GrowthHubClient
from growthhub_async.cmdline import Terminal, isatty
from growthhub_async.errors import ConfigurationError, GrowthHubError, InputError
from growthhub_async.eventloop import running_loop_name
from growthhub_async.events import Event, RateLimitHit, RecordFinished, listens
from growthhub_async.journal import (
    Journal,
    ResumeState,
    RunFacts,
    load_resume_state,
    record_hash,
)
from growthhub_async.locations import shard_of
from growthhub_async.logs import RUN_ID, current_run_id, new_run_id
from growthhub_async.models import CustomFieldValueKey, UpdateContactCodec
from growthhub_async.outcomes import FINAL_STATUSES, SUCCEEDED, Outcome, Status, Summary
from growthhub_async.progress import (
    LocationStats,
    format_duration,
    render_bar,
    render_line,
    render_location_progress,
    render_locations,
    render_summary,
)
from growthhub_async.ratelimit import Rate
from growthhub_async.redact import Redactor
from growthhub_async.sources import Item, Record, Source, count_records, open_source, same_file

if TYPE_CHECKING:  # imported where --state is given: sqlite3 costs every other run's start-up
    from growthhub_async.incremental import StateRun
    from growthhub_async.state import SyncState

__all__ = [
    "EXIT_FATAL",
    "EXIT_NOT_ALL",
    "EXIT_OK",
    "TOKEN_ENV",
    "JobResult",
    "JobSettings",
    "ProgressMode",
    "run_job",
    "token_from_environment",
]

EXIT_OK: Final = 0
EXIT_NOT_ALL: Final = 1
EXIT_FATAL: Final = 2

TOKEN_ENV: Final = "GROWTHHUB_TOKEN"  # noqa: S105 (the variable's name, not a secret)

ProgressMode: TypeAlias = Literal["auto", "bar", "line", "off"]
"""``auto``: a live bar when stderr is a terminal, else a plain line now and then."""

_BAR_EVERY: Final = 0.2  # seconds between two redraws of the live bar
_REJECTED_SHOWN: Final = 20  # a dry run lists this many rejected records, then counts the rest
_SAME_STDIN: Final = "  with the same records on its standard input again (INPUT was -)"
_CHECK_EVERY: Final = 0.5  # seconds between two checks of the journal while a run waits
_PROBLEMS_SHOWN: Final = 5  # a live run's summary lists this many records not updated
DAILY_BUDGET: Final = 200_000
"""Requests per location per day that the API allows (../shared/contract/README.md)."""


def token_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """The API token from ``GROWTHHUB_TOKEN``; :class:`ConfigurationError` when it is not set.

    Never from argv: ``ps`` shows every process's arguments to every user of the machine.
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigurationError(
            f"no token: set the {TOKEN_ENV} environment variable to your API token "
            "(it is never read from the command line)"
        )
    return token


@dataclass(frozen=True, slots=True)
class JobSettings:
    """What a bulk job does; the command line's options, already parsed."""

    input: str
    """The input file (``.jsonl``, ``.ndjson``, ``.csv``) or ``-`` for standard input (JSONL)."""
    out: str
    """The outcome journal (JSONL, one line per record)."""
    base_url: str = DEFAULT_BASE_URL
    rate: Rate | None = field(default_factory=lambda: Rate(100, 10.0))
    concurrency: int = 10
    value_key: CustomFieldValueKey = "field_value"
    resume: bool = False
    dry_run: bool = False
    progress: ProgressMode = "auto"
    progress_every: float = 5.0
    """Seconds between two plain progress lines (the live bar redraws far more often)."""
    grace: float = 10.0
    """Seconds that records in flight get to finish after SIGINT/SIGTERM."""
    resume_command: str | None = None
    """The shell command that resumes this run, printed when it is interrupted."""
    handle_signals: bool = True
    """Install SIGINT/SIGTERM handlers on the running loop for the job's duration."""
    token_hint: str | None = None
    """Where the token came from, named when it is refused (default: ``GROWTHHUB_TOKEN``)."""
    state: str | None = None
    """The sync state file (issue 14): records whose body was applied already are not sent."""
    full: bool = False
    """With ``state``: send every record this once (what is applied is still recorded)."""
    changed_fields_only: bool = False
    """With ``state``: send only the fields that differ from the body last applied."""
    shard: tuple[int, int] | None = None
    """``(K, N)``: send only the records of locations that :func:`~growthhub_async.locations.
    shard_of` puts in shard K of N; records without a location, and lines rejected before
    their location is known, belong to shard 0 (so each is reported once)."""
    spill_dir: str | None = None
    """Where a run over many locations spills the records waiting for their location (an
    unlinked temporary file; ``None``: the system's temporary folder). The command line gives
    the folder of ``out``, where there is room for outcomes (``/tmp`` may be memory)."""


@dataclass(slots=True)
class JobResult:
    """How a job ended."""

    exit_status: int
    summary: Summary
    interrupted: bool = False
    skipped: int = 0
    """Records skipped by ``resume`` (their last outcome in the journal is final)."""
    valid: int = 0
    """With ``dry_run``: records that would have been sent."""
    unchanged: int = 0
    """With ``dry_run`` and a state: records that would not be sent (same body applied)."""
    skipped_by_status: Counter[Status] = field(default_factory=Counter)
    """Records skipped by ``resume``, by the final status the journal holds for them (the
    whole job's counts are these plus ``summary.by_status``)."""
    by_location: dict[str, LocationStats] = field(default_factory=dict)
    """Per location (token key), when the run has locations: the summary's table."""
    other_shards: int = 0
    """With ``shard``: records left to the other shards."""


class _Reader:
    """The input as the engine reads it: resume's skips, and a stop switch for signals.

    The resume key of each record (:func:`~growthhub_async.journal.record_hash` over the body
    as it will be sent) is computed here only to skip what the journal holds as final; the
    key journaled with an outcome comes with its ``RecordFinished`` event, from the engine,
    so nothing is kept per record, however far a side-by-side run reads ahead.
    """

    def __init__(
        self,
        source: Source,
        state: ResumeState | None,
        value_key: CustomFieldValueKey,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        self.state = state
        self.shard = shard
        self.other_shards = 0
        """Records left to the other shards."""
        self.encode = UpdateContactCodec(value_key).encode
        self.skipped: Counter[Status] = Counter()
        """Records skipped by resume, by the final status the journal holds for them."""
        self.stopped = False

    def __iter__(self) -> Iterator[Item]:
        state = self.state
        encode = self.encode
        shard = self.shard
        for item in self.source:
            if self.stopped:
                # Not taken: this record has no outcome yet, so a resumed run sends it.
                return
            if shard is not None and _shard_of_item(item, shard[1]) != shard[0]:
                self.other_shards += 1
                continue
            if state is not None and state.skips(item, record_hash(item, encode)):
                self.skipped[state.final_status(item.line) or Status.UPDATED] += 1
                continue
            yield item

    @property
    def skipped_count(self) -> int:
        """How many records resume skipped."""
        return self.skipped.total()


def _shard_of_item(item: Item, shards: int) -> int:
    """The shard of an input item: its location's, else 0 (see ``JobSettings.shard``)."""
    key = item.token_key if isinstance(item, Record) else None
    return shard_of(key, shards) if key is not None else 0


class _Progress:
    """Draws the live bar or the plain line on stderr; the caller owns the clock."""

    def __init__(
        self, mode: ProgressMode, stream: TextIO, every: float, rate: Rate | None = None
    ) -> None:
        if mode == "auto":
            mode = "bar" if isatty(stream) else "line"
        self.mode = mode
        self.stream = stream
        self.every = _BAR_EVERY if mode == "bar" else every
        self.total: int | None = None
        self.rate = rate
        """The run's limit, per token: the ETA is never sooner than it lets records through."""
        self.tokens = 1
        """The tokens (locations) the run has used so far, each with its own limit."""
        self._drawn = False

    def draw(self, summary: Summary, extra: str | None = None) -> None:
        """Redraw; ``extra`` (the locations at work) follows when there is room for it."""
        if self.mode == "bar":
            width = shutil.get_terminal_size((100, 24)).columns - 1
            line = render_bar(summary, self.total, width, rate=self.rate, tokens=self.tokens)
            if extra and len(line) + 2 + len(extra) <= width:
                line += "  " + extra
            # \r and "erase to end of line": one line redrawn in place, never wrapped.
            self.stream.write("\r\x1b[K" + line)
            self._drawn = True
        elif self.mode == "line":
            line = render_line(summary, self.total, rate=self.rate, tokens=self.tokens)
            self.stream.write(line + (f"; {extra}" if extra else ""))
            self.stream.write("\n")
        self.stream.flush()

    def end(self, summary: Summary) -> None:
        if self.mode == "bar":
            self.draw(summary)
            self.stream.write("\n")
            self.stream.flush()


async def run_job(
    settings: JobSettings,
    *,
    token: str | TokenProvider | None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    client_options: Mapping[str, Any] | None = None,
    stop: asyncio.Event | None = None,
    log_redactor: Redactor | None = None,
    run_id: str | None = None,
) -> JobResult:
    """Run one bulk job; print progress on ``stderr`` and the summary on ``stdout``.

    ``token`` (a string or a :class:`~growthhub_async.auth.TokenProvider`, such as an OAuth
    provider) may be ``None`` only for a dry run. ``client_options`` are passed on to
    :class:`GrowthHubClient` (for instance ``tokens=`` or a retry policy); ``log_redactor``
    learns the client's secrets (the command line's log handler redacts with it). Raises
    :class:`~growthhub_async.errors.GrowthHubError` (input, journal or configuration problems)
    before any request is sent. ``stop``, once set, stops the job as SIGTERM does (for a
    job run where signals cannot reach it: a shard on a Dask worker). ``run_id`` is the
    run's id (:data:`~growthhub_async.logs.RUN_ID`) for this job: the coordinator's, for a
    shard, so that its journal and the coordinator's logs carry one id.
    """
    if run_id is not None:  # as _send sets one when none is set: for the task's duration
        RUN_ID.set(run_id)
    out = cast(TextIO, Terminal(stdout if stdout is not None else sys.stdout))
    err = cast(TextIO, Terminal(stderr if stderr is not None else sys.stderr))
    if (settings.full or settings.changed_fields_only) and not settings.state:
        raise ConfigurationError("--full and --changed-fields-only need --state FILE")
    source = open_source(settings.input, settings.value_key)
    with source:
        _check_files(settings, source)
        if settings.dry_run:
            return await _dry_run(settings, source, out, err)
        options: dict[str, Any] = {
            "base_url": settings.base_url,
            "rate": settings.rate,
            "concurrency": settings.concurrency,
            "value_key": settings.value_key,
            # A few records per worker ahead is enough to keep them busy; more would only be
            # records that a stop must cancel rather than leave unread.
            "max_pending": max(16, 2 * settings.concurrency),
        }
        options.update(client_options or {})
        if settings.state:
            from growthhub_async.state import SyncState  # noqa: PLC0415
        sync_state = SyncState(settings.state) if settings.state else None
        if sync_state is not None:
            options["state"] = sync_state  # the job opens and closes it
        if token is not None and "tokens" not in options:
            options["token"] = token
        if token is None and "tokens" not in options and "locations" not in options:
            raise ConfigurationError("no token: a live run needs one")
        client = GrowthHubClient(**options)  # checks the base URL and the token's shape
        if log_redactor is not None:
            log_redactor.include(client.redactor)
        # Locked before its state is read: no other run can write between the two.
        journal = Journal(settings.out, resume=settings.resume)
        state = journal.resume_state
        if not journal.regular:
            err.write(
                f"warning: the outcomes go to {settings.out!r}, which is not a regular file: "
                "they cannot be read back, so this run cannot be resumed\n"
            )
        try:
            if sync_state is not None:
                await sync_state.open()  # a file that is not ours fails here, nothing sent
            async with client:
                return await _send(
                    settings,
                    source=source,
                    state=state,
                    journal=journal,
                    sync_state=sync_state,
                    client=client,
                    out=out,
                    err=err,
                    stop=stop,
                )
        finally:
            journal.close()
            if sync_state is not None:
                await sync_state.close()


def _check_files(settings: JobSettings, source: Source) -> None:
    """The input, OUTCOMES and the state must be three files, whatever their names (links)."""
    if source.is_file(settings.out):
        # Each outcome appended would be read back as one more record, for ever.
        raise InputError(
            f"--out {settings.out!r} is the input itself: choose another file for the outcomes"
        )
    if settings.state is None:
        return
    if source.is_file(settings.state):
        raise InputError(
            f"--state {settings.state!r} is the input itself: choose another file for the state"
        )
    if same_file(settings.state, settings.out):
        # SQLite and the journal would write over each other, and no resume could follow.
        raise InputError(
            f"--state {settings.state!r} is the outcomes file (--out): choose another file for"
            " the state"
        )


async def _dry_run(settings: JobSettings, source: Source, out: TextIO, err: TextIO) -> JobResult:
    """Validate every record, send nothing, count, and estimate the real run's duration; with a
    state, judge every record against it (read-only, no lock) and count the unchanged ones."""
    state = load_resume_state(settings.out) if settings.resume else None
    reader = _Reader(source, state, settings.value_key, settings.shard)
    summary = Summary()
    valid = 0
    shown = 0
    if settings.state:
        from growthhub_async.incremental import StateRun  # noqa: PLC0415
        from growthhub_async.state import SyncState  # noqa: PLC0415
    sync_state = SyncState(settings.state, readonly=True) if settings.state else None
    run = (
        StateRun(
            sync_state,
            full=settings.full,
            changed_fields_only=settings.changed_fields_only,
            track=False,
            server=settings.base_url,
        )
        if sync_state is not None
        else None
    )
    try:
        async for item in _items(reader, run):
            if isinstance(item, Outcome):
                summary.add(item)
                if item.status is Status.REJECTED:
                    if shown < _REJECTED_SHOWN:
                        err.write(f"rejected: {item.error}\n")
                    shown += 1
            else:
                valid += 1
    finally:
        if sync_state is not None:
            await sync_state.close()
    if shown > _REJECTED_SHOWN:
        err.write(f"rejected: ... and {shown - _REJECTED_SHOWN} more\n")
    _dry_run_report(
        settings,
        summary,
        valid=valid,
        skipped=reader.skipped_count,
        other_shards=reader.other_shards,
        run=run,
        out=out,
    )
    rejected = summary.by_status[Status.REJECTED]
    status = EXIT_OK if rejected == 0 else EXIT_NOT_ALL
    unchanged = summary.by_status[Status.UNCHANGED]
    return JobResult(
        status, summary, skipped=reader.skipped_count, valid=valid, unchanged=unchanged
    )


def _dry_run_report(
    settings: JobSettings,
    summary: Summary,
    *,
    valid: int,
    skipped: int,
    other_shards: int,
    run: StateRun | None,
    out: TextIO,
) -> None:
    """The dry run's counts, the time the sending would take and, with a state, its share of
    a location's daily budget."""
    rejected = summary.by_status[Status.REJECTED]
    unchanged = summary.by_status[Status.UNCHANGED]
    rows = [("valid (would be sent)", valid), ("rejected", rejected)]
    if run is not None:
        rows.insert(0, ("unchanged (not sent)", unchanged))
    rows.append(("total", valid + rejected + unchanged))
    if skipped:
        rows.insert(0, ("skipped (final in outcomes)", skipped))
    if settings.shard is not None:
        rows.insert(0, ("in other shards (not read)", other_shards))
    width = max(len(name) for name, _ in rows)
    out.write("dry run: nothing was sent\n")
    out.writelines(f"  {name:<{width}}  {count:>7}\n" for name, count in rows)
    if settings.rate is not None:
        seconds = valid * settings.rate.window / settings.rate.requests
        out.write(
            f"  at {settings.rate} the real run needs about {format_duration(seconds)} "
            f"for {valid} requests (more if the server asks for retries)\n"
        )
    if run is not None:
        busiest = max(run.to_send.values(), default=0)
        where = "the busiest location's" if len(run.to_send) > 1 else "a location's"
        out.write(
            f"  daily budget: {busiest} requests are {busiest / DAILY_BUDGET:.1%} of {where} "
            f"{DAILY_BUDGET:,} a day\n"
        )
        if run.state.missing:
            out.write(f"  note: {settings.state} does not exist yet: every record would be sent\n")
    if not settings.resume and _non_empty(settings.out):
        out.write(
            f"  note: {settings.out} already holds outcomes: the real run needs --resume "
            "or another --out\n"
        )
    out.flush()


async def _items(reader: _Reader, run: StateRun | None) -> AsyncIterator[Item]:
    """The reader's items, judged against the state when there is one."""
    if run is None:
        for item in reader:
            yield item
        return
    async for judged in run.filter(reader):
        yield judged


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


async def _send(  # noqa: PLR0912, PLR0915 (one linear story: start, watch, stop)
    settings: JobSettings,
    *,
    source: Source,
    state: ResumeState | None,
    journal: Journal,
    sync_state: SyncState | None,
    client: GrowthHubClient,
    out: TextIO,
    err: TextIO,
    stop: asyncio.Event | None = None,
) -> JobResult:
    loop = asyncio.get_running_loop()
    run_id = current_run_id()
    if run_id is None:  # the command line sets it; a job run from Python gets its own
        run_id = new_run_id()
        RUN_ID.set(run_id)
    reader = _Reader(source, state, settings.value_key, settings.shard)
    journal_error: list[BaseException] = []
    consumer: asyncio.Task[None] | None = None

    problems: list[Outcome] = []
    # By location (token key) when the run has locations: the summary's table (issue 13).
    many = client.locations is not None or len(client.token_keys) > 1
    by_location: dict[str, LocationStats] = {}

    limited: dict[tuple[str | None, int], int] = {}  # 429s per record in flight (journal)
    updated = Status.UPDATED  # named once: an enum member's lookup is no cheap one (issue 17)

    @listens(RateLimitHit, RecordFinished)
    def on_event(event: Event) -> None:
        if isinstance(event, RateLimitHit):
            where = (event.token_key, event.line)
            limited[where] = limited.get(where, 0) + 1
        if not isinstance(event, RecordFinished) or journal_error:
            return
        outcome = event.outcome
        facts = RunFacts(  # positional: a struct's keywords cost more to match (issue 17)
            event.token_key,  # location
            round(time.time() * 1000) / 1000,  # at (round(t, 3) costs 3,000 instructions)
            limited.pop((event.token_key, outcome.line), 0) if limited else 0,  # rate_limited
            run_id,
        )
        if outcome.status not in SUCCEEDED and len(problems) < _PROBLEMS_SHOWN:
            problems.append(outcome)
        if many and event.token_key is not None:
            stats = by_location.get(event.token_key)
            if stats is None:
                stats = by_location[event.token_key] = LocationStats()
            stats.records += 1
            stats.updated += outcome.status is updated
            stats.last = loop.time() - started
        try:
            journal.write(outcome, event.record_hash, facts=facts)
        except (OSError, ValueError, GrowthHubError) as exc:
            # The engine swallows a hook's exception; a journal that cannot be written must
            # stop the run instead, or outcomes would be lost.
            journal_error.append(exc)
            if consumer is not None:
                consumer.cancel()

    # With a state, the client judges the records and remembers what is applied: in a hook
    # of its own after this one, so the state never holds a record the journal does not.
    stream = client.update_contacts(
        reader,
        hooks=[on_event],
        full=settings.full,
        changed_fields_only=settings.changed_fields_only,
        record_hashes=True,
        spill_dir=settings.spill_dir,
    )
    summary = stream.summary
    progress = _Progress(settings.progress, err, settings.progress_every, settings.rate)
    # The total serves the display only: not counted (a pass over the input) when it is off.
    counting: asyncio.Future[int | None] = loop.create_future()
    if progress.mode == "off":
        counting.set_result(None)
    else:
        counting = asyncio.ensure_future(asyncio.to_thread(count_records, settings.input))
    started = loop.time()

    async def drain() -> None:
        async with stream:
            await stream.drain()

    consumer = asyncio.create_task(drain(), name="growthhub-job")
    interrupted = False
    cutoff: asyncio.TimerHandle | None = None

    def on_signal(signum: int) -> None:
        nonlocal interrupted, cutoff
        assert consumer is not None
        if interrupted:  # the second signal: stop waiting
            err.write(f"\n{signal.Signals(signum).name} again: cancelling what is in flight\n")
            if sync_state is not None:
                sync_state.stop_waiting(0.0)
            consumer.cancel()
            return
        interrupted = True
        reader.stopped = True
        stream.stop()  # records not on the wire end "cancelled", spilled ones are not read: a
        # resumed run sends them
        if sync_state is not None:  # a lock another program holds must not outlast the grace
            sync_state.stop_waiting(settings.grace)
        err.write(
            f"\n{signal.Signals(signum).name}: reading no more records; waiting up to "
            f"{settings.grace:g}s for those in flight (signal again to stop at once)\n"
        )
        err.flush()
        cutoff = loop.call_later(settings.grace, consumer.cancel)

    signals = (signal.SIGINT, signal.SIGTERM) if settings.handle_signals else ()
    installed = []
    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows' loops
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    watcher: asyncio.Task[None] | None = None
    if stop is not None:

        async def watch(event: asyncio.Event) -> None:
            await event.wait()
            on_signal(signal.SIGTERM)

        watcher = asyncio.create_task(watch(stop), name="growthhub-job-stop")
    failure: BaseException | None = None
    try:
        next_draw = started + progress.every
        while True:
            # Wake at least twice a second: the journal is checked even while no record ends
            # (slow answers, a pause), so a deleted or overwritten file stops the run in time.
            done, _ = await asyncio.wait((consumer,), timeout=min(progress.every, _CHECK_EVERY))
            if counting.done() and progress.total is None and settings.shard is None:
                total = counting.result()
                progress.total = (
                    total - len(state) if total is not None and state is not None else total
                )
            now = loop.time()
            summary.elapsed = now - started
            if done:
                break
            _check_journal(journal, journal_error, sync_state)
            if journal_error:
                consumer.cancel()
            if now >= next_draw:
                next_draw = now + progress.every
                extra = None
                if many:
                    progress.tokens = max(1, len(by_location))
                    left = stream.left_by_token()
                    extra = render_location_progress(left, len(set(by_location) - set(left)))
                progress.draw(summary, extra)
        with contextlib.suppress(asyncio.CancelledError):
            consumer.result()
    except (GrowthHubError, OSError) as exc:  # the input failed mid-way (a read error)
        failure = exc
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if watcher is not None:
            watcher.cancel()
        if cutoff is not None:
            cutoff.cancel()
        if not consumer.done():
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        if not counting.done():
            counting.cancel()
        if sync_state is not None and not journal_error:
            # What the last records applied is committed before the summary says "done".
            with contextlib.suppress(GrowthHubError):
                await sync_state.flush()
        _check_journal(journal, journal_error, sync_state)
        journal.close()
    summary.elapsed = summary.elapsed or loop.time() - started
    ended = not (interrupted or consumer.cancelled() or failure or journal_error)
    if progress.total is None and settings.shard is None and ended:
        progress.total = summary.records  # the input was read to its end before it was counted
    progress.end(summary)
    if journal_error:
        # Before the input's own failure: without a journal, nothing else is recorded.
        failure = _journal_failure(settings, journal_error[0])
    if settings.shard is not None:
        k, n = settings.shard
        out.write(f"shard {k}/{n}: {reader.other_shards} records belong to other shards\n")
    if many and by_location:
        out.write("by location:\n" + render_locations(by_location) + "\n")
    result = _report(
        settings,
        summary,
        state,
        tokens=max(1, len(by_location)),
        skipped=reader.skipped,
        other_shards=reader.other_shards,
        problems=problems,
        interrupted=interrupted or consumer.cancelled(),
        failure=failure,
        out=out,
        err=err,
    )
    # What a sharded run (growthhub_async.distributed) adds up over its shards.
    result.skipped_by_status = reader.skipped
    result.by_location = by_location
    result.other_shards = reader.other_shards
    return result


def _check_journal(
    journal: Journal, errors: list[BaseException], sync_state: SyncState | None = None
) -> None:
    """A journal deleted, truncated or overwritten fails the run, even after its last line;
    so does a state that could not record what was applied (a full disk)."""
    if not errors:
        try:
            journal.check()
            if sync_state is not None:
                sync_state.check()
        except GrowthHubError as exc:
            errors.append(exc)


def _journal_failure(settings: JobSettings, exc: BaseException) -> GrowthHubError:
    """The error that ends a run whose journal cannot be written (a full disk, a deletion)."""
    if isinstance(exc, GrowthHubError):
        return exc
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return GrowthHubError(
        f"cannot write outcomes {settings.out!r}: {reason}; the run stopped (records without"
        " an outcome line are sent again on resume)"
    )


def _report(
    settings: JobSettings,
    summary: Summary,
    state: ResumeState | None,
    *,
    tokens: int = 1,
    skipped: Counter[Status],
    other_shards: int = 0,
    problems: Sequence[Outcome],
    interrupted: bool,
    failure: BaseException | None,
    out: TextIO,
    err: TextIO,
) -> JobResult:
    """Print the summary (with ``--resume``, the whole job's totals beside this run's), the
    first problems and what to do next, the warnings and, when the run did not end, how to
    resume it. After a resume, the exit status speaks for the whole job."""
    skipped_count = skipped.total()
    whole_job = skipped + summary.by_status if state is not None else None
    if skipped_count:
        out.write(f"skipped {skipped_count} records already final in {settings.out}\n")
    out.write(
        render_summary(
            summary,
            rate=settings.rate,
            outcomes=os.path.abspath(settings.out),
            whole_job=whole_job,
            tokens=tokens,
        )
        + f"\n  event loop: {running_loop_name()}\n"
    )
    counts = whole_job if whole_job is not None else summary.by_status
    # Final lines of the journal that this input never reached (a shorter or another file, an
    # empty standard input): the whole job cannot be called done.
    unseen = 0
    if state is not None:
        unseen = len(state) - skipped_count - state.mismatched - state.reordered
    succeeded = sum(counts[s] for s in SUCCEEDED)
    all_updated = counts.total() == succeeded and unseen <= 0
    if counts.total() != succeeded and failure is None and not interrupted:
        out.writelines(f"{line}\n" for line in _next_steps(settings, counts, problems))
    out.flush()
    _warnings(summary, state, err, settings.token_hint or TOKEN_ENV)
    if unseen > 0 and failure is None and not interrupted:
        err.write(
            f"warning: {unseen} records final in {settings.out} were not in this input (a"
            " shorter or another file?): they are not in the whole job's totals\n"
        )
    if not summary.records and not skipped_count and failure is None and not interrupted:
        if other_shards and settings.shard is not None:
            # Not an empty input: every record belongs to another shard (a Dask shard whose
            # hash drew no location of this file). Nothing to warn about.
            k, n = settings.shard
            err.write(
                f"note: all {other_shards} records of {settings.input} belong to other shards"
                f" than {k}/{n}: nothing to send here\n"
            )
        else:
            err.write(f"warning: {settings.input} holds no records: nothing was sent\n")
    if failure is not None:
        err.write(f"error: {failure}\n")
        _resume_hint(settings, err)
        return JobResult(EXIT_FATAL, summary, interrupted, skipped_count)
    if interrupted:
        err.write("interrupted: records not yet done have no final outcome.\n")
        _resume_hint(settings, err)
        return JobResult(EXIT_NOT_ALL, summary, True, skipped_count)
    status = EXIT_OK if all_updated else EXIT_NOT_ALL
    return JobResult(status, summary, False, skipped_count)


# The last outcome of each input line that is not `updated`: a journal appended to by several
# runs holds earlier outcomes of lines that a later run updated.
_JQ_NOT_UPDATED: Final = (
    "jq -c -n 'reduce inputs as $o ({}; .[$o.line|tostring] = $o) | .[] "
    '| select(.status != "updated" and .status != "unchanged")\''
)


def _next_steps(
    settings: JobSettings, counts: Counter[Status], problems: Sequence[Outcome]
) -> list[str]:
    """How many records were not updated, the first of this run's, where every one of them
    is, and what to run next."""
    not_updated = counts.total() - sum(counts[s] for s in SUCCEEDED)
    lines = [f"{not_updated} of {counts.total()} records were not updated"]
    if problems:
        lines[0] += f"; the first {len(problems)} of this run:"
    for o in problems:
        # A rejected record's error already starts with its line; say it once.
        error = (o.error or "").removeprefix(f"line {o.line}: ")
        http = f", HTTP {o.http_status}" if o.http_status is not None else ""
        lines.append(f"  line {o.line} ({o.status}{http}): {error}")
    lines.append("every one of them, from the outcomes:")
    # jq takes a name that starts with "-" for an option: "./-x" is the same file.
    out_name = f"./{settings.out}" if settings.out.startswith("-") else settings.out
    lines.append(f"  {_JQ_NOT_UPDATED} {shlex.quote(out_name)}")
    if settings.resume_command is None:
        return lines
    if any(counts[s] for s in FINAL_STATUSES - SUCCEEDED):
        lines.append(
            "next: fix those records in the input (a rejected, invalid, bad_request or "
            "not_found record is sent again only once its line has changed), then:"
        )
    else:
        lines.append("next: send the failed and refused records again (and only those):")
    lines.append(f"  {settings.resume_command}")
    if settings.input == "-":
        lines.append(_SAME_STDIN)
    return lines


def _warnings(summary: Summary, state: ResumeState | None, err: TextIO, token_hint: str) -> None:
    if state is not None and state.torn:
        err.write(
            "note: the last line of the outcomes was torn (the earlier run died mid-write); "
            "its record was sent again\n"
        )
    if state is not None and state.mismatched:
        err.write(
            f"note: {state.mismatched} records changed since the earlier run (their line now "
            "holds another contactId or other values than the outcomes record), so they were "
            "sent again\n"
        )
    if state is not None and state.reordered:
        err.write(
            f"note: {state.reordered} records updated earlier were sent again after an earlier "
            "record of their contact, so that the contact's records apply in input order\n"
        )
    if summary.by_status[Status.UNAUTHORIZED]:
        err.write(
            f"warning: the token was refused (401/403): check {token_hint} and its scopes "
            "(contacts.write)\n"
        )
    err.flush()


def _resume_hint(settings: JobSettings, err: TextIO) -> None:
    if settings.resume_command:
        err.write(f"to resume, run:\n  {settings.resume_command}\n")
        if settings.input == "-":
            err.write(_SAME_STDIN + "\n")
    err.flush()
