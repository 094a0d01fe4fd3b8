"""One run at a time on a file: an exclusive ``flock``, and who holds it when it is refused.

Shared by the outcome journal (:mod:`~growthhub_async.journal`) and the sync state
(:mod:`~growthhub_async.state`): each locks the file itself, so the lock follows the file
whatever name (a symlink, a hard link) it is opened by.
``flock`` belongs to the open file: it is released when the descriptor is closed or
the process dies (``SIGKILL`` included), so a lock is never left behind by a dead run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys

if sys.platform != "win32":
    import fcntl

__all__ = ["lock_holder", "try_lock", "unlock"]


def try_lock(fd: int, info: os.stat_result) -> str | None:
    """Hold ``fd`` exclusively; ``None`` when held (or when the file system has no ``flock``),
    else who holds it: ``"another run: process 1234 (its command line)"``."""
    if sys.platform == "win32":  # pragma: no cover - no flock; one run at a time is on the user
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(info)
    except OSError:
        return None  # a file system without flock (some network mounts): nothing to hold
    return None


def unlock(fd: int) -> None:
    """Let go of what :func:`try_lock` holds (closing ``fd`` does it too)."""
    if sys.platform != "win32":
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def _holder(info: os.stat_result) -> str:
    """Who holds the ``flock`` on the file ``info`` describes, from ``/proc/locks``."""
    pid = _lockers({_device(info)}, "FLOCK")
    if pid is None:
        return "another process (this system does not say which)"
    return f"another run: process {pid}{_command_of(pid)}"


def lock_holder(paths: list[str]) -> str | None:
    """Which other process holds a POSIX write lock (SQLite's) on one of ``paths``:
    ``"process 1234 (sqlite3 s.db)"``, or ``None`` when the system does not say."""
    devices = set()
    for path in paths:
        with contextlib.suppress(OSError):
            devices.add(_device(os.stat(path)))
    pid = _lockers(devices, "POSIX", write_only=True)
    return None if pid is None else f"process {pid}{_command_of(pid)}"


def _device(info: os.stat_result) -> str:
    return f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"


def _lockers(devices: set[str], kind: str, *, write_only: bool = False) -> str | None:
    """The first other process that holds a lock of ``kind`` on one of ``devices``."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            table = f.read()
    except OSError:
        return None
    me = str(os.getpid()) if write_only else "0"  # SQLite's own locks of this process
    for row in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2148961 0 EOF"; waiters show "->" and are not it.
        words = row.split()
        if (
            len(words) >= 6
            and words[1] == kind
            and words[5] in devices
            and words[4] not in ("0", me)
            and (not write_only or words[3] == "WRITE")
        ):
            return words[4]
    return None


def _command_of(pid: str) -> str:
    """`` (the command line)`` of process ``pid``, or nothing when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read(4096).rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    text = shlex.join(w.decode(errors="replace") for w in words if w)
    return f" ({text[:300]})" if text else ""
