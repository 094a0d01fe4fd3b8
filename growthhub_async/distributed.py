"""The shards of a many-location job on a Dask cluster (issue 13, item 6).

One mechanism, not a second engine: a shard task is ``update --shard K/N --out
DIR/shard-K-of-N.jsonl`` run inside a Dask worker (:func:`run_shard` calls
:func:`~growthhub_async.job.run_job` on an event loop of its own), and the coordinator
(:func:`run_shards`, or ``update --dask ADDRESS --out-dir DIR --shards N``) submits one task per
shard, waits, and adds the shards' results up into one summary with the table by location.

Retries. A shard whose worker process dies is run again by the scheduler on another worker
(Dask's ``distributed.scheduler.allowed-failures``, 3 by default); a shard whose task raised is
run again up to ``retries`` times (``submit(retries=)``). Either way the new attempt resumes
from the shard's journal: a record whose outcome line was written is never sent again, only
those in flight when the worker died (which have no line). The first attempt of a shard
honours the caller's ``resume`` (a journal left by another run is refused without it); every
later attempt resumes (a scheduler-held ``Event`` per shard says an attempt has started).

Tokens. Workers never hold a refresh token or a client secret:

- Private Integration Tokens (``--tokens``, ``GROWTHHUB_TOKEN``) are task arguments, each shard
  getting only its own locations' (and shard 0 the run's own token), wrapped in
  :class:`Secret`, whose repr is hidden: Dask logs a failed task's arguments by their repr.
- Whatever rotates (an agency app's locations, ``{"oauthFile": ...}`` entries, ``--oauth``) stays
  with the coordinator, which holds the providers of :mod:`growthhub_async.auth` and
  :mod:`growthhub_async.locations` as a single run does (single flight, rotation saved before
  use). A worker's :class:`BrokeredToken` asks the coordinator's :class:`TokenBroker` for a
  location's access token through a scheduler-held ``Queue`` (answers come back on a
  ``Variable`` per request): on first use, again when the token is about to expire (the answer
  carries its remaining lifetime, so a long shard renews in time), and after a 401 on a token
  that had worked (the broker mints or refreshes again, once, however many ask). The broker
  serves a shard only the keys that hash to it.

Tokens pass through the scheduler (as every task argument does): on a network you do not trust,
use Dask's TLS (``tls://`` addresses and a ``distributed.security.Security``).

Dask is an optional extra (``pip install 'growthhub-async[dask]'``): it is imported only here, and
only when a function of this module runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import logging
import math
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Generic, TextIO, TypeVar, cast

from growthhub_async.auth import (
    DEFAULT_REFRESH_MARGIN,
    AccessToken,
    TokenProvider,
    at_hand,
    refresh_due,
)
from growthhub_async.client import DEFAULT_TOKEN_KEY
from growthhub_async.cmdline import DASK_INSTALL_HINT, Terminal
from growthhub_async.errors import ConfigurationError, GrowthHubError, TokenRefreshFailed
from growthhub_async.job import EXIT_FATAL, EXIT_NOT_ALL, EXIT_OK, JobResult, JobSettings, run_job
from growthhub_async.locations import AgencyTokens, LocationTokens, location_problem, shard_of
from growthhub_async.logs import current_run_id, new_run_id
from growthhub_async.outcomes import Status, Summary
from growthhub_async.progress import LocationStats, render_locations, render_summary
from growthhub_async.sources import Record, open_source
from growthhub_async.transport import check_base_url

__all__ = [
    "INSTALL_HINT",
    "BrokeredToken",
    "SchedulerUnreachable",
    "Secret",
    "ShardReport",
    "ShardTask",
    "ShardedResult",
    "TokenBroker",
    "cluster_spec",
    "journal_name",
    "require_distributed",
    "run_shard",
    "run_shards",
    "shard_tasks",
    "split_tokens",
]

INSTALL_HINT: Final = DASK_INSTALL_HINT
_PREFIX: Final = "growthhub"
BROKER_TIMEOUT: Final = 120.0
"""Seconds a worker waits for the coordinator's answer about a token."""
_POLL: Final = 0.5  # seconds between two looks of a shard for the coordinator's stop
_STOP_SLACK: Final = 5.0  # seconds beyond a shard's grace that the coordinator waits on a stop
_BROKER_POLL: Final = 0.05  # seconds between two looks of the broker at an empty queue
_T = TypeVar("_T")


class SchedulerUnreachable(ConfigurationError):
    """No Dask scheduler answered at ``--dask ADDRESS`` (nothing listens there, something
    that is not a scheduler does, or it answered too slowly)."""


def require_distributed() -> Any:
    """``dask.distributed``, or a :class:`ConfigurationError` saying how to install it."""
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise ConfigurationError(
            f"running shards on Dask needs dask.distributed, an optional extra: {INSTALL_HINT}"
        ) from None


