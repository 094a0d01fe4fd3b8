"""The README's table of figures, rendered from the JSON results.

    .venv/bin/python -m benchmarks.report

Rewrites the part of benchmarks/README.md between the ``figures:start`` and ``figures:end``
markers with one row per result file (benchmark, command, result, goal, met, when it ran and how
many pytest processes were running then) and the machine line of the latest run, so that the
table always shows what the files hold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, machine_line

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def _cpu(r: dict[str, Any]) -> tuple[str, str, str]:
    parts = []
    for loop, f in r["loops"].items():
        parts.append(
            f"{loop}: **{f['cpuRatio']:.2f}x** ({f['ours']['cpuMicrosecondsPerRecord']:.0f} vs "
            f"{f['raw']['cpuMicrosecondsPerRecord']:.0f} µs CPU/record; "
            f"{f['ours']['recordsPerSecond']:,} vs {f['raw']['recordsPerSecond']:,} records/s)"
        )
    server = max(f[w]["serverCpuShareMax"] for f in r["loops"].values() for w in ("ours", "raw"))
    parts.append(f"server ≤ {server:.0%} of its core")
    return "<br>".join(parts), "≤ 1.1x on each loop", _yes(r["met"])


def _rate(r: dict[str, Any]) -> tuple[str, str, str]:
    rows = []
    for name in ("sliding", "fixed", "sharedWithPlainSender", "sharedTwoClients"):
        f = r.get(name)
        if f is None:
            continue
        share = f"{f['rateLimitedShare']:.2%} of requests" if name.startswith("shared") else ""
        rows.append(
            f"{name}: **{f['ofLimit']:.3f}** of {r['limit']}, {f['rateLimited']} x 429 {share}"
        )
    return "<br>".join(rows), "≥ 0.98, no 429 (shared: 429 < 1 %)", _yes(r["met"])


def _memory(r: dict[str, Any]) -> tuple[str, str, str]:
    s, big = r["small"], r["large"]
    return (
        f"{s['records']:,}: {s['peakRssMiB']} MiB; {big['records']:,}: {big['peakRssMiB']} MiB "
        f"(**{r['rssRatio']:.2f}x**; large run {big['seconds']:.0f} s, "
        f"{big['recordsPerSecond']:,} records/s)",
        "< 1.25x",
        _yes(r["met"]),
    )


def _latency(r: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"**{r['recordsPerSecond']:,.0f} records/s** = {r['ofCeiling']:.3f} of "
        f"C/latency = {r['ceiling']:,.0f} (C={r['concurrency']}, {r['latencySeconds']:g} s)",
        "≥ 0.9 x C / latency",
        _yes(r["met"]),
    )


def _encoding(r: dict[str, Any]) -> tuple[str, str, str]:
    us = r["microsecondsPerRecord"]
    return (
        f"ours {us['oursDecodeValidateEncode']:.1f} µs vs stdlib {us['stdlibBuildDictDumps']:.1f}"
        f" µs: **{r['ratioOursToStdlib']:.2f}x** (stdlib loads+dumps "
        f"{us['stdlibLoadsDumps']:.1f} µs; our encode alone {us['oursEncodeOnly']:.1f} µs)",
        "report",
        "—",
    )


def _throughput(r: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"**{r['requestsPerSecond']:,} requests/s** on one core",
        f"≥ {r['target']:,}",
        _yes(r["requestsPerSecond"] >= r["target"]),
    )


def _incremental(r: dict[str, Any]) -> tuple[str, str, str]:
    check, same, one, none = r["check"], r["unchanged"], r["onePercent"], r["noState"]
    records = check["records"]
    return (
        f"check against {r['contacts']:,} contacts: **{check['recordsPerSecond']:,} records/s**"
        f"<br>re-run of {records:,} unchanged: {same['requests']} requests, "
        f"**{same['wallSeconds']:.1f} s**<br>{records:,} with 1% changed: {one['requests']:,}"
        f" requests, **{one['wallSeconds']:.1f} s**<br>without --state: {none['requests']:,}"
        f" requests, {none['wallSeconds']:.1f} s<br>state: {r['bytesPerContact']} bytes per"
        f" contact; opening it {check['openSeconds']:.1f} s",
        "check ≥ 50,000 records/s; unchanged re-run sends 0",
        _yes(r["met"]),
    )


def _locations(r: dict[str, Any]) -> tuple[str, str, str]:
    many, floor = r["many"], r["floor"]
    return (
        f"{many['locations']} x {many['records'] // many['locations']} sorted: "
        f"**{r['wallAgainstFloor']:.2f}x** one location's floor ({many['seconds']} vs "
        f"{floor['seconds']} s), {many['answered429']} x 429; CPU per record "
        f"**{r['cpuPerRecordAgainstSingle']:.2f}x** one location's "
        f"({many['cpuMicrosecondsPerRecord']} vs {r['single']['cpuMicrosecondsPerRecord']} µs)",
        "≤ 1.3x, no 429",
        _yes(r["met"]),
    )


def _lanes(r: dict[str, Any]) -> tuple[str, str, str]:
    one, many, idle = r["one"], r["many"], r["idle"]
    return (
        f"{r['lanes']:,} lanes / 1 lane: **{r['cpuRatio']:.2f}x** "
        f"({many['cpuMicrosecondsPerRecord']:.0f} vs {one['cpuMicrosecondsPerRecord']:.0f} µs "
        f"CPU/record, {r['records']:,} records, {r['loop']})<br>idle lane: "
        f"**{idle['kibPerIdleLane']:.1f} KiB**; timers {idle['one']['timers']} → "
        f"{idle['many']['timers']}, tasks {idle['one']['tasks']} → {idle['many']['tasks']} "
        f"(1 → {r['lanes']:,} idle lanes)"
        + (
            f"<br>control, 1 lane at the {r['oneWide']['concurrency']:,} connections the "
            f"{r['lanes']:,} lanes held: **{r['controlRatio']:.2f}x**"
            if "oneWide" in r
            else ""
        ),
        "≤ 1.2x; no timer or task per idle lane",
        _yes(r["met"]),
    )


def _startup(r: dict[str, Any]) -> tuple[str, str, str]:
    p, a, u = r["pythonPass"], r["importAiohttp"], r["update"]
    return (
        f"`update` on 1 record: **{u['wallMs']:.0f} ms** ({u['cpuMs']:.0f} ms CPU); "
        f"`import aiohttp` {a['wallMs']:.0f} ms ({a['cpuMs']:.0f}); `python -c pass` "
        f"{p['wallMs']:.0f} ms ({p['cpuMs']:.0f}); medians of {r['runs']}",
        "report (imports guarded by a test)",
        "—",
    )


def _otel(r: dict[str, Any]) -> tuple[str, str, str]:
    v = r["variants"]

    def spread(name: str) -> str:
        ratios = v[name]["ratios"]
        return (
            f"**{v[name]['ratioToWithout']:.3f}x** (rounds {min(ratios):.2f} to {max(ratios):.2f})"
        )

    return (
        f"median of {r['rounds']} rounds: no SDK {spread('noSdk')}; extra unused "
        f"{spread('idle')}<br>SDK on, no exporter: {v['sdk']['ratioToWithout']:.2f}x",
        "≤ 1.02x without the extra",
        _yes(r["met"]),
    )


def _web_workers(r: dict[str, Any]) -> tuple[str, str, str]:
    rows = []
    for name, label in (("withRedis", "with Redis"), ("withoutRedis", "without")):
        f = r[name]
        rows.append(
            f"{label}: **{f['answered429']} x 429** of {f['sandboxRequests']} requests, at most"
            f" {f['maxInWindow']} in a window; utilisation **{f['utilisation']:.3f}**; p50"
            f" {f['p50Seconds']:.1f} s, p99 {f['p99Seconds']:.1f} s ({f['requests']} at once)"
        )
    cost = r["redisCost"]
    rows.append(
        f"Redis per request: +{cost['addedWallMicroseconds']:.0f} µs wall, "
        f"+{cost['addedCpuMicroseconds']:.0f} µs worker CPU, "
        f"{cost['redis']['redisServerCpuMicroseconds']:.0f} µs Redis CPU"
    )
    return "<br>".join(rows), "with Redis: 0 x 429, ≥ 0.95", _yes(r["met"])


ROWS = {
    "cpu_per_record": ("Client CPU per record (ours / raw aiohttp loop)", _cpu),
    "lanes": ("Cost against the number of locations", _lanes),
    "startup": ("Start-up (exec to exit)", _startup),
    "otel_overhead": ("OpenTelemetry's cost (CPU per record against no extra)", _otel),
    "rate_utilisation": ("Rate-limit utilisation", _rate),
    "memory": ("Memory (peak RSS, streaming)", _memory),
    "memory_locations": ("Memory by location (10 then 1,000 locations, sorted)", _memory),
    "locations": ("Many locations side by side", _locations),
    "latency": ("Latency-bound throughput", _latency),
    "encoding": ("Encoding (full body, per record)", _encoding),
    "sandbox_throughput": ("Sandbox throughput", _throughput),
    "incremental": ("Incremental sync (--state)", _incremental),
    "web_workers": ("Web workers on one token (4 uvicorn workers, FastAPI example)", _web_workers),
}


def table() -> str:
    """The Markdown table and the machine line."""
    lines = [
        "| Benchmark | Command | Result | Goal | Met | Run (UTC; pytest processes at start) |",
        "|---|---|---|---|---|---|",
    ]
    machines = []
    for name, (title, render) in ROWS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        result, goal, met = render(r)
        command = r.get("command", f"python benchmarks/{name}.py")
        busy = r.get("pytestProcessesAtStart")
        run = r.get("date", "?") + (f"; {busy}" if busy is not None else "")
        lines.append(f"| {title} | `{command}` | {result} | {goal} | {met} | {run} |")
        if "machine" in r:
            machines.append((r["date"], r["machine"]))
    if machines:
        date, m = max(machines, key=lambda dm: dm[0])
        lines += ["", f"Machine (latest run, {date}): {machine_line(m)}."]
    return "\n".join(lines)


def main() -> int:
    """Rewrite the README's table."""
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{README} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}", encoding="utf-8")
    print(f"table written to {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
