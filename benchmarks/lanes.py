"""Cost against the number of locations: CPU per record over 1 lane and 1,000, and the memory of
an idle lane (issue 17, item 2).

    .venv/bin/python -m benchmarks.lanes [--records 20000] [--lanes 1000] [--rounds 3]

CPU: the real ``update`` command with ``--tokens`` (a 0600 file, one token per location) sends
``--records`` records to the fast local server (pinned to one CPU, answers 200 at once), every
location under its own limit (``--rate 1000000/1s`` each: its own budget, pacer and 429 state,
far above what the server can do), ``--concurrency 50`` per location. Once with every record on
one location, once spread round robin over ``--lanes`` locations (20 records each at the
defaults: lanes are made, used and left idle all through the run); the two alternate, and the
figure is the median of the per-round ratios of CPU seconds (user + sys, ``os.wait4``), start-up
included (a few ms more for 1,000 lanes: the tokens file). Goal: at most 1.2x.

Control: at concurrency 50 per location, the 1,000-lane run keeps far more requests in flight
than the one-lane run (the fast server counts its connections: ``GET /__peak``). Each round
also runs one lane at as many connections as the first 1,000-lane run held at its peak
(``oneWide``); ``controlRatio`` (1,000 lanes against it) is what the number of lanes costs,
apart from the number of connections. The goal stays on ``cpuRatio``.

Memory: a child process opens a client over ``--lanes`` locations, sends one record on each
(so that each lane has its session, budget and pacer), waits until every lane is quiet and its
pacing logs trimmed, and reads its resident memory; the same with one location. Memory per idle
lane = the difference / (lanes - 1). The child also counts the event loop's timers and the tasks
left once idle: the same for 1,000 lanes as for one (no timer or task per idle lane).

Writes benchmarks/results/lanes.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._common import (
    FAST_SERVER,
    busy_cpus,
    child_env,
    median,
    pin,
    server_process,
    split_cpus,
    write_result,
    write_tokens,
)
from benchmarks.cpu_per_record import run_child, summarise

NAME = "lanes"
GOAL = 1.2

# Run in a child: N lanes used once each, then idle; prints JSON (RSS, timers, tasks).
IDLE_PROBE = r"""
import asyncio, gc, json, os, sys
from growthhub_async import GrowthHubClient, Record, UpdateContact
from growthhub_async.locations import LocationTokens

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

