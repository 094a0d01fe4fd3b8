"""Rate-limit utilisation: how close to the limit the client paces, and how many 429s it meets.

    .venv/bin/python -m benchmarks.rate_utilisation [--limit 200] [--window 1] [--seconds 20]

The sandbox runs in a subprocess pinned to one CPU with a scaled limit (200 requests per 1 s):
first with a sliding window, then with a fixed one, each time one :class:`GrowthHubClient` with
``rate`` set to exactly that limit sends an endless stream of valid updates. Then, on the sliding
window, a second client with the same token spends half the budget (``rate`` 100/1s) while the
first still asks for the whole of it: only the ``X-RateLimit-*`` headers tell the first one to
make room. After a warm-up of two windows, the sandbox's own counters (``/__sandbox/stats``) are
read at the start and end of ``--seconds``: achieved rate = requests answered 200 per second /
limit; 429s counted by the server. Requests per second over time (from each ``RecordFinished``
event) for the shared run are drawn to ``results/rate_utilisation.png``.

Writes benchmarks/results/rate_utilisation.json. Goals (issue 7): at least 0.98 of the limit
with zero 429s alone; under 1 % of requests answered 429 when sharing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._common import (
    RESULTS,
    TOKEN,
    busy_cpus,
    pin,
    sandbox_process,
    split_cpus,
    write_result,
)
from benchmarks._png import line_chart
from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.events import Event, RecordFinished
from growthhub_async.ratelimit import Rate

NAME = "rate_utilisation"
GOAL_RATIO = 0.98
GOAL_SHARED_429 = 0.01


def updates(prefix: str) -> Iterator[tuple[str, UpdateContact]]:
    """An endless stream of valid updates with distinct contact ids."""
    for i in itertools.count():
        yield f"{prefix}{i:09d}", UpdateContact(first_name="Ada", tags=["vip"])


async def stats(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """The sandbox's counters."""
    async with session.get(f"{base_url}/__sandbox/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def scenario(
    base_url: str,
    clients: list[Rate],
    concurrency: int,
    warmup: float,
    seconds: float,
    *,
    margin: float | None = None,
    plain: float | None = None,
) -> dict[str, Any]:
    """Run ``clients`` (one rate each, same token) for warm-up + ``seconds``; the figures.

    ``plain``: also a plain sender at that many requests per second on the same token.
    """
    loop = asyncio.get_running_loop()
    finished: list[list[float]] = [[] for _ in clients]
    start = loop.time()

    def recorder(times: list[float]) -> Any:
        def hook(event: Event) -> None:
            if isinstance(event, RecordFinished):
                times.append(loop.time() - start)

        return hook

    async def run(n: int, rate: Rate) -> None:
        async with GrowthHubClient(
            TOKEN, base_url=base_url, rate=rate, concurrency=concurrency, rate_margin=margin
        ) as client:
            stream = client.update_contacts(updates(f"c{n}x"), hooks=[recorder(finished[n])])
            async with stream:
                async for _ in stream:
                    pass

    async def plain_sender(per_second: float, times: list[float]) -> None:
        # Someone else on the same token: a fixed pace that never slows down, whatever the
        # server says (its 429s count too).
        headers = {"Authorization": f"Bearer {TOKEN}", "Version": "2021-07-28"}
        body = b'{"firstName":"Grace"}'
        pending: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            async with session.put(
                f"{base_url}/contacts/other{i:09d}",
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
            times.append(loop.time() - start)

        try:
            for i in itertools.count():
                await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
                task = asyncio.create_task(one(i))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(run(n, rate)) for n, rate in enumerate(clients)]
        if plain is not None:
            finished.append([])
            tasks.append(asyncio.create_task(plain_sender(plain, finished[-1])))
        await asyncio.sleep(warmup)
        before = await stats(session, base_url)
        t0 = loop.time() - start
        await asyncio.sleep(seconds)
        after = await stats(session, base_url)
        t1 = loop.time() - start
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = t1 - t0
    ok = after["byStatus"].get("200", 0) - before["byStatus"].get("200", 0)
    limited = after["byStatus"].get("429", 0) - before["byStatus"].get("429", 0)
    requests = after["requests"] - before["requests"]
    return {
        "seconds": round(elapsed, 3),
        "requests": requests,
        "ok": ok,
        "rateLimited": limited,
        "rateLimitedShare": round(limited / requests, 5) if requests else 0.0,
        "achievedPerSecond": round(ok / elapsed, 2),
        "maxInWindow": after["maxInWindow"],
        "perClientPerSecond": [
            round(sum(1 for t in times if t0 <= t < t1) / elapsed, 2) for times in finished
        ],
        "measured": [t0, t1],
        "finished": finished,
    }


