"""Which event loop the command runs on: uvloop when it is installed, unless told otherwise.

uvloop (the ``speed`` extra: ``pip install 'growthhub-async[speed]'``) runs the same code with
less CPU per request (benchmarks/README.md). The command picks it by itself when it can be
imported; ``--loop asyncio|uvloop|auto`` or the ``GROWTHHUB_LOOP`` environment variable (the
option wins) choose otherwise. ``uvloop`` asked for but not installed is a usage error, never a
silent fall back; a closed standard input, output or error makes it run on asyncio all the
same (libuv cannot run so). The library itself never installs a loop: an application
embedding it runs on whatever loop it chose.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from growthhub_async.errors import ConfigurationError

__all__ = ["LOOP_CHOICES", "LOOP_ENV", "describe", "loop_factory", "run", "running_loop_name"]

LOOP_ENV: Final = "GROWTHHUB_LOOP"
LOOP_CHOICES: Final = ("auto", "asyncio", "uvloop")

_T = TypeVar("_T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _uvloop_factory() -> LoopFactory | None:
    """uvloop's ``new_event_loop`` when it can be imported here, else ``None``."""
    try:
        import uvloop  # noqa: PLC0415 (optional: the speed extra)
    except ImportError:
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def _standard_streams_open() -> bool:
    """Whether descriptors 0, 1 and 2 are open. libuv (under uvloop) would take a closed one
    for its own use and then abort the process on an assertion (``fd > STDERR_FILENO``) when it
    closes it: with a closed standard stream the command runs on asyncio's loop instead."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False
    return True


def loop_factory(choice: str | None) -> tuple[str, LoopFactory | None]:
    """The loop's name and factory for ``choice`` (``--loop``; ``None``: ``GROWTHHUB_LOOP``, else
    ``auto``). The factory is ``None`` for asyncio's own loop.

    Raises :class:`~growthhub_async.errors.ConfigurationError` for ``uvloop`` when it is not
    installed, and for a value that is none of :data:`LOOP_CHOICES`.
    """
    source = "--loop"
    if choice is None:
        choice, source = os.environ.get(LOOP_ENV, "").strip().lower() or "auto", LOOP_ENV
    if choice not in LOOP_CHOICES:
        raise ConfigurationError(
            f"{source} must be one of {', '.join(LOOP_CHOICES)}, not {choice!r}"
        )
    if choice == "asyncio":
        return "asyncio", None
    factory = _uvloop_factory()
    if factory is None and choice == "uvloop":
        # Told before the streams are looked at: a missing extra is the caller's to fix.
        raise ConfigurationError(
            f"{source} asks for uvloop, which is not installed: "
            "pip install 'growthhub-async[speed]' (or --loop asyncio)"
        )
    if factory is None or not _standard_streams_open():
        return "asyncio", None
    return "uvloop", factory


def run(main: Callable[[], Coroutine[Any, Any, _T]], factory: LoopFactory | None) -> _T:
    """``asyncio.run(main())`` on the loop ``factory`` makes (asyncio's own when ``None``)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def running_loop_name() -> str:
    """``uvloop 0.23.0`` or ``asyncio``: the running loop, as the summary names it."""
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop"):
        import uvloop  # noqa: PLC0415 (it runs: imported already)

        return f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()
    return "asyncio"


def describe() -> str:
    """What ``--version`` says of the loop: the one a run would use now, and why."""
    try:
        name, factory = loop_factory(None)
    except ConfigurationError as exc:
        return f"event loop: none ({exc})"
    if factory is not None:
        import uvloop  # noqa: PLC0415 (loop_factory found it)

        name = f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()
    elif _uvloop_factory() is None:
        name += " (uvloop not installed: pip install 'growthhub-async[speed]')"
    chosen = os.environ.get(LOOP_ENV, "").strip()
    return f"event loop: {name}" + (f" ({LOOP_ENV}={chosen})" if chosen else "")
