"""Web workers on one token: 4 uvicorn worker processes of the FastAPI example, with and without
one budget in Redis (issue 15, item 5).

    .venv/bin/python -m benchmarks.web_workers [--workers 4] [--requests 400] [--limit 20]

The sandbox runs in a subprocess pinned to one CPU at 20 requests per 1 s (sliding window); a
``redis-server`` (Debian's package) runs on a free loopback port in a temporary folder;
``uvicorn examples.fastapi_app:app --workers 4`` serves the FastAPI example, each worker with its
own ``GrowthHubClient`` at ``rate=20/1s`` on the same token, a deadline long enough for every
request (``GROWTHHUB_DEADLINE=600``). A load generator fires ``--requests``
concurrent ``PUT /contacts/{id}`` at once (each handler awaits ``gh.submit``), twice, the
sandbox reset between: each worker pacing alone (no ``GROWTHHUB_SHARED_BUDGET``), then with the
budget in Redis. For each run:

- 429s: as counted by the sandbox (the library retries them; each is a request the API refused);
  and the most requests the sandbox saw within any window (``maxInWindow``, the limit is 20);
- utilisation: the sandbox's 200s per second between the moments 10 % and 90 % of the requests
  were answered, over the limit (the first window's burst and the tail left out);
- latency: p50 and p99 of each HTTP request to the app, queueing included (400 requests at 20
  per second: the last waits about 20 s by construction).

And what Redis costs: the pacer's admission + answer round trip against the same
``redis-server``, sequentially, wall and CPU microseconds per request (this process), against the
in-process pacer doing the same; and the Redis server's CPU per admission.

Writes benchmarks/results/web_workers.json. Goals: 0 x 429 with Redis; utilisation >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import redis

from benchmarks._common import (
    ROOT,
    TOKEN,
    busy_cpus,
    cpu_seconds,
    pin,
    sandbox_process,
    split_cpus,
    write_result,
)
from growthhub_async.ratelimit import Budget, Pacer, Rate
from growthhub_async.shared_budget import RedisBudgets

NAME = "web_workers"
GOAL_UTILISATION = 0.95


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(folder: Path, cpus: set[int] | None) -> Iterator[tuple[str, int]]:
    """A ``redis-server`` on a free loopback port: (URL, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pin(proc.pid, cpus)
        with redis.Redis(port=port) as probe:
            for _ in range(500):
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def uvicorn_workers(
    workers: int, env: dict[str, str], log: Path, cpus: set[int] | None
) -> Iterator[str]:
    """``uvicorn examples.fastapi_app:app --workers N``; its base URL once every worker has
    started."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--workers"]
    argv += [str(workers), "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        pin(proc.pid, cpus)
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count("Application startup complete") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"uvicorn did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reset(base_url: str) -> None:
    """``POST /__sandbox/reset``."""

    async def post() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base_url}/__sandbox/reset") as resp,
        ):
            resp.raise_for_status()

    asyncio.run(post())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def fire(app_url: str, sandbox_url: str, requests: int) -> dict[str, Any]:
    """``requests`` concurrent PUTs to the app; the sandbox's 200 count sampled meanwhile."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    samples: list[tuple[float, int]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            started = loop.time()
            async with session.put(
                f"{app_url}/contacts/web{i:08d}", json={"firstName": "Ada", "tags": ["web"]}
            ) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(loop.time() - started)

        async def sample() -> None:
            while True:
                async with session.get(f"{sandbox_url}/__sandbox/stats") as resp:
                    stats = await resp.json()
                samples.append((loop.time(), stats["byStatus"].get("200", 0)))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one(i) for i in range(requests)))
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        async with session.get(f"{sandbox_url}/__sandbox/stats") as resp:
            stats = await resp.json()

    def when(count: float) -> float:
        return next(t for t, ok in samples if ok >= count)

    low, high = 0.1 * requests, 0.9 * requests
    samples.append((loop.time(), stats["byStatus"].get("200", 0)))
    span = when(high) - when(low)
    return {
        "requests": requests,
        "answers": {str(k): v for k, v in sorted(statuses.items())},
        "sandboxRequests": stats["requests"],
        "answered429": stats["byStatus"].get("429", 0),
        "maxInWindow": stats["maxInWindow"],
        "okPerSecond": round((high - low) / span, 3) if span > 0 else None,
        "p50Seconds": round(percentile(latencies, 0.5), 3),
        "p99Seconds": round(percentile(latencies, 0.99), 3),
    }


