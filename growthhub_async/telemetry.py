"""OpenTelemetry traces and metrics from the engine's events (issue 16).

The library way: this module needs only ``opentelemetry-api`` (the ``otel`` extra) and never
configures anything. The application installs the SDK and its exporters and sets the global
providers (or hands its own to :class:`Telemetry`); the client then reports to them. Without the
extra, or with the extra and no SDK configured, nothing is subscribed and nothing is measured:
the engine's per-record path does exactly what it did before (``benchmarks/otel_overhead.py``).

What it reports, all from :mod:`~growthhub_async.events` (a subscriber, not hooks in the code):

- **Spans.** One ``update_contacts`` span per run (``growthhub.run.id``, the counts by status);
  under it one ``update_contact`` span per record (``growthhub.record.status``,
  ``growthhub.record.attempts``, ``growthhub.record.line``, ``http.response.status_code``,
  ``growthhub.location``: the token key, a location id, never a token); under that one ``PUT``
  span per HTTP request, per the OpenTelemetry HTTP client conventions (kind ``CLIENT``,
  ``http.request.method``, ``url.template`` ``/contacts/{contactId}``, ``server.address``,
  ``server.port``, ``http.response.status_code``, ``error.type``, ``http.request.resend_count``).
  The contact id is kept out (``url.full`` is not set): it is a key into someone's CRM, and the
  record's ``line`` finds it in the journal. No span holds a body field. A ``submit()`` record's
  span has no run: it is a root span. Spans are made when the facts are known (a request's
  span when its answer came, with the times it went and came back).
- **Metrics** (meter ``growthhub_async``), each by ``growthhub.location``:
  ``growthhub.records`` (by status), ``growthhub.requests`` (by ``http.response.status_code``
  or ``error.type``), ``growthhub.retries``, ``growthhub.rate_limited`` (429 answers),
  ``growthhub.pause.duration`` (seconds of token-wide pause after a 429),
  ``http.client.request.duration`` (seconds, the conventions' buckets), and the gauges
  ``growthhub.records.in_flight`` and ``growthhub.records.queued``, read from the engine only
  when the metrics are collected.
"""

from __future__ import annotations

import asyncio
import sys
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from growthhub_async.events import (
    Event,
    Paused,
    RateLimitHit,
    RecordFinished,
    RequestFinished,
    RetryScheduled,
    RunFinished,
)
from growthhub_async.logs import new_run_id
from growthhub_async.outcomes import Status

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from growthhub_async.bulk import Engine

__all__ = ["DURATION_BUCKETS", "ClientTelemetry", "Telemetry", "available"]


class _API:
    """The ``opentelemetry`` API's modules, imported on first need, never with the package:
    a program that never imported them has configured no SDK, and pays nothing."""

    trace: Any = None
    metrics: Any = None
    tried = False


def available() -> bool:
    """Whether ``opentelemetry-api`` (the ``otel`` extra) can be imported."""
    if not _API.tried:
        _API.tried = True
        try:
            from opentelemetry import metrics, trace  # noqa: PLC0415 (optional, on demand)
        except ImportError:
            return False
        _API.trace, _API.metrics = trace, metrics
    return _API.trace is not None


DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""``http.client.request.duration``'s bucket boundaries, as the HTTP conventions advise."""

_SCOPE: Final = "growthhub_async"
_LOCATION: Final = "growthhub.location"
_TEMPLATE: Final = "/contacts/{contactId}"


def _sdk_configured(tracer_provider: Any, meter_provider: Any) -> bool:
    """Whether an SDK stands behind the global providers (the API's own are proxies/no-ops)."""
    no_tracing = isinstance(
        tracer_provider, _API.trace.ProxyTracerProvider | _API.trace.NoOpTracerProvider
    )
    idle_meters = type(meter_provider).__name__ in {"_ProxyMeterProvider", "NoOpMeterProvider"}
    return not (no_tracing and idle_meters)