def per_second(times: list[float], bin_width: float, end: float) -> list[tuple[float, float]]:
    """Requests per second in bins of ``bin_width`` seconds, as step-chart points."""
    bins = [0] * (int(end / bin_width) + 1)
    for t in times:
        if t < end:
            bins[int(t / bin_width)] += 1
    return [(i * bin_width, count / bin_width) for i, count in enumerate(bins)]


def plot(result: dict[str, Any], limit: float, path: Path) -> None:
    """Requests per second over time against the limit, for one run."""
    end = result["measured"][1]
    finished = result["finished"]
    combined = sorted(t for times in finished for t in times)
    series = [("both", (0, 90, 200), per_second(combined, 1.0, end))]
    palette = [(0, 160, 60), (230, 140, 0)]
    names = ["ours (asks for all)", "other sender (half)"]
    series += [
        (names[n], palette[n], per_second(times, 1.0, end)) for n, times in enumerate(finished)
    ]
    line_chart(
        path,
        series,
        reference=("limit", limit),
        title="requests/s over time (sliding window): ours and another sender on one token",
        x_label="seconds",
        y_label="requests/s",
    )


async def measure(
    limit: int, window: float, seconds: float, concurrency: int
) -> dict[str, dict[str, Any]]:
    """The three scenarios, each against a fresh sandbox."""
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    rate = Rate(limit, window)
    half = Rate(limit // 2, window)
    plans: dict[str, tuple[str, list[Rate], float | None]] = {
        "sliding": ("sliding", [rate], None),
        "fixed": ("fixed", [rate], None),
        # Ours asks for the whole limit; someone else spends half of it at a fixed pace.
        "sharedWithPlainSender": ("sliding", [rate], limit / 2 / window),
        # Two of ours on one token, one asking for the whole limit, the other for half.
        "sharedTwoClients": ("sliding", [rate, half], None),
    }
    results = {}
    for name, (mode, clients, plain) in plans.items():
        options = {"rate_limit": limit, "rate_window": window, "window": mode}
        with sandbox_process(server_cpus, daily_limit=10**9, **options) as sb:
            results[name] = await scenario(
                sb.base_url, clients, concurrency, 2 * window, seconds, plain=plain
            )
        r = results[name]
        print(
            f"{name}: {r['achievedPerSecond']:.1f}/s = "
            f"{r['achievedPerSecond'] * window / limit:.3f} of the limit, "
            f"{r['rateLimited']} x 429 of {r['requests']} requests",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="requests per window")
    parser.add_argument("--window", type=float, default=1.0, help="seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, after a warm-up")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.limit, args.window, args.seconds = 20, 0.25, 0.5
    busy = busy_cpus()
    results = asyncio.run(measure(args.limit, args.window, args.seconds, args.concurrency))
    limit_per_second = args.limit / args.window
    png = (args.out.parent if args.out else RESULTS) / f"{NAME}.png"
    plot(results["sharedWithPlainSender"], limit_per_second, png)
    figures: dict[str, Any] = {
        "limit": f"{args.limit}/{args.window:g}s",
        "secondsMeasured": args.seconds,
        "concurrency": args.concurrency,
        "goal": f"alone: >= {GOAL_RATIO} of the limit and no 429; shared: 429s < 1 % of requests",
        "pytestProcessesAtStart": busy,
        "plot": png.name,
    }
    met = True
    for name, r in results.items():
        r.pop("finished")
        r["ofLimit"] = round(r["achievedPerSecond"] / limit_per_second, 4)
        if name.startswith("shared"):
            r["met"] = r["rateLimitedShare"] < GOAL_SHARED_429
        else:
            r["met"] = r["ofLimit"] >= GOAL_RATIO and r["rateLimited"] == 0
        met = met and r["met"]
        figures[name] = r
    figures["met"] = met
    path = write_result(NAME, figures, args.out)
    print(f"written to {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
