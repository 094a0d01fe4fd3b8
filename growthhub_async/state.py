"""Incremental sync (issue 14): the SQLite state of what was last applied to each contact.

What is kept, per ``(location, contactId)``: the BLAKE2b-128 digest of the canonical body last
applied (answered 2xx), that body, and when it was applied (Unix time). The body is kept, not
only its digest, so that ``changed_fields_only`` can send just the fields that differ from it.
How records are judged against it, and when it is written, is
:mod:`~growthhub_async.incremental`'s part.

Rules, and why:

1. **One run at a time per file.** A :class:`SyncState` opened for writing holds an exclusive
   ``flock`` on ``FILE.lock`` (the journal's mechanism, :mod:`~growthhub_async.filelock`) until
   it is closed; another is refused with :class:`~growthhub_async.errors.StateError` naming the
   process that holds it. Two writers would record bodies in another order than the server
   applied them. Readers (a dry run, ``growthhub-async state``) take no lock: SQLite's WAL gives
   them a consistent snapshot.
2. **Off the event loop, in order.** Every SQLite call runs on one thread owned by the state
   (``concurrent.futures``), so a web backend's loop never waits on the disk; lookups go in
   batches (one query per batch of records) and writes in groups (one transaction for whatever
   arrived since the last commit), not one per record. A write noted before a lookup is asked
   for is committed before that lookup runs. The standard library's ``sqlite3`` in a thread of
   our own rather than ``aiosqlite``: aiosqlite is that same design (one thread per
   connection) behind a queue of single calls, which would cost a thread hop per statement
   where we batch, and it is one more dependency.
3. **A file that is not ours is never touched.** The file must be empty, new, or an SQLite
   database whose ``application_id`` is ours; it must pass SQLite's ``quick_check``; and it
   must be writable (a write is tried when it is opened). Anything else raises
   :class:`~growthhub_async.errors.StateError` before a record is judged. A write that fails
   later (a full disk) is kept and raised by the next lookup and by :meth:`SyncState.check`.

Durability: WAL with ``synchronous=NORMAL``: a committed write survives the process's death; a
power loss may lose the last commits (their records are then sent again, never skipped wrongly).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeAlias

from growthhub_async.errors import StateError
from growthhub_async.filelock import try_lock

__all__ = [
    "Key",
    "LocationStats",
    "StateStats",
    "StoredRow",
    "SyncState",
    "state_size",
]

APPLICATION_ID: Final = 0x47485354  # "GHST": marks a growthhub-async state file
SCHEMA_VERSION: Final = 1
_IN_CHUNK: Final = 500  # ids per ``IN (...)``: well under SQLite's limit on parameters
_HEADER: Final = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS: Final = 60_000  # another program (a backup, sqlite3) holding a write lock

_SCHEMA: Final = f"""
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
CREATE TABLE IF NOT EXISTS applied (
    location TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    digest BLOB NOT NULL,
    body BLOB NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (location, contact_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Key: TypeAlias = tuple[str, str]
"""``(location, contactId)``."""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """What the state holds for one contact: the digest, and the body when asked for."""

    digest: bytes
    body: bytes | None


@dataclass(frozen=True, slots=True)
class LocationStats:
    """What a state file holds for one location."""

    location: str
    contacts: int
    first_applied: float
    last_applied: float


@dataclass(frozen=True, slots=True)
class StateStats:
    """What a state file holds: per location, and its size on disk (with its WAL)."""

    locations: list[LocationStats]
    file_bytes: int

    @property
    def contacts(self) -> int:
        """Contacts remembered, over all locations."""
        return sum(loc.contacts for loc in self.locations)


class SyncState:
    """The state file: open it, judge records against it, remember what was applied.

    ``SyncState(path)`` does no I/O; :meth:`open` (awaited, or done by the first call that
    needs it) checks the file and takes the lock. ``readonly=True`` takes no lock and writes
    nothing: a missing file is an empty state. Close with :meth:`close` (or ``async with``):
    it commits what is pending, then releases the lock.

    Usable from any number of tasks of one event loop (a web backend's handlers); every SQLite
    call runs on the state's own thread.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._opened: asyncio.Future[None] | None = None
        self._closed = False
        self._pending: list[tuple[str, Key, bytes, bytes, float]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._failure: StateError | None = None
        self.written = 0
        """Rows committed (remembered or forgotten) since the file was opened."""
        self.missing = False
        """Opened ``readonly`` where no state exists (no file, or an empty one)."""

    def __repr__(self) -> str:
        return f"<SyncState {self.path!r}{' readonly' if self.readonly else ''}>"

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Check the file and take the lock (once; later calls wait for the first)."""
        if self._closed:
            raise StateError(f"the state {self.path!r} is closed")
        if self._opened is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="growthhub-state"
            )
            self._opened = asyncio.ensure_future(self._call(self._open_sync))
        await asyncio.shield(self._opened)

    async def close(self) -> None:
        """Commit what is pending, close the database and release the lock."""
        if self._closed:
            return
        self._closed = True
        if self._executor is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> SyncState:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- reading ---------------------------------------------------------------------------

    async def lookup(self, keys: Sequence[Key], *, bodies: bool = False) -> dict[Key, StoredRow]:
        """The rows of ``keys`` that the state holds (one query per location and chunk)."""
        await self.open()
        rows: dict[Key, StoredRow] = await self._call(self._lookup_sync, keys, bodies)
        return rows

    async def stats(self) -> StateStats:
        """Counts and times per location, and the file's size."""
        await self.open()
        stats: StateStats = await self._call(self._stats_sync)
        return stats

    def check(self) -> None:
        """Raise :class:`StateError` if a write failed (the run must stop: see rule 3)."""
        if self._failure is not None:
            raise self._failure

    # -- writing ---------------------------------------------------------------------------

    def remember(self, key: Key, digest: bytes, body: bytes, at: float) -> None:
        """Note that ``body`` was applied to ``key`` at ``at`` (committed soon, in order)."""
        self._queue(("put", key, digest, body, at))

    def forget(self, key: Key) -> None:
        """Note that what ``key`` holds is unknown (committed soon, in order)."""
        self._queue(("del", key, b"", b"", 0.0))

    async def flush(self) -> None:
        """Wait until everything noted so far is committed; raise if a write failed."""
        await self.open()
        await self._call(self._flush_sync)
        self.check()

    async def forget_location(self, location: str) -> int:
        """Forget every contact of ``location``; returns how many."""
        await self.open()
        count: int = await self._call(self._delete_sync, location, None)
        return count

    async def forget_contacts(self, location: str, contact_ids: Iterable[str]) -> int:
        """Forget these contacts of ``location``; returns how many the state held."""
        await self.open()
        count: int = await self._call(self._delete_sync, location, list(contact_ids))
        return count

    def _queue(self, op: tuple[str, Key, bytes, bytes, float]) -> None:
        if self.readonly:
            raise StateError(f"the state {self.path!r} is open read-only")
        if self._executor is None or self._closed:
            raise StateError(f"the state {self.path!r} is not open")
        with self._pending_lock:
            self._pending.append(op)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            # Submitted now, so it runs before any lookup asked for after this (rule 2).
            self._executor.submit(self._flush_sync)

    # -- on the state's thread -------------------------------------------------------------

    def _fail(self, doing: str, exc: BaseException) -> StateError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StateError(f"state {self.path!r}: {doing}: {reason}")

    def _open_sync(self) -> None:
        path = self.path
        if os.path.isdir(path):
            raise StateError(f"state {path!r} is a directory, not a state file")
        exists = os.path.exists(path)
        if exists and not os.path.isfile(path):  # a FIFO or a device would hang or lie
            raise StateError(f"state {path!r} is not a regular file")
        if self.readonly and not exists:
            self.missing = True
            return  # an empty state: nothing to read, nothing created
        if exists:
            _check_header(path)
        if not self.readonly:
            self._take_lock()
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            self._release_lock()
            raise self._fail("cannot open it", exc) from None
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            ours = _check_owner(db, path)
            if self.readonly and not ours:
                db.close()  # an empty file: an empty state, left as it is
                self.missing = True
                return
            if not self.readonly:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
                # A write now, so a read-only file or folder is refused before anything is sent.
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_by', ?)",
                    (f"pid {os.getpid()}",),
                )
        except StateError:
            db.close()
            self._release_lock()
            raise
        except sqlite3.Error as exc:
            db.close()
            self._release_lock()
            raise self._fail(_doing(exc, "cannot use it"), exc) from None
        self._db = db

    def _take_lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise self._fail(f"cannot open its lock file {lock_path!r}", exc) from None
        holder = try_lock(fd, os.fstat(fd))
        if holder is not None:
            os.close(fd)
            raise StateError(
                f"state {self.path!r} is in use by {holder}: two runs on one state would record"
                " what they applied in another order than the server applied it; wait for that"
                " run to end, or use another --state"
            )
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _close_sync(self) -> None:
        try:
            if self._db is not None and not self.readonly:
                self._flush_sync()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release_lock()

    def _lookup_sync(self, keys: Sequence[Key], bodies: bool) -> dict[Key, StoredRow]:
        if self._failure is not None:
            raise self._failure
        db = self._db
        found: dict[Key, StoredRow] = {}
        if db is None or not keys:
            return found
        by_location: dict[str, list[str]] = {}
        for location, contact_id in keys:
            by_location.setdefault(location, []).append(contact_id)
        columns = "contact_id, digest, body" if bodies else "contact_id, digest, NULL"
        try:
            for location, ids in by_location.items():
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start : start + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    cursor = db.execute(
                        f"SELECT {columns} FROM applied"  # noqa: S608 (only "?" marks)
                        f" WHERE location = ? AND contact_id IN ({marks})",
                        (location, *chunk),
                    )
                    for contact_id, digest, body in cursor:
                        found[location, contact_id] = StoredRow(digest, body)
        except sqlite3.Error as exc:
            raise self._fail(_doing(exc, "cannot read it"), exc) from None
        return found

    def _flush_sync(self) -> None:
        with self._pending_lock:
            ops, self._pending = self._pending, []
            self._flush_scheduled = False
        if not ops or self._failure is not None:
            return
        db = self._db
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Consecutive operations of one kind go together; the order is kept.
                start = 0
                while start < len(ops):
                    kind = ops[start][0]
                    end = start
                    while end < len(ops) and ops[end][0] == kind:
                        end += 1
                    group = ops[start:end]
                    if kind == "put":
                        db.executemany(
                            "INSERT OR REPLACE INTO applied"
                            " (location, contact_id, digest, body, applied_at)"
                            " VALUES (?, ?, ?, ?, ?)",
                            [(k[0], k[1], d, b, at) for _, k, d, b, at in group],
                        )
                    else:
                        db.executemany(
                            "DELETE FROM applied WHERE location = ? AND contact_id = ?",
                            [k for _, k, _, _, _ in group],
                        )
                    start = end
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # Kept for the next lookup and check(): the run must stop (rule 3). What was not
            # committed is sent again next time, which is the safe side.
            self._failure = self._fail(_doing(exc, "cannot record what was applied"), exc)
            return
        self.written += len(ops)

    def _delete_sync(self, location: str, contact_ids: list[str] | None) -> int:
        db = self._db
        if db is None:
            return 0
        self._flush_sync()
        try:
            with _transaction(db):
                if contact_ids is None:
                    cursor = db.execute("DELETE FROM applied WHERE location = ?", (location,))
                    return cursor.rowcount
                count = 0
                for contact_id in contact_ids:
                    cursor = db.execute(
                        "DELETE FROM applied WHERE location = ? AND contact_id = ?",
                        (location, contact_id),
                    )
                    count += cursor.rowcount
                return count
        except sqlite3.Error as exc:
            raise self._fail(_doing(exc, "cannot forget"), exc) from None

    def _stats_sync(self) -> StateStats:
        size = state_size(self.path)
        db = self._db
        if db is None:
            return StateStats([], size)
        try:
            rows = db.execute(
                "SELECT location, count(*), min(applied_at), max(applied_at) FROM applied"
                " GROUP BY location ORDER BY location"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(_doing(exc, "cannot read it"), exc) from None
        return StateStats([LocationStats(*row) for row in rows], size)


class _transaction:  # noqa: N801 (used as a statement)
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an error), autocommit otherwise."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")


