"""``growthhub-async demo``: the whole bulk job against a local sandbox, in about 20 seconds.

It starts the sandbox in this process on a free loopback port, with the API's burst window scaled
down (100 requests per second instead of per 10 seconds) and a few faults switched on (some 5xx,
a few dropped connections, a forced 429 now and then, a little latency); writes a sample input of
about 2,000 contact updates to a work folder, a handful of them deliberately bad; and runs the
very job that ``growthhub-async update`` runs (:func:`~growthhub_async.job.run_job`), with the
progress bar, the summary and the outcome file.

The sample spans four locations (sub-accounts), sorted by location as a database export is, one
large and three small: the job runs them side by side, each on its own token and budget, and the
summary ends with a table by location (issue 13). The sandbox accepts one throwaway token per
location, made up for the run; none is ever printed. Each run
starts from a fresh outcome file (the demo's own, in its own folder), so the demo can be run
again and again. Exit status: 0 when the run went as designed (every valid record updated, every
deliberately bad record ``rejected``), 1 otherwise, 2 when it could not start.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import secrets
import shlex
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec

from growthhub_async import eventloop
from growthhub_async.cmdline import PROG, invoked_as
from growthhub_async.errors import GrowthHubError
from growthhub_async.job import EXIT_FATAL, EXIT_NOT_ALL, EXIT_OK, JobSettings, run_job
from growthhub_async.locations import LocationTokens
from growthhub_async.outcomes import Status
from growthhub_async.ratelimit import Rate
from growthhub_async.sandbox import Faults, SandboxConfig, run_sandbox
from growthhub_async.sandbox.config import DEFAULT_TOKEN

__all__ = [
    "BAD_RECORDS",
    "DEMO_FAULTS",
    "add_parser",
    "main",
    "prepare_folder",
    "run_demo",
    "try_it_yourself",
    "write_sample",
]

DEMO_RECORDS: Final = 2000
DEMO_LOCATIONS: Final = (
    ("demoLocationAtlanta1", 0.55),
    ("demoLocationBoston01", 0.25),
    ("demoLocationChicago1", 0.15),
    ("demoLocationDenver01", 0.05),
)
"""The sample's locations and their shares of its records (sorted by location, as exported)."""
DEMO_RATE: Final = Rate(100, 1.0)
"""The sandbox's burst window and the client's pace: the API's 100 per 10 s, ten times faster."""

DEMO_FAULTS: Final = Faults(
    seed=2024,
    error_rate=0.02,  # a 500/502/503/504 now and then: retried
    drop_rate=0.005,  # a connection closed without an answer: retried
    rate_limit_rate=0.002,  # a 429 the budget did not predict: pause, then retried
    latency=0.005,
    jitter=0.02,
)

# Each is one input line the reader must reject, naming the line and the field.
BAD_RECORDS: Final[tuple[bytes, ...]] = (
    b'{"contactId": "demoBadField00000001", "firstName": "Ada", "favouriteColour": "teal"}',
    b'{"contactId": "demoBadCountry000001", "country": "XX"}',
    b'{"contactId": "demoBadDate000000001", "dateOfBirth": "31/12/1990"}',
    b'{"contactId": "../../admin", "firstName": "Mallory"}',
    b'{"contactId": "demoBadType000000001", "dnd": "sometimes"}',
    b'{"contactId": "demoBadJson000000001", "firstName": "Unclosed',
)

_FIRST: Final = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken")
_LAST: Final = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton")
_COUNTRIES: Final = ("US", "GB", "DE", "FR", "NL", "CA", "AU", "IN")
_TAGS: Final = ("vip", "newsletter", "trial", "churn-risk", "partner")
_ID_CHARS: Final = string.ascii_letters + string.digits


