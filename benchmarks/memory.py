"""Memory: peak RSS of the real ``update`` command streaming a small and a large input.

    .venv/bin/python -m benchmarks.memory [--small 10000] [--large 1000000] [--concurrency 50]

Both runs send every record (no dry run) to the fast local server of ``cpu_per_record`` (raw
asyncio, 200 at once, pinned to one CPU), with ``--rate 1000000/1s`` so that the server's
speed, not pacing, sets the pace, and journal every outcome to a temporary file. Peak RSS is the
child's ``ru_maxrss`` from ``os.wait4``. A streaming command holds a bounded window of records
whatever the input's size, so the large run's peak should stay close to the small one's.

Writes benchmarks/results/memory.json. Goal (issue 7): the large run's peak under 1.25x the
small run's.

``--by-location`` (issue 13): the records carry a ``locationId``, sorted by location (10
locations for the small run, 1,000 for the large one: 1,000 records each), and the command runs
with ``--tokens``, so it reads ahead, holds a share per location and spills the rest to disk;
writes benchmarks/results/memory_locations.json.
"""

from __future__ import annotations

import argparse
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
    write_tokens,
)
from benchmarks.cpu_per_record import commands, run_child

NAME = "memory"
GOAL = 1.25


def _write_by_location(path: Path, count: int, locations: int) -> Path:
    """``count`` records over ``locations`` locations, sorted by location; the tokens file."""
    per = count // locations
    with open(path, "w", encoding="utf-8") as f:
        for n in range(locations):
            f.writelines(
                f'{{"contactId":"L{n:04d}c{i:08d}","locationId":"loc{n:04d}",'
                f'"firstName":"Ada","email":"ada{i}@example.com","tags":["vip"]}}\n'
                for i in range(per)
            )
    return write_tokens(path, locations)


def measure(
    sizes: list[int], concurrency: int, locations: list[int] | None = None
) -> list[dict[str, Any]]:
    """Run the command once per input size; peak RSS, time and records/s of each."""
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="ghbench-") as tmp,
        server_process(FAST_SERVER, server_cpus) as server,
    ):
        for n, size in enumerate(sizes):
            input_path = Path(tmp) / f"records-{size}.jsonl"
            extra: list[str] = []
            if locations is None:
                write_records(input_path, size)
            else:
                tokens = _write_by_location(input_path, size, locations[n])
                extra = ["--tokens", str(tokens)]
            journal = Path(tmp) / f"outcomes-{size}.jsonl"
            argv = commands("asyncio", input_path, journal, server.base_url, concurrency)
            argv["ours"] += extra
            started = time.perf_counter()
            run = run_child(argv["ours"])
            with open(journal, "rb") as f:
                if sum(1 for _ in f) != size:
                    raise SystemExit("the journal misses records")
            rows.append(
                {
                    "records": size,
                    "locations": locations[n] if locations is not None else None,
                    "inputBytes": input_path.stat().st_size,
                    "peakRssMiB": round(run["maxRssKiB"] / 1024, 1),
                    "seconds": round(time.perf_counter() - started, 1),
                    "recordsPerSecond": round(size / run["wall"]),
                    "cpuSeconds": round(run["cpu"], 1),
                }
            )
            input_path.unlink()
            journal.unlink()
            print(
                f"{size:,} records: peak RSS {rows[-1]['peakRssMiB']} MiB, "
                f"{rows[-1]['seconds']} s ({rows[-1]['recordsPerSecond']:,} records/s)",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="10,000 and 100,000 records")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument(
        "--by-location",
        action="store_true",
        help="records over 10 then 1,000 locations (1,000 records each), sorted, with --tokens",
    )
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large = 10_000, 100_000
    if args.smoke:
        args.small, args.large = 200, 2_000
    busy = busy_cpus()
    locations = None
    if args.by_location:
        locations = [max(1, args.small // 1000), max(1, args.large // 1000)]
    small, large = measure([args.small, args.large], args.concurrency, locations)
    ratio = large["peakRssMiB"] / small["peakRssMiB"]
    figures = {
        "concurrency": args.concurrency,
        "small": small,
        "large": large,
        "rssRatio": round(ratio, 3),
        "goal": f"large / small peak RSS < {GOAL}",
        "met": ratio < GOAL,
        "pytestProcessesAtStart": busy,
    }
    name = NAME + ("_locations" if args.by_location else "")
    path = write_result(name, figures, args.out, module=NAME)
    print(f"large/small peak RSS {ratio:.2f} (goal < {GOAL}); written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
