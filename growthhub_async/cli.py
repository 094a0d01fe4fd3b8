"""The ``growthhub-async`` command. Subcommands arrive with their issues; the parser is the seam."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import itertools
import os
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeVar, cast

# Not distributed (a --dask run) nor report (its subcommand): imported where they are used, so
# that `update` does not pay for them at start-up (issue 17).
from growthhub_async import __version__, eventloop, logs
from growthhub_async.auth import OAuthProvider, TokenProvider
from growthhub_async.client import DEFAULT_BASE_URL
from growthhub_async.cmdline import DASK_INSTALL_HINT, PROG, HelpFormatter, Terminal, invoked_as
from growthhub_async.errors import GrowthHubError
from growthhub_async.job import (
    EXIT_FATAL,
    EXIT_NOT_ALL,
    TOKEN_ENV,
    JobSettings,
    run_job,
    token_from_environment,
)
from growthhub_async.locations import AgencyTokens, LocationTokens, load_tokens_file
from growthhub_async.progress import format_duration
from growthhub_async.ratelimit import Rate, parse_rate
from growthhub_async.redact import Redactor

if TYPE_CHECKING:
    from growthhub_async.state import StateStats

DEFAULT_RATE = "100/10s"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the whole command, with every subcommand.

    ``command`` (the first word of the command line): ``update``, ``state`` and ``report``
    leave out the ``sandbox`` and ``demo`` subcommands, whose modules import the sandbox server
    (aiohttp's web framework): a run's start-up does not pay for them (issue 17)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        description=(
            "Bulk-update GrowthHub (HighLevel / LeadConnector) contacts through "
            "PUT /contacts/{contactId}: paced to the rate limit, retried, journaled. "
            "The token is read from the GROWTHHUB_TOKEN environment variable, never from argv."
        ),
    )
    parser.add_argument("--version", action=_Version, help="show the version and event loop")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each subcommand registers itself and sets ``handler`` (Namespace -> exit status).
    add_update_parser(subparsers)
    add_state_parser(subparsers)
    add_report_parser(subparsers)
    if command not in _LIGHT_COMMANDS:
        from growthhub_async import demo  # noqa: PLC0415
        from growthhub_async.sandbox import cli as sandbox_cli  # noqa: PLC0415

        sandbox_cli.add_parser(subparsers)
        demo.add_parser(subparsers)
    for subparser in subparsers.choices.values():
        subparser.formatter_class = HelpFormatter
    return parser


_LIGHT_COMMANDS: Final = frozenset({"update", "state", "report"})


class _Version(argparse.Action):
    """``--version``: the program's version and the event loop a run would use (issue 17)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        sys.stdout.write(f"{PROG} {__version__}\n{eventloop.describe()}\n")  # as argparse's
        parser.exit()


def _rate_arg(text: str) -> Rate:
    try:
        rate = parse_rate(text)
    except GrowthHubError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert rate is not None
    return rate


def _shard_arg(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not K/N with K from 0 to N-1 (e.g. 0/4; Kubernetes Indexed Jobs: "
            "$JOB_COMPLETION_INDEX/N)"
        )
    return shard


MAX_SHARDS = 10_000


def _shards_arg(text: str) -> int:
    return _whole_number(text, MAX_SHARDS)


MAX_CONCURRENCY = 1000
"""More requests in flight than this cannot help one token (100 per 10 s) and cost memory."""


def _concurrency(text: str) -> int:
    return _whole_number(text, MAX_CONCURRENCY)


def _whole_number(text: str, most: int) -> int:
    """``text`` as a whole number from 1 to ``most``, else the usage error saying so."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {most}")
    return value


UPDATE_DESCRIPTION = f"""\
Update every contact in INPUT through PUT /contacts/{{contactId}}, paced to the rate limit and
retrying transient failures, and append one outcome line per record to OUTCOMES (JSONL: line,
contactId, status, httpStatus, attempts, error, recordHash) as each record finishes.

INPUT is .jsonl/.ndjson (one JSON object per line: contactId plus Update Contact fields under
their API names), .csv/.tsv/.txt (a header row with a contactId column and API field names,
separated by commas, tabs or semicolons; an empty cell leaves the field unchanged), or - for JSONL
on standard input. UTF-8, UTF-16 and UTF-32 are read.

The token is read from the {TOKEN_ENV} environment variable, never from the command line. With
--oauth FILE, an OAuth app's tokens come from FILE instead (JSON: client_id, client_secret,
refresh_token, optionally access_token, expires_at, token_url, which defaults to /oauth/token
under --base-url): the access token is refreshed when due or refused, and FILE is rewritten
(mode 0600) with the rotated tokens before they are used, so keep it where only you can read it.