def _contacts(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    for n in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        body: dict[str, Any] = {
            "contactId": "".join(rng.choices(_ID_CHARS, k=20)),
            "firstName": first,
            "lastName": last,
            "email": f"{first}.{last}.{n}@example.com".lower(),
            "tags": rng.sample(_TAGS, k=rng.randint(0, 2)),
            "country": rng.choice(_COUNTRIES),
        }
        if n % 5 == 0:
            body["customFields"] = [{"id": "loyaltyTier", "field_value": rng.choice("ABC")}]
        if n % 7 == 0:
            body["dndSettings"] = {"SMS": {"status": "active", "message": "asked to stop"}}
        if n % 11 == 0:
            body["dateOfBirth"] = f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{n % 10}"
        yield body


def write_sample(path: Path, records: int = DEMO_RECORDS, *, seed: int = 7) -> int:
    """Write ``records`` JSONL contact updates to ``path``, the :data:`BAD_RECORDS` spread in.

    Returns the number of lines written (good and bad).
    """
    rng = random.Random(seed)  # noqa: S311 (sample data, not a secret)
    good = max(0, records - len(BAD_RECORDS))
    step = max(1, good // (len(BAD_RECORDS) + 1))
    encode = msgspec.json.encode
    bad = iter(BAD_RECORDS)
    lines = 0
    bounds = list(itertools.accumulate(round(share * good) for _, share in DEMO_LOCATIONS))
    with path.open("wb") as f:
        for n, contact in enumerate(_contacts(good, rng), start=1):
            where = next((k for k, bound in enumerate(bounds) if n <= bound), -1)
            f.write(encode({"locationId": DEMO_LOCATIONS[where][0], **contact}) + b"\n")
            lines += 1
            if n % step == 0 and (line := next(bad, None)) is not None:
                f.write(line + b"\n")
                lines += 1
        for line in bad:
            f.write(line + b"\n")
            lines += 1
    return lines


def prepare_folder(folder: Path, records: int = DEMO_RECORDS) -> tuple[Path, Path, int]:
    """Create ``folder``, write the sample input, remove the last run's outcomes.

    Returns the sample's path, the outcome file's path and the sample's line count.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "contacts.jsonl"
    outcomes = folder / "outcomes.jsonl"
    lines = write_sample(sample, records)
    # For the suggested commands: a sandbox of your own takes one token for every location.
    tokens = folder / "tokens.json"
    tokens.unlink(missing_ok=True)
    fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode({name: DEFAULT_TOKEN for name, _ in DEMO_LOCATIONS}))
    # A fresh journal each run: this file is the demo's own, in the demo's own folder.
    outcomes.unlink(missing_ok=True)
    return sample, outcomes, lines


async def run_demo(
    folder: Path,
    *,
    records: int = DEMO_RECORDS,
    progress: bool = True,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the demo in ``folder`` (created if needed); returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    sample, outcomes, lines = prepare_folder(folder, records)
    # Throwaway tokens, one per location, accepted by this sandbox only.
    tokens = {name: secrets.token_urlsafe(24) for name, _ in DEMO_LOCATIONS}
    config = SandboxConfig(
        tokens=frozenset({secrets.token_urlsafe(24)}),
        location_tokens={token: name for name, token in tokens.items()},
        rate_limit=DEMO_RATE.requests,
        rate_window=DEMO_RATE.window,
        faults=DEMO_FAULTS,
    )
    async with run_sandbox(config, host="127.0.0.1", port=0) as sandbox:
        out.write(
            f"demo: sandbox on {sandbox.base_url} ({DEMO_RATE}, the API's 100/10s scaled "
            "down; some 5xx, drops, 429s and latency switched on)\n"
            f"demo: {lines} contact updates for {len(DEMO_LOCATIONS)} locations in {sample} "
            f"({len(BAD_RECORDS)} deliberately bad), each location on its own token and budget\n"
        )
        out.flush()
        settings = JobSettings(
            input=str(sample),
            out=str(outcomes),
            base_url=sandbox.base_url,
            rate=DEMO_RATE,
            concurrency=10,
            progress="auto" if progress else "off",
            resume_command=None,
        )
        result = await run_job(
            settings,
            token=None,
            stdout=out,
            stderr=stderr,
            client_options={"locations": LocationTokens(tokens)},
        )
        stats = sandbox.stats()
    out.write(
        f"demo: the sandbox answered {stats['requests']} requests "
        f"({stats['rateLimited']} with 429); outcomes in {outcomes}\n"
    )
    out.writelines(f"{line}\n" for line in try_it_yourself(sample, invoked_as()))
    out.flush()
    by_status = result.summary.by_status
    as_designed = (
        not result.interrupted
        and by_status[Status.REJECTED] == len(BAD_RECORDS)
        and by_status[Status.UPDATED] == result.summary.records - len(BAD_RECORDS)
    )
    if result.exit_status == EXIT_FATAL:
        return EXIT_FATAL
    return EXIT_OK if as_designed else EXIT_NOT_ALL


def try_it_yourself(sample: Path, command: str) -> list[str]:
    """What the demo suggests next, with ``command`` as the user can type it in this folder."""
    mine = shlex.quote(str(sample.with_name("mine.jsonl")))
    tokens = shlex.quote(str(sample.with_name("tokens.json")))
    data = shlex.quote(str(sample))
    lines = [
        "demo: try it yourself (checks every record, sends nothing, needs no token):",
        f"  {command} update {data} --out {mine} --dry-run",
        "demo: or for real, against a sandbox of your own, in two terminals:",
        f"  GROWTHHUB_TOKEN={DEFAULT_TOKEN} {command} sandbox --port 8080",
        f"  GROWTHHUB_TOKEN={DEFAULT_TOKEN} {command} update {data} --out {mine} "
        f"--base-url http://127.0.0.1:8080 --tokens {tokens}",
    ]
    if command != PROG:
        lines.append(f"demo: `source {_activate(command)}` puts {PROG} on your PATH for this shell")
    return lines


def _activate(command: str) -> str:
    """The activate script beside the command's interpreter or script."""
    first = shlex.split(command)[0]
    return shlex.quote(os.path.join(os.path.dirname(first) or os.curdir, "activate"))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand on the command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a bulk job against a local sandbox with faults (about 20 s)",
        description=(
            "Start a local sandbox (100 requests/s, some faults), write about 2,000 sample "
            "contact updates (a few deliberately bad) and update them all, with the progress "
            "bar and the summary. Exit status 0 when every valid record was updated and every "
            "bad one rejected."
        ),
    )
    parser.add_argument(
        "--dir", default="demo-out", help="work folder for the sample and the outcomes"
    )
    parser.add_argument(
        "--records", type=int, default=DEMO_RECORDS, help=argparse.SUPPRESS
    )  # smaller runs for tests
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Handle ``growthhub-async demo``; returns the exit status."""
    try:
        _, loop = eventloop.loop_factory(None)  # uvloop when installed, as `update` (issue 17)
        return eventloop.run(
            lambda: run_demo(Path(args.dir), records=args.records, progress=not args.no_progress),
            loop,
        )
    except (GrowthHubError, OSError) as exc:
        sys.stderr.write(f"growthhub-async demo: error: {exc}\n")
        return EXIT_FATAL
    except KeyboardInterrupt:
        return EXIT_NOT_ALL
