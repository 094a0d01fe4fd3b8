"""Incremental sync (issue 14): which records to send, and what their 2xx applied.

A bulk job that runs every night over the same export sends each record again, although most
contacts did not change. With a :class:`~growthhub_async.state.SyncState`, a record whose
*canonical body* equals the one last applied (answered 2xx) to the same contact of the same
location is not sent: its outcome is ``unchanged`` (final, a success).

Canonical body (:func:`canonical_body`): the Update Contact body as msgspec encodes it for the
wire (fields in the model's order, whatever the input's key order, CSV or JSONL, whitespace),
custom fields sorted by id (the API applies them per id), any dict keys sorted, and custom
field values always under ``field_value`` (so ``--value-key`` is not a change). A changed
value, an added field or a cleared one (``null``) is a change; so is a field no longer given.

Rules, and why:

1. **Only what the server applied is remembered.** A record is remembered when its outcome is
   ``updated``, from a hook that runs after the caller's (the CLI's journal line comes first).
   A record that was sent and not confirmed (a timeout, a 5xx, a 4xx, a cancellation in
   flight) *forgets* its contact: the server may hold that body or the older one, so the next
   run sends it. Nothing is written before the 2xx, so a killed run never marks as applied a
   record that was not; a record in flight at the kill is sent again (the PUT is idempotent).
2. **A contact with a record in flight is never ``unchanged``** (a record of this run or of any
   other run on the same :class:`~growthhub_async.state.SyncState`: the state counts sends in
   flight per contact). The earlier record may still change it, so the later one is judged
   against what is being sent, not the file: it is sent. Which contacts are in flight is noted
   before each lookup is asked for, and the state commits what finished before that lookup runs
   (rule 2 of :mod:`~growthhub_async.state`), so no finished record is missed either. A
   contact's body is remembered when its last record in flight is applied (the one with the
   last word) if one *sender* sent them all: one engine keeps a contact's records in order, two
   (two clients sharing a state) do not, so after their sends overlapped the contact is
   forgotten, whatever the answers (rule 6 of :mod:`~growthhub_async.state`).
3. **What is about to be sent is forgotten first.** Before a batch's records go out, the state
   forgets (and commits the forgetting of) every contact among them that it holds: from then
   until the 2xx, the server may hold the old body or the new one. A kill in that window leaves
   the contact unknown, so the next run sends it whatever its body, even one reverted to what
   was applied before the killed run. One transaction per batch that has such records.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from msgspec import UNSET

from growthhub_async.events import RecordFinished, listens
from growthhub_async.journal import record_hash
from growthhub_async.models import CustomField, UpdateContact, decode_update
from growthhub_async.outcomes import Outcome, Status
from growthhub_async.sources import Record
from growthhub_async.state import Key, StoredRow, SyncState

__all__ = [
    "BATCH",
    "StateRun",
    "canonical_body",
    "changed_fields",
    "digest_of",
    "location_key",
]

BATCH: Final = 512
"""Records judged per lookup (one query, one thread hop)."""
_DIGEST_SIZE: Final = 16
_canonical_encoder: Final = msgspec.json.Encoder(order="deterministic")


def _by_id(field: CustomField) -> str:
    return field.id


def canonical_body(update: UpdateContact) -> bytes:
    """The body that stands for ``update`` in the state: see the module's documentation.

    Raises ``ValueError`` for a custom field value JSON cannot carry (as the wire encoder does).
    """
    fields = update.custom_fields
    if fields is not UNSET:
        for field in fields:
            if isinstance(field.value, float) and not math.isfinite(field.value):
                raise ValueError("a custom field value must be a finite number")
        if len(fields) > 1:
            update = msgspec.structs.replace(update, custom_fields=sorted(fields, key=_by_id))
    return _canonical_encoder.encode(update)


def digest_of(body: bytes) -> bytes:
    """The 16-byte BLAKE2b digest kept for a canonical body."""
    return hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest()


def changed_fields(before: UpdateContact, after: UpdateContact) -> UpdateContact:
    """The part of ``after`` that differs from ``before`` (what ``changed_fields_only`` sends).

    Fields are compared as the API applies them: a field as a whole value (``tags`` replaces
    the whole list, so a list with one tag more is sent whole; ``dndSettings`` likewise), custom
    fields one by one by ``id``. A field not given in ``after`` is not sent.
    """
    changes: dict[str, Any] = {}
    for name in UpdateContact.__struct_fields__:
        value = getattr(after, name)
        if value is UNSET:
            continue
        if name == "custom_fields":
            old = before.custom_fields
            known = {f.id: f for f in old} if old is not UNSET else {}
            kept = [f for f in value if known.get(f.id) != f]
            if kept:
                changes[name] = kept
        elif getattr(before, name) != value:
            changes[name] = value
    return UpdateContact(**changes)


def location_key(record: Record, default: str | None) -> str:
    """The location a record's state is kept under: its ``locationId`` (issue 13: a record's
    token key is its location), else the run's token key, else ``""``."""
    if record.token_key is not None:
        return record.token_key
    return default if default is not None else ""