class Secret(Generic[_T]):
    """A value that is passed along but never shown: its repr and str are hidden, so a Dask
    log of a task's arguments ("Compute Failed ... Task: ...") shows no token."""

    __slots__ = ("_value",)

    def __init__(self, value: _T) -> None:
        self._value = value

    def reveal(self) -> _T:
        """The value itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, tuple[_T]]:
        return (Secret, (self._value,))


def dask_setup(worker: object) -> None:
    """Preloaded in the worker processes of ``--dask local``: they ignore SIGINT. A Ctrl-C on
    the terminal reaches every process of its group, and a worker would die of it mid-shard
    (KeyboardInterrupt tracebacks, the shard run again) instead of stopping as the
    coordinator asks."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing to do
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def journal_name(shard: int, shards: int) -> str:
    """The journal of shard ``shard`` of ``shards`` in the output folder."""
    return f"shard-{shard}-of-{shards}.jsonl"


_JOURNAL_RE: Final = re.compile(r"shard-(\d+)-of-(\d+)\.jsonl")


@dataclass(frozen=True, slots=True)
class ShardTask:
    """What one shard's task gets: the job's settings (``out`` its journal, ``shard`` K/N),
    its tokens, and how to reach the coordinator. Secrets are :class:`Secret`."""

    settings: JobSettings
    run_id: str
    resume: bool = False
    """The caller's ``resume``, for the shard's first attempt (later ones always resume)."""
    token: Secret[str] | None = None
    """The run's own Private Integration Token (records without a location: shard 0)."""
    tokens: Secret[dict[str, str]] | None = None
    """The Private Integration Tokens of this shard's locations, and only those."""
    brokered: frozenset[str] = frozenset()
    """Keys whose tokens the coordinator serves (OAuth files; ``default`` for ``--oauth``)."""
    agency: bool = False
    """The coordinator mints the token of any other location (an agency app)."""

    @property
    def shard(self) -> tuple[int, int]:
        """``(K, N)``."""
        assert self.settings.shard is not None
        return self.settings.shard


@dataclass(slots=True)
class ShardReport:
    """How one shard's (last) attempt ended."""

    shard: int
    exit_status: int
    result: JobResult | None = None
    error: str | None = None
    retried: bool = False
    """This attempt followed another of the same run (a worker died, or the task raised)."""
    output: str = ""
    """What the shard's job printed (its summary), also in ``shard-K-of-N.log`` beside the
    journal."""


# -- the worker's side ---------------------------------------------------------------------------


def run_shard(task: ShardTask) -> ShardReport:
    """Run one shard on this Dask worker: ``update --shard K/N --out JOURNAL [--resume]``.

    A fatal error of the job (a journal of another run without resume, unreadable input) is
    reported (exit status 2), not raised: running it again would not help.
    """
    distributed = require_distributed()
    client = distributed.get_client()
    k, n = task.shard
    started = distributed.Event(f"{_PREFIX}-{task.run_id}-started-{k}", client=client)
    retried = bool(started.is_set())
    started.set()
    settings = replace(
        task.settings,
        resume=task.resume or retried,
        handle_signals=False,  # not the main thread; the coordinator's stop stands in
        progress="off",
    )
    output = io.StringIO()
    try:
        if not os.path.exists(settings.input):
            raise ConfigurationError(
                f"INPUT {settings.input!r} is not on this worker (every worker reads it, at "
                "the same path as on the coordinator: shared storage)"
            )
        _check_out_dir(settings.out, n)
        link = _BrokerLink(client, task) if task.brokered or task.agency else None
        result = asyncio.run(_shard_job(task, settings, link, client, output))
    except GrowthHubError as exc:
        output.write(f"error: {exc}\n")
        report = ShardReport(k, EXIT_FATAL, None, str(exc), retried, output.getvalue())
    else:
        report = ShardReport(k, result.exit_status, result, None, retried, output.getvalue())
    with contextlib.suppress(OSError):
        log = os.path.splitext(settings.out)[0] + ".log"
        with open(log, "a", encoding="utf-8") as f:
            f.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} attempt on pid {os.getpid()}"
                f"{' (a retry)' if retried else ''}\n{report.output}"
            )
    return report


async def _shard_job(
    task: ShardTask,
    settings: JobSettings,
    link: _BrokerLink | None,
    client: Any,
    output: TextIO,
) -> JobResult:
    tokens: dict[str, str | TokenProvider] = dict(task.tokens.reveal()) if task.tokens else {}
    if link is not None:
        tokens.update({key: BrokeredToken(link, key) for key in task.brokered})
    own = tokens.pop(DEFAULT_TOKEN_KEY, None)
    token: str | TokenProvider | None = task.token.reveal() if task.token else own
    options: dict[str, Any] = {}
    if tokens or task.agency:
        options["locations"] = _ShardLocations(tokens, link if task.agency else None)
    stop = asyncio.Event()
    watch = asyncio.create_task(_watch_stop(client, task.run_id, stop))
    try:
        return await run_job(
            settings,
            token=token,
            stdout=output,
            stderr=output,
            client_options=options,
            stop=stop,
            run_id=task.run_id,  # the coordinator's: one id on its logs and every journal
        )
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def _watch_stop(client: Any, run_id: str, stop: asyncio.Event) -> None:
    """Set ``stop`` when the coordinator asks every shard to stop (its Ctrl-C)."""
    distributed = require_distributed()
    event = distributed.Event(f"{_PREFIX}-{run_id}-stop", client=client)
    while not stop.is_set():
        if await asyncio.to_thread(_event_wait, event, _POLL):
            stop.set()


