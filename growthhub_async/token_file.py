"""The OAuth token file: an OS lock, crash recovery, and a rotation that is never lost (issue 18).

An OAuth app's refresh token rotates on every use: the file's copy is the installation. Rules:

- **Atomic first.** Each rotation is written to a temporary file in the same directory (mode
  0600, flushed, synced) and renamed over the file (:func:`write_token_file`).
- **Never lost.** When that fails (the directory became read-only, the disk is full), the file
  is rewritten in place (it may still be writable); failing that, the tokens go to a *rescue*
  file (``<name>.rescued-<time>.json``, 0600) in the file's directory, ``$HOME`` or
  ``$TMPDIR`` (``/tmp``), and :attr:`Saved.rescued` says where, so the user can be told to
  move it over the token file. Only when every place fails does saving fail.
- **Crash recovery.** A SIGKILL between the temporary file and the rename leaves
  ``.<name>.*.tmp`` holding the only valid refresh token. :meth:`TokenFile.load` finds such
  leftovers (and rescue files in the same directory), uses the newest valid one (by its
  ``rotated_at``, Unix time, written with every rotation; the file's mtime where absent),
  finishes the rename, and deletes the rest.
- **One process at a time.** Every read-refresh-write cycle runs under an exclusive
  ``flock`` on the file's *directory* (a rename replaces the file's inode, so a lock on the
  file itself would not exclude a process that opened the new one). Processes sharing the file
  therefore never refresh at once, and each re-reads the file under the lock (another may
  have rotated it meanwhile).
- **Links are followed once, at the start.** A token file that is a symbolic link (to a shared
  secrets folder, say) is resolved to its target: the rename replaces the *target*, the lock
  is taken on the target's directory, and leftovers are looked for there. Renaming over the
  link itself would turn it into a private copy and leave every other user of the target with
  a spent refresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from growthhub_async.errors import ConfigurationError

__all__ = ["LOCK_TIMEOUT", "Saved", "TokenFile", "write_token_file"]

log = logging.getLogger("growthhub_async.auth")

LOCK_TIMEOUT: Final = 120.0
"""Seconds to wait for another process's refresh (its tries are bounded well below this)."""
_POLL: Final = 0.02


