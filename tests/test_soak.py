"""Soak: many records through faults, forced 429 bursts and latency; nothing lost, nothing extra.

The sandbox injects 5% 5xx (HTML and JSON), 1% dropped connections and 50 ms +/- 10 ms of
latency on every PUT, and a background task switches on bursts of forced 429s (half of all
PUTs for a quarter of a second, every 1.5 s in the short run and every 5 s in the long one;
each says ``Retry-After: 1``, so each burst pauses the token for about a second). The window
is scaled down to 400 requests per 0.5 s so that the run is quick. Input goes through the
real JSONL reader, with a few bad lines among the records. Afterwards:

- one final outcome per input line: ``updated`` for every good record, ``rejected`` for the
  bad lines, nothing else;
- the sandbox's store holds exactly the contacts of the good records, and each holds exactly
  the fields its last update sent;
- per contact, the applied bodies (the sandbox's history) are exactly that contact's update
  bodies in input order: each applied once, none out of order;
- the sandbox's "most requests in any window" never exceeded the limit.

``test_soak_short`` (2,000 records) runs with ``make test``; ``test_soak_full`` (20,000
records, about a minute) is ``@pytest.mark.slow`` and runs with ``make soak``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import random
from collections import Counter
from typing import Any

import msgspec
import pytest

from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.events import Paused
from growthhub_async.models import CustomField, UpdateContactCodec
from growthhub_async.outcomes import Outcome, Status
from growthhub_async.retry import RetryPolicy
from growthhub_async.sandbox import Faults, Sandbox
from growthhub_async.sources import read_jsonl
from tests.conftest import TEST_TOKEN, StartSandbox, sandbox_config

LIMIT = 400
WINDOW = 0.5
FAULTS = Faults(seed=8, error_rate=0.05, drop_rate=0.01, latency=0.04, jitter=0.02)
BAD_LINES = (
    b"{not json\n",
    b'{"contactId": "a/b", "firstName": "x"}\n',
    b'{"contactId": "ok1", "firstName": 12}\n',
    b"[1, 2, 3]\n",
)


def make_input(records: int, seed: int) -> tuple[bytes, dict[str, list[dict[str, Any]]]]:
    """JSONL bytes of ``records`` updates (about 4 per contact) plus a few bad lines.

    Also returns, per contact id, the request bodies expected in input order. Every update of a
    contact sets the same fields, so the stored contact must equal the last one's values.
    """
    rng = random.Random(seed)
    contacts = [f"soak{n:05d}x{rng.randrange(10**6)}" for n in range(max(1, records // 4))]
    codec = UpdateContactCodec()
    expected: dict[str, list[dict[str, Any]]] = {}
    lines: list[bytes] = []
    bad = iter(BAD_LINES)
    for n in range(records):
        if n % 500 == 250 and (line := next(bad, None)) is not None:
            lines.append(line)
        contact_id = rng.choice(contacts)
        update = UpdateContact(
            first_name=f"First{n}",
            last_name=rng.choice(["Ng", "O'Brien", "Żółć", "李"]),
            email=f"u{n}@example.com",
            tags=[f"t{n % 7}", "soak"],
            dnd=rng.random() < 0.5,
            custom_fields=[CustomField(id="score", value=n)],
        )
        body = codec.encode(update)
        expected.setdefault(contact_id, []).append(msgspec.json.decode(body))
        lines.append(b'{"contactId":"' + contact_id.encode() + b'",' + body[1:] + b"\n")
    return b"".join(lines), expected


async def burst_429s(sandbox: Sandbox, stop: asyncio.Event, every: float) -> int:
    """Every ``every`` s, force a 429 on half the PUTs for 0.25 s; returns how many bursts."""
    bursts = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every - 0.25)
            break
        bursts += 1
        # A new seed each time, so that bursts do not replay the same faults.
        # Half the forced 429s say the budget is spent: the token pauses, the others only
        # delay their own record.
        burst = dataclasses.replace(
            FAULTS, seed=100 + bursts, rate_limit_rate=0.5, spent_429_share=0.5
        )
        sandbox.set_faults(burst)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
        sandbox.set_faults(dataclasses.replace(FAULTS, seed=200 + bursts))
    return bursts


async def soak(start_sandbox: StartSandbox, records: int, *, seed: int, burst_every: float) -> None:
    data, expected = make_input(records, seed)
    sandbox = await start_sandbox(
        sandbox_config(rate_limit=LIMIT, rate_window=WINDOW, faults=FAULTS)
    )
    policy = RetryPolicy(max_tries=40, max_time=60.0, base_delay=0.05, max_delay=0.5)
    stop = asyncio.Event()
    bursts = asyncio.create_task(burst_429s(sandbox, stop, burst_every))
    outcomes: list[Outcome] = []
    pauses: list[Paused] = []
    try:
        async with (
            GrowthHubClient(
                TEST_TOKEN,
                base_url=sandbox.base_url,
                rate=f"{LIMIT}/{WINDOW}s",
                concurrency=64,
                timeout=10.0,
                retry=policy,
                hooks=[lambda e: pauses.append(e) if isinstance(e, Paused) else None],
            ) as gh,
            gh.update_contacts(read_jsonl(io.BytesIO(data))) as stream,
        ):
            outcomes = [o async for o in stream]
            summary = stream.summary
    finally:
        stop.set()
        burst_count = await bursts

    # One final outcome per input line; updated for the good ones, rejected for the bad ones.
    total_lines = records + len(BAD_LINES)
    lines = Counter(o.line for o in outcomes)
    assert len(outcomes) == total_lines
    assert sorted(lines) == list(range(1, total_lines + 1))
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {Status.UPDATED: records, Status.REJECTED: len(BAD_LINES)}, [
        o for o in outcomes if o.status not in (Status.UPDATED, Status.REJECTED)
    ][:5]
    assert summary.records == total_lines

    # The store holds exactly the updated contacts, each with the fields last sent.
    assert set(sandbox.contacts) == set(expected)
    for contact_id, bodies in expected.items():
        stored = sandbox.contacts[contact_id]
        last = bodies[-1]
        for name in ("firstName", "lastName", "email", "tags", "dnd"):
            assert stored[name] == last[name], (contact_id, name)
        score = last["customFields"][0]["field_value"]
        assert stored["customFields"] == [{"id": "score", "value": score}]
        # Applied once each, in input order.
        assert sandbox.history[contact_id] == bodies, contact_id

    stats = sandbox.stats()
    assert stats["maxInWindow"] <= LIMIT
    # The faults did happen: the proof is not vacuous.
    assert burst_count >= 1
    assert stats["rateLimited"] > 0
    assert pauses  # a 429 that spent the budget paused the token
    assert stats["byStatus"].get("dropped", 0) > 0
    assert sum(stats["byStatus"].get(s, 0) for s in ("500", "502", "503", "504")) > 0
    assert summary.retries > 0 or summary.requests > records


async def test_soak_short(start_sandbox: StartSandbox) -> None:
    """2,000 records with every fault: the short soak of ``make test``."""
    await soak(start_sandbox, 2_000, seed=1, burst_every=1.5)


@pytest.mark.slow
async def test_soak_full(start_sandbox: StartSandbox) -> None:
    """20,000 records with every fault (``make soak``)."""
    await soak(start_sandbox, 20_000, seed=2, burst_every=5.0)
