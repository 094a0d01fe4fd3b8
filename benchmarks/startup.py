"""Start-up: ``update`` on a one-record file, exec to exit, against ``python -c pass`` and
``python -c "import aiohttp"`` (issue 17, item 4).

    .venv/bin/python -m benchmarks.startup [--runs 30]

Three commands, each run ``--runs`` times, interleaved (one of each in turn, so that a busy
moment of the machine falls on all three alike): the interpreter alone, the interpreter
importing aiohttp (the floor of any aiohttp client), and the real command sending one record to
the fast local server (pinned to one CPU) with ``--no-progress``, journaling it to a new file.
Wall time from ``fork``/``exec`` to exit and CPU time (user + sys, ``os.wait4``) of each run;
the figures are medians. Bytecode caches are written by a warm-up run of each
(``PYTHONDONTWRITEBYTECODE`` is dropped for the children, as a user's first run writes them).

What the command imports on this path is guarded, without timing, by
``tests/test_imports.py::test_update_imports_only_what_it_uses``.

Writes benchmarks/results/startup.json.
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
    write_result,
)

NAME = "startup"


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` (which must exit 0)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=child_env(GROWTHHUB_TOKEN=TOKEN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed: {err.decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(runs: int, loop: str) -> dict[str, Any]:
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="ghbench-") as tmp:
        record = Path(tmp) / "one.jsonl"
        record.write_text('{"contactId":"startup000001","firstName":"Ada"}\n', encoding="utf-8")
        with server_process(FAST_SERVER, server_cpus) as server:

            def update(n: int) -> list[str]:
                return [
                    py, "-m", "growthhub_async", "update", str(record),
                    "--out", str(Path(tmp) / f"out{n}.jsonl"), "--base-url", server.base_url,
                    "--no-progress", "--loop", loop,
                ]  # fmt: skip

            commands = {
                "pythonPass": lambda n: [py, "-c", "pass"],
                "importAiohttp": lambda n: [py, "-c", "import aiohttp"],
                "update": update,
            }
            for make in commands.values():  # warm-up: bytecode caches, files in the page cache
                timed(make(-1))
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            for n in range(runs):
                for name, make in commands.items():
                    samples[name].append(timed(make(n)))
    return {
        name: {
            "wallMs": round(median([w for w, _ in rows]) * 1000, 1),
            "cpuMs": round(median([c for _, c in rows]) * 1000, 1),
        }
        for name, rows in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs = 2
    busy = busy_cpus()
    figures = measure(args.runs, args.loop)
    ratio = figures["update"]["wallMs"] / figures["importAiohttp"]["wallMs"]
    result = {
        "runs": args.runs,
        "loop": args.loop,
        "goal": "report; what update imports is guarded by tests/test_imports.py",
        "againstAiohttpImport": round(ratio, 2),
        "pytestProcessesAtStart": busy,
        **figures,
    }
    path = write_result(NAME, result, args.out)
    print(
        "  ".join(f"{name} {f['wallMs']} ms ({f['cpuMs']} ms CPU)" for name, f in figures.items())
        + f"; update / import aiohttp {ratio:.2f}x; written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
