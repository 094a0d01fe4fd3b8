"""OpenTelemetry traces and metrics (issue 16), read back from the SDK's in-memory exporters.

The client runs against the sandbox with faults on (5xx, dropped connections, 422s, 429s that
spend the budget), so every attribute checked below was set by a real answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from growthhub_async import GrowthHubClient, Outcome, Record, RetryPolicy, Status, UpdateContact
from growthhub_async.logs import RUN_ID
from growthhub_async.logs import log_event as log_hook
from growthhub_async.sandbox import Faults, SandboxConfig, run_sandbox
from growthhub_async.telemetry import DURATION_BUCKETS, Telemetry

TOKEN = "otel-SECRET-token-0123456789"
BODY_MARK = "BodyValueNeverInTelemetry"
FAST = RetryPolicy(max_tries=8, max_time=20.0, base_delay=0.005, max_delay=0.02)


def _providers() -> tuple[
    TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader
]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "growthhub_async"
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


async def test_spans_and_metrics_of_a_run_under_faults() -> None:
    scripts = {
        "flaky": ["503", "reset", "ok"],
        "invalid": ["422"],
        "limited": ["429", "ok"],
    }
    config = SandboxConfig(
        tokens=frozenset({TOKEN}),
        rate_limit=1000,
        rate_window=0.2,
        faults=Faults(seed=5, rate_limit_rate=0.08, spent_429_share=1.0, scripts=scripts),
    )
    ids = ["flaky", "invalid", "limited"] + [f"c{i}" for i in range(40)]
    records: list[Any] = [
        Record(n, cid, UpdateContact(first_name=BODY_MARK, tags=[BODY_MARK]))
        for n, cid in enumerate(ids, start=1)
    ]
    records.append(Outcome(line=len(ids) + 1, contact_id=None, status=Status.REJECTED, error="x"))
    tracer_provider, exporter, meter_provider, reader = _providers()
    token = RUN_ID.set("run0123456789abc")
    try:
        async with (
            run_sandbox(config) as sb,
            GrowthHubClient(
                TOKEN,
                base_url=sb.base_url,
                rate=None,
                concurrency=6,
                retry=FAST,
                max_pause=0.2,
                telemetry=Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider),
            ) as gh,
        ):
            outcomes = {}
            busy = None
            async with gh.update_contacts(records) as stream:
                async for outcome in stream:
                    outcomes[outcome.line] = outcome
                    if len(outcomes) == 5:  # mid-run: records queued and in flight
                        busy = _points(reader)
            single = await gh.submit("web1", UpdateContact(city=BODY_MARK))
            stats = sb.stats()
            requests_seen = stats["requests"]
            port = sb.port
            gauges = _points(reader)  # collected while the client is open
    finally:
        RUN_ID.reset(token)
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)

    # One span per run, with the run's id and counts.
    (run,) = by_name["update_contacts"]
    attributes = run.attributes or {}
    assert attributes["growthhub.run.id"] == "run0123456789abc"
    assert attributes["growthhub.run.records"] == len(records)
    assert attributes["growthhub.records.invalid"] == 1
    assert attributes["growthhub.records.rejected"] == 1

    # One span per record (and one for the submit, a root span), each with its outcome.
    records_spans = by_name["update_contact"]
    assert len(records_spans) == len(records) + 1
    by_line = {}
    for span in records_spans:
        attributes = span.attributes or {}
        if span.parent is None:
            assert attributes["growthhub.record.status"] == single.status.value == "updated"
            continue
        assert run.context is not None
        assert span.parent.span_id == run.context.span_id
        by_line[attributes["growthhub.record.line"]] = span
    for line, outcome in outcomes.items():
        attributes = by_line[line].attributes or {}
        assert attributes["growthhub.record.status"] == outcome.status.value
        assert attributes["growthhub.record.attempts"] == outcome.attempts
        assert attributes.get("http.response.status_code") == outcome.http_status
    assert by_line[2].status.status_code is StatusCode.ERROR  # invalid

    # One PUT span per request the server saw, children of their record, per the conventions.
    puts = by_name["PUT"]
    assert len(puts) == requests_seen == sum(o.attempts for o in outcomes.values()) + 1
    record_ids = {s.context.span_id: s for s in records_spans if s.context is not None}
    codes: Counter[Any] = Counter()
    for put in puts:
        attributes = put.attributes or {}
        assert put.kind is SpanKind.CLIENT
        assert put.parent is not None
        parent = record_ids[put.parent.span_id]
        assert parent.start_time is not None
        assert put.start_time is not None
        assert parent.start_time <= put.start_time <= (put.end_time or 0)
        assert attributes["http.request.method"] == "PUT"
        assert attributes["url.template"] == "/contacts/{contactId}"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == port
        status = attributes.get("http.response.status_code")
        codes[status] += 1
        if status is None or status >= 400:
            assert put.status.status_code is StatusCode.ERROR
            assert attributes["error.type"] == (str(status) if status else "ConnectionFailed")
        else:
            assert "error.type" not in attributes
    flaky = sorted(
        (p for p in puts if p.parent and p.parent.span_id == by_line[1].context.span_id),  # type: ignore[union-attr]
        key=lambda p: p.start_time or 0,
    )
    assert [(p.attributes or {}).get("http.response.status_code") for p in flaky] == [
        503,
        None,
        200,
    ]
    assert [(p.attributes or {}).get("http.request.resend_count") for p in flaky] == [None, 1, 2]
    assert codes[429] >= 2  # the script's and the forced ones
    seen = {(None if k == "dropped" else int(k)): v for k, v in stats["byStatus"].items()}
    assert seen == codes
    assert codes[422] == 1

    # Metrics: counted by status, by location; durations in the conventions' buckets.
    points = _points(reader)
    records_by_status = {
        p.attributes["growthhub.record.status"]: p.value for p in points["growthhub.records"]
    }
    expected = Counter(o.status.value for o in outcomes.values())
    expected["updated"] += 1  # the submit
    assert records_by_status == dict(expected)
    requests = Counter[Any]()
    for p in points["growthhub.requests"]:
        assert p.attributes["growthhub.location"] == "default"
        requests[p.attributes.get("http.response.status_code")] += p.value
    assert requests == codes
    durations = points["http.client.request.duration"]
    assert sum(p.count for p in durations) == requests_seen
    assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in durations)
    (retries,) = points["growthhub.retries"]
    assert retries.value == sum(o.attempts - 1 for o in outcomes.values() if o.attempts > 1)
    (limited,) = points["growthhub.rate_limited"]
    assert limited.value == codes[429]
    (paused,) = points["growthhub.pause.duration"]
    assert paused.value > 0
    # The gauges: read from the engine when collected; nothing queued or in flight at the end.
    assert busy is not None
    mid = {
        name: sum(p.value for p in busy[name])
        for name in ("growthhub.records.queued", "growthhub.records.in_flight")
    }
    assert mid["growthhub.records.queued"] > 0
    assert 0 < mid["growthhub.records.in_flight"] <= 6  # the concurrency
    assert {
        p.attributes["growthhub.location"]: p.value for p in gauges["growthhub.records.queued"]
    } == {"default": 0}
    assert {
        p.attributes["growthhub.location"]: p.value for p in gauges["growthhub.records.in_flight"]
    } == {"default": 0}

    # Never the token, never a body value, in any span or metric.
    everything = json.dumps(
        [
            [s.name, dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]]
            for s in spans
        ]
        + [[name, [dict(p.attributes) for p in pts]] for name, pts in points.items()],
        default=str,
    )
    assert TOKEN not in everything
    assert BODY_MARK not in everything
    assert "flaky" not in everything  # nor the contact ids: url.template, not url.full


async def test_without_an_sdk_nothing_is_subscribed() -> None:
    """No SDK configured (the API's proxy providers): no telemetry hook, nothing measured."""
    assert Telemetry.resolve(None) is None
    assert Telemetry.resolve(False) is None
    config = SandboxConfig(tokens=frozenset({TOKEN}), rate_limit=1000, rate_window=0.2)
    async with (
        run_sandbox(config) as sb,
        GrowthHubClient(TOKEN, base_url=sb.base_url, rate=None) as gh,
    ):
        outcome = await gh.submit("c1", UpdateContact(city="x"))
        assert outcome.status is Status.UPDATED
        assert gh.hooks == [log_hook]


WRAPPER = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
from growthhub_async.cli import main
status = main(sys.argv[1:])
spans = [[s.name, dict(s.attributes or {})] for s in exporter.get_finished_spans()]
print(json.dumps(spans), file=sys.__stdout__)
sys.exit(status)
"""


async def test_the_command_reports_to_a_configured_sdk_with_the_runs_id(tmp_path: Path) -> None:
    """As under ``opentelemetry-instrument``: global providers set, then the command runs."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"contactId": "c1", "firstName": "a"}\n{"contactId": "c2", "email": 3}\n')
    out = tmp_path / "out.jsonl"
    config = SandboxConfig(tokens=frozenset({TOKEN}), rate_limit=1000, rate_window=0.2)
    async with run_sandbox(config) as sb:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRAPPER,
            *("update", str(source), "--out", str(out), "--base-url", sb.base_url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GROWTHHUB_TOKEN": TOKEN},
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, stderr.decode()
    spans = json.loads(stdout.decode().splitlines()[-1])
    names = Counter(name for name, _ in spans)
    assert names == {"update_contacts": 1, "update_contact": 2, "PUT": 1}
    (run,) = [attributes for name, attributes in spans if name == "update_contacts"]
    journal = [json.loads(line) for line in out.read_text().splitlines()]
    assert {j["runId"] for j in journal} == {run["growthhub.run.id"]}
    assert TOKEN not in stdout.decode() + stderr.decode()


async def test_a_run_left_by_break_ends_its_span_when_the_client_closes() -> None:
    """rt16 #7: ``break`` out of the loop, no ``async with``: closing the client ends the run,
    so its span is exported and every record span has its parent; its outcomes stay readable."""
    tracer_provider, exporter, meter_provider, _ = _providers()
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    finished: list[Any] = []
    config = SandboxConfig(tokens=frozenset({TOKEN}), rate_limit=1000, rate_window=1.0)
    async with run_sandbox(config) as sb:
        gh = GrowthHubClient(
            TOKEN,
            base_url=sb.base_url,
            telemetry=telemetry,
            rate="20/1s",
            hooks=[lambda e: finished.append(e) if type(e).__name__ == "RunFinished" else None],
        )
        async with gh:
            stream = gh.update_contacts(
                [(f"contact{i}", UpdateContact(tags=["x"])) for i in range(20)]
            )
            async for _ in stream:
                break
        sent = sb.stats()["requests"]
    spans = exporter.get_finished_spans()
    (run,) = [s for s in spans if s.name == "update_contacts"]
    records = [s for s in spans if s.name == "update_contact"]
    assert len(records) == 20  # every record read ended (most "cancelled") under the run
    assert run.context is not None
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in records)
    assert len([s for s in spans if s.name == "PUT"]) == sent >= 1
    assert len(finished) == 1
    assert finished[0].summary.records == 20
    rest = [outcome async for outcome in stream]  # what was not read yet is still there
    assert len(rest) == 19