def _doing(exc: sqlite3.Error, default: str) -> str:
    """Words for what went wrong, from SQLite's error (a corrupt file, a full disk)."""
    text = str(exc).lower()
    if "malformed" in text or "not a database" in text:
        return "it is corrupt or not a state file"
    if "readonly" in text or "read-only" in text:
        return "it cannot be written (read-only file or folder)"
    if "full" in text:
        return "the disk is full"
    return default


def _check_header(path: str) -> None:
    """An existing non-empty file must be an SQLite database (its first 16 bytes say so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateError(f"state {path!r}: cannot read it: {reason}") from None
    if head and head != _HEADER:
        raise StateError(
            f"state {path!r} is not a growthhub-async state file (not an SQLite database);"
            " refusing to use or overwrite it: choose another --state"
        )


def _check_owner(db: sqlite3.Connection, path: str) -> bool:
    """Refuse another program's database, a newer schema, or a damaged file; ``True`` for a
    state file, ``False`` for an empty database (a state yet to be made)."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
    if app_id != APPLICATION_ID and (app_id or version or tables):
        shown = ", ".join(tables[:5]) or "none"
        raise StateError(
            f"state {path!r} is an SQLite database of another program (application_id "
            f"{app_id:#x}, tables: {shown}), not a growthhub-async state file; refusing to use"
            " or change it: choose another --state"
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state {path!r} was written by a newer growthhub-async (schema {version}, this one"
            f" knows {SCHEMA_VERSION}): upgrade, or use another --state"
        )
    if not tables:
        return False
    check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    if check != "ok":
        raise StateError(
            f"state {path!r} is corrupt ({' '.join(check.split())}): move it away (a run"
            " without it sends every record) or restore a copy"
        )
    return True


def state_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a state file and its WAL."""
    base = Path(path)
    return sum(p.stat().st_size for p in (base, Path(f"{base}-wal")) if p.is_file())
