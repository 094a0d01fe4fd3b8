"""Idle locations cost no wake-ups (issue 17, item 2): no timer or task per lane once a lane
has nothing to do, and a quiet lane's pacing logs are still given back."""

from __future__ import annotations

import asyncio
import math

from aiohttp.web_protocol import RequestHandler

from growthhub_async import GrowthHubClient, Record, Status, UpdateContact
from growthhub_async.sandbox import SandboxConfig, run_sandbox


def _tokens(count: int) -> dict[str, str]:
    return {f"lane{i}": f"tok-LANE{i}-SECRET-5c1d" for i in range(count)}


async def _run_and_count_timers(lanes: int) -> tuple[int, int, GrowthHubClient]:
    """Run 5 records on each of ``lanes`` locations; the loop's live timers and the tasks left
    once the stream has ended (the client is returned closed)."""
    tokens = _tokens(lanes)
    records = [
        Record(n + 1, f"c{n}", UpdateContact(first_name="x"), token_key=f"lane{n % lanes}")
        for n in range(5 * lanes)
    ]
    config = SandboxConfig(
        location_tokens={token: key for key, token in tokens.items()},
        rate_limit=20,
        rate_window=0.2,
    )
    loop = asyncio.get_running_loop()
    async with run_sandbox(config) as sb:
        before = asyncio.all_tasks()
        gh = GrowthHubClient(tokens=tokens, base_url=sb.base_url, rate="20/0.2s")
        async with gh:
            async with gh.update_contacts(records) as stream:
                outcomes = [o async for o in stream]
            assert len(outcomes) == 5 * lanes
            assert {o.status for o in outcomes} == {Status.UPDATED}
            await asyncio.sleep(0.01)  # the workers' last steps
            # The client's timers: the sandbox (aiohttp's server, same loop) keeps its own.
            timers = sum(
                1
                for h in loop._scheduled  # type: ignore[attr-defined]
                if not h.cancelled()
                and not isinstance(getattr(h._callback, "__self__", None), RequestHandler)
            )
            tasks = sum(  # the client's: the sandbox runs a task per connection
                1
                for t in asyncio.all_tasks() - before
                if not t.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
            )
            # Every quiet lane's logs are trimmed by the client's one timer, which then stops.
            span = 0.2 + 0.01 * 0.2 + 0.005
            await asyncio.sleep(2 * span + 0.01 + 0.1)
            for _ in range(30):
                if gh._trimmer._timer is None:
                    break
                await asyncio.sleep(0.1)
            assert gh._trimmer._timer is None
            for lane in gh._lanes.values():
                assert lane.budget.sent_within(-math.inf, math.inf) == 0
    return timers, tasks, gh


async def test_idle_lanes_hold_no_timer_or_task_of_their_own() -> None:
    few_timers, few_tasks, _ = await _run_and_count_timers(2)
    many_timers, many_tasks, _ = await _run_and_count_timers(40)
    # The same two (the client's trimmer, aiohttp's pool clean-up) for 2 or 40 lanes.
    assert many_timers == few_timers <= 2
    assert many_tasks == few_tasks == 0
