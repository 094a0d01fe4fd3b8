"""``submit`` against the red team's servers (rt15web): an echoed token in a 200, a deadline that
passed while the loop was busy, a cut request and the contact's next record, a 200 nested too
deep. Each test runs a small ``aiohttp.web`` server of its own on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter

import pytest
from aiohttp import web

from growthhub_async import ConfigurationError, Status, UpdateContact
from growthhub_async.client import MAX_KEPT_ANSWER, MAX_VALUE_DEPTH, read_response
from growthhub_async.errors import ResponseError
from growthhub_async.events import Event, RecordFinished
from growthhub_async.models import CustomField
from growthhub_async.redact import Redactor
from tests.test_adversarial_server import TOKEN, Server, client, contact_of, ok, serve


async def test_a_token_echoed_in_a_200_never_reaches_the_outcome() -> None:
    """A 200 whose contact echoes the bearer (a field, a custom field, a tag): with
    ``response=True`` the outcome carries the contact without it, in every form."""

    async def echo(request: web.Request, server: Server) -> web.StreamResponse:
        bearer = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        contact = {
            "id": contact_of(request),
            "firstName": bearer,
            "source": f"set by {bearer}",
            "tags": [bearer[:14]],
            "customFields": [{"id": "cf1", "value": {"deep": [bearer]}}],
        }
        return web.json_response({"succeded": True, "contact": contact})

    async with serve(echo) as server, client(server) as gh:
        outcome = await gh.submit("c1", UpdateContact(first_name="A"), response=True)
    assert outcome.status is Status.UPDATED
    assert outcome.contact is not None
    assert outcome.contact.id == "c1"
    assert outcome.contact.first_name == "<redacted>"
    for shown in (repr(outcome), str(outcome.to_dict()), outcome.to_json().decode()):
        assert TOKEN not in shown
        assert TOKEN[:12] not in shown


def test_a_200_that_no_longer_decodes_once_redacted_keeps_no_contact() -> None:
    """The secret cut the JSON (it sat across an escape): the answer stays a success, without
    its contact, rather than holding the secret."""
    secret = "abcdefghijkl-secret"
    redact = Redactor(secret)
    body = b'{"succeded": true, "contact": {"id": "c1", "firstName": "\\u0061bcdefghijkl-secret"}}'
    kept = read_response(200, {}, body, redact=redact, contact_id="c1", keep=True)
    assert secret not in repr(kept)
    assert kept.succeded is True
    plain = read_response(200, {}, body, redact=redact, contact_id="c1")
    assert plain.contact is not None  # not asked for: decoded once, not scanned


def test_a_200_too_large_to_scan_keeps_no_contact() -> None:
    """Scanning for secrets blocks the loop (about 0.3 s a MiB): a body past
    ``MAX_KEPT_ANSWER`` is given back without its contact, secret or not."""
    padding = "x" * MAX_KEPT_ANSWER
    body = b'{"succeded": true, "contact": {"id": "c1", "source": "%s"}}' % padding.encode()
    kept = read_response(200, {}, body, redact=Redactor("abcdefghijkl-secret"), keep=True)
    assert kept.succeded is True
    assert kept.contact is None
    small = read_response(200, {}, body[: -len(padding) - 3] + b'"}}', keep=True)
    assert small.contact is not None


async def test_a_record_whose_deadline_passed_while_the_loop_was_busy_is_never_sent() -> None:
    """The worker gets its turn before the deadline's timer on a busy loop: it looks at the
    deadline itself before sending. Nothing reaches the server, attempts 0."""
    async with serve() as server, client(server) as gh:
        await gh.submit("warm", UpdateContact(tags=["x"]))  # a pooled connection

        def busy() -> None:
            time.sleep(0.15)  # another handler's synchronous work

        asyncio.get_running_loop().call_soon(busy)
        late = await gh.submit("stalled", UpdateContact(tags=["x"]), timeout=0.05)
        tiny = await gh.submit("tiny", UpdateContact(tags=["x"]), timeout=1e-6)
        await asyncio.sleep(0.2)
        for outcome, shown in ((late, "0.05"), (tiny, "1e-06")):
            assert outcome.status is Status.FAILED
            assert outcome.attempts == 0
            assert outcome.error == (
                f"deadline ({shown} s) passed before the record could be sent: not sent"
            )
        assert server.paths() == ["/contacts/warm"]
        again = await gh.submit("after", UpdateContact(tags=["x"]), timeout=5)
        assert again.status is Status.UPDATED


def test_a_timeout_must_be_a_number_of_seconds_not_a_bool() -> None:
    async def main() -> None:
        async with serve() as server, client(server) as gh:
            for bad in (True, False, 1e9, "1"):
                with pytest.raises(ConfigurationError, match="timeout must be"):
                    await gh.submit("c1", UpdateContact(tags=["x"]), timeout=bad)  # type: ignore[arg-type]
            assert server.seen == []

    asyncio.run(main())


class SlowStore:
    """A server that applies a contact's body after a delay (the first request of the test:
    0.6 s), whether or not its caller is still there, like any backend."""

    def __init__(self) -> None:
        self.value: list[str] | None = None
        self.log: list[tuple[str, str]] = []  # ("arrived"|"applied", tag)
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, request: web.Request, server: Server) -> web.StreamResponse:
        tags = json.loads(await request.read())["tags"]
        self.log.append(("arrived", tags[0]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.6 if len(self.log) == 1 else 0.02)
        self.value = tags
        self.log.append(("applied", tags[0]))
        self.in_flight -= 1
        return ok(contact_of(request))


@pytest.mark.parametrize("cut", ["deadline", "disconnect"])
async def test_a_cut_request_holds_its_contact_until_the_server_answered(cut: str) -> None:
    """Record A of a contact is cut in flight (its deadline, or its caller's disconnect): A's
    caller has its outcome at once, and B of the same contact goes only once A is answered,
    so the server applies them in order, never both at once."""
    store = SlowStore()
    seen: list[Event] = []
    async with serve(store) as server, client(server, hooks=[seen.append]) as gh:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.create_task(
            gh.submit("X", UpdateContact(tags=["old"]), timeout=0.2 if cut == "deadline" else None)
        )
        await server.wait_seen(1)
        second = asyncio.create_task(gh.submit("X", UpdateContact(tags=["new"]), response=True))
        if cut == "disconnect":
            await asyncio.sleep(0.2)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        else:
            a = await first
            assert a.status is Status.FAILED
            assert a.attempts == 1
            assert a.error is not None
            assert a.error.startswith("deadline (0.2 s) passed with a request in flight")
            assert "may have applied it" in a.error
        assert loop.time() - started < 0.5  # the caller did not wait for the answer
        assert store.log == [("arrived", "old")]  # B waits for A's answer
        b = await second
        assert b.status is Status.UPDATED
    assert store.log == [
        ("arrived", "old"),
        ("applied", "old"),
        ("arrived", "new"),
        ("applied", "new"),
    ]
    assert store.most_in_flight == 1
    assert store.value == ["new"]
    finished = [e.outcome for e in seen if isinstance(e, RecordFinished)]
    assert [(o.contact_id, o.status) for o in finished] == [
        ("X", Status.FAILED),
        ("X", Status.UPDATED),
    ]


async def test_close_cuts_a_request_left_in_flight_and_sends_nothing_more() -> None:
    """A cut request going on in the background does not hold up ``close()``, and the
    contact's next record, parked behind it, ends cancelled, never sent."""
    store = SlowStore()
    async with serve(store) as server:
        gh = client(server)
        async with gh:
            a = await gh.submit("X", UpdateContact(tags=["old"]), timeout=0.1)
            assert a.status is Status.FAILED
            second = asyncio.create_task(gh.submit("X", UpdateContact(tags=["new"])))
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            started = loop.time()
        assert loop.time() - started < 0.3
        b = await second
        assert (b.status, b.attempts, b.error) == (Status.FAILED, 0, "cancelled")
        await asyncio.sleep(0.7)
        assert server.paths() == ["/contacts/X"]


def _nested(depth: int) -> bytes:
    value = "[" * depth + "1" + "]" * depth
    return (
        b'{"succeded": true, "contact": {"id": "c1", "customFields": [{"id": "f", "value": '
        + value.encode()
        + b"}]}}"
    )


def test_a_200_nested_too_deep_is_an_unreadable_answer() -> None:
    for keep in (False, True):
        with pytest.raises(ResponseError, match="not the API's JSON"):
            read_response(200, {}, _nested(5000), contact_id="c1", keep=keep)
    # An error answer nested so deep is read as one without the API's JSON shape.
    with pytest.raises(Exception, match="HTTP 400") as info:
        read_response(400, {}, b'{"message": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert not isinstance(info.value, RecursionError)


async def test_a_200_nested_too_deep_is_retried_as_unreadable_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def deep(request: web.Request, server: Server) -> web.StreamResponse:
        return web.Response(body=_nested(5000))

    caplog.set_level(logging.DEBUG, "growthhub_async")
    async with serve(deep) as server, client(server) as gh:
        outcome = await gh.submit("c1", UpdateContact(custom_fields=[CustomField("f", 1)]))
    assert outcome.status is Status.FAILED
    assert outcome.http_status == 200
    assert outcome.attempts == 4  # retried, as any unreadable 200
    assert outcome.error is not None
    assert "not the API's JSON" in outcome.error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_contact_nested_deep_but_readable_is_not_given_to_the_caller() -> None:
    """300 levels decode, but a web framework cannot encode them (pydantic stops at about 254,
    ``json.dumps`` near 1,000): the outcome keeps the update, without the contact."""

    async def deep(request: web.Request, server: Server) -> web.StreamResponse:
        return web.Response(body=_nested(300))

    async with serve(deep) as server, client(server) as gh:
        outcome = await gh.submit("c1", UpdateContact(tags=["x"]), response=True)
        shallow = read_response(200, {}, _nested(MAX_VALUE_DEPTH - 1), keep=True)
    assert outcome.status is Status.UPDATED
    assert outcome.response is not None
    assert outcome.contact is None
    assert json.loads(json.dumps(outcome.to_dict()))["status"] == "updated"
    assert shallow.contact is not None  # what the API sends is kept


async def test_a_request_answered_after_its_record_was_cut_leaves_no_span_open() -> None:
    """Telemetry gets the cut record's span (ended, failed) and no event for the request that
    finished in the background after it: nothing reopens a span that nothing would end."""
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 (the dev extra's SDK)
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    from growthhub_async.telemetry import Telemetry  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = SlowStore()
    async with serve(store) as server:
        gh = client(server, telemetry=Telemetry(tracer_provider=provider))
        async with gh:
            cut = await gh.submit("X", UpdateContact(tags=["old"]), timeout=0.1)
            after = await gh.submit("X", UpdateContact(tags=["new"]))
            assert telemetry_open(gh) == {}
    assert (cut.status, after.status) == (Status.FAILED, Status.UPDATED)
    names = Counter(span.name for span in exporter.get_finished_spans())
    assert names == {"update_contact": 2, "PUT": 1}  # the cut request has no PUT span


def telemetry_open(gh: object) -> dict[object, object]:
    """The record spans telemetry holds open (started, not ended)."""
    engine = gh._engine  # type: ignore[attr-defined]
    for hook in engine.hooks:
        owner = getattr(hook, "__self__", None)
        if owner is not None and hasattr(owner, "open"):
            return dict(owner.open)
    raise AssertionError("no telemetry hook")
