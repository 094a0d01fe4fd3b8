"""Server restart mid-run: the run carries on and loses nothing.

The sandbox is stopped in the middle of a bulk run (connections closed, requests in flight cut
off) and, after a gap in which every connection attempt is refused, started again on the same
port with the first instance's store carried over (as a real server keeps its database). The
client sees dropped connections and refused connects: transient errors, retried with a policy
whose budget outlasts the gap. Every record must end ``updated`` and be stored; per contact,
the applied bodies are the input's in order, a record in flight at the stop being the only one
that may have been applied twice (its answer was lost, so it was sent again: a PUT with the
same body is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import msgspec

from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.models import UpdateContactCodec
from growthhub_async.outcomes import Outcome, Status
from growthhub_async.retry import RetryPolicy
from growthhub_async.sandbox import Faults, Sandbox, run_sandbox
from tests.conftest import TEST_TOKEN, sandbox_config

RECORDS = 400
CONTACTS = 200  # two updates per contact: order across the restart is checked too
GAP = 0.5  # seconds with nothing listening on the port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dedupe_consecutive(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for body in bodies:
        if not out or out[-1] != body:
            out.append(body)
    return out


async def test_sandbox_restart_mid_run_loses_nothing() -> None:
    port = free_port()
    config = sandbox_config(rate_limit=100, rate_window=0.5, faults=Faults(latency=0.02))
    records = [
        (f"r{n % CONTACTS:04d}", UpdateContact(first_name=f"v{n}", tags=[f"n{n}"]))
        for n in range(RECORDS)
    ]
    codec = UpdateContactCodec()
    expected: dict[str, list[dict[str, Any]]] = {}
    for contact_id, update in records:
        expected.setdefault(contact_id, []).append(msgspec.json.decode(codec.encode(update)))

    outcomes: list[Outcome] = []
    restarted = asyncio.Event()
    policy = RetryPolicy(max_tries=30, max_time=20.0, base_delay=0.05, max_delay=0.25)
    async with contextlib.AsyncExitStack() as outer:
        first_stack = contextlib.AsyncExitStack()
        first: Sandbox = await first_stack.enter_async_context(
            run_sandbox(config, port=port, shutdown_timeout=0.05)
        )
        second: Sandbox | None = None

        async def restart() -> None:
            nonlocal second
            contacts, history = first.contacts, first.history
            await first_stack.aclose()  # in-flight requests are cut off
            await asyncio.sleep(GAP)  # connection refused meanwhile
            second = await outer.enter_async_context(
                run_sandbox(config, port=port, shutdown_timeout=0.05)
            )
            # The store survives the restart, as a real server's database would.
            second.contacts.update(contacts)
            for contact_id, bodies in history.items():
                second.history[contact_id] = list(bodies)
            restarted.set()

        restart_task: asyncio.Task[None] | None = None
        async with (
            GrowthHubClient(
                TEST_TOKEN,
                base_url=first.base_url,
                rate="100/0.5s",
                concurrency=16,
                timeout=2.0,
                retry=policy,
            ) as gh,
            gh.update_contacts(records) as stream,
        ):
            async for outcome in stream:
                outcomes.append(outcome)
                if len(outcomes) == RECORDS // 3:
                    restart_task = asyncio.create_task(restart())
        assert restart_task is not None
        await restart_task
        assert restarted.is_set()
        assert second is not None

        assert len(outcomes) == RECORDS
        assert sorted(o.line for o in outcomes) == list(range(1, RECORDS + 1))
        failed = [o for o in outcomes if o.status is not Status.UPDATED]
        assert failed == []
        # The restart was felt: some records needed more than one try.
        assert any(o.attempts > 1 for o in outcomes)
        assert second.stats()["requests"] > 0

        assert set(second.contacts) == set(expected)
        for contact_id, bodies in expected.items():
            stored = second.contacts[contact_id]
            assert stored["firstName"] == bodies[-1]["firstName"]
            assert stored["tags"] == bodies[-1]["tags"]
            applied = second.history[contact_id]
            # In order; a body applied twice only back to back (in flight at the stop).
            assert dedupe_consecutive(applied) == bodies, contact_id
        duplicates = sum(len(second.history[c]) for c in expected) - RECORDS
        assert 0 <= duplicates <= 16  # at most one per worker in flight at the stop
