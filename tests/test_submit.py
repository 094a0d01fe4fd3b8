"""``submit`` for web handlers (issue 15, item 2): a deadline, the 2xx body, JSON, after close.

Against the sandbox over loopback, windows scaled down (a few requests per 0.5 s).
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from growthhub_async import (
    ClientClosed,
    ConfigurationError,
    GrowthHubClient,
    GrowthHubError,
    Outcome,
    RecordFinished,
    RetryPolicy,
    Status,
    UpdateContact,
)
from growthhub_async.events import Event
from growthhub_async.outcomes import decode_outcome, encode_outcome
from growthhub_async.sandbox import Faults
from tests.conftest import TEST_TOKEN, StartSandbox, sandbox_config


async def test_a_record_that_cannot_start_before_its_deadline_is_never_sent(
    start_sandbox: StartSandbox,
) -> None:
    """5 per 0.5 s and 30 records with a 0.6 s deadline: those that got a slot in time are
    updated, the rest end ``failed`` ("deadline ... not sent"), and the server never sees
    them, not even later."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=5, rate_window=0.5))
    async with GrowthHubClient(
        TEST_TOKEN, base_url=sandbox.base_url, rate="5/0.5s", concurrency=2
    ) as gh:
        outcomes = await asyncio.gather(
            *(gh.submit(f"c{i}", UpdateContact(first_name="A"), timeout=0.6) for i in range(30))
        )
        updated = [o for o in outcomes if o.status is Status.UPDATED]
        late = [o for o in outcomes if o.status is not Status.UPDATED]
        assert 5 <= len(updated) <= 15
        assert late
        for outcome in late:
            assert outcome.status is Status.FAILED
            assert outcome.attempts == 0
            assert outcome.error is not None
            assert outcome.error.startswith("deadline (0.6 s) passed before")
            assert "not sent" in outcome.error
        await asyncio.sleep(1.2)  # the budget would have let them go by now
        stats = sandbox.stats()
        assert stats["requests"] == len(updated)
        assert set(stats["attempts"]) == {o.contact_id for o in updated}
        # The pool and the budget still work.
        again = await gh.submit("after", UpdateContact(first_name="B"), timeout=5)
        assert again.status is Status.UPDATED


async def test_a_record_in_flight_at_its_deadline_ends_at_once_and_the_pool_goes_on(
    start_sandbox: StartSandbox,
) -> None:
    """The caller has its outcome at the deadline; the request itself goes on in the background
    (it holds one worker and its connection until answered), and other contacts' records go."""
    sandbox = await start_sandbox(
        sandbox_config(faults=Faults(scripts={"slow": ["slow:2"]})), shutdown_timeout=0.1
    )
    seen: list[Event] = []
    async with GrowthHubClient(
        TEST_TOKEN, base_url=sandbox.base_url, rate=None, concurrency=2, hooks=[seen.append]
    ) as gh:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await gh.submit("slow", UpdateContact(first_name="A"), timeout=0.3)
        assert loop.time() - started < 1.0
        assert outcome.status is Status.FAILED
        assert outcome.attempts == 1
        assert outcome.error is not None
        assert outcome.error.startswith("deadline (0.3 s) passed with a request in flight")
        # The other worker takes another contact's record at once.
        nxt = await gh.submit("next", UpdateContact(first_name="B"), timeout=1)
        assert nxt.status is Status.UPDATED
    finished = [e.outcome for e in seen if isinstance(e, RecordFinished)]
    assert [o.contact_id for o in finished] == ["slow", "next"]
    assert finished[0] == outcome


async def test_a_record_waiting_to_retry_at_its_deadline_ends_saying_so(
    start_sandbox: StartSandbox,
) -> None:
    sandbox = await start_sandbox(sandbox_config(faults=Faults(scripts={"flaky": ["503"] * 5})))
    slow_retry = RetryPolicy(base_delay=5.0, max_delay=5.0, jitter=lambda v: v)
    async with GrowthHubClient(
        TEST_TOKEN, base_url=sandbox.base_url, rate=None, retry=slow_retry
    ) as gh:
        outcome = await gh.submit("flaky", UpdateContact(first_name="A"), timeout=0.3)
    assert outcome.status is Status.FAILED
    assert outcome.attempts == 1
    assert outcome.http_status == 503
    assert outcome.error is not None
    assert outcome.error.startswith("deadline (0.3 s) passed waiting to retry, after 1 request")
    assert sandbox.stats()["requests"] == 1


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, "1"])
async def test_a_bad_timeout_is_a_configuration_error(
    seconds: object, start_sandbox: StartSandbox
) -> None:
    running = await start_sandbox()
    async with GrowthHubClient(TEST_TOKEN, base_url=running.base_url) as gh:
        with pytest.raises(ConfigurationError, match="timeout"):
            await gh.submit("c1", UpdateContact(first_name="A"), timeout=seconds)  # type: ignore[arg-type]
    assert running.stats()["requests"] == 0