def _event_wait(event: Any, timeout: float) -> bool:
    return bool(event.wait(timeout=timeout))


def _check_out_dir(journal: str, shards: int) -> None:
    """A folder holding the journals of a job split another number of ways is refused: a
    record final in one of them would be sent again by the shard that owns it now."""
    folder = os.path.dirname(journal) or "."
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the output folder {folder!r} on this worker: {exc.strerror or exc} "
            "(every worker needs it, at the same path: shared storage)"
        ) from None
    for name in names:
        found = _JOURNAL_RE.fullmatch(name)
        if found and int(found.group(2)) != shards:
            raise ConfigurationError(
                f"{folder!r} holds {name}, a journal of this job split "
                f"{found.group(2)} ways: keep --shards {found.group(2)} to resume it, or "
                "choose another --out-dir"
            )


class _ShardLocations(LocationTokens):
    """A shard's tokens per location: its own PITs, then the coordinator (agency)."""

    def __init__(self, tokens: Mapping[str, str | TokenProvider], link: _BrokerLink | None):
        super().__init__(tokens)
        self._link = link

    def __repr__(self) -> str:
        return f"<shard locations: {len(self.tokens)} tokens, minted={self._link is not None}>"

    def __call__(self, location_id: str) -> str | TokenProvider | None:
        found = self.tokens.get(location_id)
        if found is not None:
            return found
        if self._link is not None and location_problem(location_id) is None:
            return BrokeredToken(self._link, location_id)
        return None


class _BrokerLink:
    """The worker's line to the coordinator's :class:`TokenBroker`: a request on the run's
    queue, the answer on a variable of its own. Blocking calls, made on a thread."""

    def __init__(self, client: Any, task: ShardTask) -> None:
        distributed = require_distributed()
        self._variable = distributed.Variable
        self._client = client
        self._queue = distributed.Queue(_queue_name(task.run_id), client=client)
        self.run_id = task.run_id
        self.shard = task.shard

    async def ask(self, key: str, op: str, generation: int, confirmed: bool) -> dict[str, Any]:
        request = {
            "shard": self.shard[0],
            "key": key,
            "op": op,
            "generation": generation,
            "confirmed": confirmed,
            "reply": f"{_PREFIX}-{self.run_id}-reply-{uuid.uuid4().hex}",
        }
        return await asyncio.to_thread(self._ask, request)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        variable = self._variable(request["reply"], client=self._client)
        self._queue.put(request)
        try:
            answer = variable.get(timeout=BROKER_TIMEOUT)
        except TimeoutError:
            return {
                "error": f"location {request['key']}: the coordinator gave no token within "
                f"{BROKER_TIMEOUT:g}s (is it still running?)"
            }
        finally:
            with contextlib.suppress(Exception):
                variable.delete()
        return cast(dict[str, Any], answer)


class BrokeredToken(TokenProvider):
    """One key's access token on a worker, served by the coordinator's :class:`TokenBroker`.

    Asked for on first use, again a little before it expires (the coordinator says when), and
    after a 401 on a token that had worked: the coordinator refreshes or mints once and hands
    back the new token. A token fresh from the coordinator refused before it ever worked is
    retried after pauses, as the client does for a refreshed one. A failure is final.
    """

    def __init__(self, link: _BrokerLink, key: str) -> None:
        self._link = link
        self.key = key
        self._current: AccessToken | None = None
        self._expires_at: float | None = None
        self._lifetime: float | None = None
        self._fresh = False
        self._confirmed = False
        self._failure: TokenRefreshFailed | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        generation = self._current.generation if self._current else None
        return f"<BrokeredToken {self.key} generation={generation}>"

    @property
    def refreshable(self) -> bool:
        """A 401 asks the coordinator for a new token."""
        return True

    async def token(self) -> AccessToken:
        """The current token, asked of the coordinator when missing or due."""
        self._raise_if_failed()
        current = self._current
        now = asyncio.get_running_loop().time()
        if current is None or refresh_due(
            now, self._expires_at, self._lifetime, DEFAULT_REFRESH_MARGIN
        ):
            async with self._guard():
                if self._current is current:  # nobody asked while this one waited
                    await self._ask("token", current.generation if current else -1)
        assert self._current is not None
        return self._current

    def current(self) -> AccessToken | None:
        """The current token when it is not due (else :meth:`token` asks the coordinator)."""
        return at_hand(
            self._current, self._failure, self._expires_at, self._lifetime, DEFAULT_REFRESH_MARGIN
        )

    async def rejected(self, generation: int) -> bool:
        """Ask the coordinator for a new token once for every caller refused with it."""
        self._raise_if_failed()
        current = self._current
        if current is None or generation != current.generation:
            return True
        if self.fresh(generation):
            return False  # the client pauses and tries it again
        async with self._guard():
            if self._current is not None and self._current.generation != generation:
                return True
            await self._ask("rejected", generation)
        assert self._current is not None
        return self._current.generation != generation

    def fresh(self, generation: int) -> bool:
        """The coordinator's token of ``generation`` is fresh and has not worked yet."""
        current = self._current
        return (
            current is not None
            and generation == current.generation
            and self._fresh
            and not self._confirmed
        )

    def accepted(self, generation: int) -> None:
        """The current token works (the coordinator hears it with the next 401)."""
        if self._current is not None and generation == self._current.generation:
            self._confirmed = True

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if failure is not None:
            raise TokenRefreshFailed(failure.reason, refresh_status=failure.refresh_status)

    async def _ask(self, op: str, generation: int) -> None:
        asked = asyncio.get_running_loop().time()  # its life is counted from here: the
        # answer's way back only makes it shorter than the worker thinks
        answer = await self._link.ask(self.key, op, generation, self._confirmed)
        error = answer.get("error")
        value = answer.get("token")
        if error is not None or not isinstance(value, str) or not value:
            status = answer.get("status")
            self._failure = TokenRefreshFailed(
                str(error or f"{self.key}: the coordinator answered without a token"),
                refresh_status=status if isinstance(status, int) else None,
            )
            self._raise_if_failed()
        assert isinstance(value, str)
        self.redactor.add(value)
        new_generation = int(answer.get("generation", 0))
        current = self._current
        renewed = current is None or new_generation != current.generation
        if renewed:
            self._current = AccessToken(value, new_generation)
            self._confirmed = False
        self._fresh = bool(answer.get("fresh"))
        lifetime = answer.get("expires_in")
        if not renewed or not isinstance(lifetime, int | float) or not math.isfinite(lifetime):
            # Unknown, or the same token again: use it until the server refuses it (asking
            # again at once would only spin).
            self._expires_at = self._lifetime = None
        else:
            self._lifetime = max(0.0, float(lifetime))
            self._expires_at = asked + self._lifetime