async def redis_cost(url: str, redis_pid: int, rounds: int) -> dict[str, Any]:
    """Admission + answer through Redis against the in-process pacer: µs per request."""
    rate = Rate(10**9, 1.0)  # never waits: only the bookkeeping is measured
    store = RedisBudgets(url)
    shared = store.pacer("http://127.0.0.1:1", "cost-probe", Budget(rate), lease=30.0)
    local = Pacer(Budget(rate))
    loop = asyncio.get_running_loop()
    figures: dict[str, Any] = {"rounds": rounds}
    try:
        for name, pacer in (("local", local), ("redis", shared), ("local2", local)):
            server_before = cpu_seconds(redis_pid)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                sent_at = await pacer.acquire()
                pacer.complete(loop.time())
            await asyncio.sleep(0)
            while store._writes:  # the answers' re-scoring, in the background
                await asyncio.wait(set(store._writes))
            figures[name] = {
                "wallMicroseconds": round((time.perf_counter() - wall) / rounds * 1e6, 1),
                "cpuMicroseconds": round((time.process_time() - cpu) / rounds * 1e6, 1),
                "redisServerCpuMicroseconds": round(
                    (cpu_seconds(redis_pid) - server_before) / rounds * 1e6, 1
                ),
            }
            del sent_at
        assert store.fallbacks == 0, "Redis failed during the cost run"
    finally:
        await store.aclose()
    local_best = min(figures.pop("local2"), figures["local"], key=lambda f: f["cpuMicroseconds"])
    figures["local"] = local_best
    figures["addedWallMicroseconds"] = round(
        figures["redis"]["wallMicroseconds"] - local_best["wallMicroseconds"], 1
    )
    figures["addedCpuMicroseconds"] = round(
        figures["redis"]["cpuMicroseconds"] - local_best["cpuMicroseconds"], 1
    )
    return figures


def measure(args: argparse.Namespace) -> dict[str, Any]:
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    rate = f"{args.limit}/{args.window:g}s"
    results: dict[str, Any] = {}
    options = {"rate_limit": args.limit, "rate_window": args.window}
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server(Path(tmp), client_cpus) as (url, pid),
        sandbox_process(server_cpus, daily_limit=10**9, **options) as sb,
    ):
        for name, shared in (("withoutRedis", None), ("withRedis", url)):
            reset(sb.base_url)  # counters, budgets and meters start from zero
            env = {
                **os.environ,
                "GROWTHHUB_TOKEN": TOKEN,
                "GROWTHHUB_BASE_URL": sb.base_url,
                "GROWTHHUB_RATE": rate,
                # Every request waits its turn: the queueing is what p50 and p99 show.
                "GROWTHHUB_DEADLINE": "600",
                "PYTHONPATH": str(ROOT),
            }
            env.pop("GROWTHHUB_SHARED_BUDGET", None)
            if shared is not None:
                env["GROWTHHUB_SHARED_BUDGET"] = shared
            log = Path(tmp) / f"uvicorn-{name}.log"
            with uvicorn_workers(args.workers, env, log, client_cpus) as app_url:
                r = asyncio.run(fire(app_url, sb.base_url, args.requests))
            limit_per_second = args.limit / args.window
            ok = r["okPerSecond"]
            r["utilisation"] = round(ok / limit_per_second, 4) if ok is not None else None
            results[name] = r
            print(
                f"{name}: {r['answered429']} x 429 of {r['sandboxRequests']} requests, "
                f"max {r['maxInWindow']} in a window, utilisation {r['utilisation']}, "
                f"p50 {r['p50Seconds']} s, p99 {r['p99Seconds']} s",
                flush=True,
            )
        results["redisCost"] = asyncio.run(redis_cost(url, pid, args.cost_rounds))
        cost = results["redisCost"]
        print(
            f"Redis per request: +{cost['addedWallMicroseconds']} µs wall, "
            f"+{cost['addedCpuMicroseconds']} µs client CPU, "
            f"{cost['redis']['redisServerCpuMicroseconds']} µs Redis CPU",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--limit", type=int, default=20, help="requests per window")
    parser.add_argument("--window", type=float, default=1.0, help="seconds")
    parser.add_argument("--cost-rounds", type=int, default=5000)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.requests, args.limit, args.window = 1, 20, 10, 0.25
        args.cost_rounds = 200
    busy = busy_cpus()
    results = measure(args)
    with_redis = results["withRedis"]
    figures: dict[str, Any] = {
        "limit": f"{args.limit}/{args.window:g}s",
        "workers": args.workers,
        "goal": f"with Redis: 0 x 429, utilisation >= {GOAL_UTILISATION}",
        "pytestProcessesAtStart": busy,
        **results,
        "met": with_redis["answered429"] == 0
        and (with_redis["utilisation"] or 0) >= GOAL_UTILISATION,
    }
    path = write_result(NAME, figures, args.out)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
