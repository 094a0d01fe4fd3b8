"""Hostile server answers: each maps to a defined outcome, retried where transient.

The sandbox's hostile script steps (``growthhub_async.sandbox.hostile``) stand in for a broken
proxy or a half-dead server: truncated bodies, invalid JSON or HTML with a 200, ``succeded:
false``, HTML error pages, garbage ``X-RateLimit-*``/``Retry-After`` values, answers that never
come. Through ``update_contact`` each raises one typed error; through the bulk engine each is
retried and the record ends ``updated`` once the script says ``ok``, with the update stored
exactly once.
"""

from __future__ import annotations

import asyncio

import pytest

from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.errors import (
    ConnectionFailed,
    GrowthHubError,
    RequestTimeout,
    ResponseError,
    ServerError,
)
from growthhub_async.outcomes import Status
from growthhub_async.retry import RetryPolicy
from growthhub_async.sandbox import Faults, Sandbox
from growthhub_async.sandbox.config import parse_script_step
from growthhub_async.sandbox.hostile import HOSTILE_MODES
from tests.conftest import TEST_TOKEN, StartSandbox, sandbox_config

# The client's read timeout for these tests: "hang" and "stall" cost one of these each.
TIMEOUT = 0.5

# What update_contact raises for each hostile answer (all of them transient).
EXPECTED: dict[str, type[GrowthHubError]] = {
    "truncated": ConnectionFailed,
    "badjson": ResponseError,
    "html200": ResponseError,
    "notsucceeded": ResponseError,
    "html500": ServerError,
    "hang": RequestTimeout,
    "stall": RequestTimeout,
}
# Modes that answer with a (wrong) status line the client reads: the outcome keeps it.
HTTP_STATUS = {"badjson": 200, "html200": 200, "notsucceeded": 200, "html500": 500}


def client(sandbox: Sandbox, **kwargs: object) -> GrowthHubClient:
    """A client for the sandbox with retries that do not wait (the script decides)."""
    settings: dict[str, object] = {
        "base_url": sandbox.base_url,
        "rate": "20/0.5s",
        "timeout": TIMEOUT,
        "retry": RetryPolicy(max_tries=4, max_time=10.0, jitter=lambda _: 0.0),
    }
    settings.update(kwargs)
    return GrowthHubClient(TEST_TOKEN, **settings)  # type: ignore[arg-type]


async def scripted(start_sandbox: StartSandbox, scripts: dict[str, list[str]]) -> Sandbox:
    return await start_sandbox(sandbox_config(faults=Faults(scripts=scripts)))


def test_every_mode_parses_as_a_script_step() -> None:
    for mode in HOSTILE_MODES:
        step = parse_script_step(mode.upper())
        assert (step.kind, step.mode) == ("hostile", mode)
    with pytest.raises(ValueError, match="garbage-headers"):
        parse_script_step("teapot")
    assert set(EXPECTED) | {"garbage-headers", "garbage-429"} == HOSTILE_MODES


@pytest.mark.parametrize("mode", sorted(EXPECTED))
async def test_update_contact_raises_a_typed_transient_error(
    start_sandbox: StartSandbox, mode: str
) -> None:
    sandbox = await scripted(start_sandbox, {"c1": [mode, "ok"]})
    async with client(sandbox) as gh:
        with pytest.raises(EXPECTED[mode]) as caught:
            await gh.update_contact("c1", UpdateContact(first_name="Ana"))
        assert gh.retry.next_delay(caught.value, tries=1, elapsed=0.0) == 0.0  # transient
        assert "c1" not in sandbox.contacts  # nothing applied
        response = await gh.update_contact("c1", UpdateContact(first_name="Ana"))
    assert response.succeded is True
    assert sandbox.contacts["c1"]["firstName"] == "Ana"
    assert sandbox.stats()["byStatus"].get(mode) == 1 or mode in ("hang", "stall", "truncated")


