"""One run at a time on a file: an exclusive ``flock``, and who holds it when it is refused.

Shared by the outcome journal (:mod:`~growthhub_async.journal`, which locks the journal itself)
and the sync state (:mod:`~growthhub_async.state`, which locks ``FILE.lock`` beside the SQLite
database). ``flock`` belongs to the open file: it is released when the descriptor is closed or
the process dies (``SIGKILL`` included), so a lock is never left behind by a dead run.
"""

from __future__ import annotations

import os
import shlex
import sys

if sys.platform != "win32":
    import fcntl

__all__ = ["try_lock"]


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


def _holder(info: os.stat_result) -> str:
    """Who holds the lock on the file ``info`` describes, from the kernel's ``/proc/locks``."""
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            table = f.read()
    except OSError:
        return "another process (this system does not say which)"
    for row in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2148961 0 EOF"; waiters show "->" and are not it.
        words = row.split()
        if len(words) >= 6 and words[1] == "FLOCK" and words[5] == device and words[4] != "0":
            return f"another run: process {words[4]}{_command_of(words[4])}"
    return "another process (this system does not say which)"


def _command_of(pid: str) -> str:
    """`` (the command line)`` of process ``pid``, or nothing when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read(4096).rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    text = shlex.join(w.decode(errors="replace") for w in words if w)
    return f" ({text[:300]})" if text else ""