With --state FILE (an SQLite file, created if missing), a record whose body equals the one last
applied to its contact (answered 2xx) is not sent: its outcome is "unchanged". Only what the server
applied is remembered; --full sends every record once more, --changed-fields-only sends only the
fields that differ from the body last applied. One run at a time per state file.

Many locations: a record's locationId (JSONL key or CSV column) picks its location's token
(--tokens FILE, or minted from an agency app with --agency-oauth FILE) and budget; it is never
sent in the body. Locations run side by side whatever the input order: records waiting for
their location go to an unlinked spill file next to OUTCOMES. --shard K/N splits the locations
over N machines; --dask ADDRESS --out-dir DIR --shards N runs the N shards on a Dask cluster
(one journal per shard in DIR, one summary).

Exit status: 0 every record updated or unchanged (with --dry-run: every record valid); 1 some
record was not, or the run was interrupted; 2 a usage or fatal error."""

UPDATE_EXAMPLES = """\
examples:

  export {env}=...   # your Private Integration token; never on the command line
  {prog} update contacts.csv --out outcomes.jsonl --dry-run
  {prog} update contacts.csv --out outcomes.jsonl
  {prog} update contacts.csv --out outcomes.jsonl --resume
  {prog} update contacts.csv --out o.jsonl --state sync.db            # only what changed
  {prog} update contacts.csv --out o.jsonl --state sync.db --dry-run  # how much changed
  {prog} update contacts.jsonl --out o.jsonl --rate 25/10s          # a trial account
  {prog} update contacts.jsonl --out o.jsonl --base-url http://127.0.0.1:8080  # a sandbox
  {prog} update export.csv --out o.jsonl --tokens tokens.json       # many locations
  {prog} update export.csv --out o0.jsonl --tokens tokens.json --shard 0/4   # machine 0 of 4
  {prog} update export.csv --out-dir shards --shards 8 --tokens tokens.json --dask tcp://scheduler:8786"""


