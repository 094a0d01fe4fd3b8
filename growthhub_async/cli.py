"""The ``growthhub-async`` command. Subcommands arrive with their issues; the parser is the seam."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from growthhub_async import __version__
from growthhub_async.sandbox import cli as sandbox_cli

PROG = "growthhub-async"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the whole command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Bulk-update GrowthHub (HighLevel / LeadConnector) contacts through "
            "PUT /contacts/{contactId}: paced to the rate limit, retried, journaled. "
            "The token is read from the GROWTHHUB_TOKEN environment variable, never from argv."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each subcommand registers itself and sets ``handler`` (Namespace -> exit status).
    sandbox_cli.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 some records not updated, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
