"""The append-only outcome journal (OUTCOMES.jsonl) and what ``--resume`` reads back from it.

One JSON line per finished record, ``{"line", "contactId", "status", "httpStatus", "attempts",
"error"}`` (:func:`~growthhub_async.outcomes.encode_outcome`), then ``recordHash`` and, from the
command line, the run's facts (:class:`RunFacts`: ``location``, ``at``, ``rateLimited``,
``runId``), appended and handed to the operating system as the record finishes.

Durability. Each line goes out in a single ``os.write`` on a descriptor opened with
``O_APPEND``: no user-space buffer holds it back, so once :meth:`Journal.write` returns the line
is in the kernel's page cache, and a killed process (``SIGKILL`` included) loses nothing; the
kernel writes it to disk on its own. Only a machine crash or power loss can lose lines that are
in the page cache, and that is what ``fsync`` is for: :class:`Journal` syncs on close, and every
``fsync_every`` lines when asked to (each ``fsync`` costs a disk round trip, milliseconds on
many disks, so syncing every line would cap a run at a few hundred records a second). A crash
can leave a torn last line; resuming repairs it.

Resume. Each line also carries ``recordHash``: a BLAKE2b-128 digest (hex) of the record as it
would be sent, its ``contactId``, token key and JSON body, or, for a ``rejected`` record, its
error (:func:`record_hash`). :func:`load_resume_state` reads a journal and remembers, per input
line, whether that line's *last* outcome is final (:data:`~growthhub_async.outcomes.FINAL_STATUSES`)
and for which record. A line whose last outcome is final is skipped only when the input still
holds the *same record* there: a record edited since (new field values, another id, a
``rejected`` line fixed) is sent (``ResumeState.mismatched`` counts them, so the caller can
warn). A line with a null ``recordHash`` (written by a caller that gave none) is never skipped.
Journals written before ``recordHash`` existed are refused with a message that says so: their
key (the line and a checksum of the ``contactId``) cannot tell an edited record from the one sent.
A torn last line (no newline: the process died or the machine crashed mid-write) is ignored, so
its record is sent again, and ``Journal(resume=True)`` truncates it before appending: a new line
never glues onto a torn one. Any other line that is not an outcome makes the file "not a
journal", and nothing is appended to it.

One run at a time. :class:`Journal` holds an exclusive ``flock`` on a regular file for as long
as it is open; a second :class:`Journal` on the same file (another run, ``--resume`` or not) is
refused at once with :class:`~growthhub_async.errors.JournalError` naming the process that holds
it (read from ``/proc/locks`` where the system has it: the kernel's own record, never stale).
With ``resume`` the state is read through the locked descriptor, after the lock is taken.

Integrity. After the first line, then at most every ``check_every`` seconds (half a second by
default), and on :meth:`Journal.check` (which the job calls at the end), the open file is
compared with what the path names: a journal deleted, replaced (another file renamed over it)
or truncated while the run writes to it raises :class:`~growthhub_async.errors.JournalError`
instead of writing on into a file nobody will read.

Memory. The state is one 8-byte slot per input line (63 bits of the record's hash plus a
"final" bit) and one byte for that final outcome's status (for the whole job's totals), about
9 MB for a million lines, however many times the journal repeats a line.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Final, TypeVar

import msgspec

from growthhub_async.errors import JournalError
from growthhub_async.filelock import try_lock
from growthhub_async.models import UpdateContact, encode_update
from growthhub_async.outcomes import FINAL_STATUSES, Outcome, Status
from growthhub_async.sources import Record

__all__ = [
    "MAX_LINE",
    "Journal",
    "ResumeState",
    "RunFacts",
    "load_resume_state",
    "record_hash",
    "sent_hash",
]

MAX_LINE: Final = 1 << 28
"""The highest input line number a journal may name (the resume state is indexed by line)."""

# Every journal line starts so: encode_outcome writes the Outcome's fields in order. Checking the
# first bytes before resuming keeps --resume from truncating or appending to some other file.
_SIGNATURE: Final = b'{"line":'
_READ_CHUNK: Final = 1 << 16
_HASH_SIZE: Final = 16
_TAIL: Final = 4096  # bytes of the last line that check() compares with the end of the file
# Seconds between two checks that the path still names the file written (two stat calls, a few
# microseconds: not for every line of a fast run, often enough to stop a run within a second).
_CHECK_EVERY: Final = 0.5
# A final line's slot: 63 bits of its record hash with the low bit set (never 0: "not final").
# A final line without a hash gets _NO_HASH (even, so that no record's slot ever equals it).
_NO_HASH: Final = 2
# Not inherited by child processes; binary on Windows (the flags are 0 where they do not exist).
_OPEN_EXTRA: Final = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class _Entry(msgspec.Struct, rename="camel"):
    """The part of a journal line that resume needs; the rest is skipped, not decoded."""

    line: int
    status: Status
    record_hash: str | msgspec.UnsetType | None = msgspec.UNSET


class RunFacts(msgspec.Struct, rename="camel"):
    """What a journal line says about its run besides the outcome (issue 16; the report's
    input): the record's ``location`` (its token key; ``None`` for a record rejected before it
    had one), when it ended (``at``: seconds since the epoch, to the millisecond), the 429
    answers it got (``rateLimited``) and the run's id (``runId``, as in the logs and the run
    span). Written after ``recordHash``; journals without them are read as before."""

    location: str | None
    at: float
    rate_limited: int
    run_id: str | None


class _Line(msgspec.Struct, rename="camel"):
    """A journal line as written: the outcome's keys (as ``encode_outcome`` writes them), then
    ``recordHash``. Encoded in one call (issue 17: three encodes and a splice cost more)."""

    line: int
    contact_id: str | None
    status: Status
    http_status: int | None
    attempts: int
    error: str | None
    record_hash: str | None


class _LineWithFacts(_Line):
    """... followed by the run's facts (:class:`RunFacts`)."""

    location: str | None
    at: float
    rate_limited: int
    run_id: str | None


