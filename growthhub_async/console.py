"""The command's entry point (``growthhub-async`` and ``python -m growthhub_async``).

The command's modules are imported here, inside the guard, not by the script that Python's
installer writes (``from growthhub_async.cli import main``): a Ctrl-C during the few hundred
milliseconds they take (aiohttp, msgspec, ...) would print a traceback from deep inside some
import. Here it prints ``interrupted`` and exits 130 (128 + SIGINT, as a shell reports a
command that Ctrl-C stopped), as does a Ctrl-C anywhere else that the run's own handlers
(which answer it with a summary, the resume command and exit status 1) are not yet, or no
longer, in place. The package itself imports nothing heavy (:mod:`growthhub_async`), so the
window left to a traceback is the interpreter's own start-up.
"""

from __future__ import annotations

import signal
import sys

TYPE_CHECKING = False  # not typing's, as in the package's __init__: the start-up is short
if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_INTERRUPTED = 130
"""The exit status after a Ctrl-C the run did not handle itself: 128 + SIGINT."""


def main(argv: Sequence[str] | None = None) -> int:
    """Import the command and run it (:func:`growthhub_async.cli.main`); a Ctrl-C that escapes
    it, at start-up or at the end, is ``interrupted`` and exit status 130."""
    try:
        from growthhub_async.cli import main as run  # noqa: PLC0415 - inside the guard

        return run(argv)
    except KeyboardInterrupt:
        # A second Ctrl-C while this is written must not print the traceback after all.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if sys.stderr is not None:
                sys.stderr.write("interrupted\n")
                sys.stderr.flush()
        except (OSError, ValueError):
            pass  # nowhere to say it: the exit status does
        return EXIT_INTERRUPTED