def add_update_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``update`` subcommand (the bulk job) on the command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "update",
        # No abbreviations: `--token SECRET` must be refused, not taken for `--tokens`.
        allow_abbrev=False,
        help="bulk-update contacts from a JSONL or CSV file, journaling every outcome",
        description=UPDATE_DESCRIPTION,
        epilog=UPDATE_EXAMPLES.format(env=TOKEN_ENV, prog=PROG),
    )
    parser.add_argument(
        "input", metavar="INPUT", help="a .jsonl, .ndjson, .csv, .tsv or .txt file, or -"
    )
    parser.add_argument(
        "--out",
        metavar="OUTCOMES.jsonl",
        help="the outcome journal; must be new or empty unless --resume (required, except "
        "with --dask, which takes --out-dir)",
    )
    parser.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help=f"the API root (default {DEFAULT_BASE_URL}; plain http only to loopback)",
    )
    parser.add_argument(
        "--rate",
        type=_rate_arg,
        default=DEFAULT_RATE,
        metavar="N/Ws",
        help=f"at most N requests per window W, in ms, s, m or h (default {DEFAULT_RATE}, the "
        "API's burst limit; 25/10s for sandbox and trial accounts)",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=10,
        metavar="N",
        help=f"requests in flight at once, 1 to {MAX_CONCURRENCY} (default 10)",
    )
    parser.add_argument(
        "--value-key",
        choices=("field_value", "fieldValue"),
        default="field_value",
        help="the key of a custom field's value, in the input and on the wire "
        "(default field_value)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an earlier run: skip records whose last outcome in OUTCOMES is final, "
        "send the rest, append",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every record and estimate the run's duration; send nothing "
        "(no token needed)",
    )
    parser.add_argument(
        "--oauth",
        metavar="FILE",
        help=f"an OAuth token file to use instead of {TOKEN_ENV}; rewritten on each rotation",
    )
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="incremental sync: skip records whose body was applied already (outcome "
        "unchanged), remember what is applied (SQLite; created if missing)",
    )
    parser.add_argument(
        "--changed-fields-only",
        action="store_true",
        help="with --state: send only the fields that differ from the body last applied "
        "(tags as a whole list, custom fields by id)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="with --state: send every record this once (what is applied is still recorded)",
    )
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        help='many locations: a JSON object {locationId: token, or {"oauthFile": PATH}}; '
        "a record's locationId (JSONL key or CSV column) picks its token and budget; the "
        "file must be private (chmod 600)",
    )
    parser.add_argument(
        "--allow-readable-tokens",
        action="store_true",
        help="accept a --tokens file that others may read (mode wider than 0600)",
    )
    parser.add_argument(
        "--agency-oauth",
        metavar="FILE",
        help="many locations: an agency (Company) OAuth token file with company_id; each "
        "location's token is minted from it (POST /oauth/locationToken) on first use",
    )
    parser.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="K/N",
        help="send only the records of the locations in shard K of N (K from 0; a stable hash "
        "of locationId), so that N machines never share a location; records without a "
        "locationId belong to shard 0. Give each shard its own --out",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the --shards on a Dask cluster: a scheduler address (tcp://scheduler:8786), "
        "or local[:N] to start N worker processes on this machine (default: one per shard, "
        f"at most one per CPU); needs {DASK_INSTALL_HINT}. Shard K journals to "
        "DIR/shard-K-of-N.jsonl; INPUT and DIR must be at the same path on every worker",
    )
    parser.add_argument(
        "--out-dir",
        metavar="DIR",
        help="with --dask: the folder of the shards' journals and logs (shared storage)",
    )
    parser.add_argument(
        "--shards",
        type=_shards_arg,
        metavar="N",
        help="with --dask: how many shards (tasks) to split the locations into, 1 to 10000",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no live progress bar: a plain progress line on stderr now and then",
    )
    parser.add_argument(
        "--loop",
        choices=eventloop.LOOP_CHOICES,
        help=f"the event loop: uvloop (the speed extra) or asyncio's own; auto, the default, "
        f"takes uvloop when it is installed (or ${eventloop.LOOP_ENV})",
    )
    add_log_arguments(parser)
    parser.set_defaults(handler=run_update)
    return parser


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-format`` and ``--log-level`` (issue 16): what stderr carries, and how."""
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text (default): messages as they are; json: every line on stderr one JSON "
        "object (time, level, logger, runId, msg, fields), progress lines included",
    )
    parser.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        help="the least level logged (default warning for text, info for json: a record "
        "not updated, a pause, a token stopped, the run's end; debug adds every record, "
        "retry and 429)",
    )


def acquire_token(args: argparse.Namespace) -> str | TokenProvider | None:
    """The token for ``update``: an OAuth provider over ``--oauth FILE`` (which it rewrites on
    each rotation), else ``GROWTHHUB_TOKEN``; ``ConfigurationError`` if neither works.

    With ``--tokens`` or ``--agency-oauth`` (many locations), the run's own token serves the
    records without a locationId and may be absent (``None``): such records are rejected."""
    if getattr(args, "oauth", None):
        return OAuthProvider.from_file(args.oauth)
    if getattr(args, "tokens", None) or getattr(args, "agency_oauth", None):
        return token_from_environment() if os.environ.get(TOKEN_ENV, "").strip() else None
    return token_from_environment()


def acquire_locations(args: argparse.Namespace) -> LocationTokens | None:
    """The tokens per location of ``--tokens`` and ``--agency-oauth``, if either is given."""
    tokens_file = getattr(args, "tokens", None)
    agency_file = getattr(args, "agency_oauth", None)
    if not tokens_file and not agency_file:
        return None
    tokens = (
        load_tokens_file(tokens_file, allow_readable=args.allow_readable_tokens)
        if tokens_file
        else None
    )
    agency = AgencyTokens.from_file(agency_file) if agency_file else None
    return LocationTokens(tokens, agency)


def resume_command(args: argparse.Namespace) -> str:
    """The shell command that resumes the run ``args`` describes (printed on interruption).

    It must run as printed: a file name that starts with ``-`` would be taken for an option, so
    such a value is joined to its option (``--out=-o.jsonl``) and such an INPUT follows ``--``.
    """
    words = ["update"]
    odd_input = args.input.startswith("-") and args.input != "-"
    if not odd_input:
        words.append(args.input)
    if getattr(args, "dask", None):
        words += [*_option("--out-dir", args.out_dir), "--shards", str(args.shards)]
        words += [*_option("--dask", args.dask), "--resume"]
    else:
        words += [*_option("--out", args.out), "--resume"]
    if args.base_url != DEFAULT_BASE_URL:
        words += _option("--base-url", args.base_url)
    rate = args.rate if isinstance(args.rate, Rate) else _rate_arg(args.rate)
    if str(rate) != DEFAULT_RATE:
        words += ["--rate", str(rate)]
    if args.concurrency != 10:
        words += ["--concurrency", str(args.concurrency)]
    if args.value_key != "field_value":
        words += ["--value-key", args.value_key]
    shard = getattr(args, "shard", None)
    tokens = getattr(args, "tokens", None)
    # In this order, each a file (its value) or a switch (True): None or False leaves it out.
    options: list[tuple[str, str | bool | None]] = [
        ("--oauth", getattr(args, "oauth", None)),
        ("--state", getattr(args, "state", None)),
        ("--changed-fields-only", getattr(args, "changed_fields_only", False)),
        ("--full", getattr(args, "full", False)),
        ("--tokens", tokens),
        ("--allow-readable-tokens", bool(tokens) and args.allow_readable_tokens),
        ("--agency-oauth", getattr(args, "agency_oauth", None)),
        ("--shard", f"{shard[0]}/{shard[1]}" if shard else None),
        ("--no-progress", args.no_progress),
        ("--loop", getattr(args, "loop", None)),
        ("--log-format", "json" if getattr(args, "log_format", "text") == "json" else None),
        ("--log-level", getattr(args, "log_level", None)),
    ]
    for name, value in options:
        if isinstance(value, str) and value:
            words += _option(name, value)
        elif value is True:
            words.append(name)
    if odd_input:
        words += ["--", args.input]
    return f"{invoked_as()} {shlex.join(words)}"


def _option(name: str, value: str) -> list[str]:
    return [f"{name}={value}"] if value.startswith("-") else [name, value]


_T = TypeVar("_T")


def fatal(command: str, message: object) -> int:
    """Say what went wrong in one line on stderr; the exit status of a fatal error."""
    err = Terminal(sys.stderr)
    err.write(f"{PROG} {command}: error: {message}\n")
    err.flush()
    return EXIT_FATAL


GC_THRESHOLDS: Final = (5_000, 10, 10)
"""The collector's thresholds for a run (Python's defaults: 700, 10, 10)."""


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a bulk run (issue 17).

    Every request allocates a few dozen objects, and each young collection walks all the
    objects still alive since the last one: the requests in flight, which a run over 1,000
    locations holds by the thousand. At Python's thresholds that made a third of such a run's
    CPU. Collections every 5,000 allocations instead of 700 keep the garbage of cycles to a
    few MB (the older generations keep Python's ratios: raised too, a 1,000-location run held
    cyclic garbage until a rare full collection); what start-up built (modules, classes, the
    parser) is frozen out of every collection. The command's own process only: the library
    never touches the collector.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _dask_problem(args: argparse.Namespace) -> str | None:  # noqa: PLR0911 (one per rule)
    """What is wrong with the options of a ``--dask`` run (or of a run without one)."""
    if not args.dask:
        if args.out is None:
            return "the following arguments are required: --out"
        if args.out_dir is not None or args.shards is not None:
            return "--out-dir and --shards go with --dask ADDRESS"
        return None
    if args.out is not None:
        return "--dask writes one journal per shard: give --out-dir DIR, not --out"
    if args.out_dir is None or args.shards is None:
        return "--dask needs --out-dir DIR and --shards N"
    for name in ("shard", "state", "dry_run"):
        if getattr(args, name):
            option = "--" + name.replace("_", "-")
            return f"--dask runs every shard: {option} is for a run on one machine"
    if args.input == "-":
        return "--dask cannot read standard input: the workers read INPUT (shared storage)"
    return None


def _job_settings(args: argparse.Namespace, out: str, **more: Any) -> JobSettings:
    """The job's settings from the options every ``update`` shares (one machine or ``--dask``),
    plus ``more``."""
    return JobSettings(
        input=args.input,
        out=out,
        base_url=args.base_url,
        rate=args.rate if isinstance(args.rate, Rate) else _rate_arg(args.rate),
        concurrency=args.concurrency,
        value_key=args.value_key,
        resume=args.resume,
        token_hint=_token_hint(args),
        **more,
    )


def run_update(args: argparse.Namespace) -> int:
    """Handle ``growthhub-async update``; returns the exit status."""
    problem = _dask_problem(args)
    if problem is not None:
        return fatal("update", problem)
    raise_open_files_limit()
    if args.dask:
        return run_update_dask(args)
    settings = _job_settings(
        args,
        args.out,
        dry_run=args.dry_run,
        progress="line" if args.no_progress else "auto",
        resume_command=resume_command(args),
        state=args.state,
        full=args.full,
        changed_fields_only=args.changed_fields_only,
        spill_dir=os.path.dirname(os.path.abspath(args.out)),
        shard=args.shard,
    )
    token: str | TokenProvider | None = None
    locations: LocationTokens | None = None
    redactor: Redactor | None = getattr(args, "log_redactor", None)
    try:
        _, loop = eventloop.loop_factory(getattr(args, "loop", None))
        if not args.dry_run:
            locations = acquire_locations(args)
            token = acquire_token(args)
        if redactor is not None and isinstance(token, str):
            redactor.add(token)
        options = {"locations": locations} if locations is not None else None
        _tune_gc()
        result = eventloop.run(
            lambda: run_job(settings, token=token, client_options=options, log_redactor=redactor),
            loop,
        )
    except GrowthHubError as exc:
        return fatal("update", exc)
    except KeyboardInterrupt:  # before the job's own handlers were installed
        sys.stderr.write("interrupted\n")
        return EXIT_NOT_ALL
    finally:
        _report_token_files(token, locations, args)
    return result.exit_status


async def _interruptible(job: Coroutine[Any, Any, _T]) -> _T:
    """Run ``job`` with every SIGINT cancelling it once: the first asks the shards to stop,
    the second stops waiting for them. (asyncio.run's own handler raises KeyboardInterrupt
    at the second, wherever the loop is, Dask's scheduler included: tracebacks, no summary.)"""
    task = asyncio.ensure_future(job)
    loop = asyncio.get_running_loop()
    count = 0

    def on_sigint() -> None:
        nonlocal count
        count += 1
        if count > 2:  # a third: out, whatever the teardown was doing
            raise KeyboardInterrupt
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):  # not on Windows' loops
        return await task
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def raise_open_files_limit() -> None:
    """Let the command open as many files as the system lets it: ``RLIMIT_NOFILE``'s soft limit
    raised to the hard one (at most 65,536), as Go's runtime does for every program. A run over
    thousands of locations holds a connection per request in flight, and a client's pool keeps
    to half the soft limit (:func:`~growthhub_async.client.connection_room`)."""
    try:
        import resource  # noqa: PLC0415 (not on Windows)
    except ImportError:  # pragma: no cover (Windows)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):  # a sandbox may refuse it
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_MAX_OPEN_FILES: Final = 65_536