_entry_decoder: Final = msgspec.json.Decoder(_Entry)
_key_encoder: Final = msgspec.json.Encoder()
_line_encoder: Final = msgspec.json.Encoder()


_ItemT = TypeVar("_ItemT", bound=Record | Outcome)


def record_hash(
    item: Record | Outcome, encode: Callable[[UpdateContact], bytes] = encode_update
) -> bytes:
    """The resume key of an input item: a 16-byte BLAKE2b digest of everything that is sent.

    For a :class:`~growthhub_async.sources.Record`: its ``contactId``, token key and the JSON
    body ``encode`` makes of its update (pass the client's encoder, so that what is hashed is
    what goes on the wire). For a ``rejected`` :class:`~growthhub_async.outcomes.Outcome`: its
    error, so that a line fixed since is no longer "the same record".
    """
    if isinstance(item, Outcome):
        digest = hashlib.blake2b(digest_size=_HASH_SIZE)
        digest.update(_key_encoder.encode(("rejected", item.error)))
        return digest.digest()
    return sent_hash(item.contact_id, item.token_key, encode(item.update))


def sent_hash(contact_id: str, token_key: str | None, body: bytes) -> bytes:
    """:func:`record_hash` of a record from what goes on the wire (the engine has the body)."""
    key = _key_encoder.encode((contact_id, token_key))
    return hashlib.blake2b(key + body, digest_size=_HASH_SIZE).digest()


_STATUSES: Final = tuple(Status)
_CODES: Final = {status: code for code, status in enumerate(_STATUSES, start=1)}


def _slot(key: bytes | None) -> int:
    return _NO_HASH if key is None else int.from_bytes(key[:8], "big") | 1