# -- the coordinator's side ----------------------------------------------------------------------


def _queue_name(run_id: str) -> str:
    return f"{_PREFIX}-{run_id}-tokens"


class TokenBroker:
    """The coordinator's token service: the providers that rotate live here, one per key.

    ``providers`` maps keys (location ids; ``default`` for the run's own ``--oauth`` token) to
    providers; ``agency`` mints any other location's token. Each answer is a plain dict (it
    travels through the scheduler): ``token``, ``generation``, ``fresh``, ``expires_in``, or
    ``error`` (and ``status``). A shard is served only the keys that hash to it.
    """

    def __init__(
        self,
        shards: int,
        providers: Mapping[str, TokenProvider] | None = None,
        agency: AgencyTokens | None = None,
    ) -> None:
        self.shards = shards
        self.providers: dict[str, TokenProvider] = dict(providers or {})
        self.agency = agency
        self.requests: Counter[str] = Counter()
        """Requests answered, by ``op``: ``token`` (first use, or due to expire) and
        ``rejected`` (a 401 on a token that had worked)."""
        self._minted: dict[str, TokenProvider] = {}

    def __repr__(self) -> str:
        return f"<TokenBroker {len(self.providers)} keys, agency={self.agency is not None}>"

    def _provider(self, key: str) -> TokenProvider | None:
        found = self.providers.get(key) or self._minted.get(key)
        if found is None and self.agency is not None and location_problem(key) is None:
            found = self._minted[key] = self.agency.for_location(key)
        return found

    async def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one worker's request (``shard``, ``key``, ``op``, ``generation``,
        ``confirmed``)."""
        key, shard = request.get("key"), request.get("shard")
        op, generation = request.get("op"), request.get("generation")
        self.requests[str(op)] += 1
        if not (
            isinstance(key, str)
            and isinstance(shard, int)
            and op in ("token", "rejected")
            and isinstance(generation, int)
        ):
            return {"error": "a malformed token request"}
        owner = 0 if key == DEFAULT_TOKEN_KEY else shard_of(key, self.shards)
        if owner != shard:
            return {"error": f"location {key!r} belongs to shard {owner}, not {shard}"}
        provider = self._provider(key)
        if provider is None:
            return {"error": f"location {key!r} has no token"}
        try:
            if op == "rejected":
                if request.get("confirmed"):
                    provider.accepted(generation)
                await provider.rejected(generation)
            token = await provider.token()
        except TokenRefreshFailed as exc:
            return {"error": exc.reason, "status": exc.refresh_status}
        return {
            "token": token.value,
            "generation": token.generation,
            "fresh": provider.fresh(token.generation),
            "expires_in": provider.expires_in(),
        }

    async def serve(self, client: Any, run_id: str, done: asyncio.Event) -> None:
        """Answer the run's requests until ``done``; each answer in a task of its own (one
        slow mint holds up no other location)."""
        distributed = require_distributed()
        queue = distributed.Queue(_queue_name(run_id), client=client)
        await queue
        pending: set[asyncio.Task[None]] = set()
        answered: list[str] = []

        async def reply(request: dict[str, Any]) -> None:
            answer = await self.answer(request)
            name = request.get("reply")
            if isinstance(name, str) and name.startswith(f"{_PREFIX}-{run_id}-reply-"):
                answered.append(name)
                await distributed.Variable(name, client=client).set(answer)

        try:
            while not done.is_set():
                # What waits, at once (a get with a timeout would log an error on the
                # scheduler at every expiry).
                requests = await queue.get(batch=True)
                for request in requests:
                    if isinstance(request, dict):
                        task = asyncio.create_task(reply(request))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                if not requests:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), _BROKER_POLL)
        finally:
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await queue.close()
            # An answer whose worker died before reading it would keep a token in the
            # scheduler's memory: every answer is deleted (a read one already was).
            await asyncio.gather(
                *(distributed.Variable(name, client=client).delete() for name in answered),
                return_exceptions=True,
            )

    async def aclose(self) -> None:
        """Close the providers (their sessions); the rotations are already saved."""
        for provider in self._minted.values():
            await provider.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        if self.agency is not None:
            await self.agency.aclose()


@dataclass(slots=True)
class ShardedResult:
    """The combined result of every shard."""

    exit_status: int
    reports: list[ShardReport]
    summary: Summary
    """This run's counts: from the journals (see :attr:`counted_from_journals`), else
    added up over the shards' last attempts."""
    whole_job: Counter[Status] = field(default_factory=Counter)
    """With resumes: the records already final in the journals, plus this run's."""
    by_location: dict[str, LocationStats] = field(default_factory=dict)
    interrupted: bool = False
    token_requests: Counter[str] = field(default_factory=Counter)
    """What the workers asked the coordinator's token broker, by kind (see
    :attr:`TokenBroker.requests`)."""
    counted_from_journals: bool = False
    """``summary`` (statuses, requests) and ``whole_job`` were counted from the journals:
    every attempt of every shard, a lost or failed one included."""
    partial: bool = False
    """A second Ctrl-C: the coordinator stopped waiting for the shards."""