async def main(base_url, lanes):
    tokens = {f"loc{n:04d}": f"bench-{n:04d}" for n in range(lanes)}
    loop = asyncio.get_running_loop()
    async with GrowthHubClient(
        base_url=base_url, rate="1000000/1s", locations=LocationTokens(tokens)
    ) as gh:
        records = [Record(n + 1, f"idle{n:06d}", UpdateContact(first_name="A"), token_key=key)
                   for n, key in enumerate(tokens)]
        async with gh.update_contacts(records) as stream:
            assert all([o.status.value == "updated" async for o in stream])
        await asyncio.sleep(1.5)  # every lane quiet, its logs trimmed (two spans, one wake)
        gc.collect()
        timers = sum(1 for h in loop._scheduled if not h.cancelled())
        tasks = len(asyncio.all_tasks()) - 1
        print(json.dumps({"rssKiB": rss_kib(), "timers": timers, "tasks": tasks,
                          "lanes": len(gh._lanes)}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def write_input(path: Path, records: int, lanes: int) -> Path:
    """``records`` records spread round robin over ``lanes`` locations; the tokens file."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(
            f'{{"contactId":"lane{n:012d}","locationId":"loc{n % lanes:04d}",'
            f'"firstName":"Ada","email":"ada{n}@example.com","tags":["vip"]}}\n'
            for n in range(records)
        )
    return write_tokens(path, lanes)


def command(input_path: Path, tokens: Path, journal: Path, base_url: str, loop: str) -> list[str]:
    return [
        sys.executable, "-m", "growthhub_async", "update", str(input_path), "--out", str(journal),
        "--base-url", base_url, "--tokens", str(tokens), "--rate", "1000000/1s",
        "--concurrency", "50", "--no-progress", "--loop", loop,
    ]  # fmt: skip


def peak_connections(base_url: str) -> int:
    """The most connections the fast server held at once since the last ask (and a new count)."""
    with urllib.request.urlopen(f"{base_url}/__peak", timeout=10) as answer:
        return int(answer.read())


def idle_probe(base_url: str, lanes: int) -> dict[str, Any]:
    """The idle-lane probe's figures for ``lanes`` locations (a fresh process each time)."""
    out = subprocess.run(
        [sys.executable, "-c", IDLE_PROBE, base_url, str(lanes)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def measure(records: int, lanes: int, rounds: int, loop: str) -> dict[str, Any]:
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    with tempfile.TemporaryDirectory(prefix="ghbench-") as tmp:
        inputs = {}
        for name, count in (("one", 1), ("many", lanes)):
            path = Path(tmp) / f"{name}.jsonl"
            inputs[name] = (path, write_input(path, records, count))
        with server_process(FAST_SERVER, server_cpus) as server:
            for path, tokens in inputs.values():  # warm-up: bytecode caches, files cached
                run_child(command(path, tokens, Path(tmp) / "warm", server.base_url, loop))
                (Path(tmp) / "warm").unlink()
            runs: dict[str, list[dict[str, float]]] = {"one": [], "many": [], "oneWide": []}
            ratios = []
            wide = 0  # the 1,000-lane run's peak connections: the one-lane control's concurrency
            for n in range(rounds):
                names = ("one", "many", "oneWide") if n % 2 == 0 else ("many", "one", "oneWide")
                for name in names:
                    journal = Path(tmp) / f"{name}-{n}.jsonl"
                    path, tokens = inputs["one" if name == "oneWide" else name]
                    argv = command(path, tokens, journal, server.base_url, loop)
                    if name == "oneWide":
                        argv[argv.index("--concurrency") + 1] = str(wide)
                    peak_connections(server.base_url)  # starts the count afresh
                    before = server.cpu_seconds()
                    run = run_child(argv)
                    run["serverCpuShare"] = (server.cpu_seconds() - before) / run["wall"]
                    run["peakConnections"] = peak_connections(server.base_url)
                    if name == "many" and not wide:
                        wide = int(run["peakConnections"])
                    runs[name].append(run)
                    with open(journal, "rb") as f:
                        if sum(1 for _ in f) != records:
                            raise SystemExit(f"{name}: the journal misses records")
                    journal.unlink()
                ratios.append(runs["many"][-1]["cpu"] / runs["one"][-1]["cpu"])
                print(
                    f"round {n + 1}: 1 lane {runs['one'][-1]['cpu']:.2f} s CPU, {lanes} lanes "
                    f"{runs['many'][-1]['cpu']:.2f} s CPU, ratio {ratios[-1]:.2f}; 1 lane at "
                    f"concurrency {wide} {runs['oneWide'][-1]['cpu']:.2f} s CPU",
                    flush=True,
                )
            idle = {name: idle_probe(server.base_url, count) for name, count in
                    (("one", 1), ("many", lanes))}  # fmt: skip
    control = [m["cpu"] / w["cpu"] for m, w in zip(runs["many"], runs["oneWide"], strict=True)]
    wide_runs = {"oneWide": runs.pop("oneWide")}
    figures = summarise(runs, ratios, records)
    # The control: one lane at as many connections as the 1,000-lane run held at its peak. The
    # thousand lanes' run keeps that many requests in flight (concurrency 50 per location), so
    # this ratio is what the number of lanes costs, not the number of connections.
    figures["oneWide"] = summarise(wide_runs, control, records)["oneWide"]
    figures["oneWide"]["concurrency"] = wide
    for name, rows in (*runs.items(), *wide_runs.items()):
        figures[name]["peakConnections"] = max(int(r["peakConnections"]) for r in rows)
    figures["controlRatio"] = round(median(control), 3)
    figures["controlRatios"] = control
    per_lane = (idle["many"]["rssKiB"] - idle["one"]["rssKiB"]) / max(1, lanes - 1)
    figures["idle"] = {**idle, "kibPerIdleLane": round(per_lane, 1)}
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when idle lanes hold timers or tasks of their own."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--lanes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.records, args.lanes, args.rounds = 400, 40, 1
    busy = busy_cpus()
    figures = measure(args.records, args.lanes, args.rounds, args.loop)
    idle = figures["idle"]
    flat = (idle["many"]["timers"], idle["many"]["tasks"]) == (
        idle["one"]["timers"],
        idle["one"]["tasks"],
    )
    result = {
        "records": args.records,
        "lanes": args.lanes,
        "rounds": args.rounds,
        "loop": args.loop,
        "goal": f"{args.lanes} lanes / 1 lane CPU <= {GOAL}; idle lanes: no timer or task",
        "met": figures["cpuRatio"] <= GOAL and flat,
        "idleLanesHoldNoTimerOrTask": flat,
        "pytestProcessesAtStart": busy,
        **figures,
    }
    path = write_result(NAME, result, args.out)
    print(
        f"{args.lanes} lanes / 1 lane CPU {figures['cpuRatio']:.2f} (goal <= {GOAL}); "
        f"{figures['many']['cpuMicrosecondsPerRecord']} vs "
        f"{figures['one']['cpuMicrosecondsPerRecord']} us CPU/record; idle lane "
        f"{idle['kibPerIdleLane']} KiB; timers {idle['one']['timers']} -> "
        f"{idle['many']['timers']}, tasks {idle['one']['tasks']} -> {idle['many']['tasks']}; "
        f"control: {args.lanes} lanes / 1 lane at {figures['oneWide']['concurrency']} "
        f"connections {figures['controlRatio']:.2f}; written to {path}"
    )
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