class ResumeState:
    """Which input lines already have a final outcome, and for which record (its hash).

    ``entries`` counts the journal lines read, ``torn`` says whether the last one was torn, and
    ``mismatched`` counts records that :meth:`is_final` found final for another content.
    """

    def __init__(self) -> None:
        self._slots = array("Q")
        self._statuses = bytearray()  # per line: the final status's code (_CODES), beside its slot
        self._final = 0
        self.entries = 0
        self.torn = False
        self.mismatched = 0
        self.reordered = 0
        """Final records sent again after an earlier record of their contact (:meth:`skips`)."""
        self._behind: set[str] = set()  # contacts with an earlier record being sent again

    def record(self, line: int, key: bytes | None, status: Status) -> None:
        """Note one outcome (``key``: :func:`record_hash`, or ``None`` when unknown); a later
        outcome for the same line replaces an earlier one."""
        if not 1 <= line <= MAX_LINE:
            raise ValueError(f"line {line} is outside 1..{MAX_LINE}")
        slots = self._slots
        if line >= len(slots):
            if status not in FINAL_STATUSES:
                return  # nothing to forget
            # Grow geometrically, with zeros ("not final"), so a million lines cost a few copies.
            grow = max(line + 1, 2 * len(slots)) - len(slots)
            slots.frombytes(bytes(slots.itemsize * grow))
            self._statuses.extend(bytes(grow))
        new = _slot(key) if status in FINAL_STATUSES else 0
        self._final += bool(new) - bool(slots[line])
        slots[line] = new
        self._statuses[line] = _CODES[status] if new else 0

    def final_status(self, line: int) -> Status | None:
        """The final status the journal holds for ``line`` (``None``: not final, or no line)."""
        code = self._statuses[line] if 0 < line < len(self._statuses) else 0
        return _STATUSES[code - 1] if code else None

    def is_final(self, line: int, key: bytes) -> bool:
        """Whether ``line`` has a final outcome for this same record (then skip it)."""
        slots = self._slots
        if line >= len(slots) or line < 1 or not (slot := slots[line]):
            return False
        if slot == _slot(key):
            return True
        self.mismatched += 1
        return False

    def skips(self, item: Record | Outcome, key: bytes) -> bool:
        """Whether a resumed run skips ``item`` (``key``: its :func:`record_hash`), in input order.

        It does when its line holds a final outcome for this same record, unless an earlier
        record of the same contact is being sent again: that one would then be applied after
        this later one, against input order, so this one is sent again after it.
        """
        contact = item.contact_id if isinstance(item, Record) else None
        if contact is not None and contact in self._behind:
            self.reordered += self.final_status(item.line) is not None
            return False
        if self.is_final(item.line, key):
            return True
        if contact is not None:
            self._behind.add(contact)
        return False

    def pending(
        self, items: Iterable[_ItemT], key: Callable[[_ItemT], bytes] = record_hash
    ) -> Iterator[_ItemT]:
        """The items a resumed run must still do (see :meth:`skips`)."""
        for item in items:
            if not self.skips(item, key(item)):
                yield item

    def trim(self) -> None:
        """Give back the slots after the last final line (growth doubles; loading is done)."""
        slots = self._slots
        end = len(slots)
        while end > 0 and not slots[end - 1]:
            end -= 1
        del slots[end:]
        del self._statuses[end:]

    def __len__(self) -> int:
        """How many input lines have a final outcome."""
        return self._final

    @property
    def nbytes(self) -> int:
        """Memory held by the per-line slots and statuses, in bytes."""
        return self._slots.itemsize * len(self._slots) + len(self._statuses)