def split_tokens(
    shards: int,
    token: str | TokenProvider | None,
    locations: LocationTokens | None,
) -> tuple[list[dict[str, str]], dict[str, TokenProvider]]:
    """Per shard, the fixed tokens it gets as arguments; and the providers that stay with the
    coordinator (keyed as the broker serves them)."""
    fixed: list[dict[str, str]] = [{} for _ in range(shards)]
    brokered: dict[str, TokenProvider] = {}
    for key, value in (locations.tokens if locations is not None else {}).items():
        if isinstance(value, str):
            fixed[shard_of(key, shards)][key] = value
        else:
            brokered[key] = value
    if isinstance(token, TokenProvider):
        brokered[DEFAULT_TOKEN_KEY] = token
    return fixed, brokered


def shard_tasks(
    settings: JobSettings,
    *,
    out_dir: str,
    shards: int,
    run_id: str,
    token: str | TokenProvider | None,
    locations: LocationTokens | None,
    resume_command: str | None = None,
) -> tuple[list[ShardTask], dict[str, TokenProvider]]:
    """The task of each shard (what travels to the workers), and the providers that stay with
    the coordinator's broker."""
    input_path, folder = _absolute(settings.input), _absolute(out_dir)
    fixed, providers = split_tokens(shards, token, locations)
    agency = locations is not None and locations.agency is not None
    tasks = []
    for k in range(shards):
        shard_settings = replace(
            settings,
            input=input_path,
            out=os.path.join(folder, journal_name(k, shards)),
            shard=(k, shards),
            spill_dir=folder,
            resume_command=resume_command,
        )
        tasks.append(
            ShardTask(
                shard_settings,
                run_id,
                resume=settings.resume,
                token=Secret(token) if isinstance(token, str) and k == 0 else None,
                tokens=Secret(fixed[k]) if fixed[k] else None,
                brokered=frozenset(key for key in providers if _owner(key, shards) == k),
                agency=agency,
            )
        )
    return tasks, providers


def cluster_spec(cluster: str) -> tuple[str | None, int | None]:
    """``local`` / ``local:N``: ``(None, N or None)``; otherwise ``(address, None)``."""
    if cluster == "local" or cluster.startswith("local:"):
        count = cluster.partition(":")[2]
        if count and not (count.isdigit() and 0 < int(count) <= 256):
            raise ConfigurationError(
                f"--dask {cluster!r}: local:N needs N from 1 to 256 worker processes"
            )
        return None, int(count) if count else None
    if "://" not in cluster and ":" not in cluster:
        raise ConfigurationError(
            f"--dask {cluster!r} is neither a scheduler address (tcp://HOST:8786) nor local[:N]"
        )
    return cluster, None


