"""What OpenTelemetry costs the ``update`` command: CPU per record with and without the extra.

    .venv/bin/python -m benchmarks.otel_overhead [--records 20000] [--rounds 5] [--concurrency 50]

The same JSONL file goes to the same fast local server (pinned to one CPU) through the real
command, started four ways (each through a two-line wrapper around ``growthhub_async.cli.main``):

- ``without``: ``opentelemetry`` cannot be imported (``sys.modules["opentelemetry"] = None``),
  as when the ``otel`` extra is not installed;
- ``noSdk``: the API imported first, as an application that uses it but configured no SDK
  (the worst case of "installed, not configured": the client looks at the global providers,
  finds the API's proxies and subscribes nothing);
- ``idle``: the extra installed and nothing imports it (the command line's usual case);
- ``sdk``: the SDK's tracer and meter providers set globally, with no exporter (what the
  subscriber itself costs when telemetry is on; for information, no goal).

The variants alternate (the order rotates every round); CPU seconds (user + sys) come from
``os.wait4``. The figure is the median over rounds of each variant's CPU against ``without``'s
in the same round. Goal (issue 16): ``noSdk`` and ``idle`` within 2 % of ``without``.

Writes benchmarks/results/otel_overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import (
    FAST_SERVER,
    busy_cpus,
    median,
    pin,
    server_process,
    split_cpus,
    write_records,
    write_result,
)
from benchmarks.cpu_per_record import commands, run_child

NAME = "otel_overhead"
GOAL = 1.02
_MAIN = "from growthhub_async.cli import main; sys.exit(main())"
WRAPPERS = {
    "without": f"import sys; sys.modules['opentelemetry'] = None; {_MAIN}",
    "noSdk": f"import sys, opentelemetry.trace, opentelemetry.metrics; {_MAIN}",
    "idle": f"import sys; {_MAIN}",
    "sdk": (
        "import sys; from opentelemetry import trace, metrics; "
        "from opentelemetry.sdk.trace import TracerProvider; "
        "from opentelemetry.sdk.metrics import MeterProvider; "
        "trace.set_tracer_provider(TracerProvider()); "
        "metrics.set_meter_provider(MeterProvider()); " + _MAIN
    ),
}


def command(variant: str, input_path: Path, journal: Path, base_url: str, c: int) -> list[str]:
    """The ``update`` command line of one variant (cpu_per_record's, through its wrapper)."""
    ours = commands("asyncio", input_path, journal, base_url, c)["ours"]
    assert ours[1:3] == ["-m", "growthhub_async"]
    return [sys.executable, "-c", WRAPPERS[variant], *ours[3:]]


def measure(records: int, rounds: int, concurrency: int, variants: list[str]) -> dict[str, Any]:
    """Alternate the variants ``rounds`` times; per variant the median CPU and ratio."""
    server_cpus, client_cpus = split_cpus()
    pin(0, client_cpus)
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="ghbench-") as tmp:
        input_path = Path(tmp) / "records.jsonl"
        write_records(input_path, records)
        with server_process(FAST_SERVER, server_cpus) as server:
            for n in range(rounds):
                order = variants[n % len(variants) :] + variants[: n % len(variants)]
                seen = {}
                for variant in order:
                    journal = Path(tmp) / f"{variant}-{n}.jsonl"
                    argv = command(variant, input_path, journal, server.base_url, concurrency)
                    seen[variant] = run_child(argv)["cpu"]
                    with open(journal, "rb") as f:
                        if sum(1 for _ in f) != records:
                            raise SystemExit(f"{variant}: the journal misses records")
                    journal.unlink()
                for variant in variants:
                    cpu[variant].append(seen[variant])
                    ratios[variant].append(seen[variant] / seen["without"])
                print(
                    f"round {n + 1}: "
                    + ", ".join(f"{v} {seen[v]:.2f} s ({ratios[v][-1]:.3f})" for v in variants),
                    flush=True,
                )
    return {
        v: {
            "cpuSeconds": round(median(cpu[v]), 3),
            "cpuMicrosecondsPerRecord": round(median(cpu[v]) / records * 1e6, 1),
            "ratioToWithout": round(median(ratios[v]), 4),
            "ratios": [round(r, 4) for r in ratios[v]],
        }
        for v in variants
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 (the goal is reported, not enforced)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    variants = ["without", "noSdk", "idle", "sdk"]
    if args.smoke:  # the two ends: the import blocked, the SDK on
        args.records, args.rounds, variants = 100, 1, ["without", "sdk"]
    busy = busy_cpus()
    results = measure(args.records, args.rounds, args.concurrency, variants)
    figures = {
        "records": args.records,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "goal": f"noSdk and idle CPU <= {GOAL} x without",
        "met": all(results[v]["ratioToWithout"] <= GOAL for v in ("noSdk", "idle") if v in results),
        "pytestProcessesAtStart": busy,
        "variants": results,
    }
    path = write_result(NAME, figures, args.out)
    for variant, r in results.items():
        print(
            f"{variant}: {r['cpuMicrosecondsPerRecord']} us CPU/record, "
            f"{r['ratioToWithout']:.3f}x without"
        )
    print(f"goal met: {figures['met']}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