def run_update_dask(args: argparse.Namespace) -> int:  # noqa: PLR0911 (one per failure)
    """``update --dask ADDRESS --out-dir DIR --shards N``: the shards on a Dask cluster."""
    from growthhub_async import distributed  # noqa: PLC0415 (see the imports above)

    try:
        distributed.cluster_spec(args.dask)  # a bad address is told before Dask is imported
        distributed.require_distributed()
    except GrowthHubError as exc:
        return fatal("update", exc)
    except KeyboardInterrupt:  # Ctrl-C while Dask is imported (seconds): nothing started
        sys.stderr.write("interrupted\n")
        return EXIT_NOT_ALL
    settings = _job_settings(args, args.out_dir)
    token: str | TokenProvider | None = None
    locations: LocationTokens | None = None
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as exc:  # only the folder: a scheduler's failure names the scheduler
        return fatal("update", f"--out-dir {args.out_dir!r}: {exc.strerror or exc}")
    try:
        locations = acquire_locations(args)
        token = acquire_token(args)
        redactor: Redactor | None = getattr(args, "log_redactor", None)
        if redactor is not None:  # the coordinator's logs (issue 16)
            if isinstance(token, str):
                redactor.add(token)
            elif token is not None:
                redactor.include(token.redactor)
        result = asyncio.run(
            _interruptible(
                distributed.run_shards(
                    settings,
                    out_dir=args.out_dir,
                    shards=args.shards,
                    cluster=args.dask,
                    token=token,
                    locations=locations,
                    resume_command=resume_command(args),
                )
            )
        )
    except GrowthHubError as exc:
        return fatal("update", exc)
    except OSError as exc:  # the cluster's (a local cluster that cannot start)
        return fatal("update", f"--dask {args.dask!r}: {exc}")
    except (KeyboardInterrupt, asyncio.CancelledError):  # the shards were stopped and the
        sys.stderr.write("interrupted\n")  # resume command printed
        return EXIT_NOT_ALL
    finally:
        _report_token_files(token, locations, args)
    return result.exit_status