async def run_shards(  # noqa: PLR0912, PLR0915 (one story: start, submit, gather, report)
    settings: JobSettings,
    *,
    out_dir: str,
    shards: int,
    cluster: Any,
    token: str | TokenProvider | None = None,
    locations: LocationTokens | None = None,
    retries: int = 2,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    resume_command: str | None = None,
    connect_timeout: float | None = None,
) -> ShardedResult:
    """Run ``settings``' job as ``shards`` shards on a Dask cluster; print one summary.

    ``cluster``: a scheduler address (``tcp://scheduler:8786``), ``local`` or ``local:N`` (a
    ``LocalCluster`` of N worker processes, started and stopped here), or a running
    ``distributed.Client`` (asynchronous). Shard K writes ``out_dir/shard-K-of-N.jsonl``; the
    input and ``out_dir`` must be at the same path on every worker (shared storage).
    ``settings.out`` is not used. ``settings.resume`` resumes every shard from its journal;
    ``settings.grace`` is what a stop gives the requests on the wire. Tokens as for
    :func:`~growthhub_async.job.run_job` (``locations`` for ``--tokens`` / ``--agency-oauth``).

    ``connect_timeout``: seconds a scheduler address gets to answer as a Dask scheduler
    (default Dask's ``distributed.comm.timeouts.connect``, 30 s), else
    :class:`SchedulerUnreachable`. Cancelled (Ctrl-C), every shard is asked to stop as SIGTERM
    stops one run and gets the grace to do so; cancelled again meanwhile, the coordinator stops
    waiting at once and closes its client (and its own ``local`` cluster) quietly. Either way
    the summary, from the journals, and the resume command are printed, then
    :class:`asyncio.CancelledError` is raised.
    """
    distributed = require_distributed()
    out = cast(TextIO, Terminal(stdout if stdout is not None else sys.stdout))
    err = cast(TextIO, Terminal(stderr if stderr is not None else sys.stderr))
    if shards < 1:
        raise ConfigurationError("--shards must be at least 1")
    if settings.input == "-":
        raise ConfigurationError(
            "--dask cannot read standard input: the workers read INPUT themselves (a file on "
            "storage that every worker sees at the same path)"
        )
    if settings.dry_run or settings.state or settings.shard:
        raise ConfigurationError(
            "--dask runs every shard: --dry-run, --state and --shard are for one machine"
        )
    if token is None and locations is None:
        raise ConfigurationError("no token: a live run needs one")
    run_id = current_run_id() or new_run_id()  # the command line's, on its own log lines
    tasks, providers = shard_tasks(
        settings,
        out_dir=out_dir,
        shards=shards,
        run_id=run_id,
        token=token,
        locations=locations,
        resume_command=resume_command,
    )
    folder = os.path.dirname(tasks[0].settings.out)
    agency = locations.agency if locations is not None else None
    broker = TokenBroker(shards, providers, agency)
    _attach(settings.base_url, providers, agency)
    own_cluster: Any = None
    own_client: Any = None
    if isinstance(cluster, str):
        address, workers = cluster_spec(cluster)
        if address is None:
            own_cluster = await distributed.LocalCluster(
                n_workers=workers or max(1, min(shards, os.cpu_count() or 1)),
                threads_per_worker=1,
                processes=True,
                # The workers' warnings (a shard cut off at a second Ctrl-C) would bury the
                # summary; a shard's own failure is in its report and its log.
                silence_logs=logging.ERROR,
                # Ctrl-C on a terminal reaches the whole process group: the workers ignore it
                # (see dask_setup); the coordinator asks their shards to stop.
                preload=[__name__],
                # No dashboard; the scheduler's HTTP server on a free loopback port (its
                # default, 8787, may be taken: Dask would warn and move).
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                asynchronous=True,
            )
            address = own_cluster.scheduler_address
        own_client = await _connect(distributed, address, connect_timeout)
        client = own_client
    else:
        client = cluster
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()  # the cluster is up: its start is not the job's time
    journals = [task.settings.out for task in tasks]
    offsets = [_size(path) for path in journals]  # what earlier runs wrote: not this run's
    serving = asyncio.create_task(broker.serve(client, run_id, done))
    reports: dict[int, ShardReport] = {}
    interrupted = hurried = False
    futures = []
    try:
        futures = [
            client.submit(
                run_shard,
                task,
                key=f"{_PREFIX}-shard-{task.shard[0]}-of-{shards}-{run_id}",
                retries=retries,
                pure=False,
            )
            for task in tasks
        ]
        err.write(
            f"dask: {shards} shards submitted to {client.scheduler.address}; journals in {folder}\n"
        )
        err.flush()

        async def collect(future: Any) -> None:
            k = int(str(future.key).split("-")[2])
            try:
                report = await future
            except Exception as exc:  # noqa: BLE001 (a shard's failure is reported, not raised)
                report = ShardReport(k, EXIT_FATAL, error=f"{type(exc).__name__}: {exc}")
            reports[k] = report
            err.write(_shard_line(report, shards, folder) + "\n")
            err.flush()

        try:
            async for future in distributed.as_completed(futures):
                await collect(future)
        except asyncio.CancelledError:
            # Ctrl-C (or the caller's cancel): every shard stops as one run does on SIGTERM
            # (nothing new sent, what is on the wire finishes, the rest journaled as
            # cancelled); their summaries still count. A second Ctrl-C stops at once.
            interrupted = True
            err.write(
                f"\ninterrupted: asking every shard to stop; waiting up to "
                f"{settings.grace + _STOP_SLACK:g}s for them (Ctrl-C again to stop at once)\n"
            )
            err.flush()
            try:
                await distributed.Event(f"{_PREFIX}-{run_id}-stop", client=client).set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(distributed.wait(futures), settings.grace + _STOP_SLACK)
                for future in futures:
                    if future.done() and int(str(future.key).split("-")[2]) not in reports:
                        await collect(future)
            except asyncio.CancelledError:
                hurried = True
                err.write("interrupted again: stopping now; the journals hold what was sent\n")
                err.flush()
    finally:
        done.set()
        if hurried:  # nothing more is awaited on the scheduler than the closing
            serving.cancel()

        async def teardown() -> None:
            await asyncio.gather(serving, return_exceptions=True)
            if not hurried:  # else a shard still running must still see the stop
                await _forget_events(distributed, client, run_id, shards)
            await broker.aclose()
            if own_client is not None:
                await own_client.close()
            if own_cluster is not None:
                await own_cluster.close()

        cut = await _unhurried(teardown(), quiet=hurried)
        interrupted = interrupted or cut
    result = combine([reports[k] for k in sorted(reports)], loop.time() - started)
    if len(reports) < shards:  # a shard with no report did not finish
        result.exit_status = max(result.exit_status, EXIT_NOT_ALL if interrupted else EXIT_FATAL)
    result.interrupted = result.interrupted or interrupted
    result.token_requests = broker.requests
    result.partial = hurried
    _count_journals(result, journals, offsets, settings)
    _print(
        result, settings=settings, folder=folder, resume_command=resume_command, out=out, err=err
    )
    if interrupted:
        raise asyncio.CancelledError
    return result


