"""Requests per second the sandbox answers on one core, faults off, over keep-alive.

The sandbox runs in a subprocess pinned to one CPU (``os.sched_setaffinity``, where the OS has
it); the load comes from this process, pinned to the other CPUs when there are any, with a few
aiohttp sessions each holding keep-alive connections. Every request is a valid Update Contact
PUT answered 200. The rate limit is set out of reach: the server's speed is measured, not the
limiter's.

    .venv/bin/python -m benchmarks.sandbox_throughput [--seconds 5] [--clients 4] [--concurrency 16]

Prints the figure and writes benchmarks/results/sandbox_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._common import TOKEN, pin, sandbox_process, split_cpus, write_result

BODY = json.dumps(
    {
        "firstName": "Rosan",
        "lastName": "Deo",
        "email": "rosan@deos.com",
        "tags": ["vip", "2024"],
        "customFields": [{"id": "6dvNaf7VhkQ9snc5vnjJ", "field_value": "9039160788"}],
        "dndSettings": {"SMS": {"status": "active"}},
        "dateOfBirth": "1990-09-25",
        "country": "US",
    }
).encode()


async def worker(
    session: aiohttp.ClientSession, base_url: str, n: int, deadline: float, counts: dict[int, int]
) -> None:
    loop = asyncio.get_running_loop()
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Version": "2021-07-28",
        "Content-Type": "application/json",
    }
    i = 0
    while loop.time() < deadline:
        url = f"{base_url}/contacts/bench{n}x{i % 50}"
        async with session.put(url, data=BODY, headers=headers) as resp:
            await resp.read()
            counts[resp.status] = counts.get(resp.status, 0) + 1
        i += 1


async def drive(base_url: str, seconds: float, clients: int, concurrency: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counts: dict[int, int] = {}
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        for _ in range(clients)
    ]
    try:
        # Warm-up: open the connections before the clock starts.
        await asyncio.gather(
            *(worker(s, base_url, k, loop.time() + 0.5, {}) for k, s in enumerate(sessions))
        )
        started = loop.time()
        deadline = started + seconds
        await asyncio.gather(
            *(
                worker(s, base_url, c * concurrency + k, deadline, counts)
                for c, s in enumerate(sessions)
                for k in range(concurrency)
            )
        )
        elapsed = loop.time() - started
    finally:
        for s in sessions:
            await s.close()
    total = sum(counts.values())
    return {"requests": total, "seconds": round(elapsed, 3), "byStatus": counts}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 if any answer was not 200."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4, help="client sessions")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight each")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.clients, args.concurrency = 0.5, 1, 4

    server_cpus, client_cpus = split_cpus()
    with sandbox_process(server_cpus, rate_limit=10**9, daily_limit=10**12) as server:
        pin(0, client_cpus)
        result = asyncio.run(drive(server.base_url, args.seconds, args.clients, args.concurrency))

    rps = result["requests"] / result["seconds"]
    path = write_result(
        "sandbox_throughput",
        {
            "requestsPerSecond": round(rps),
            "target": 2000,
            "serverCpus": 1 if server_cpus else None,
            "clients": args.clients,
            "concurrencyPerClient": args.concurrency,
            **result,
        },
        args.out,
    )
    print(
        f"sandbox: {rps:,.0f} requests/s on one core "
        f"({result['requests']} in {result['seconds']} s, statuses {result['byStatus']})"
    )
    print(f"written to {path}")
    return 0 if result["byStatus"].keys() == {200} else 1


if __name__ == "__main__":
    sys.exit(main())
