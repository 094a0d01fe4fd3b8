"""``python -m benchmarks``: the whole suite (what ``make bench`` runs), then the README table.

    .venv/bin/python -m benchmarks [--quick]

Each benchmark runs in its own process, one after the other, so that none disturbs another's
timings; the CPU-bound ones come first. ``--quick`` shortens the long ones (memory: 10,000 and
100,000 records instead of 1,000,000; fewer CPU rounds; 10 s utilisation runs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks import report
from benchmarks._common import ROOT, busy_cpus

SUITE: list[tuple[str, list[str], list[str]]] = [
    # (module, full arguments, --quick arguments)
    ("encoding", [], []),
    ("cpu_per_record", [], ["--rounds", "3", "--records", "10000"]),
    ("lanes", [], ["--rounds", "1", "--records", "10000"]),
    ("startup", [], ["--runs", "10"]),
    ("otel_overhead", [], ["--rounds", "3", "--records", "10000"]),
    ("rate_utilisation", [], ["--seconds", "10"]),
    ("latency", [], []),
    ("sandbox_throughput", [], []),
    ("memory", [], ["--quick"]),
    ("incremental", [], ["--contacts", "100000", "--records", "10000"]),
    ("memory", ["--by-location"], ["--quick", "--by-location"]),
    ("locations", [], []),
    ("web_workers", [], ["--requests", "200"]),
]


def main() -> int:
    """Run every benchmark; exit 1 if one failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    busy = busy_cpus()
    if busy:
        print(f"note: {busy} pytest processes are running: timings may be disturbed")
    failed = []
    for module, full, quick in SUITE:
        argv = [sys.executable, "-m", f"benchmarks.{module}", *(quick if args.quick else full)]
        print(f"\n== {module}", flush=True)
        if subprocess.run(argv, cwd=ROOT, check=False).returncode != 0:
            failed.append(module)
    report.main()
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
