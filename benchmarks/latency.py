"""Latency-bound throughput: records per second against a slow server with no rate limit.

    .venv/bin/python -m benchmarks.latency [--latency 0.1] [--concurrency 50] [--records 3000]

The sandbox (subprocess, pinned to one CPU) adds ``--latency`` seconds before answering each PUT
and has its rate limit out of reach; a :class:`GrowthHubClient` with ``rate=None`` and
``concurrency=C`` sends ``--records`` updates. With C requests always in flight the ceiling is
C / latency records per second; the figure is records / wall time of the whole run.

Writes benchmarks/results/latency.json. Goal (issue 7): at least 0.9 x C / latency records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import TOKEN, busy_cpus, pin, sandbox_process, split_cpus, write_result
from growthhub_async import GrowthHubClient, Status, UpdateContact

NAME = "latency"
GOAL = 0.9


async def run(base_url: str, records: int, concurrency: int) -> dict[str, Any]:
    """Send ``records`` updates; wall time and how many were updated."""
    loop = asyncio.get_running_loop()
    items = ((f"lat{i:09d}", UpdateContact(first_name="Ada")) for i in range(records))
    async with GrowthHubClient(
        TOKEN, base_url=base_url, rate=None, concurrency=concurrency
    ) as client:
        started = loop.time()
        stream = client.update_contacts(items)
        async with stream:
            async for _ in stream:
                pass
        elapsed = loop.time() - started
    return {"seconds": elapsed, "updated": stream.summary.by_status[Status.UPDATED]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added per PUT")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.latency, args.concurrency, args.records = 0.05, 20, 100
    busy = busy_cpus()
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    with sandbox_process(
        server_cpus, rate_limit=10**9, daily_limit=10**12, faults={"latency": args.latency}
    ) as sb:
        result = asyncio.run(run(sb.base_url, args.records, args.concurrency))
    ceiling = args.concurrency / args.latency
    rate = args.records / result["seconds"]
    figures = {
        "latencySeconds": args.latency,
        "concurrency": args.concurrency,
        "records": args.records,
        "updated": result["updated"],
        "seconds": round(result["seconds"], 3),
        "recordsPerSecond": round(rate, 1),
        "ceiling": round(ceiling, 1),
        "ofCeiling": round(rate / ceiling, 4),
        "goal": f">= {GOAL} x concurrency / latency",
        "met": rate >= GOAL * ceiling and result["updated"] == args.records,
        "pytestProcessesAtStart": busy,
    }
    path = write_result(NAME, figures, args.out)
    print(
        f"{rate:,.1f} records/s = {rate / ceiling:.3f} of C/latency = {ceiling:,.0f} "
        f"(goal >= {GOAL}); written to {path}"
    )
    return 0 if result["updated"] == args.records else 1


if __name__ == "__main__":
    sys.exit(main())
