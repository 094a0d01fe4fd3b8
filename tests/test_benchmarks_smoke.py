"""Each benchmark's smoke run (``--smoke``): it runs, exits 0 and writes a sane result file.

Speed is never asserted here (that is what ``make bench`` measures); these keep the benchmark
scripts working as the library changes. Each runs as ``python -m benchmarks.NAME --smoke
--out TMP`` in a subprocess, as ``make bench`` runs it, over loopback only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_smoke(
    name: str, tmp_path: Path, *extra: str, expected: str | None = None
) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "GROWTHHUB_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke", *extra, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert result["benchmark"] == (expected or name)
    assert result["command"].startswith(f"python -m benchmarks.{name} --smoke")
    machine = result["machine"]
    assert machine["nproc"] >= 1
    assert machine["python"].count(".") == 2
    assert machine["aiohttp"]
    assert machine["platform"]
    return result


def test_cpu_per_record(tmp_path: Path) -> None:
    r = run_smoke("cpu_per_record", tmp_path)
    asyncio_loop = r["loops"]["asyncio"]
    assert asyncio_loop["cpuRatio"] > 0
    for who in ("ours", "raw"):
        assert asyncio_loop[who]["cpuSeconds"] > 0
        assert asyncio_loop[who]["recordsPerSecond"] > 0
        assert 0 <= asyncio_loop[who]["serverCpuShareMax"] < 2
    assert isinstance(r["met"], bool)


def test_otel_overhead(tmp_path: Path) -> None:
    r = run_smoke("otel_overhead", tmp_path)
    variants = r["variants"]
    assert set(variants) == {"without", "sdk"}
    assert all(v["cpuSeconds"] > 0 for v in variants.values())
    assert variants["without"]["ratioToWithout"] == 1.0
    assert isinstance(r["met"], bool)


def test_rate_utilisation(tmp_path: Path) -> None:
    r = run_smoke("rate_utilisation", tmp_path)
    for name in ("sliding", "fixed", "sharedWithPlainSender", "sharedTwoClients"):
        figures = r[name]
        assert figures["requests"] >= figures["ok"] >= 0
        # Two of our clients on one token squeeze the smaller one (benchmarks/README.md): in a
        # smoke-length run it may get nothing through, so only the others must have succeeded.
        if name != "sharedTwoClients":
            assert figures["ok"] > 0
        assert figures["rateLimited"] >= 0
        assert 0 < figures["ofLimit"] < 2
    png = tmp_path / r["plot"]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_memory(tmp_path: Path) -> None:
    r = run_smoke("memory", tmp_path)
    assert r["small"]["records"] < r["large"]["records"]
    assert r["small"]["peakRssMiB"] > 0
    assert r["large"]["peakRssMiB"] > 0
    assert r["rssRatio"] > 0


def test_memory_by_location(tmp_path: Path) -> None:
    r = run_smoke("memory", tmp_path, "--by-location", expected="memory_locations")
    assert r["small"]["locations"] < r["large"]["locations"]
    assert r["large"]["peakRssMiB"] > 0


def test_locations(tmp_path: Path) -> None:
    r = run_smoke("locations", tmp_path)
    assert r["many"]["locations"] > r["floor"]["locations"] == 1
    assert r["many"]["records"] == r["single"]["records"]
    assert r["wallAgainstFloor"] > 0
    assert r["many"]["answered429"] >= 0


def test_latency(tmp_path: Path) -> None:
    r = run_smoke("latency", tmp_path)
    assert r["updated"] == r["records"]
    assert r["recordsPerSecond"] > 0
    assert r["ceiling"] == pytest.approx(r["concurrency"] / r["latencySeconds"])


def test_encoding(tmp_path: Path) -> None:
    r = run_smoke("encoding", tmp_path)
    us = r["microsecondsPerRecord"]
    assert us["oursDecodeValidateEncode"] > 0
    assert us["stdlibBuildDictDumps"] > 0
    assert r["ratioOursToStdlib"] > 0
    assert r["bodyBytes"] > 1000


def test_incremental(tmp_path: Path) -> None:
    r = run_smoke("incremental", tmp_path)
    assert r["check"]["recordsPerSecond"] > 0
    assert r["unchanged"]["requests"] == 0
    assert r["unchanged"]["byStatus"] == {"unchanged": 1000}
    assert r["onePercent"]["requests"] == r["changedRecords"] == 10
    assert r["noState"]["requests"] == 1000
    assert r["bytesPerContact"] > 0


def test_report_table_renders_every_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The README table from result files: one row per file, and the machine line.
    from benchmarks import report  # noqa: PLC0415 (imported from the repository root)

    run_smoke("encoding", tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = report.table()
    assert text.count("\n| ") == 1  # the encoding row (the separator starts "|-")
    assert "| Encoding (full body, per record) | `python -m benchmarks.encoding --smoke" in text
    assert "Machine (latest run" in text


def test_sandbox_throughput(tmp_path: Path) -> None:
    r = run_smoke("sandbox_throughput", tmp_path)
    assert r["requests"] > 0
    assert set(r["byStatus"]) == {"200"}
    assert r["requestsPerSecond"] > 0


def test_lanes(tmp_path: Path) -> None:
    r = run_smoke("lanes", tmp_path)
    assert r["lanes"] > 1
    assert r["cpuRatio"] > 0
    for name in ("one", "many", "oneWide"):
        assert r[name]["cpuSeconds"] > 0
    # The control runs one lane at the connections the many-lane run held at its peak.
    assert r["oneWide"]["concurrency"] == r["many"]["peakConnections"] > 1
    assert r["controlRatio"] > 0
    idle = r["idle"]
    assert idle["many"]["lanes"] == r["lanes"]
    assert idle["one"]["lanes"] == 1
    assert idle["one"]["rssKiB"] > 0
    # Idle lanes hold no timer or task of their own (what the benchmark reports, checked).
    assert r["idleLanesHoldNoTimerOrTask"] is True


def test_startup(tmp_path: Path) -> None:
    r = run_smoke("startup", tmp_path)
    for name in ("pythonPass", "importAiohttp", "update"):
        assert r[name]["wallMs"] > 0
        assert r[name]["cpuMs"] >= 0
    assert r["update"]["cpuMs"] > r["pythonPass"]["cpuMs"]


@pytest.mark.slow  # about 12 s: `make soak` runs it (make test stays under five minutes)
def test_web_workers(tmp_path: Path) -> None:
    # uvicorn serving the FastAPI example, with and without the budget in Redis (issue 15).
    r = run_smoke("web_workers", tmp_path)
    for name in ("withoutRedis", "withRedis"):
        figures = r[name]
        assert figures["answers"] == {"200": figures["requests"]}
        assert figures["sandboxRequests"] >= figures["requests"]
        assert figures["p99Seconds"] >= figures["p50Seconds"] > 0
    assert r["withRedis"]["maxInWindow"] <= 10  # the smoke's limit: 10 per 0.25 s
    cost = r["redisCost"]
    assert cost["redis"]["wallMicroseconds"] > 0
    assert cost["local"]["wallMicroseconds"] > 0
    assert isinstance(r["met"], bool)