async def test_response_true_returns_the_updated_contact_and_hooks_never_see_it(
    start_sandbox: StartSandbox,
) -> None:
    sandbox = await start_sandbox(sandbox_config(faults=Faults(scripts={"bad": ["422"]})))
    seen: list[Event] = []
    async with GrowthHubClient(
        TEST_TOKEN, base_url=sandbox.base_url, rate=None, hooks=[seen.append]
    ) as gh:
        await gh.submit("c1", UpdateContact(last_name="Lovelace"))
        with_body = await gh.submit(
            "c1", UpdateContact(first_name="Ada", tags=["vip"]), response=True
        )
        without = await gh.submit("c1", UpdateContact(city="London"))
        refused = await gh.submit("bad", UpdateContact(first_name="A"), response=True)
    assert with_body.status is Status.UPDATED
    contact = with_body.contact
    assert contact is not None
    # The whole contact as the server now holds it: the earlier update's field too.
    assert (contact.id, contact.first_name, contact.last_name) == ("c1", "Ada", "Lovelace")
    assert contact.tags == ["vip"]
    assert without.contact is None
    assert "response" not in without.to_dict()
    assert refused.status is Status.INVALID
    assert refused.contact is None
    assert "response" not in refused.to_dict()
    # What a journal hook writes holds no body, asked for or not.
    finished = [e.outcome for e in seen if isinstance(e, RecordFinished)]
    assert len(finished) == 4
    for outcome in finished:
        assert b"response" not in encode_outcome(outcome)
        assert outcome.contact is None
    assert finished[1] == msgspec_replace_response(with_body)


def msgspec_replace_response(outcome: Outcome) -> Outcome:
    import msgspec  # noqa: PLC0415

    return msgspec.structs.replace(outcome, response=msgspec.UNSET)


async def test_the_bulk_path_never_keeps_the_body(start_sandbox: StartSandbox) -> None:
    sandbox = await start_sandbox()
    async with GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, rate=None) as gh:
        pairs = [(f"c{i}", UpdateContact(first_name="A")) for i in range(20)]
        outcomes = [o async for o in gh.update_contacts(pairs)]
    assert all(o.status is Status.UPDATED and o.contact is None for o in outcomes)
    assert all("response" not in o.to_dict() for o in outcomes)


async def test_an_outcome_is_json_with_one_call(start_sandbox: StartSandbox) -> None:
    sandbox = await start_sandbox()
    async with GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, rate=None) as gh:
        outcome = await gh.submit("c7", UpdateContact(first_name="Ada"), response=True)
    as_dict = outcome.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain builtins only
    assert json.loads(outcome.to_json()) == as_dict
    assert as_dict["contactId"] == "c7"
    assert as_dict["status"] == "updated"
    assert as_dict["httpStatus"] == 200
    assert as_dict["response"]["contact"]["firstName"] == "Ada"
    assert decode_outcome(outcome.to_json()) == outcome  # and back


async def test_after_close_submit_raises_client_closed_a_runtime_error(
    start_sandbox: StartSandbox,
) -> None:
    sandbox = await start_sandbox()
    gh = GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, rate=None)
    assert (await gh.submit("c1", UpdateContact(first_name="A"))).status is Status.UPDATED
    await gh.close()
    with pytest.raises(ClientClosed, match="closed") as caught:
        await gh.submit("c1", UpdateContact(first_name="A"), timeout=1)
    assert isinstance(caught.value, RuntimeError)  # what callers caught before
    assert isinstance(caught.value, GrowthHubError)
    with pytest.raises(ClientClosed):
        await gh.for_token("default").submit("c1", UpdateContact(first_name="A"))
    assert sandbox.stats()["requests"] == 1


async def test_close_ends_queued_submits_with_an_outcome_none_pending(
    start_sandbox: StartSandbox,
) -> None:
    """What a web app's shutdown relies on: closing the client ends every queued submit
    ``failed`` ("cancelled", never sent) and returns it to its caller; nothing stays pending."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=2, rate_window=0.5))
    gh = GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, rate="2/0.5s", concurrency=2)
    tasks = [
        asyncio.create_task(gh.submit(f"c{i}", UpdateContact(first_name="A"), timeout=30))
        for i in range(20)
    ]
    await asyncio.sleep(0.3)
    await gh.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 2)
    sent = [o for o in outcomes if o.attempts]
    assert len(sent) <= 4
    unsent = [o for o in outcomes if not o.attempts]
    assert len(unsent) >= 16
    assert all(o.status is Status.FAILED and o.error == "cancelled" for o in unsent)
    assert sandbox.stats()["requests"] == len(sent)
