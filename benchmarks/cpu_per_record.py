"""Client CPU per record: the real ``update`` command against a minimal hand-written aiohttp loop.

    .venv/bin/python -m benchmarks.cpu_per_record [--records 20000] [--rounds 5] [--concurrency 50]

Both clients send the same JSONL file to the same fast local server (raw asyncio, answers 200 at
once, pinned to one CPU; its CPU use is read from /proc and must stay under 90 % of its core, or
the run says it was the bottleneck). The clients run as child processes pinned to the other CPUs;
their CPU time (user + sys) comes from ``os.wait4``. Ours is ``python -m growthhub_async update
INPUT --out JOURNAL --rate 1000000/1s --concurrency C --no-progress`` (reading, validating,
pacing with a budget far above what the server can do, retry policy armed, journaling every
outcome); the baseline is :mod:`benchmarks._raw_loop`. They alternate (ours first on even
rounds, the loop first on odd ones), and the figure is the median of the per-round ratios of
CPU seconds. With uvloop installed (the ``speed`` extra) every round is repeated with uvloop
in both children: ours with ``--loop uvloop`` (the command's own switch; ``--loop asyncio`` for
the asyncio rounds, since the command takes uvloop by itself when it is installed).

Writes benchmarks/results/cpu_per_record.json. Goal (issue 17; issue 7 asked for 1.2x): ours at
most 1.1x the raw loop, on each event loop.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    FAST_SERVER,
    TOKEN,
    busy_cpus,
    child_env,
    median,
    pin,
    server_process,
    split_cpus,
    uvloop_version,
    write_records,
    write_result,
)

NAME = "cpu_per_record"
GOAL = 1.1


def run_child(argv: list[str]) -> dict[str, float]:
    """Run ``argv`` to the end; its wall time and CPU seconds (user + sys) from ``os.wait4``."""
    env = child_env(GROWTHHUB_TOKEN=TOKEN)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} exited {proc.returncode}: {err.decode()[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxRssKiB": usage.ru_maxrss}


def commands(
    loop: str, input_path: Path, journal: Path, base_url: str, concurrency: int
) -> dict[str, list[str]]:
    """The two clients' command lines for one event loop (``asyncio`` or ``uvloop``)."""
    ours = [
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
        "1000000/1s",
        "--concurrency",
        str(concurrency),
        "--no-progress",
        "--loop",
        loop,
    ]
    raw = [
        sys.executable,
        "-m",
        "benchmarks._raw_loop",
        str(input_path),
        str(journal),
        base_url,
        str(concurrency),
        *(["uvloop"] if loop == "uvloop" else []),
    ]
    return {"ours": ours, "raw": raw}


def measure(records: int, rounds: int, concurrency: int, loops: list[str]) -> dict[str, Any]:
    """Alternate the two clients ``rounds`` times per event loop; the medians and ratios."""
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)  # the children inherit it
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ghbench-") as tmp:
        input_path = Path(tmp) / "records.jsonl"
        write_records(input_path, records)
        warm_input = Path(tmp) / "warm.jsonl"
        write_records(warm_input, 200)
        with server_process(FAST_SERVER, server_cpus) as server:
            for loop in loops:
                # A warm-up run of each, not counted: bytecode caches written, files cached.
                warm = commands(loop, warm_input, Path(tmp) / "warm-out", server.base_url, 4)
                for argv in warm.values():
                    run_child(argv)
                    (Path(tmp) / "warm-out").unlink()
                runs: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
                ratios = []
                for n in range(rounds):
                    order = ["ours", "raw"] if n % 2 == 0 else ["raw", "ours"]
                    for who in order:
                        journal = Path(tmp) / f"{who}-{loop}-{n}.jsonl"
                        argv = commands(loop, input_path, journal, server.base_url, concurrency)
                        before = server.cpu_seconds()
                        run = run_child(argv[who])
                        run["serverCpuShare"] = (server.cpu_seconds() - before) / run["wall"]
                        with open(journal, "rb") as f:
                            if sum(1 for _ in f) != records:
                                raise SystemExit(f"{who}: the journal misses records")
                        journal.unlink()
                        runs[who].append(run)
                    ratios.append(runs["ours"][-1]["cpu"] / runs["raw"][-1]["cpu"])
                    print(
                        f"{loop} round {n + 1}: ours {runs['ours'][-1]['cpu']:.2f} s CPU, "
                        f"raw {runs['raw'][-1]['cpu']:.2f} s CPU, ratio {ratios[-1]:.2f}",
                        flush=True,
                    )
                results[loop] = summarise(runs, ratios, records)
    return results


def summarise(
    runs: dict[str, list[dict[str, float]]], ratios: list[float], records: int
) -> dict[str, Any]:
    """Medians of one event loop's rounds."""
    figures: dict[str, Any] = {"cpuRatio": round(median(ratios), 3), "ratios": ratios}
    for who, rows in runs.items():
        cpu = median([r["cpu"] for r in rows])
        wall = median([r["wall"] for r in rows])
        figures[who] = {
            "cpuSeconds": round(cpu, 3),
            "cpuMicrosecondsPerRecord": round(cpu / records * 1e6, 1),
            "wallSeconds": round(wall, 3),
            "recordsPerSecond": round(records / wall),
            "maxRssKiB": max(r["maxRssKiB"] for r in rows),
            "serverCpuShareMax": round(max(r["serverCpuShare"] for r in rows), 3),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when the server was the bottleneck."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-uvloop", action="store_true", help="the asyncio loop only")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.records, args.rounds, args.no_uvloop = 300, 1, True
    loops = ["asyncio"] + (["uvloop"] if uvloop_version() and not args.no_uvloop else [])
    busy = busy_cpus()
    results = measure(args.records, args.rounds, args.concurrency, loops)
    server_share = max(
        results[loop][who]["serverCpuShareMax"] for loop in results for who in ("ours", "raw")
    )
    figures = {
        "records": args.records,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "goal": f"ours/raw CPU <= {GOAL}",
        "met": all(r["cpuRatio"] <= GOAL for r in results.values()),
        "serverNotBottleneck": server_share < 0.9,
        "pytestProcessesAtStart": busy,
        "loops": results,
    }
    path = write_result(NAME, figures, args.out)
    for loop, r in results.items():
        print(
            f"{loop}: ours/raw CPU {r['cpuRatio']:.2f} (goal <= {GOAL}); "
            f"ours {r['ours']['recordsPerSecond']:,} records/s "
            f"({r['ours']['cpuMicrosecondsPerRecord']} us CPU/record), "
            f"raw {r['raw']['recordsPerSecond']:,} records/s "
            f"({r['raw']['cpuMicrosecondsPerRecord']} us CPU/record)"
        )
    print(f"server CPU at most {server_share:.0%} of its core; written to {path}")
    return 0 if figures["serverNotBottleneck"] else 1


if __name__ == "__main__":
    sys.exit(main())