STATE_DESCRIPTION = """\
Show what a state file (update --state FILE) holds: contacts remembered per location, when the
first and the last of them were applied, and the file's size; or forget a location or some
contacts, so that the next run sends their records again. Forgetting takes the state's lock: it
waits for no run, and is refused while one uses the file."""


def add_state_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``state`` subcommand: show or prune a sync state file (issue 14)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "state",
        help="show what a --state file holds, or forget a location or contacts",
        description=STATE_DESCRIPTION,
    )
    parser.add_argument("file", metavar="FILE", help="the state file of update --state")
    forget = parser.add_mutually_exclusive_group()
    forget.add_argument(
        "--forget-location",
        metavar="LOCATION",
        help='forget every contact of LOCATION ("" is the location of single-token runs)',
    )
    forget.add_argument(
        "--forget-contact",
        metavar="CONTACT_ID",
        action="append",
        help="forget this contact (repeat for more) of --location",
    )
    parser.add_argument(
        "--location",
        default="",
        metavar="LOCATION",
        help='the location of --forget-contact (default "", that of single-token runs)',
    )
    parser.set_defaults(handler=run_state)
    return parser


def run_state(args: argparse.Namespace) -> int:
    """Handle ``growthhub-async state``; returns the exit status."""
    try:
        return asyncio.run(_state_command(args))
    except GrowthHubError as exc:
        return fatal("state", exc)