async def test_bulk_retries_every_hostile_answer_to_updated(start_sandbox: StartSandbox) -> None:
    modes = sorted(EXPECTED)
    # Each contact meets one hostile answer, some two in a row, then the API's normal answer.
    scripts = {f"c-{mode}": [mode, "ok"] for mode in modes}
    scripts["c-twice"] = ["truncated", "badjson", "ok"]
    sandbox = await scripted(start_sandbox, scripts)
    records = [(cid, UpdateContact(first_name=cid[:40])) for cid in scripts]
    async with client(sandbox, concurrency=len(records)) as gh:
        outcomes = [o async for o in gh.update_contacts(records)]
    by_id = {o.contact_id: o for o in outcomes}
    assert len(outcomes) == len(records)
    for cid, steps in scripts.items():
        outcome = by_id[cid]
        assert outcome.status is Status.UPDATED, outcome
        assert outcome.attempts == len(steps)
        assert outcome.http_status == 200
        assert sandbox.history[cid] == [{"firstName": cid[:40]}]  # applied exactly once


@pytest.mark.parametrize("mode", sorted(EXPECTED))
async def test_bulk_gives_up_with_a_clear_failed_outcome(
    start_sandbox: StartSandbox, mode: str
) -> None:
    sandbox = await scripted(start_sandbox, {"c1": [mode, mode]})
    async with client(sandbox, retry=RetryPolicy(max_tries=2, jitter=lambda _: 0.0)) as gh:
        [outcome] = [o async for o in gh.update_contacts([("c1", UpdateContact(email="a@b.co"))])]
    assert outcome.status is Status.FAILED
    assert outcome.attempts == 2
    assert outcome.http_status == HTTP_STATUS.get(mode)
    assert outcome.error is not None
    assert "gave up after 2 tries" in outcome.error
    assert EXPECTED[mode].__name__ in outcome.error or str(HTTP_STATUS.get(mode)) in outcome.error
    assert "c1" not in sandbox.contacts


async def test_garbage_rate_headers_neither_crash_nor_stall_pacing(
    start_sandbox: StartSandbox,
) -> None:
    # Every answer carries X-RateLimit-* values "abc", "-5", "1e999" and "": the client must
    # ignore them, keep its own pace, and never go over the sandbox's true limit.
    count = 60
    scripts = {f"g{n}": ["garbage-headers"] for n in range(count)}
    sandbox = await scripted(start_sandbox, scripts)
    records = [(cid, UpdateContact(last_name="Garbage")) for cid in scripts]
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client(sandbox, concurrency=10) as gh:
        outcomes = [o async for o in gh.update_contacts(records)]
        # A later answer with sane headers still works after the garbage.
        await gh.update_contact("sane", UpdateContact(last_name="Sane"))
    elapsed = loop.time() - started
    assert [o.status for o in outcomes] == [Status.UPDATED] * count
    assert all(o.attempts == 1 for o in outcomes)
    assert all(sandbox.contacts[cid]["lastName"] == "Garbage" for cid in scripts)
    stats = sandbox.stats()
    assert stats["byStatus"] == {"200": count + 1}
    assert stats["maxInWindow"] <= 20
    assert elapsed < 6.0  # 61 requests at 20 per 0.5 s: about 1.5 s; garbage must not stall


async def test_garbage_retry_after_does_not_pause_forever(start_sandbox: StartSandbox) -> None:
    # A 429 saying "Retry-After: 1e999" with garbage rate headers: the pause falls back to the
    # rest of the window, and the record is updated on the next try.
    sandbox = await scripted(start_sandbox, {"c1": ["garbage-429", "garbage-429", "ok"]})
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client(sandbox) as gh:
        [outcome] = [o async for o in gh.update_contacts([("c1", UpdateContact(first_name="R"))])]
    assert outcome.status is Status.UPDATED
    assert outcome.attempts == 3
    assert loop.time() - started < 5.0
    assert sandbox.stats()["byStatus"] == {"garbage-429": 2, "200": 1}
