"""The append-only outcome journal (OUTCOMES.jsonl) and what ``--resume`` reads back from it.

One JSON line per finished record, ``{"line", "contactId", "status", "httpStatus", "attempts",
"error"}`` (:func:`~growthhub_async.outcomes.encode_outcome`), appended and handed to the
operating system as the record finishes.

Durability. Each line goes out in a single ``os.write`` on a descriptor opened with
``O_APPEND``: no user-space buffer holds it back, so once :meth:`Journal.write` returns the line
is in the kernel's page cache, and a killed process (``SIGKILL`` included) loses nothing; the
kernel writes it to disk on its own. Only a machine crash or power loss can lose lines that are
in the page cache, and that is what ``fsync`` is for: :class:`Journal` syncs on close, and every
``fsync_every`` lines when asked to (each ``fsync`` costs a disk round trip, milliseconds on
many disks, so syncing every line would cap a run at a few hundred records a second). A crash
can leave a torn last line; resuming repairs it.

Resume. :func:`load_resume_state` reads a journal and remembers, per input line, whether that
line's *last* outcome is final (:data:`~growthhub_async.outcomes.FINAL_STATUSES`) and for which
``contactId``. A line whose last outcome is final is skipped, but only when the input still has
the same ``contactId`` on that line: if it does not, the input changed since the journal was
written, and the record is sent rather than silently skipped (``ResumeState.mismatched`` counts
them, so the caller can warn). A torn last line (no newline: the process died or the machine
crashed mid-write) is ignored, so its record is sent again, and ``Journal(resume=True)``
truncates it before appending: a new line never glues onto a torn one. Any other line that is
not an outcome makes the file "not a journal", and nothing is appended to it.

Memory. The state is one 4-byte slot per input line (a 31-bit CRC of the ``contactId`` plus a
"final" bit), about 4 MB for a million lines, however many times the journal repeats a line.
"""

from __future__ import annotations

import os
import zlib
from array import array
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Final, Protocol, TypeVar

import msgspec

from growthhub_async.errors import JournalError
from growthhub_async.outcomes import FINAL_STATUSES, Outcome, Status, encode_outcome

__all__ = ["MAX_LINE", "Journal", "ResumeState", "load_resume_state"]

MAX_LINE: Final = 1 << 28
"""The highest input line number a journal may name (the resume state is indexed by line)."""

# Every journal line starts so: encode_outcome writes the Outcome's fields in order. Checking the
# first bytes before resuming keeps --resume from truncating or appending to some other file.
_SIGNATURE: Final = b'{"line":'
_READ_CHUNK: Final = 1 << 16
_FINAL_BIT: Final = 0x8000_0000
# Not inherited by child processes; binary on Windows (the flags are 0 where they do not exist).
_OPEN_EXTRA: Final = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class _Entry(msgspec.Struct, rename="camel"):
    """The part of a journal line that resume needs; the rest is skipped, not decoded."""

    line: int
    status: Status
    contact_id: str | None = None


_entry_decoder: Final = msgspec.json.Decoder(_Entry)


class _Numbered(Protocol):
    """An input item: a record or a rejected outcome (both carry these two attributes)."""

    @property
    def line(self) -> int: ...

    @property
    def contact_id(self) -> str | None: ...


_ItemT = TypeVar("_ItemT", bound=_Numbered)


def _key(contact_id: str | None) -> int:
    """The slot value of a final outcome for ``contact_id``: never 0, which means "not final"."""
    crc = zlib.crc32(contact_id.encode()) if contact_id is not None else 0
    return _FINAL_BIT | (crc & 0x7FFF_FFFF)


