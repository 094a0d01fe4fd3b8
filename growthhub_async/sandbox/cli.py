"""``growthhub-async sandbox``: run the emulator in the foreground until interrupted.

The accepted token comes from ``GROWTHHUB_TOKEN`` when set (so a client run with the same
environment just works), else ``--token`` (throwaway test tokens only: argv is visible in
``ps``), else ``sandbox-token``. The sandbox listens on loopback unless ``--host`` says
otherwise, and then it warns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from growthhub_async.client import is_loopback
from growthhub_async.ratelimit import parse_rate
from growthhub_async.sandbox.app import run_sandbox
from growthhub_async.sandbox.config import DEFAULT_TOKEN, Faults, SandboxConfig

__all__ = ["add_parser", "run"]


def _rate_arg(text: str) -> tuple[int, float]:
    try:
        rate = parse_rate(text)
    except ValueError as exc:  # ConfigurationError is one
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert rate is not None
    return rate.requests, rate.window


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability between 0 and 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number of seconds")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``sandbox`` subcommand on the command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox",
        help="run a local emulator of the Update Contact endpoint",
        description=(
            "Run a local emulator of PUT /contacts/{contactId} (auth, validation, rate limits, "
            "seeded faults) until interrupted. Accepted token: $GROWTHHUB_TOKEN if set, else "
            f"--token, else {DEFAULT_TOKEN!r}. Stats: GET /__sandbox/stats; "
            "reset: POST /__sandbox/reset."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=8080, metavar="N", help="port (0: any free one)"
    )
    parser.add_argument(
        "--rate",
        type=_rate_arg,
        default="100/10s",
        metavar="N/Ws",
        help="the burst limit per token: N requests per window W in ms, s, m or h",
    )
    parser.add_argument(
        "--daily", type=int, default=200_000, metavar="N", help="daily limit per token"
    )
    parser.add_argument(
        "--window",
        choices=("sliding", "fixed"),
        default="sliding",
        help="how the burst window counts",
    )
    parser.add_argument(
        "--no-retry-after", action="store_true", help="send 429s without Retry-After"
    )
    faults = parser.add_argument_group("faults (seeded, so a run can be repeated)")
    faults.add_argument(
        "--error-rate", type=_probability, default=0.0, metavar="P", help="chance of a 5xx"
    )
    faults.add_argument(
        "--drop-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="chance of a connection closed without an answer",
    )
    faults.add_argument(
        "--rate-limit-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="chance of a 429 the budget did not call for",
    )
    faults.add_argument(
        "--latency", type=_seconds, default=0.0, metavar="S", help="seconds added to each answer"
    )
    faults.add_argument(
        "--jitter", type=_seconds, default=0.0, metavar="S", help="up to S more seconds, at random"
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    parser.add_argument(
        "--token",
        action="append",
        default=None,
        help="an accepted token when GROWTHHUB_TOKEN is not set (repeatable; throwaway tokens "
        f"only, argv is visible in ps; default {DEFAULT_TOKEN!r})",
    )
    parser.set_defaults(handler=run)
    return parser


def _accepted(args: argparse.Namespace) -> tuple[set[str], str]:
    """The accepted tokens and how to say which they are (never the secret itself)."""
    env_token = os.environ.get("GROWTHHUB_TOKEN")
    if env_token:
        return {env_token}, "the token in GROWTHHUB_TOKEN"
    if args.token:
        return set(args.token), f"the {len(set(args.token))} token(s) given with --token"
    return {DEFAULT_TOKEN}, (
        f"only the token {DEFAULT_TOKEN!r} (GROWTHHUB_TOKEN is not set): run the client with "
        f"GROWTHHUB_TOKEN={DEFAULT_TOKEN}"
    )


def _config(args: argparse.Namespace) -> SandboxConfig:
    tokens, _ = _accepted(args)
    rate_limit, rate_window = args.rate
    return SandboxConfig(
        tokens=frozenset(tokens),
        rate_limit=rate_limit,
        rate_window=rate_window,
        window=args.window,
        daily_limit=args.daily,
        retry_after=not args.no_retry_after,
        faults=Faults(
            seed=args.seed,
            error_rate=args.error_rate,
            drop_rate=args.drop_rate,
            rate_limit_rate=args.rate_limit_rate,
            latency=args.latency,
            jitter=args.jitter,
        ),
    )


async def _serve(config: SandboxConfig, host: str, port: int, accepts: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows' loops
            loop.add_signal_handler(signum, stop.set)
    async with run_sandbox(config, host=host, port=port) as sb:
        sys.stderr.write(
            f"sandbox listening on {sb.base_url} "
            f"({config.rate_limit} per {config.rate_window:g}s, {config.window} window); "
            f"it accepts {accepts}; Ctrl-C stops it\n"
        )
        sys.stderr.flush()
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Handle ``growthhub-async sandbox``: serve until SIGINT/SIGTERM; returns the exit status."""
    try:
        config = _config(args)
    except ValueError as exc:
        sys.stderr.write(f"growthhub-async sandbox: {exc}\n")
        return 2
    if not is_loopback(args.host):
        sys.stderr.write(
            f"warning: listening on {args.host}, not loopback: other machines can reach the "
            "sandbox\n"
        )
    try:
        asyncio.run(_serve(config, args.host, args.port, _accepted(args)[1]))
    except OSError as exc:
        sys.stderr.write(f"growthhub-async sandbox: cannot listen: {exc}\n")
        return 2
    return 0