async def _connect(distributed: Any, address: str, seconds: float | None) -> Any:
    """An asynchronous client of the scheduler at ``address``, or :class:`SchedulerUnreachable`
    within ``seconds``: Dask's own connect timeout does not bound the handshake, and a
    port that accepts but never answers (or an HTTP server) would hang for good."""
    timeout = seconds
    if timeout is None:
        dask = importlib.import_module("dask")
        timeout = float(
            dask.utils.parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
        )
    client = distributed.Client(address, asynchronous=True, timeout=timeout)
    try:
        return await asyncio.wait_for(client, timeout)
    except TimeoutError:
        await _close_quietly(client)
        raise SchedulerUnreachable(
            f"--dask {address!r}: no Dask scheduler answered at {address} within {timeout:g}s "
            "(is it a scheduler's address and port? the default port is 8786)"
        ) from None
    except OSError as exc:
        await _close_quietly(client)
        raise SchedulerUnreachable(
            f"--dask {address!r}: no Dask scheduler answered at {address}: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 (whatever it is, it is no scheduler)
        # An HTTP server that keeps the connection open: its "HTTP/1.1 ..." read as the
        # length of a Dask frame is a MemoryError.
        await _close_quietly(client)
        raise SchedulerUnreachable(
            f"--dask {address!r}: no Dask scheduler answered at {address}: what answered "
            f"does not speak Dask's protocol ({type(exc).__name__})"
        ) from None
    except BaseException:  # cancelled (Ctrl-C) while connecting: close, leave no coroutine
        await _close_quietly(client)
        raise


async def _unhurried(teardown: Coroutine[Any, Any, None], *, quiet: bool) -> bool:
    """Run ``teardown`` to its end even if cancelled meanwhile (a Ctrl-C while the cluster
    closes would leave it half closed, with Dask's tracebacks); Dask's loggers are silenced
    when ``quiet`` or from such a cancel on. Whether it was cancelled."""
    task = asyncio.ensure_future(teardown)
    cut = False
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(_quiet_dask())
        while True:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                if not cut and not quiet:
                    stack.enter_context(_quiet_dask())
                cut = True
            else:
                return cut


async def _close_quietly(client: Any) -> None:
    with _quiet_dask(), contextlib.suppress(Exception):
        await client.close()


class _Silent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Silence Dask's loggers (``distributed.*``) for a teardown that is expected to be rough
    (shards cut off mid-run): their tracebacks would bury the summary."""
    silent = _Silent()
    names = ["distributed"] + [
        name for name in logging.root.manager.loggerDict if name.startswith("distributed.")
    ]
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(silent)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(silent)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _count_journals(
    result: ShardedResult, journals: list[str], offsets: list[int], settings: JobSettings
) -> None:
    """Count the summary from the journals, which are the truth: this run's records (the
    lines written since it started, by every attempt of every shard, a lost attempt's and a
    failed shard's included) and the whole job's (the last line of every record). Left as
    the shards' reports added up when the coordinator cannot read them."""
    this_run: dict[int, tuple[Status, int]] = {}  # input line: last status, and its shard
    whole: dict[int, Status] = {}
    requests = 0
    reported = {
        r.shard for r in result.reports if r.result is not None and r.result.summary.records
    }
    if any(not os.path.exists(journals[k]) for k in reported):
        return  # the coordinator does not see the workers' storage: the reports are all
    try:
        for k, (path, offset) in enumerate(zip(journals, offsets, strict=True)):
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                position = 0
                for raw in f:
                    mine = position >= offset
                    position += len(raw)
                    if not raw.endswith(b"\n") or raw.isspace():
                        continue
                    entry = json.loads(raw)
                    line, status = int(entry["line"]), Status(entry["status"])
                    whole[line] = status
                    if mine:
                        this_run[line] = (status, k)
                        requests += int(entry.get("attempts") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return
    result.summary.by_status = Counter(status for status, _ in this_run.values())
    result.summary.requests = requests
    result.whole_job = Counter(whole.values())
    result.counted_from_journals = True
    whole_reports = len(result.reports) == len(journals) and all(
        r.result is not None and not r.retried for r in result.reports
    )
    if result.by_location or not whole_reports:  # else the reports' table is the journals'
        _locations_from_input(result, this_run, settings)


def _locations_from_input(
    result: ShardedResult, this_run: dict[int, tuple[Status, int]], settings: JobSettings
) -> None:
    """The table by location over every attempt: the journals name lines, the input says
    whose location each line is (left as the reports added up if the input cannot be read)."""
    counted: dict[str, LocationStats] = {}
    try:
        with open_source(settings.input, settings.value_key) as source:
            for item in source:
                if not isinstance(item, Record) or item.token_key is None:
                    continue
                found = this_run.get(item.line)
                if found is None:
                    continue
                stats = counted.setdefault(item.token_key, LocationStats())
                stats.records += 1
                stats.updated += found[0] is Status.UPDATED
    except (GrowthHubError, OSError, ValueError):
        return
    for key, stats in counted.items():
        reported = result.by_location.get(key)
        stats.last = reported.last if reported is not None else result.summary.elapsed
    result.by_location = counted


def _absolute(path: str) -> str:
    """``path`` as every worker must see it (the coordinator's current folder resolved)."""
    return os.path.abspath(path)


def _owner(key: str, shards: int) -> int:
    return 0 if key == DEFAULT_TOKEN_KEY else shard_of(key, shards)


def _attach(
    base_url: str, providers: Mapping[str, TokenProvider], agency: AgencyTokens | None
) -> None:
    """Point the coordinator's providers at the API, as a client would."""
    url = check_base_url(base_url)
    for provider in providers.values():
        provider.attach(url)
    if agency is not None:
        agency.attach(url)


async def _forget_events(distributed: Any, client: Any, run_id: str, shards: int) -> None:
    """Clear the run's events on the scheduler (a cleared event with no waiter is deleted)."""
    names = [f"{_PREFIX}-{run_id}-started-{k}" for k in range(shards)]
    names.append(f"{_PREFIX}-{run_id}-stop")
    for name in names:
        with contextlib.suppress(Exception):
            await distributed.Event(name, client=client).clear()


def _shard_line(report: ShardReport, shards: int, folder: str) -> str:
    k = report.shard
    where = os.path.join(folder, journal_name(k, shards))
    again = " (run again after a lost worker or a failure)" if report.retried else ""
    if report.result is None:
        return f"shard {k}/{shards}: failed{again}: {report.error}"
    result = report.result
    records = result.summary.records + result.skipped
    return (
        f"shard {k}/{shards}: {records} records, exit {report.exit_status}{again}; journal {where}"
    )


def combine(reports: list[ShardReport], elapsed: float) -> ShardedResult:
    """Add the shards' results up: counts, requests, the table by location, the exit status
    (the worst shard's: 2 a fatal error, 1 some record not updated, 0 all)."""
    summary = Summary()
    whole: Counter[Status] = Counter()
    by_location: dict[str, LocationStats] = {}
    exit_status = EXIT_OK
    interrupted = False
    for report in reports:
        exit_status = max(exit_status, report.exit_status)
        result = report.result
        if result is None:
            continue
        interrupted = interrupted or result.interrupted
        part = result.summary
        summary.by_status.update(part.by_status)
        summary.requests += part.requests
        summary.retries += part.retries
        summary.rate_limited += part.rate_limited
        whole.update(result.skipped_by_status)
        whole.update(part.by_status)
        for key, stats in result.by_location.items():
            mine = by_location.setdefault(key, LocationStats())
            mine.records += stats.records
            mine.updated += stats.updated
            mine.last = max(mine.last, stats.last)
    summary.elapsed = elapsed
    return ShardedResult(exit_status, reports, summary, whole, by_location, interrupted)


def _print(
    result: ShardedResult,
    *,
    settings: JobSettings,
    folder: str,
    resume_command: str | None,
    out: TextIO,
    err: TextIO,
) -> None:
    if result.by_location:
        out.write("by location (all shards):\n" + render_locations(result.by_location) + "\n")
    resumed = (
        settings.resume
        or any(r.retried or r.result is None for r in result.reports)
        or result.whole_job != result.summary.by_status
    )
    if result.partial:
        out.write(
            "partial: the coordinator stopped at a second Ctrl-C without waiting for every "
            "shard; the counts are those of the journals now (a shard still running on an "
            "outside cluster may add lines)\n"
        )
    out.write(
        render_summary(
            result.summary,
            rate=settings.rate,
            outcomes=os.path.join(folder, "shard-*.jsonl"),
            whole_job=result.whole_job if resumed else None,
            tokens=max(1, len(result.by_location)),
        )
        + "\n"
    )
    out.flush()
    if result.exit_status != EXIT_OK:
        err.write(
            "some records were not updated, or a shard did not finish: each shard's summary is "
            f"in {folder}/shard-K-of-N.log\n"
        )
        if resume_command:
            err.write(f"to resume (only what is not final is sent):\n  {resume_command}\n")
    err.flush()