class ResumeState:
    """Which input lines already have a final outcome, and for which ``contactId``.

    ``entries`` counts the journal lines read, ``torn`` says whether the last one was torn, and
    ``mismatched`` counts records that :meth:`is_final` found final for another ``contactId``.
    """

    def __init__(self) -> None:
        self._slots = array("I")
        self._final = 0
        self.entries = 0
        self.torn = False
        self.mismatched = 0

    def record(self, line: int, contact_id: str | None, status: Status) -> None:
        """Note one outcome; a later outcome for the same line replaces an earlier one."""
        if not 1 <= line <= MAX_LINE:
            raise ValueError(f"line {line} is outside 1..{MAX_LINE}")
        slots = self._slots
        if line >= len(slots):
            if status not in FINAL_STATUSES:
                return  # nothing to forget
            # Grow geometrically, with zeros ("not final"), so a million lines cost a few copies.
            slots.frombytes(bytes(slots.itemsize * (max(line + 1, 2 * len(slots)) - len(slots))))
        new = _key(contact_id) if status in FINAL_STATUSES else 0
        self._final += bool(new) - bool(slots[line])
        slots[line] = new

    def is_final(self, line: int, contact_id: str | None) -> bool:
        """Whether ``line`` has a final outcome for this same ``contactId`` (then skip it)."""
        slots = self._slots
        if line >= len(slots) or line < 1 or not (slot := slots[line]):
            return False
        if slot == _key(contact_id):
            return True
        self.mismatched += 1
        return False

    def pending(self, items: Iterable[_ItemT]) -> Iterator[_ItemT]:
        """The items whose line has no final outcome yet: what a resumed run must still do."""
        is_final = self.is_final
        for item in items:
            if not is_final(item.line, item.contact_id):
                yield item

    def __len__(self) -> int:
        """How many input lines have a final outcome."""
        return self._final

    @property
    def nbytes(self) -> int:
        """Memory held by the per-line slots, in bytes."""
        return self._slots.itemsize * len(self._slots)


def load_resume_state(path: str | os.PathLike[str]) -> ResumeState:
    """Read the journal at ``path`` into a :class:`ResumeState` (empty if there is no file).

    Tolerates a torn last line (ignored: its record is sent again). Raises
    :class:`~growthhub_async.errors.JournalError` for a file that is not an outcome journal.
    """
    state = ResumeState()
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a missing file is an empty state
    except FileNotFoundError:
        return state
    except OSError as exc:
        raise JournalError(f"cannot read outcomes {os.fspath(path)!r}: {exc.strerror}") from None
    decode = _entry_decoder.decode
    with f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                state.torn = True  # only the last line can lack its newline
                break
            try:
                entry = decode(raw)
                state.record(entry.line, entry.contact_id, entry.status)
            except (msgspec.DecodeError, ValueError) as exc:
                raise JournalError(
                    f"{os.fspath(path)!r} is not an outcome journal: line {number}: {exc}"
                ) from None
            state.entries += 1
    return state


class Journal:
    """The outcome journal, open for appending; use as a context manager or call :meth:`close`.

    Without ``resume`` a non-empty existing file is refused
    (:class:`~growthhub_async.errors.JournalError`): its outcomes belong to an earlier run.
    With ``resume`` the file must be a journal; its torn last line, if any, is cut off.
    ``fsync_every`` (0: never) also syncs to disk every that many lines; closing always syncs.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, resume: bool = False, fsync_every: int = 0
    ) -> None:
        if fsync_every < 0:
            raise ValueError("fsync_every must be 0 (never) or a positive number of lines")
        self.path = os.fspath(path)
        self.fsync_every = fsync_every
        self.written = 0
        try:
            # Resume reads the tail back to repair it; a fresh run only writes, which also suits
            # write-only targets such as a FIFO.
            access = os.O_RDWR if resume else os.O_WRONLY
            fd = os.open(self.path, access | os.O_CREAT | os.O_APPEND | _OPEN_EXTRA, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open outcomes {self.path!r}: {exc.strerror}") from None
        try:
            _prepare(fd, self.path, resume=resume)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def write(self, outcome: Outcome) -> None:
        """Append one outcome line and hand it to the OS before returning (see module doc)."""
        fd = self._fd
        if fd is None:
            raise ValueError("the journal is closed")
        data = encode_outcome(outcome)
        # One write per line: with O_APPEND a line lands whole at the end. A short write (a full
        # disk, a signal) continues where it stopped rather than dropping the rest.
        while data:
            data = data[os.write(fd, data) :]
        self.written += 1
        if self.fsync_every and self.written % self.fsync_every == 0:
            os.fsync(fd)

    def sync(self) -> None:
        """Force the lines written so far to disk (``fsync``), to survive a machine crash."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Sync and close; closing twice is harmless."""
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


def _prepare(fd: int, path: str, *, resume: bool) -> None:
    """Refuse a non-empty file without resume; with resume, check it and cut a torn tail."""
    size = os.fstat(fd).st_size
    if not size:
        return
    if not resume:
        raise JournalError(
            f"{path!r} already holds outcomes ({size} bytes) and would be overwritten;"
            " pass --resume to continue that run, or choose another --out"
        )
    _check_signature(fd, path)
    _cut_torn_tail(fd, size)


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


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Read at ``offset`` (portable ``os.pread``: seeking does not move O_APPEND writes)."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