def write_token_file(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically, readable by the owner only (0600).

    A temporary file in the same directory (created 0600), flushed and synced, then
    ``os.replace``: a reader, or a crash, sees the old file or the new one, never half of
    one. The directory is synced too, so the rename survives a power cut where supported.
    """
    target = Path(os.path.realpath(path))  # a link stays a link: its target is replaced
    directory = target.parent
    import tempfile  # noqa: PLC0415 (only when tokens rotate: not at every start-up)

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_dump(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # mkstemp's mode already; explicit for umask-proof clarity
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(directory)


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Saved:
    """Where a rotation went: ``path`` (the token file, or a rescue file) and how."""

    path: Path
    how: str  # "replaced", "in place" or "rescued"
    problem: str | None = None  # why the atomic replace failed, if it did

    @property
    def rescued(self) -> bool:
        """The tokens are not in the token file but in ``path``: the user must move them."""
        return self.how == "rescued"


class TokenFile:
    """A token file on disk: locked, recovered, and saved with fallbacks (see the module)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.realpath(path))
        """The file itself: a symbolic link's target (see the module)."""
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"<TokenFile {str(self.path)!r}>"

    # -- the lock --------------------------------------------------------------------------

    def _try_lock(self) -> bool:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._lock_fd = fd
        return True

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _lock_failed(self) -> ConfigurationError:
        return ConfigurationError(
            f"another process holds the lock of the token file {str(self.path)!r} "
            f"for more than {LOCK_TIMEOUT:g}s"
        )

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the exclusive lock (blocking, for start-up): polls until ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._try_lock():
            if time.monotonic() > deadline:
                raise self._lock_failed()
            time.sleep(_POLL)
        try:
            yield
        finally:
            self._unlock()

    @contextlib.asynccontextmanager
    async def alocked(self, wait: float = LOCK_TIMEOUT) -> AsyncIterator[None]:
        """Hold the exclusive lock without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self._try_lock():
            if loop.time() > deadline:
                raise self._lock_failed()
            await asyncio.sleep(_POLL)
        try:
            yield
        finally:
            self._unlock()

    # -- reading and recovery ----------------------------------------------------------------

    def _read(self, path: Path) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))

    def load(self) -> dict[str, Any]:
        """The file's JSON object, after recovering a rotation a crash left behind.

        Call with the lock held. Raises ``ConfigurationError`` for a missing, unreadable or
        malformed file (the message never shows its values).
        """
        shown = str(self.path)
        try:
            data = self._read(self.path)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the token file {shown!r}: {exc.strerror}"
            ) from None
        except ValueError:
            raise ConfigurationError(f"the token file {shown!r} is not JSON") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"the token file {shown!r} is not a JSON object")
        return self._recover(data)

    def _leftovers(self) -> list[Path]:
        name = self.path.name
        folder = self.path.parent
        try:
            found = [*folder.glob(f".{name}.*.tmp"), *folder.glob(f"{name}.rescued-*.json")]
        except OSError:
            return []
        return sorted(p for p in found if p.is_file())

    def _recover(self, data: dict[str, Any]) -> dict[str, Any]:
        leftovers = self._leftovers()
        if not leftovers:
            return data

        def stamp(path: Path, content: Mapping[str, Any]) -> float:
            value = content.get("rotated_at")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        best: tuple[float, Path, dict[str, Any]] | None = None
        current = stamp(self.path, data)
        for path in leftovers:
            try:
                content = self._read(path)
            except (OSError, ValueError):
                continue  # torn by the crash before it was synced: the file is still right
            if (
                isinstance(content, dict)
                and content.get("client_id") == data.get("client_id")
                and isinstance(content.get("refresh_token"), str)
                and content["refresh_token"]
                and content["refresh_token"] != data.get("refresh_token")
                and stamp(path, content) > current
                and (best is None or stamp(path, content) > best[0])
            ):
                best = (stamp(path, content), path, content)
        if best is not None:
            _, newest, data = best
            log.warning(
                "the token file %s was not updated by an earlier run (killed mid-write?): "
                "using the newer tokens it left in %s",
                self.path,
                newest.name,
            )
            try:
                os.replace(newest, self.path)  # finish the rename the crash interrupted
            except OSError:
                self._save_quietly(data)
                return data  # cannot promote it: keep the leftovers, they hold the token
        for path in leftovers:
            with contextlib.suppress(OSError):
                path.unlink()
        return data

    def _save_quietly(self, data: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self._write_in_place(data)

    # -- saving ----------------------------------------------------------------------------

    def save(self, data: Mapping[str, Any]) -> Saved:
        """Write ``data`` (call with the lock held); see the module for the fallbacks.

        Raises ``OSError`` only when no place at all could hold it.
        """
        try:
            write_token_file(self.path, data)
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc.strerror or exc}"
        else:
            return Saved(self.path, "replaced")
        try:
            self._write_in_place(data)
        except OSError:
            pass
        else:
            return Saved(self.path, "in place", problem)
        return Saved(self._rescue(data), "rescued", problem)

    def _write_in_place(self, data: Mapping[str, Any]) -> None:
        payload = _dump(data).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY)  # no O_TRUNC: nothing is lost before it is written
        try:
            os.fchmod(fd, 0o600)
            written = 0
            while written < len(payload):
                written += os.pwrite(fd, payload[written:], written)
            os.ftruncate(fd, len(payload))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rescue(self, data: Mapping[str, Any]) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = f"{self.path.name}.rescued-{stamp}-{os.getpid()}.json"
        last: OSError | None = None
        home = os.environ.get("HOME") or str(Path.home())
        # $TMPDIR itself, not tempfile's search: that would quietly go on to /tmp and the
        # current directory, places the user did not choose.
        for folder in (self.path.parent, Path(home), Path(os.environ.get("TMPDIR") or "/tmp")):  # noqa: S108
            target = folder / name
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                last = exc
                continue
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(_dump(data))
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                last = exc
                with contextlib.suppress(OSError):
                    target.unlink()
                continue
            return target
        assert last is not None
        raise last