@dataclass(slots=True)
class _Sent:
    key: Key
    digest: bytes
    body: bytes


class StateRun:
    """One run's view of a :class:`SyncState`: which records to send, what their 2xx applied.

    :meth:`filter` turns the run's input into what the engine must do: records to send (under
    ``changed_fields_only``, with only their changed fields) and ``unchanged`` outcomes;
    :meth:`on_event` (a hook of the run, after the journal's) remembers the records applied
    and forgets those sent without a 2xx. ``full`` judges nothing (every record is sent) but
    still remembers. ``track=False`` (a dry run) remembers nothing. ``sender``: what sends
    this run's records in order per contact (its client's engine; default: the run itself).
    ``server``: the API base URL the records go to; a state filled against another is refused
    (:meth:`~growthhub_async.state.SyncState.check_server`) before a record is judged.
    """

    def __init__(
        self,
        state: SyncState,
        *,
        location: str | None = None,
        full: bool = False,
        changed_fields_only: bool = False,
        track: bool = True,
        clock: Callable[[], float] | None = None,
        encode: Callable[[UpdateContact], bytes] | None = None,
        sender: object | None = None,
        server: str | None = None,
    ) -> None:
        self.state = state
        self.location = location
        self.full = full
        self.changed_fields_only = changed_fields_only
        self.track = track
        self.clock = clock or time.time  # wall time: the state keeps *when*, not a duration
        self.sender = self if sender is None else sender
        self.server = server
        self._sent: dict[tuple[int, str], _Sent] = {}
        self._handed: set[Key] = set()
        """Without ``track`` (a dry run): the contacts the state holds that were handed on to
        be sent, which the state never learns are in flight: a later record of one is sent
        too, as in the real run (rules 2 and 3). Only changed contacts: a new one is sent
        anyway."""
        self.unchanged = 0
        """Records found unchanged so far."""
        self.to_send: Counter[str] = Counter()
        """Records handed on to be sent, per location."""
        self.encode = encode
        self.hashes: dict[int, bytes] = {}
        """With ``encode``: the resume key (:func:`~growthhub_async.journal.record_hash`) of
        each record this run replaced (by its ``unchanged`` outcome or its changed fields), by
        line, until its outcome takes it: the engine hashes what it sends, which is then not
        the record."""

    async def filter(
        self, records: Iterable[Any] | AsyncIterable[Any], *, batch: int = BATCH
    ) -> AsyncIterator[Any]:
        """``records`` with unchanged ones replaced by their ``unchanged`` outcome.

        A plain iterable (a file) is judged ``batch`` records at a time (one lookup); an async
        one record by record, as its items arrive (it may be a queue that waits). Items that are
        not records (rejected outcomes, items of the wrong shape) pass through for the engine.
        """
        await self.state.open()
        if isinstance(records, AsyncIterable):
            position = 0
            async for item in records:
                position += 1
                for judged in await self.judge([item], position):
                    yield judged
            return
        position = 0
        chunk: list[Any] = []
        for item in records:
            chunk.append(item)
            if len(chunk) >= batch:
                for judged in await self.judge(chunk, position + 1):
                    yield judged
                position += len(chunk)
                chunk = []
        if chunk:
            for judged in await self.judge(chunk, position + 1):
                yield judged

    async def judge(
        self,
        items: list[Any],
        first: int,
        *,
        full: bool | None = None,
        changed_fields_only: bool | None = None,
    ) -> list[Any]:
        """Judge ``items`` (the first at input position ``first``) with one lookup; returns them
        with records replaced by what to send, or by their ``unchanged`` outcome. ``full`` and
        ``changed_fields_only`` default to the run's."""
        if self.server is not None:
            await self.state.check_server(self.server)
        full = self.full if full is None else full
        changed = self.changed_fields_only if changed_fields_only is None else changed_fields_only
        records = self._records_of(items, first)
        if not records:
            return items
        state = self.state
        busy = {key for _, _, key in records if state.in_flight(key)}  # before the lookup (rule 2)
        keys = [key for _, _, key in records]
        rows = {} if full else await self.state.lookup(keys, bodies=changed)
        doubtful: list[Key] = []  # contacts about to be sent that the state may hold (rule 3)
        for i, record, key in records:
            try:
                body = canonical_body(record.update)
            except ValueError:
                continue  # the engine rejects it, naming the value
            digest = digest_of(body)
            row = rows.get(key)
            if row is not None and key not in busy and not self._in_flight(key):
                send = _unchanged_or_changes(record, row, digest, changed=changed)
                if send is not record and self.encode is not None:
                    self.hashes[record.line] = record_hash(record, self.encode)
                if isinstance(send, Outcome):
                    items[i] = send
                    self.unchanged += 1
                    continue
                items[i] = send
            self.to_send[key[0]] += 1
            if not self.track:
                self._hand_on(key, row)
            else:
                self._sent[record.line, record.contact_id] = _Sent(key, digest, body)
                state.sending(key, self.sender)
                if full or row is not None:
                    doubtful.append(key)
        if doubtful:
            for key in doubtful:
                self.state.forget(key)
            await self.state.flush()  # committed before any of them can be sent
        return items

    def _in_flight(self, key: Key) -> bool:
        """Whether a record of ``key`` is in flight (a dry run's: handed on to be sent)."""
        return self.state.in_flight(key) or key in self._handed

    def _hand_on(self, key: Key, row: StoredRow | None) -> None:
        """A dry run hands on a record of ``key`` to be sent (see ``_handed``)."""
        if row is not None:
            self._handed.add(key)

    def _records_of(self, items: list[Any], first: int) -> list[tuple[int, Record, Key]]:
        """The records among ``items`` (made :class:`Record` in place), with their state key."""
        records: list[tuple[int, Record, Key]] = []
        for i, item in enumerate(items):
            record = _as_record(item, first + i)
            if record is not None:
                items[i] = record
                records.append(
                    (i, record, (location_key(record, self.location), record.contact_id))
                )
        return records

    def finished(self, outcome: Outcome) -> None:
        """Remember an ``updated`` record, forget a contact sent without a 2xx (rule 1)."""
        sent = self._sent.pop((outcome.line, outcome.contact_id or ""), None)
        if sent is None:
            return
        last, overlapped = self.state.landed(sent.key)
        if last and overlapped:  # two senders, no order between them: which body is unknown
            self.state.forget(sent.key)
        elif outcome.status is Status.UPDATED:
            if last:  # a later record of the contact, still in flight, has the last word
                self.state.remember(sent.key, sent.digest, sent.body, self.clock())
        elif outcome.attempts:
            self.state.forget(sent.key)

    @listens(RecordFinished)
    def on_event(self, event: Any) -> None:
        """A hook: :meth:`finished` for every ``RecordFinished``."""
        outcome = getattr(event, "outcome", None)
        if isinstance(outcome, Outcome):
            self.finished(outcome)


def _unchanged_or_changes(record: Record, row: StoredRow, digest: bytes, *, changed: bool) -> Any:
    """The record's ``unchanged`` outcome, the record with only its changes, or the record."""
    if row.digest == digest:
        return _unchanged(record)
    if changed and row.body is not None:
        try:
            before = decode_update(row.body)
        except msgspec.DecodeError:
            return record  # an older model's body: send it whole
        changes = changed_fields(before, record.update)
        if changes == UpdateContact():
            return _unchanged(record)
        return Record(record.line, record.contact_id, changes, record.token_key)
    return record


def _as_record(item: Any, position: int) -> Record | None:
    """The record an input item stands for (a pair gets its position as line), or ``None``."""
    if isinstance(item, Record):
        record = item
    elif isinstance(item, tuple) and len(item) == 2:
        record = Record(position, item[0], item[1])
    else:
        return None
    if not isinstance(record.contact_id, str) or not isinstance(record.update, UpdateContact):
        return None
    return record


def _unchanged(record: Record) -> Outcome:
    return Outcome(line=record.line, contact_id=record.contact_id, status=Status.UNCHANGED)