async def _state_command(args: argparse.Namespace) -> int:
    writing = args.forget_location is not None or args.forget_contact
    if not await asyncio.to_thread(_exists, args.file):
        return fatal("state", f"{args.file!r} does not exist")
    out = Terminal(sys.stdout)  # the work is in the file: a closed stdout cannot undo it
    from growthhub_async.state import SyncState  # noqa: PLC0415 (sqlite3: this command only)

    async with SyncState(args.file, readonly=not writing) as state:
        if args.forget_location is not None:
            count = await state.forget_location(args.forget_location)
            out.write(f"forgot {count} contacts of location {args.forget_location!r}\n")
        elif args.forget_contact:
            count = await state.forget_contacts(args.location, args.forget_contact)
            out.write(
                f"forgot {count} of {len(args.forget_contact)} contacts of location "
                f"{args.location!r} (the others were not in the state)\n"
            )
        stats = await state.stats()
    out.write(render_state(args.file, stats) + "\n")
    out.flush()
    return 0


REPORT_DESCRIPTION = """\
Summarise one or more outcome journals (the OUTCOMES of update, or the journals of several
shards): records by status (each record's last outcome) and by location, the most frequent
error reasons, the requests, retries and 429s. --html FILE also writes a self-contained page
(no network) with requests per second against the limit and outcomes over time. Journals are
read one line at a time: blank, torn or foreign lines are counted and skipped."""


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand (issue 16)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        allow_abbrev=False,
        help="summarise outcome journals, as text or an HTML page with charts",
        description=REPORT_DESCRIPTION,
    )
    parser.add_argument("journals", nargs="+", metavar="OUTCOMES.jsonl", help="journals to read")
    parser.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    parser.add_argument(
        "--rate",
        type=_rate_arg,
        default=DEFAULT_RATE,
        metavar="N/Ws",
        help=f"the limit per location the chart compares with (default {DEFAULT_RATE})",
    )
    parser.add_argument(
        "--top", type=int, default=10, metavar="N", help="error reasons shown (default 10)"
    )
    parser.set_defaults(handler=run_report)
    return parser