class _Instruments:
    """The metric instruments of one meter, made once (a second client reuses them)."""

    def __init__(self, meter: Meter) -> None:
        self.records = meter.create_counter(
            "growthhub.records", unit="{record}", description="Records finished, by status."
        )
        self.requests = meter.create_counter(
            "growthhub.requests",
            unit="{request}",
            description="HTTP requests sent, by answer status (or error type).",
        )
        self.retries = meter.create_counter(
            "growthhub.retries", unit="{retry}", description="Retries scheduled."
        )
        self.rate_limited = meter.create_counter(
            "growthhub.rate_limited", unit="{response}", description="429 answers."
        )
        self.paused = meter.create_counter(
            "growthhub.pause.duration",
            unit="s",
            description="Seconds a token stopped sending after a 429 that spent its budget.",
        )
        self.duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.engines: weakref.WeakSet[ClientTelemetry] = weakref.WeakSet()
        meter.create_observable_up_down_counter(
            "growthhub.records.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{record}",
            description="Records a worker is on (pacing or on the wire).",
        )
        meter.create_observable_up_down_counter(
            "growthhub.records.queued",
            callbacks=[self._observe_queued],
            unit="{record}",
            description="Records read and waiting: for a worker, their contact, or a retry.",
        )

    def _observe(self, index: int) -> list[Observation]:
        totals: dict[str, int] = {}  # clients sharing a provider (and a location) add up
        for client in list(self.engines):
            engine = client.engine_ref() if client.engine_ref is not None else None
            if engine is None or engine.closed:
                continue
            for key, counts in engine.load().items():
                totals[key] = totals.get(key, 0) + counts[index]
        return [_API.metrics.Observation(value, {_LOCATION: key}) for key, value in totals.items()]

    def _observe_queued(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(0)

    def _observe_in_flight(self, _options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(1)


# One set of instruments per meter provider (instruments are the provider's, not a client's).
_INSTRUMENTS: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()


class Telemetry:
    """Where a :class:`~growthhub_async.GrowthHubClient` reports: ``telemetry=Telemetry(...)``.

    ``tracer_provider`` and ``meter_provider`` default to the global ones
    (``opentelemetry.trace.set_tracer_provider``, ``opentelemetry.metrics.set_meter_provider``).
    The client's default (``telemetry=None``) reports to the global providers when an SDK is
    configured there when the client first sends; ``telemetry=False`` never reports. Giving
    providers reports to them, whatever the globals. Raises ``RuntimeError`` when the ``otel``
    extra is not installed.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not available():
            raise RuntimeError("telemetry needs the otel extra: pip install growthhub-async[otel]")
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider

    @classmethod
    def resolve(cls, option: Telemetry | bool | None) -> Telemetry | None:
        """What a client's ``telemetry=`` means now: ``None`` when nothing is to be reported."""
        if option is False:
            return None
        if isinstance(option, Telemetry):
            return option
        if option is None and not {"opentelemetry.trace", "opentelemetry.metrics"} & set(
            sys.modules
        ):
            return None  # nothing imported the API: no SDK can be configured
        if not available():
            return None
        if option is True or _sdk_configured(
            _API.trace.get_tracer_provider(), _API.metrics.get_meter_provider()
        ):
            return cls()
        return None

    def for_client(self, server: tuple[str, int | None]) -> ClientTelemetry:
        """The subscriber of one client (its server's host and port for the HTTP spans)."""
        from growthhub_async import __version__  # noqa: PLC0415 (the package imports us)

        tracer = _API.trace.get_tracer(_SCOPE, __version__, self.tracer_provider)
        provider = self.meter_provider or _API.metrics.get_meter_provider()
        instruments = _INSTRUMENTS.get(provider)
        if instruments is None:
            meter = _API.metrics.get_meter(_SCOPE, __version__, provider)
            instruments = _INSTRUMENTS[provider] = _Instruments(meter)
        client = ClientTelemetry(tracer, instruments, server)
        instruments.engines.add(client)
        return client


class _Record:
    __slots__ = ("span", "status")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.status: int | None = None


class _Run:
    """One ``update_contacts`` run: its span, and the hook that claims its events."""

    def __init__(self, owner: ClientTelemetry, run_id: str | None) -> None:
        self.owner = owner
        self.run_id = run_id or new_run_id()
        self.span = owner.tracer.start_span(
            "update_contacts", attributes={"growthhub.run.id": self.run_id}
        )
        self.context = _API.trace.set_span_in_context(self.span)

    def hook(self, event: Event) -> None:
        """The run's own hook: its events come here right after the client's hook."""
        if isinstance(event, RequestFinished | RecordFinished | RunFinished):
            self.owner.claims[id(event)] = self


class ClientTelemetry:
    """The subscriber of one client: metrics at once, spans once each event's run is known.

    A run's events reach the client's hooks first and then the run's own hooks (where
    :meth:`_Run.hook` claims them); a ``submit()`` record's reach the client's only. So the
    spans of an event are made just after the hooks, when it is known whose the event was.
    """

    def __init__(
        self, tracer: Tracer, instruments: _Instruments, server: tuple[str, int | None]
    ) -> None:
        self.tracer = tracer
        self.m = instruments
        self.engine_ref: weakref.ref[Engine] | None = None
        self.claims: dict[int, _Run] = {}
        # Records with a span open: (token key, contact id, line). A contact has one record in
        # flight per token (the engine's contact gate), so the key names one record.
        self.open: dict[tuple[str, str, int], _Record] = {}
        address, port = server
        self.http_attributes: dict[str, Any] = {
            "http.request.method": "PUT",
            "server.address": address,
            "url.template": _TEMPLATE,
        }
        if port is not None:
            self.http_attributes["server.port"] = port

    def attach(self, engine: Engine) -> None:
        """Read ``engine``'s load for the gauges (weakly: the client owns it)."""
        self.engine_ref = weakref.ref(engine)

    def run(self, run_id: str | None) -> _Run:
        """A new run's span, and its hook (to add to the run's hooks)."""
        return _Run(self, run_id)

    # -- the client's hook ------------------------------------------------------------------

    def hook(self, event: Event) -> None:
        """The client-level subscriber: metrics now, spans right after the hooks."""
        m = self.m
        match event:
            case RequestFinished():
                attributes = self._request_attributes(event)
                m.duration.record(event.duration, attributes)
                m.requests.add(1, attributes)
            case RecordFinished(outcome=outcome, token_key=key):
                m.records.add(
                    1, {"growthhub.record.status": outcome.status.value, _LOCATION: key or ""}
                )
            case RetryScheduled(token_key=key):
                m.retries.add(1, {_LOCATION: key})
                return
            case RateLimitHit(token_key=key):
                m.rate_limited.add(1, {_LOCATION: key})
                return
            case Paused(token_key=key, seconds=seconds):
                m.paused.add(seconds, {_LOCATION: key})
                return
            case RunFinished():
                pass
            case _:
                return
        # Spans: once the run's own hooks have had the event (see the class docstring).
        asyncio.get_running_loop().call_soon(self._spans, event)

    def _request_attributes(self, event: RequestFinished) -> dict[str, Any]:
        attributes = dict(self.http_attributes)
        attributes[_LOCATION] = event.token_key
        if event.http_status is not None:
            attributes["http.response.status_code"] = event.http_status
        if event.http_status is not None and event.http_status >= 400:
            attributes["error.type"] = str(event.http_status)
        elif event.error is not None:
            attributes["error.type"] = event.error
        return attributes

    # -- spans ------------------------------------------------------------------------------

    def _spans(self, event: Event) -> None:
        run = self.claims.pop(id(event), None)
        if isinstance(event, RequestFinished):
            self._request_span(event, run)
        elif isinstance(event, RecordFinished):
            self._record_span(event, run)
        elif isinstance(event, RunFinished) and run is not None:
            summary = event.summary
            span = run.span
            for status in Status:
                count = summary.by_status[status]
                if count:
                    span.set_attribute(f"growthhub.records.{status.value}", count)
            span.set_attribute("growthhub.run.records", summary.records)
            span.set_attribute("growthhub.run.requests", summary.requests)
            span.set_attribute("growthhub.run.retries", summary.retries)
            span.set_attribute("growthhub.run.rate_limited", summary.rate_limited)
            span.end()

    @staticmethod
    def _ns(loop_time: float) -> int:
        """A ``loop.time()`` instant as the wall-clock nanoseconds spans carry."""
        now = asyncio.get_running_loop().time()
        return time.time_ns() - int((now - loop_time) * 1e9)

    def _request_span(self, event: RequestFinished, run: _Run | None) -> None:
        key = (event.token_key, event.contact_id, event.line)
        record = self.open.get(key)
        start = self._ns(event.sent_at)
        if record is None:
            span = self.tracer.start_span(
                "update_contact",
                context=run.context if run is not None else None,
                start_time=start,
                attributes={_LOCATION: event.token_key, "growthhub.record.line": event.line},
            )
            record = self.open[key] = _Record(span)
        record.status = event.http_status
        attributes = self._request_attributes(event)
        del attributes[_LOCATION]
        if event.attempt > 1:
            attributes["http.request.resend_count"] = event.attempt - 1
        span = self.tracer.start_span(
            "PUT",
            context=_API.trace.set_span_in_context(record.span),
            kind=_API.trace.SpanKind.CLIENT,
            start_time=start,
            attributes=attributes,
        )
        if "error.type" in attributes:
            span.set_status(_API.trace.StatusCode.ERROR)
        span.end(end_time=start + int(event.duration * 1e9))

    def _record_span(self, event: RecordFinished, run: _Run | None) -> None:
        outcome = event.outcome
        record = None
        if event.token_key is not None and outcome.contact_id is not None:
            record = self.open.pop((event.token_key, outcome.contact_id, outcome.line), None)
        if record is None:  # never sent (rejected, unchanged, cancelled while queued)
            span = self.tracer.start_span(
                "update_contact",
                context=run.context if run is not None else None,
                attributes={
                    _LOCATION: event.token_key or "",
                    "growthhub.record.line": outcome.line,
                },
            )
        else:
            span = record.span
        span.set_attribute("growthhub.record.status", outcome.status.value)
        span.set_attribute("growthhub.record.attempts", outcome.attempts)
        if outcome.http_status is not None:
            span.set_attribute("http.response.status_code", outcome.http_status)
        if outcome.status not in (Status.UPDATED, Status.UNCHANGED):
            span.set_status(_API.trace.StatusCode.ERROR)
        span.end()
