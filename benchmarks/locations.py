"""Many locations side by side: 200 locations x 50 records, sorted by location (issue 13, item 7).

    .venv/bin/python -m benchmarks.locations [--locations 200] [--records 50] [--rate 10]

The sandbox runs in a subprocess pinned to one CPU, with one token per location
(``location_tokens``) and a budget per location of ``--rate`` requests per 1 s (the API's
100 / 10 s scaled so that 50 records span several windows). The real ``update`` command runs
with ``--tokens`` (a 0600 file) on a JSONL input sorted by location, every location at
``--rate N/1s``:

1. the floor: one location's 50 records alone (the least time any location can take);
2. all locations at once: wall time against that floor (goal <= 1.3x), and the 429s the
   sandbox counted (goal 0);
3. CPU per record: run 2's CPU seconds per record against one location sending the same number
   of records at the same total rate (a second sandbox with that location's budget raised),
   so that the cost of routing, lanes and the spill file shows.

Writes benchmarks/results/locations.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._common import busy_cpus, pin, sandbox_process, split_cpus, write_result
from benchmarks.cpu_per_record import run_child

NAME = "locations"
GOAL_RATIO = 1.3


def _stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/__sandbox/stats") as resp:
        result: dict[str, Any] = json.load(resp)
        return result


def _write_input(path: Path, locations: list[str], per_location: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for location in locations:
            f.writelines(
                f'{{"contactId":"{location}c{i:05d}","locationId":"{location}",'
                f'"firstName":"Ada","tags":["vip"]}}\n'
                for i in range(per_location)
            )


def _command(input_path: Path, journal: Path, base_url: str, tokens: Path, rate: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "growthhub_async",
        "update",
        str(input_path),
        "--out",
        str(journal),
        "--base-url",
        base_url,
        "--rate",
        rate,
        "--tokens",
        str(tokens),
        "--no-progress",
    ]


def _run(
    tmp: Path,
    name: str,
    base_url: str,
    tokens: Path,
    rate: str,
    *,
    locations: list[str],
    per: int,
) -> dict[str, Any]:
    input_path = tmp / f"{name}.jsonl"
    _write_input(input_path, locations, per)
    journal = tmp / f"{name}-outcomes.jsonl"
    before = _stats(base_url)
    run = run_child(_command(input_path, journal, base_url, tokens, rate))
    after = _stats(base_url)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    records = len(locations) * per
    if len(lines) != records or any(line["status"] != "updated" for line in lines):
        raise SystemExit(f"{name}: not every record was updated")
    return {
        "locations": len(locations),
        "records": records,
        "seconds": round(run["wall"], 2),
        "cpuSeconds": round(run["cpu"], 2),
        "cpuMicrosecondsPerRecord": round(run["cpu"] / records * 1e6),
        "answered429": after["rateLimited"] - before["rateLimited"],
        "peakRssMiB": round(run["maxRssKiB"] / 1024, 1),
    }


def measure(count: int, per: int, rate: int) -> dict[str, Any]:
    """The three runs; see the module's documentation."""
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    # One more location for the floor run, so that the big run starts on fresh budgets.
    locations = [f"loc{n:04d}" for n in range(count + 1)]
    tokens = {f"bench-loc-token-{n:04d}": loc for n, loc in enumerate(locations)}
    with tempfile.TemporaryDirectory(prefix="ghbench-") as tmp_name:
        tmp = Path(tmp_name)
        tokens_file = tmp / "tokens.json"
        tokens_file.write_text(json.dumps({loc: token for token, loc in tokens.items()}))
        tokens_file.chmod(0o600)
        with sandbox_process(
            server_cpus, rate_limit=rate, rate_window=1.0, location_tokens=tokens
        ) as server:
            floor = _run(
                tmp,
                "floor",
                server.base_url,
                tokens_file,
                f"{rate}/1s",
                locations=locations[-1:],
                per=per,
            )
            print(f"one location: {floor['seconds']} s", flush=True)
            many = _run(
                tmp,
                "many",
                server.base_url,
                tokens_file,
                f"{rate}/1s",
                locations=locations[:-1],
                per=per,
            )
            print(f"{count} locations: {many['seconds']} s", flush=True)
        total = rate * count
        with sandbox_process(
            server_cpus, rate_limit=total, rate_window=1.0, location_tokens=tokens
        ) as server:
            single = _run(
                tmp,
                "single",
                server.base_url,
                tokens_file,
                f"{total}/1s",
                locations=locations[:1],
                per=per * count,
            )
            print(f"one location, same records and total rate: {single['seconds']} s", flush=True)
    return {"floor": floor, "many": many, "single": single}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locations", type=int, default=200)
    parser.add_argument("--records", type=int, default=50, help="per location")
    parser.add_argument("--rate", type=int, default=10, help="requests per 1 s per location")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.locations, args.records, args.rate = 5, 6, 3
    busy = busy_cpus()
    runs = measure(args.locations, args.records, args.rate)
    ratio = runs["many"]["seconds"] / runs["floor"]["seconds"]
    cpu_ratio = (
        runs["many"]["cpuMicrosecondsPerRecord"] / runs["single"]["cpuMicrosecondsPerRecord"]
    )
    figures = {
        **runs,
        "wallAgainstFloor": round(ratio, 3),
        "cpuPerRecordAgainstSingle": round(cpu_ratio, 3),
        "goal": f"wall <= {GOAL_RATIO}x one location's floor, no 429",
        "met": ratio <= GOAL_RATIO and runs["many"]["answered429"] == 0,
        "pytestProcessesAtStart": busy,
    }
    path = write_result(NAME, figures, args.out)
    print(
        f"wall {ratio:.2f}x the floor (goal <= {GOAL_RATIO}), "
        f"{runs['many']['answered429']} x 429, CPU per record {cpu_ratio:.2f}x one location's; "
        f"written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
