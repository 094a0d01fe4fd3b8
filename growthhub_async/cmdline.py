"""What every subcommand of ``growthhub-async`` shares: its name as the user can type it again,
and one help layout.

Also the streams a command writes to (:class:`Terminal`).
Kept apart from :mod:`growthhub_async.cli` so that the subcommands defined elsewhere
(``sandbox``, ``demo``) use the same words without importing the command that imports them.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from typing import Final, TextIO

__all__ = ["DASK_INSTALL_HINT", "PROG", "HelpFormatter", "Terminal", "invoked_as", "isatty"]

PROG: Final = "growthhub-async"

DASK_INSTALL_HINT: Final = "pip install 'growthhub-async[dask]'"
"""How to get what ``update --dask`` needs (here, not in the Dask module: the command's help
names it, and ``update`` never imports that module)."""


def invoked_as(argv0: str | None = None, *, path: str | None = None) -> str:
    """The command, as a shell word, that runs this program again from the current folder.

    Bare ``growthhub-async`` only when ``PATH`` finds this very program; otherwise the path it
    was started by (``.venv/bin/growthhub-async`` after ``make demo``, which puts nothing on
    ``PATH``), or ``python -m growthhub_async`` with this interpreter. A command we print for the
    user to paste (resume, try it yourself) must work as printed.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    found = shutil.which(PROG, path=path)
    if os.path.basename(argv0) == PROG and os.path.exists(argv0):
        if found is not None and os.path.samefile(found, argv0):
            return PROG
        return shlex.quote(argv0 if os.sep in argv0 else os.path.join(os.curdir, argv0))
    if found is not None and os.path.dirname(found) == os.path.dirname(sys.executable):
        return PROG  # python -m growthhub_async from the environment that PATH finds
    return shlex.join([sys.executable, "-m", "growthhub_async"])


class HelpFormatter(argparse.HelpFormatter):
    """One width for the usage, the description and the options (the terminal's, at most 100);
    blank lines separate paragraphs, which are filled; lines that start with spaces (examples)
    are kept as written; each option's default is shown unless its help already names it.
    """

    def __init__(self, prog: str) -> None:
        width = min(100, shutil.get_terminal_size((100, 24)).columns) - 2
        super().__init__(prog, width=width, max_help_position=28)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
            if paragraph.startswith(" "):
                out.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                out.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class Terminal(io.TextIOBase):
    """stdout or stderr for a command: one that is closed, full or a broken pipe is given up.

    What a command prints is for the user; its work is in its files (the journal, the state).
    A progress line that cannot be written must not stop a run, nor a summary (or the
    ``state`` command's table) change the exit status. :func:`growthhub_async.cli.main` then
    keeps Python's own flush at exit from changing it either.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self.broken = stream is None

    def _do(self, action: Callable[[TextIO], object]) -> None:
        if not self.broken:
            try:
                action(self._stream)  # type: ignore[arg-type]
            except (OSError, ValueError):  # ENOSPC, EPIPE, EBADF; or a closed file object
                self.broken = True

    def write(self, text: str) -> int:
        self._do(lambda stream: stream.write(text))
        return len(text)

    def flush(self) -> None:
        self._do(lambda stream: stream.flush())

    def isatty(self) -> bool:
        return not self.broken and isatty(self._stream)  # type: ignore[arg-type]


def isatty(stream: TextIO) -> bool:
    """``stream.isatty()``, ``False`` for a stream that cannot say (closed, or none)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
