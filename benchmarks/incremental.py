"""Incremental sync (issue 14): checking records against a large state, and re-runs.

    .venv/bin/python -m benchmarks.incremental [--contacts 1000000] [--records 100000]

Builds a state of ``--contacts`` contacts (the bodies ``write_records`` writes, as if a first
run had applied them all), then measures:

- **check**: :class:`~growthhub_async.state.StateRun` judging ``--records`` of those records
  (all unchanged) in the library, as the engine reads them: records per second of the state
  check alone (canonical body, digest, batched lookups on the state's thread). Goal (issue 14):
  at least 50,000 records/s against a 1,000,000-contact state.
- **unchanged**: the real ``update --state`` command over ``--records`` unchanged records
  (requests sent must be 0): wall time, from process start to exit.
- **onePercent**: the same with 1% of the records edited: those, and only those, are sent.
- **noState**: the same input without ``--state`` (every record sent), for comparison.

Requests go to the fast local server of ``cpu_per_record`` pinned to one CPU, at
``--rate 1000000/1s``, so the figures are the client's. Also reports the state file's size per
contact and how long opening it takes (SQLite's ``quick_check`` over the whole file).

Writes benchmarks/results/incremental.json. Not part of ``make test`` (a ``--smoke`` run is).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    FAST_SERVER,
    busy_cpus,
    pin,
    server_process,
    split_cpus,
    write_records,
    write_result,
)
from benchmarks.cpu_per_record import commands, run_child
from growthhub_async.incremental import StateRun, canonical_body, digest_of
from growthhub_async.models import UpdateContact
from growthhub_async.outcomes import Status
from growthhub_async.sources import Record
from growthhub_async.state import SyncState, state_size

NAME = "incremental"
GOAL = 50_000


def _update(i: int) -> UpdateContact:
    """The body ``write_records`` writes for record ``i``."""
    return UpdateContact(first_name="Ada", email=f"ada{i}@example.com", tags=["vip"])


def _contact(i: int) -> str:
    return f"bench{i:015d}"


def build_state(path: Path, contacts: int) -> float:
    """A state holding ``contacts`` applied bodies; returns the seconds it took."""
    started = time.perf_counter()

    async def create() -> None:
        async with SyncState(path):  # the schema, as the command makes it
            pass

    asyncio.run(create())
    now = time.time()
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("BEGIN")
        step = 50_000
        for start in range(0, contacts, step):
            rows = []
            for i in range(start, min(contacts, start + step)):
                body = canonical_body(_update(i))
                rows.append(("", _contact(i), digest_of(body), body, now))
            db.executemany("INSERT INTO applied VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


def measure_check(path: Path, records: int) -> dict[str, Any]:
    """The library's state check over ``records`` unchanged records: records per second."""

    async def check() -> dict[str, Any]:
        state = SyncState(path)
        opened = time.perf_counter()
        await state.open()
        open_seconds = time.perf_counter() - opened
        items = [Record(i + 1, _contact(i), _update(i)) for i in range(records)]
        run = StateRun(state)
        started = time.perf_counter()
        unchanged = 0
        async for item in run.filter(items):
            unchanged += getattr(item, "status", None) is Status.UNCHANGED
        seconds = time.perf_counter() - started
        await state.close()
        if unchanged != records:
            raise SystemExit(f"only {unchanged} of {records} records were found unchanged")
        return {
            "records": records,
            "seconds": round(seconds, 3),
            "recordsPerSecond": round(records / seconds),
            "openSeconds": round(open_seconds, 2),
        }

    return asyncio.run(check())


def _edit(input_path: Path, every: int) -> int:
    """Change the first name of every ``every``-th record; returns how many were changed."""
    lines = input_path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = 0
    for n in range(0, len(lines), every):
        lines[n] = lines[n].replace('"firstName":"Ada"', '"firstName":"Edited"')
        changed += 1
    input_path.write_text("".join(lines), encoding="utf-8")
    return changed


def _journal(path: Path) -> dict[str, int]:
    statuses: dict[str, int] = {"requests": 0}
    with open(path, "rb") as f:
        for raw in f:
            outcome = json.loads(raw)
            statuses[outcome["status"]] = statuses.get(outcome["status"], 0) + 1
            statuses["requests"] += outcome["attempts"]
    return statuses


def measure_runs(tmp: Path, state: Path, records: int, concurrency: int) -> dict[str, Any]:
    """The command's wall time: unchanged, 1% changed, and without a state."""
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    input_path = tmp / "records.jsonl"
    write_records(input_path, records)
    results: dict[str, Any] = {}
    with server_process(FAST_SERVER, server_cpus) as server:
        for name in ("unchanged", "onePercent", "noState"):
            if name == "onePercent":
                results["changedRecords"] = _edit(input_path, 100)
            journal = tmp / f"outcomes-{name}.jsonl"
            argv = commands("asyncio", input_path, journal, server.base_url, concurrency)["ours"]
            if name != "noState":
                argv += ["--state", str(state)]
            run = run_child(argv)
            counts = _journal(journal)
            results[name] = {
                "wallSeconds": round(run["wall"], 2),
                "cpuSeconds": round(run["cpu"], 2),
                "requests": counts.pop("requests"),
                "byStatus": counts,
                "recordsPerSecond": round(records / run["wall"]),
            }
            print(f"{name}: {results[name]}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.contacts, args.records = 3_000, 1_000
    busy = busy_cpus()
    with tempfile.TemporaryDirectory(prefix="ghbench-") as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "sync.db"
        build = build_state(state, args.contacts)
        size = state_size(state)
        print(f"state of {args.contacts:,} contacts: {size:,} bytes, built in {build:.1f} s")
        check = measure_check(state, args.records)
        print(f"check: {check}", flush=True)
        runs = measure_runs(tmp, state, args.records, args.concurrency)
    figures = {
        "contacts": args.contacts,
        "stateBytes": size,
        "bytesPerContact": round(size / args.contacts),
        "check": check,
        **runs,
        "goal": f"state check >= {GOAL:,} records/s against {args.contacts:,} contacts",
        "met": check["recordsPerSecond"] >= GOAL and runs["unchanged"]["requests"] == 0,
        "pytestProcessesAtStart": busy,
    }
    path = write_result(NAME, figures, args.out)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