def run_report(args: argparse.Namespace) -> int:
    """Handle ``growthhub-async report``; 0 when every journal was read, 2 otherwise."""
    from growthhub_async import report  # noqa: PLC0415 (see the imports above)

    try:
        found = report.read_journals(args.journals)
    except OSError as exc:
        return fatal("report", f"cannot read {exc.filename!r}: {exc.strerror}")
    out = Terminal(sys.stdout)
    out.write(report.render_text(found, top=max(1, args.top)))
    if args.html:
        page = report.render_html(found, rate=args.rate, top=max(1, args.top))
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as exc:
            return fatal("report", f"cannot write {args.html!r}: {exc.strerror}")
        out.write(f"page: {args.html}\n")
    out.flush()
    return 0


def _exists(path: str) -> bool:
    return os.path.exists(path)


_PER_CONTACT_FROM: Final = 1000
"""Contacts from which bytes per contact mean something (below, SQLite's fixed pages rule)."""


def render_state(path: str, stats: StateStats) -> str:
    """The ``state`` command's table: per location, contacts and first/last applied (UTC)."""
    locations, size = stats.locations, stats.file_bytes
    contacts = sum(loc.contacts for loc in locations)
    lines = [f"state {path}: {contacts} contacts in {len(locations)} locations, {size:,} bytes"]
    if contacts >= _PER_CONTACT_FROM:
        lines[0] += f" ({size / contacts:,.0f} bytes per contact)"
    if stats.server is not None:
        lines.append(f"  applied through {stats.server}")
    rows = [("location", "contacts", "first applied (UTC)", "last applied (UTC)")]
    rows += [
        (
            loc.location or repr(loc.location),
            str(loc.contacts),
            _utc(loc.first_applied),
            _utc(loc.last_applied),
        )
        for loc in locations
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines += [
        ("  " + "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]
    if locations:
        newest = max(loc.last_applied for loc in locations)
        ago = dt.datetime.now(dt.UTC).timestamp() - newest
        lines.append(f"  last sync: {_utc(newest)} ({format_duration(max(0.0, ago))} ago)")
    return "\n".join(lines)


def _utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _token_hint(args: argparse.Namespace) -> str | None:
    """Where the tokens came from, named when one is refused."""
    places = []
    if getattr(args, "tokens", None):
        places.append(f"the tokens file {args.tokens}")
    if getattr(args, "agency_oauth", None):
        places.append(f"the agency OAuth file {args.agency_oauth}")
    if getattr(args, "oauth", None):
        places.append(f"the OAuth token file {args.oauth}")
    return " and ".join(places) or None


def _report_token_files(
    token: object, locations: LocationTokens | None, args: argparse.Namespace
) -> None:
    """What became of the run's OAuth token files (``--oauth``, ``--agency-oauth``), if any."""
    if isinstance(token, OAuthProvider):
        report_token_file(token, args.oauth)
    if locations is not None and locations.agency is not None:
        report_token_file(locations.agency.agency, args.agency_oauth)


def report_token_file(provider: OAuthProvider, path: str) -> None:
    """Tell the user, in words they can act on, what became of the OAuth token file (issue 18)."""
    saved = provider.saved
    if saved is not None and saved.rescued:
        sys.stderr.write(
            f"WARNING: the rotated OAuth tokens could not be written to {path} "
            f"({saved.problem}). They are in {saved.path}. Before the next run, move them "
            f"back, or the app must be reinstalled on this location:\n"
            f"  {shlex.join(['mv', str(saved.path), path])}\n"
        )
    elif saved is not None and saved.how == "in place":
        sys.stderr.write(
            f"note: {path} could not be replaced atomically ({saved.problem}); it was "
            "rewritten in place and holds the rotated tokens\n"
        )
    failure = provider.failure
    if failure is not None:
        if failure.error_code == "invalid_grant":
            advice = (
                f"\n  the refresh token in {path} is spent or revoked: reinstall the app on "
                f"this location (or put a valid refresh_token into {path})"
            )
        elif failure.refresh_status != 200:  # a 200 that went wrong: the reason says it all
            advice = f"\n  check {path} and the token endpoint ({provider.token_url})"
        else:
            advice = ""
        sys.stderr.write(f"OAuth: token refresh failed: {failure.reason}{advice}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _logging(args: argparse.Namespace, real: TextIO | None, redactor: Redactor) -> Iterator[None]:
    """The command's logging for one subcommand (issue 16), undone afterwards.

    Our loggers go to stderr (text: the message alone, as Python prints an unconfigured
    warning); with ``--log-format json`` stderr itself becomes :class:`~growthhub_async.logs.
    JsonLines`, so that what the command prints there is JSON too. Each run gets its id. The
    handler redacts with every secret the run knows (``args.log_redactor``: ``redactor``,
    which knows the environment's token from the start)."""
    if real is None:  # started with stderr closed: nothing to configure
        yield
        return
    log_format = getattr(args, "log_format", "text")
    args.log_redactor = redactor
    run = logs.RUN_ID.set(logs.new_run_id())
    setup = logs.configure(log_format, getattr(args, "log_level", None), real, redactor)
    if isinstance(sys.stderr, logs.JsonLines):
        sys.stderr.redactor = redactor
        sys.stderr.least = setup.logger.level  # --log-level, for the command's own lines too
    try:
        yield
    finally:
        setup.remove()
        logs.RUN_ID.reset(run)


def _wants_json(words: list[str]) -> bool:
    return "--log-format=json" in words or any(
        a == "--log-format" and b == "json" for a, b in itertools.pairwise(words)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 some records not updated, 2 usage)."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words else None)
    real = sys.stderr
    # The secrets known before the options are parsed (the environment's token): a usage
    # error quotes argv, and a mistyped option may hold the token (``--bogus=$TOKEN``).
    redactor = Redactor(os.environ.get(TOKEN_ENV, "").strip())
    if real is not None and _wants_json(words):
        # Before the options are parsed: a usage error is a JSON line too.
        sys.stderr = cast(TextIO, logs.JsonLines(real, redactor))
    # What escapes from here (a usage error's exit, a crash's traceback) is printed by Python
    # through the JSON stream, which is left in place for it: stderr stays JSON to the end.
    if real is not None and sys.stderr is real:
        sys.stderr = cast(TextIO, logs.Redacting(real, redactor))
        try:
            args = parser.parse_args(words)  # a usage error, redacted, then SystemExit
        finally:
            sys.stderr = real
    else:
        args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    with _logging(args, real, redactor):
        status = handler(args)
    if sys.stderr is not real:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.close()  # its last, unfinished line
        sys.stderr = real
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            # Closed, full or a broken pipe: what is left unwritten goes nowhere, so that
            # Python's own flush at exit cannot turn the run's exit status into 120.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
