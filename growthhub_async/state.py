"""Incremental sync (issue 14): the SQLite state of what was last applied to each contact.

What is kept, per ``(location, contactId)``: the BLAKE2b-128 digest of the canonical body last
applied (answered 2xx), that body, and when it was applied (Unix time). The body is kept, not
only its digest, so that ``changed_fields_only`` can send just the fields that differ from it.
How records are judged against it, and when it is written, is
:mod:`~growthhub_async.incremental`'s part.

Rules, and why:

1. **One writer per file, whatever its name.** A :class:`SyncState` opened for writing holds an
   exclusive ``flock`` on the state file itself (the journal's mechanism,
   :mod:`~growthhub_async.filelock`), so the lock follows the file through a symlink, a hard
   link or a deleted lock file; another writer, in this process or another, is refused with
   :class:`~growthhub_async.errors.StateError` naming the process that holds it. Two writers
   would record bodies in another order than the server applied them. Readers (a dry run,
   ``growthhub-async state``) take no lock: SQLite's WAL gives them a consistent snapshot.
   ``flock`` and SQLite's POSIX locks do not interact on Linux, but closing *any* descriptor of
   the file drops every POSIX lock the process holds on it: so this process opens the file once
   (one descriptor per inode, shared by every :class:`SyncState` on it) and closes it only after
   the last of their SQLite connections is closed.
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
4. **Another program's lock is waited for, but not for long.** A write lock another program
   holds (an ``sqlite3`` shell, a backup) fails the opening after :data:`OPEN_WAIT` seconds
   with a message naming that process; a write waits :data:`WRITE_WAIT` seconds at most, and
   no longer than the deadline :meth:`SyncState.stop_waiting` sets (a run told to stop), so a
   run stops in time and says why. A write given up fails the run as a full disk does.
5. **One server per file.** The state records the API (origin and path) it was filled against,
   and :meth:`SyncState.check_server` refuses another: what one server holds says nothing about
   another (a sandbox, then production).
6. **Sends in flight are counted per contact, over every run on the state** (several clients of
   one process may share it). A contact with a send in flight is never ``unchanged``; and a
   contact whose sends of two unordered senders overlapped is *forgotten* when the last one
   ends: which body the server kept is unknown.

Durability: WAL with ``synchronous=NORMAL``: a committed write survives the process's death; a
power loss may lose the last commits (their records are then sent again, never skipped wrongly).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, TypeAlias, TypeVar

import yarl

from growthhub_async.errors import StateError
from growthhub_async.filelock import lock_holder, try_lock, unlock

__all__ = [
    "OPEN_WAIT",
    "WRITE_WAIT",
    "Key",
    "LocationStats",
    "StateStats",
    "StoredRow",
    "SyncState",
    "server_of",
    "state_size",
]

APPLICATION_ID: Final = 0x47485354  # "GHST": marks a growthhub-async state file
SCHEMA_VERSION: Final = 1
_IN_CHUNK: Final = 500  # ids per ``IN (...)``: well under SQLite's limit on parameters
_HEADER: Final = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS: Final = 100  # SQLite's own wait per try; ours (rule 4) loops around it
OPEN_WAIT: Final = 2.0
"""Seconds the opening waits for a lock another program holds, then fails (rule 4)."""
WRITE_WAIT: Final = 60.0
"""Seconds a write waits for a lock another program holds, then fails (rule 4)."""

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

_T = TypeVar("_T")

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
    """What a state file holds: per location, its size on disk (with its WAL), and the API it
    was filled against (``None`` before its first run)."""

    locations: list[LocationStats]
    file_bytes: int
    server: str | None = None

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
        self._opened: asyncio.Future[None] | None = None
        self._closed = False
        self._pending: list[tuple[str, Key, bytes, bytes, float]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._failure: StateError | None = None
        self._file: _File | None = None
        self._stop_at = math.inf  # time.monotonic() after which no lock is waited for
        self._flight: dict[Key, _Flight] = {}
        self._server: str | None = None
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

    def stop_waiting(self, within: float) -> None:
        """Wait at most ``within`` seconds more for a lock another program holds (rule 4): a
        run told to stop must not hang on a backup; what is not committed is sent again."""
        self._stop_at = min(self._stop_at, time.monotonic() + within)

    async def check_server(self, base_url: str | yarl.URL) -> None:
        """Refuse a state filled against another API (rule 5); a new state takes this one."""
        server = server_of(base_url)
        if self._server is None:
            await self.open()
            await self._call(self._server_sync, server)
        if self._server is not None and self._server != server:
            raise StateError(
                f"state {self.path!r} holds what was applied through {self._server}, not"
                f" {server}: what one server holds says nothing about another; use another"
                " --state for this one (nothing was sent)"
            )

    # -- sends in flight (rule 6) ----------------------------------------------------------

    def in_flight(self, key: Key) -> bool:
        """Whether a send of ``key`` is in flight, from any run on this state."""
        return key in self._flight

    def sending(self, key: Key, sender: object) -> None:
        """Note a send of ``key`` by ``sender`` (whose own sends of a contact go in order)."""
        flight = self._flight.get(key)
        if flight is None:
            self._flight[key] = _Flight(sender)
            return
        flight.count += 1
        if flight.sender is not sender:
            flight.overlapped = True

    def landed(self, key: Key) -> tuple[bool, bool]:
        """Note that a send of ``key`` ended: whether it was the last in flight, and whether
        sends of two senders overlapped (then which body the server kept is unknown)."""
        flight = self._flight[key]
        flight.count -= 1
        if flight.count:
            return False, flight.overlapped
        del self._flight[key]
        return True, flight.overlapped

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
        if _is_busy(exc):
            holder = lock_holder([self._real, f"{self._real}-shm", f"{self._real}-wal"])
            return StateError(
                f"state {self.path!r}: {doing}: another program holds its lock"
                f" ({holder or 'this system does not say which'}), such as an sqlite3 shell or"
                " a backup: close it or wait for it to end, then run again"
            )
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StateError(f"state {self.path!r}: {doing}: {reason}")

    @property
    def _real(self) -> str:
        return os.path.realpath(self.path)

    def _waiting(self, fn: Callable[[], _T], wait: float) -> _T:
        """``fn()``, tried again while another program holds the lock, for ``wait`` seconds at
        most and not past :meth:`stop_waiting`'s deadline (rule 4); ``fn`` rolls back."""
        deadline = min(time.monotonic() + wait, self._stop_at)
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= min(deadline, self._stop_at):
                    raise
            time.sleep(0.02)  # on top of SQLite's own wait (_BUSY_TIMEOUT_MS) per try

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
        real = self._real  # SQLite keeps its WAL beside the name it opens: the real one
        self._file = _File.share(real, create=not self.readonly, fail=self._fail)
        try:
            _check_header(path, self._file.fd)
            if not self.readonly:
                self._take_lock()
            db = sqlite3.connect(real, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            self._release_file()
            raise self._fail("cannot open it", exc) from None
        except BaseException:
            self._release_file()
            raise
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            ours = self._waiting(lambda: _check_owner(db, path), OPEN_WAIT)
            if self.readonly and not ours:
                db.close()  # an empty file: an empty state, left as it is
                self._release_file()
                self.missing = True
                return
            if not self.readonly:
                self._waiting(lambda: _set_up(db), OPEN_WAIT)
        except StateError:
            db.close()
            self._release_file()
            raise
        except sqlite3.Error as exc:
            db.close()
            self._release_file()
            raise self._fail(_doing(exc, "cannot use it"), exc) from None
        self._db = db

    def _take_lock(self) -> None:
        assert self._file is not None
        holder = self._file.lock(self)
        if holder is not None:
            raise StateError(
                f"state {self.path!r} is in use by {holder}: two runs on one state would record"
                " what they applied in another order than the server applied it; wait for that"
                " run to end, or use another --state"
            )

    def _release_file(self) -> None:
        """After the SQLite connection is closed (rule 1): the lock, then the descriptor."""
        file, self._file = self._file, None
        if file is not None:
            file.release(self)

    def _close_sync(self) -> None:
        try:
            if self._db is not None and not self.readonly:
                self._flush_sync()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release_file()

    def _server_sync(self, server: str) -> None:
        db = self._db
        if db is None:
            return  # a read-only view of no state: nothing to compare with
        try:
            found = db.execute("SELECT value FROM meta WHERE key = 'server'").fetchone()
            if found is None and not self.readonly:

                def record() -> None:
                    with _transaction(db):
                        db.execute("INSERT INTO meta (key, value) VALUES ('server', ?)", (server,))

                self._waiting(record, OPEN_WAIT)
        except sqlite3.Error as exc:
            raise self._fail(_doing(exc, "cannot use it"), exc) from None
        if found is not None:
            self._server = found[0]
        elif not self.readonly:
            self._server = server

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

        def read() -> None:
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

        try:
            self._waiting(read, WRITE_WAIT)
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

        def write() -> None:
            with _transaction(db):
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

        try:
            self._waiting(write, WRITE_WAIT)
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

        def delete() -> int:
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

        try:
            return self._waiting(delete, OPEN_WAIT)
        except sqlite3.Error as exc:
            raise self._fail(_doing(exc, "cannot forget"), exc) from None

    def _stats_sync(self) -> StateStats:
        size = state_size(self.path)
        db = self._db
        if db is None:
            return StateStats([], size, None)

        def read() -> tuple[list[Any], Any]:
            rows = db.execute(
                "SELECT location, count(*), min(applied_at), max(applied_at) FROM applied"
                " GROUP BY location ORDER BY location"
            ).fetchall()
            server = db.execute("SELECT value FROM meta WHERE key = 'server'").fetchone()
            return rows, server

        try:
            rows, server = self._waiting(read, OPEN_WAIT)
        except sqlite3.Error as exc:
            raise self._fail(_doing(exc, "cannot read it"), exc) from None
        return StateStats(
            [LocationStats(*row) for row in rows], size, server[0] if server else None
        )


@dataclass(slots=True)
class _Flight:
    """Sends of one contact in flight (rule 6)."""

    sender: object
    count: int = 1
    overlapped: bool = False


class _File:
    """This process's one descriptor of a state file (rule 1), shared by every
    :class:`SyncState` on it, closed after the last of them: closing a descriptor drops the
    process's POSIX locks on the file, SQLite's included. The writer holds its ``flock``."""

    _open: ClassVar[dict[tuple[int, int], _File]] = {}
    _guard: ClassVar = threading.Lock()

    def __init__(self, fd: int, key: tuple[int, int]) -> None:
        self.fd = fd
        self.key = key
        self.users = 0
        self.writer: SyncState | None = None

    @classmethod
    def share(
        cls, path: str, *, create: bool, fail: Callable[[str, BaseException], StateError]
    ) -> _File:
        with cls._guard:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                info = None
            except OSError as exc:
                raise fail("cannot read it", exc) from None
            file = cls._open.get((info.st_dev, info.st_ino)) if info is not None else None
            if file is None:
                flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | (os.O_CREAT if create else 0)
                try:
                    fd = os.open(path, flags, 0o600)
                except OSError as exc:
                    raise fail("cannot open it", exc) from None
                info = os.fstat(fd)
                file = cls(fd, (info.st_dev, info.st_ino))
                cls._open[file.key] = file
            file.users += 1
            return file

    def lock(self, state: SyncState) -> str | None:
        """Hold the file for ``state``; else who holds it."""
        with self._guard:
            if self.writer is not None:
                return f"another run: process {os.getpid()} (this process: {self.writer!r})"
            holder = try_lock(self.fd, os.fstat(self.fd))
            if holder is None:
                self.writer = state
            return holder

    def release(self, state: SyncState) -> None:
        with self._guard:
            if self.writer is state:
                self.writer = None
                unlock(self.fd)
            self.users -= 1
            if not self.users:
                del self._open[self.key]
                os.close(self.fd)


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


def _check_header(path: str, fd: int) -> None:
    """An existing non-empty file must be an SQLite database (its first 16 bytes say so)."""
    try:
        head = os.pread(fd, len(_HEADER), 0)  # the shared descriptor: never one to close
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateError(f"state {path!r}: cannot read it: {reason}") from None
    if head and head != _HEADER:
        raise StateError(
            f"state {path!r} is not a growthhub-async state file (not an SQLite database);"
            " refusing to use or overwrite it: choose another --state"
        )


def _set_up(db: sqlite3.Connection) -> None:
    """WAL, the schema, and a write now, so that a read-only file or folder is refused before
    anything is sent."""
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA}")
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_by', ?)",
            (f"pid {os.getpid()}",),
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _is_busy(exc: BaseException) -> bool:
    """Whether SQLite said another connection holds the lock (SQLITE_BUSY, SQLITE_LOCKED)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return "locked" in str(exc) or "busy" in str(exc)


def server_of(base_url: str | yarl.URL) -> str:
    """The API a state belongs to (rule 5): scheme, host, port when not the default, path."""
    url = yarl.URL(base_url) if isinstance(base_url, str) else base_url
    host = (url.host or "").lower()
    port = "" if url.port in (None, {"http": 80, "https": 443}.get(url.scheme)) else f":{url.port}"
    return f"{url.scheme}://{host}{port}{url.path.rstrip('/')}"


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