def load_resume_state(path: str | os.PathLike[str]) -> ResumeState:
    """Read the journal at ``path`` into a :class:`ResumeState` (empty if there is no file).

    Tolerates a torn last line (ignored: its record is sent again). Raises
    :class:`~growthhub_async.errors.JournalError` for a file that is not an outcome journal.
    Takes no lock: a running job reads its state through :class:`Journal` instead.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a missing file is an empty state
    except FileNotFoundError:
        return ResumeState()
    except OSError as exc:
        raise JournalError(f"cannot read outcomes {os.fspath(path)!r}: {exc.strerror}") from None
    with f:
        return _read_state(f, os.fspath(path))


def _read_state(f: IO[bytes], path: str) -> ResumeState:
    state = ResumeState()
    decode = _entry_decoder.decode
    record = state.record
    for number, raw in enumerate(f, start=1):
        if not raw.endswith(b"\n"):
            state.torn = True  # only the last line can lack its newline
            break
        if raw.isspace():
            continue  # a blank line (an editor's, an `echo >>`) holds no outcome
        try:
            entry = decode(raw)
            key = entry.record_hash
            if key is msgspec.UNSET:
                raise JournalError(
                    f"{path!r} was written by an earlier growthhub-async (line {number} has no"
                    " recordHash): its resume key (the line and a checksum of the contactId)"
                    " cannot tell an edited record from the one that was sent; start a new"
                    " --out (records already updated are sent again)"
                )
            record(entry.line, bytes.fromhex(key) if key is not None else None, entry.status)
        except (msgspec.DecodeError, ValueError) as exc:
            raise JournalError(
                f"{path!r} is not an outcome journal: line {number}: {exc}"
            ) from None
        state.entries += 1
    state.trim()
    return state


class Journal:
    """The outcome journal, open for appending; use as a context manager or call :meth:`close`.

    Without ``resume`` a non-empty existing file is refused
    (:class:`~growthhub_async.errors.JournalError`): its outcomes belong to an earlier run.
    With ``resume`` the file must be a journal; its state is read into :attr:`resume_state`
    under the lock, then its torn last line, if any, is cut off. A file another open
    :class:`Journal` holds (in any process) is refused, naming that process.
    ``fsync_every`` (0: never) also syncs to disk every that many lines; closing always syncs.
    ``check_every`` is the most seconds between two checks of the file (0: after every line).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        resume: bool = False,
        fsync_every: int = 0,
        check_every: float = _CHECK_EVERY,
    ) -> None:
        if fsync_every < 0:
            raise ValueError("fsync_every must be 0 (never) or a positive number of lines")
        self.path = os.fspath(path)
        self.fsync_every = fsync_every
        self.check_every = check_every
        self.written = 0
        self.resume_state: ResumeState | None = None
        """With ``resume``: what the journal held when it was opened."""
        try:
            # A file is read back (resume, and check() of its end); other targets are only
            # written, which suits write-only ones such as a FIFO or /dev/full. The file is
            # created 0600 (or narrowed to it below): errors may quote the server.
            access = os.O_RDWR if resume or _is_file_or_new(self.path) else os.O_WRONLY
            fd = os.open(self.path, access | os.O_CREAT | os.O_APPEND | _OPEN_EXTRA, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open outcomes {self.path!r}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            # Only a regular file can be locked, measured and replaced; a pipe or a terminal
            # (--out /dev/stdout) is written as it is.
            self.regular = stat.S_ISREG(info.st_mode)
            """A regular file (else a pipe, a device: written, never read back)."""
            if self.regular:
                _lock(fd, self.path, info)
                if info.st_mode & 0o077 and info.st_uid == os.geteuid():
                    os.fchmod(fd, 0o600)  # one that was there before (touched, resumed) too
            size = os.fstat(fd).st_size  # after the lock: what no other run will change
            self.resume_state = _prepare(fd, self.path, size, resume=resume)
            self._size = os.fstat(fd).st_size
            self._last = b""  # the last line written: is its end still the file's end?
            self._overwritten = False
            self._next_check = 0.0
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def write(
        self,
        outcome: Outcome,
        record_hash: bytes | None = None,
        *,
        facts: RunFacts | None = None,
    ) -> None:
        """Append one outcome line (with ``record_hash``, the resume key of its record, and the
        run's ``facts`` when given) and hand it to the OS before returning (see module doc);
        :meth:`check` the file after the first line and then at most every ``check_every``
        seconds."""
        fd = self._fd
        if fd is None:
            raise ValueError("the journal is closed")
        # recordHash goes after the outcome's own keys: {..."error":null,"recordHash":..}, then
        # the run's facts (issue 16), which readers of older journals do without.
        key = record_hash.hex() if record_hash is not None else None
        o = outcome
        line = (
            _Line(o.line, o.contact_id, o.status, o.http_status, o.attempts, o.error, key)
            if facts is None
            else _LineWithFacts(
                o.line,
                o.contact_id,
                o.status,
                o.http_status,
                o.attempts,
                o.error,
                key,
                facts.location,
                facts.at,
                facts.rate_limited,
                facts.run_id,
            )
        )
        data = _line_encoder.encode(line) + b"\n"
        self._size += len(data)
        self._last = data  # check() compares its end with the file's
        # One write per line: with O_APPEND a line lands whole at the end. A short write (a full
        # disk, a signal) continues where it stopped rather than dropping the rest.
        done = os.write(fd, data)
        while done < len(data):
            data = data[done:]
            done = os.write(fd, data)
        self.written += 1
        if self.fsync_every and self.written % self.fsync_every == 0:
            os.fsync(fd)
        if (now := time.monotonic()) >= self._next_check:
            self._next_check = now + self.check_every
            self.check()

    def check(self) -> None:
        """Raise :class:`~growthhub_async.errors.JournalError` if the file was deleted, replaced
        or truncated since it was opened: the lines written would be lost to whoever reads the
        path. A few microseconds (two ``stat`` calls); nothing to do for a pipe or a terminal."""
        fd = self._fd
        if fd is None or not self.regular:
            return
        mine = os.fstat(fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        if named is None:
            problem = "was deleted"
        elif (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
            problem = "was replaced by another file"
        elif mine.st_size < self._size:
            problem = f"was truncated ({mine.st_size} bytes, {self._size} written)"
        elif (
            self._overwritten
            or mine.st_size > self._size
            or _pread(fd, len(tail := self._last[-_TAIL:]), self._size - len(tail)) != tail
        ):
            self._overwritten = True  # the lines after it cannot make the file whole again
            # This run holds the lock and alone appends: anything else wrote to the file (a
            # copy over it in place keeps its inode, and may leave it longer than ours).
            problem = "was overwritten or written to by another program"
        else:
            return
        raise JournalError(
            f"the outcomes file {self.path!r} {problem} while this run was writing to it;"
            " the outcomes it held are lost, and a resumed run sends those records again"
        )

    def sync(self) -> None:
        """Force the lines written so far to disk (``fsync``), to survive a machine crash."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Sync and close (which releases the lock); closing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError:
                pass  # a pipe or terminal (--out /dev/stdout) cannot sync; nothing is lost
            finally:
                os.close(fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._fd is None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _lock(fd: int, path: str, info: os.stat_result) -> None:
    """Hold ``fd`` exclusively (``flock``: per open file, released on close or death)."""
    holder = try_lock(fd, info)
    if holder is not None:
        raise JournalError(
            f"{path!r} is in use by {holder}: two runs on one outcomes file would send"
            " its records twice; wait for that run to end, or choose another --out"
        )


def _prepare(fd: int, path: str, size: int, *, resume: bool) -> ResumeState | None:
    """Refuse a non-empty file without resume; with resume, read it and cut a torn tail."""
    if not resume:
        if size:
            raise JournalError(
                f"{path!r} already holds outcomes ({size} bytes) and would be overwritten;"
                " pass --resume to continue that run, or choose another --out"
            )
        return None
    if not size:
        return ResumeState()
    _check_signature(fd, path)
    os.lseek(fd, 0, os.SEEK_SET)
    # Read through a duplicate of the locked descriptor: the very file that is held.
    with open(os.dup(fd), "rb") as f:
        state = _read_state(f, path)
    _cut_torn_tail(fd, size)
    return state


def _check_signature(fd: int, path: str) -> None:
    head = _pread(fd, len(_SIGNATURE), 0)
    # A journal whose only line was torn very early may hold just the signature's beginning.
    if not _SIGNATURE.startswith(head) or not head:
        raise JournalError(
            f"{path!r} is not an outcome journal (it does not start with {_SIGNATURE.decode()});"
            " refusing to append to it"
        )


def _cut_torn_tail(fd: int, size: int) -> None:
    """Truncate after the last newline, so that the next line starts on a line of its own."""
    if _pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - _READ_CHUNK)
        chunk = _pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def _is_file_or_new(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Read at ``offset`` (portable ``os.pread``: seeking does not move O_APPEND writes)."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
