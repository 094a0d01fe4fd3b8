"""The sandbox over real HTTP on loopback: auth, headers, validation, store, limits, faults."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from conftest import TEST_TOKEN, StartSandbox, sandbox_config

from growthhub_async.sandbox import Faults, Sandbox, SandboxConfig, run_sandbox

HEADERS = {"Authorization": f"Bearer {TEST_TOKEN}", "Version": "2021-07-28"}
RATE_HEADERS = (
    "X-RateLimit-Limit-Daily",
    "X-RateLimit-Daily-Remaining",
    "X-RateLimit-Interval-Milliseconds",
    "X-RateLimit-Max",
    "X-RateLimit-Remaining",
)


async def put(
    http: aiohttp.ClientSession,
    sb: Sandbox,
    contact_id: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """PUT and return (status, JSON body or text, headers)."""
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with http.put(
        f"{sb.base_url}/contacts/{contact_id}",
        headers=HEADERS if headers is None else headers,
        **kwargs,
    ) as resp:
        if resp.content_type == "application/json":
            payload: Any = await resp.json()
        else:
            payload = await resp.text()
        return resp.status, payload, dict(resp.headers)


async def test_valid_token_and_version_update_and_answer_the_contact(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await put(http, sandbox, "c1", {"firstName": "Rosan", "tags": ["vip"]})
    assert status == 200
    assert body["succeded"] is True
    contact = body["contact"]
    assert contact["id"] == "c1"
    assert contact["locationId"] == sandbox.config.location_id
    assert contact["firstName"] == "Rosan"
    assert contact["firstNameLowerCase"] == "rosan"
    assert contact["tags"] == ["vip"]
    assert contact["dateUpdated"].endswith("Z")
    assert all(name in headers for name in RATE_HEADERS)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Basic dGVzdA==", "Bearer ", f"bearer-{TEST_TOKEN}"],
)
async def test_bad_or_missing_token_is_401_with_the_official_body(
    sandbox: Sandbox, http: aiohttp.ClientSession, authorization: str | None
) -> None:
    headers = {"Version": "2021-07-28"}
    if authorization is not None:
        headers["Authorization"] = authorization
    status, body, resp_headers = await put(http, sandbox, "c1", {}, headers=headers)
    assert status == 401
    assert body == {
        "statusCode": 401,
        "message": "Invalid token: access token is invalid",
        "error": "Unauthorized",
    }
    assert all(name in resp_headers for name in RATE_HEADERS)
    assert sandbox.contacts == {}


@pytest.mark.parametrize("version", [None, "2021-04-15", ""])
async def test_missing_or_wrong_version_is_400(
    sandbox: Sandbox, http: aiohttp.ClientSession, version: str | None
) -> None:
    headers = {"Authorization": f"Bearer {TEST_TOKEN}"}
    if version is not None:
        headers["Version"] = version
    status, body, _ = await put(http, sandbox, "c1", {"firstName": "A"}, headers=headers)
    assert status == 400
    assert body["statusCode"] == 400
    assert isinstance(body["message"], str)
    assert sandbox.contacts == {}


@pytest.mark.parametrize("data", [b"{bad", b'{"firstName": "A"', b"[1, 2]", b'"text"', b"3"])
async def test_malformed_json_or_not_an_object_is_400(
    sandbox: Sandbox, http: aiohttp.ClientSession, data: bytes
) -> None:
    status, body, _ = await put(http, sandbox, "c1", data=data)
    assert status == 400
    assert body["statusCode"] == 400
    assert body["error"] == "Bad Request"


async def test_unknown_property_is_the_documented_422(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await put(http, sandbox, "c1", {"gender": "female"})
    assert status == 422
    assert body == {
        "statusCode": 422,
        "message": ["property gender should not exist"],
        "error": "Unprocessable Entity",
    }


async def test_every_problem_gets_its_own_message(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    bad = {
        "companyName": "Acme",
        "firstName": 5,
        "postalCode": None,
        "dnd": "yes",
        "dndSettings": {"SMS": {"status": "paused"}, "Fax": {"status": "active"}},
        "tags": ["a", 1],
        "customFields": [{"field_value": "x"}, {"id": "f2", "field_value": True}],
        "dateOfBirth": "25/09/1990",
        "country": "XX",
    }
    status, body, _ = await put(http, sandbox, "c1", bad)
    assert status == 422
    assert body["message"] == [
        "property companyName should not exist",
        "firstName must be a string",
        "postalCode must be a string",
        "dnd must be a boolean value",
        "dndSettings.SMS.status must be one of the following values: active, inactive, permanent",
        "dndSettings.property Fax should not exist",
        "each value in tags must be a string",
        "customFields.0.id must be a string",
        "customFields.1.field_value must be a string, a number, an array of strings"
        " or an object of uploaded files",
        "dateOfBirth must be a real date in one of the formats YYYY/MM/DD, MM/DD/YYYY,"
        " YYYY-MM-DD, MM-DD-YYYY, YYYY.MM.DD, MM.DD.YYYY, YYYY_MM_DD, MM_DD_YYYY",
        "country must be one of the codes of the country list",
    ]
    assert sandbox.contacts == {}


async def test_merge_semantics_and_get(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    first = {
        "firstName": "Rosan",
        "lastName": "Deo",
        "email": "Rosan@Deos.com",
        "tags": ["a", "b"],
        "customFields": [
            {"id": "f1", "field_value": "one"},
            {"id": "f2", "fieldValue": ["x", "y"]},
        ],
        "dndSettings": {"SMS": {"status": "active"}},
        "dateOfBirth": "09/25/1990",
        "city": "Dolomite",
    }
    assert (await put(http, sandbox, "c1", first))[0] == 200
    second = {
        "lastName": "Smith",
        "tags": ["c"],
        "city": None,
        "customFields": [{"id": "f1", "field_value": 2}],
        "dndSettings": {"Email": {"status": "inactive"}},
    }
    status, body, _ = await put(http, sandbox, "c1", second)
    assert status == 200
    contact = body["contact"]
    assert contact["firstName"] == "Rosan"  # not sent: unchanged
    assert contact["lastName"] == "Smith"
    assert contact["name"] == "Rosan Smith"
    assert contact["fullNameLowerCase"] == "rosan smith"
    assert contact["lastNameLowerCase"] == "smith"
    assert contact["emailLowerCase"] == "rosan@deos.com"
    assert contact["tags"] == ["c"]  # replaced, not merged
    assert "city" not in contact  # null clears
    assert contact["customFields"] == [{"id": "f1", "value": 2}, {"id": "f2", "value": ["x", "y"]}]
    assert contact["dndSettings"] == {"SMS": {"status": "active"}, "Email": {"status": "inactive"}}
    assert contact["dateOfBirth"] == "1990-09-25"

    async with http.get(f"{sandbox.base_url}/contacts/c1", headers=HEADERS) as resp:
        assert resp.status == 200
        assert await resp.json() == {"contact": contact}
    async with http.get(f"{sandbox.base_url}/contacts/nope", headers=HEADERS) as resp:
        assert resp.status == 404
    async with http.get(f"{sandbox.base_url}/contacts/c1") as resp:
        assert resp.status == 401
    assert sandbox.contacts["c1"] == contact
    assert sandbox.history["c1"] == [first, second]


async def test_seeded_contacts_make_unknown_ids_404(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    seed = {"known": {"firstName": "Ann", "customFields": [{"id": "f1", "value": "v"}]}}
    sb = await start_sandbox(sandbox_config(contacts=seed))
    status, body, _ = await put(http, sb, "unknown", {"firstName": "B"})
    assert (status, body) == (404, {"statusCode": 404, "message": "Contact not found"})
    status, body, _ = await put(http, sb, "known", {"lastName": "Lee"})
    assert status == 200
    assert body["contact"]["name"] == "Ann Lee"
    assert body["contact"]["customFields"] == [{"id": "f1", "value": "v"}]
    assert sb.stats()["writes"] == {"known": 1}
    assert sb.stats()["byStatus"] == {"404": 1, "200": 1}


@pytest.mark.parametrize("window", ["fixed", "sliding"])
async def test_burst_window_headers_and_429(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession, window: str
) -> None:
    # A long window, so that nothing expires while the test runs, however slow the machine.
    sb = await start_sandbox(sandbox_config(rate_limit=5, rate_window=30.0, window=window))
    for n in range(5):
        status, _, headers = await put(http, sb, f"c{n}", {})
        assert status == 200
        assert headers["X-RateLimit-Max"] == "5"
        assert headers["X-RateLimit-Remaining"] == str(4 - n)
        assert headers["X-RateLimit-Interval-Milliseconds"] == "30000"
        assert headers["X-RateLimit-Daily-Remaining"] == str(199_999 - n)
    status, body, headers = await put(http, sb, "c9", {})
    assert status == 429
    assert body == {"statusCode": 429, "message": "Too many requests"}
    assert headers["X-RateLimit-Remaining"] == "0"
    assert 29 <= int(headers["Retry-After"]) <= 30
    # A refused request uses no budget.
    assert headers["X-RateLimit-Daily-Remaining"] == "199995"
    stats = sb.stats()
    assert stats["rateLimited"] == 1
    assert stats["maxInWindow"] == 6
    assert stats["byStatus"] == {"200": 5, "429": 1}


async def test_burst_window_reopens(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(rate_limit=3, rate_window=0.2, window="fixed"))
    statuses = [(await put(http, sb, "c", {}))[0] for _ in range(4)]
    assert statuses[3] == 429  # the first three may straddle a window on a slow machine
    await asyncio.sleep(0.25)  # one window, to see it reopen; the timing math is unit-tested
    assert (await put(http, sb, "c", {}))[0] == 200


async def test_no_retry_after_when_configured_off(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(rate_limit=1, rate_window=30.0, retry_after=False))
    assert (await put(http, sb, "c", {}))[0] == 200
    status, _, headers = await put(http, sb, "c", {})
    assert status == 429
    assert "Retry-After" not in headers


async def test_daily_limit(start_sandbox: StartSandbox, http: aiohttp.ClientSession) -> None:
    sb = await start_sandbox(sandbox_config(rate_limit=100, daily_limit=3))
    for n in range(3):
        status, _, headers = await put(http, sb, "c", {})
        assert status == 200
        assert headers["X-RateLimit-Limit-Daily"] == "3"
        assert headers["X-RateLimit-Daily-Remaining"] == str(2 - n)
    status, _, headers = await put(http, sb, "c", {})
    assert status == 429
    assert headers["X-RateLimit-Daily-Remaining"] == "0"
    assert int(headers["Retry-After"]) > 86_000  # the day must end first


async def test_budgets_are_per_token(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(
        sandbox_config(tokens=frozenset({"t1", "t2"}), rate_limit=1, rate_window=30.0)
    )
    h1 = {"Authorization": "Bearer t1", "Version": "2021-07-28"}
    h2 = {"Authorization": "Bearer t2", "Version": "2021-07-28"}
    assert (await put(http, sb, "c", {}, headers=h1))[0] == 200
    assert (await put(http, sb, "c", {}, headers=h1))[0] == 429
    assert (await put(http, sb, "c", {}, headers=h2))[0] == 200
    assert sb.stats()["maxInWindow"] == 2


async def test_error_rate_one_gives_5xx_some_html(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(faults=Faults(seed=3, error_rate=1.0)))
    seen: dict[int, str] = {}
    for _ in range(40):
        status, _body, headers = await put(http, sb, "c", {"firstName": "A"})
        assert status in (500, 502, 503, 504)
        assert all(name in headers for name in RATE_HEADERS)
        seen[status] = headers["Content-Type"]
    assert set(seen) == {500, 502, 503, 504}
    assert seen[502].startswith("text/html")
    assert seen[500].startswith("application/json")
    stats = sb.stats()
    assert stats["writes"] == {}
    assert stats["attempts"] == {"c": 40}
    # Faults come from "the proxy": they use no rate budget.
    assert headers["X-RateLimit-Remaining"] == "20"


async def test_rate_limit_rate_one_forces_429(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(faults=Faults(rate_limit_rate=1.0)))
    status, body, headers = await put(http, sb, "c", {})
    assert status == 429
    assert body == {"statusCode": 429, "message": "Too many requests"}
    assert headers["Retry-After"] == "1"
    assert headers["X-RateLimit-Remaining"] == "20"  # the budget had room: a forced 429
    assert sb.stats()["rateLimited"] == 1


async def test_a_forced_429_may_say_the_budget_is_spent(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    faults = Faults(rate_limit_rate=1.0, spent_429_share=1.0)
    sb = await start_sandbox(sandbox_config(faults=faults, rate_window=4.0))
    status, _, headers = await put(http, sb, "c", {})
    assert status == 429
    assert headers["X-RateLimit-Remaining"] == "0"  # as if another client spent it
    assert headers["Retry-After"] == "2"  # half the window


async def raw_put(sb: Sandbox, contact_id: str) -> bytes:
    """One PUT over a bare socket; returns every byte the server sent before closing."""
    reader, writer = await asyncio.open_connection(sb.host, sb.port)
    try:
        writer.write(
            f"PUT /contacts/{contact_id} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TEST_TOKEN}\r\nVersion: 2021-07-28\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n"
            "\r\n{}".encode()
        )
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_drop_rate_one_closes_without_response(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(faults=Faults(drop_rate=1.0)))
    assert await raw_put(sb, "c") == b""
    assert sb.stats()["byStatus"] == {"dropped": 1}
    # aiohttp's client resends an idempotent request (PUT) once by itself when the connection
    # drops, so one call is two attempts; the second drop reaches the caller.
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await put(http, sb, "c", {})
    assert sb.stats()["byStatus"] == {"dropped": 3}
    assert sb.contacts == {}


async def test_latency_and_jitter_delay_the_answer(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(faults=Faults(latency=0.1, jitter=0.05)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await put(http, sb, "c", {}))[0] == 200
    assert loop.time() - started >= 0.1


async def test_script_runs_per_contact_then_normal(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    faults = Faults(scripts={"c": ["503", "reset", "429", "slow:0.05", "ok"]})
    sb = await start_sandbox(sandbox_config(faults=faults))
    assert (await put(http, sb, "c", {}))[0] == 503
    assert (await put(http, sb, "other", {}))[0] == 200  # other ids unaffected
    assert await raw_put(sb, "c") == b""
    assert (await put(http, sb, "c", {}))[0] == 429
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await put(http, sb, "c", {"firstName": "Slow"}))[0] == 200
    assert loop.time() - started >= 0.05
    assert (await put(http, sb, "c", {"firstName": "Ok"}))[0] == 200
    assert (await put(http, sb, "c", {"firstName": "After"}))[0] == 200
    stats = sb.stats()
    assert stats["attempts"] == {"c": 6, "other": 1}
    assert stats["writes"] == {"c": 3, "other": 1}
    assert stats["byStatus"] == {"503": 1, "200": 4, "dropped": 1, "429": 1}
    assert [body["firstName"] for body in sb.history["c"]] == ["Slow", "Ok", "After"]


async def _fault_sequence(faults: Faults) -> list[int]:
    async with run_sandbox(sandbox_config(rate_limit=1000, faults=faults)) as sb:
        statuses = []
        for n in range(60):
            head = await raw_put(sb, f"c{n}")
            statuses.append(int(head.split(b" ", 2)[1]) if head else 0)
        return statuses


async def test_seeded_faults_are_reproducible() -> None:
    faults = Faults(seed=7, error_rate=0.3, drop_rate=0.1, rate_limit_rate=0.1)
    first = await _fault_sequence(faults)
    assert first == await _fault_sequence(faults)
    assert {0, 200, 429} <= set(first)
    assert set(first) & {500, 502, 503, 504}
    assert first != await _fault_sequence(Faults(seed=8, error_rate=0.3, drop_rate=0.1))


async def test_stats_and_reset_over_http(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    await put(http, sandbox, "a", {"firstName": "A"})
    await put(http, sandbox, "a", {"gender": "x"})
    async with http.get(f"{sandbox.base_url}/__sandbox/stats") as resp:
        stats = await resp.json()
    assert stats == {
        "requests": 2,
        "byStatus": {"200": 1, "422": 1},
        "rateLimited": 0,
        "maxInWindow": 2,
        "attempts": {"a": 2},
        "writes": {"a": 1},
    }
    assert stats == sandbox.stats()
    async with http.post(f"{sandbox.base_url}/__sandbox/reset") as resp:
        assert resp.status == 204
    assert sandbox.stats() == {
        "requests": 0,
        "byStatus": {},
        "rateLimited": 0,
        "maxInWindow": 0,
        "attempts": {},
        "writes": {},
    }
    assert sandbox.contacts == {}
    assert sandbox.history == {}


async def test_restart_on_the_same_port(http: aiohttp.ClientSession) -> None:
    config = sandbox_config()
    async with run_sandbox(config) as first:
        port = first.port
        assert (await put(http, first, "c", {}))[0] == 200
    async with run_sandbox(config, port=port) as second:
        assert second.base_url == f"http://127.0.0.1:{port}"
        assert (await put(http, second, "c", {}))[0] == 200


async def test_stop_with_a_request_in_flight_is_quick_and_clean() -> None:
    faults = Faults(scripts={"c": ["slow:30"]})
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        async with run_sandbox(sandbox_config(faults=faults), shutdown_timeout=0.1) as sb:
            request = asyncio.ensure_future(put(http, sb, "c", {}))
            while sb.stats()["requests"] == 0:  # noqa: ASYNC110 - the server has no event for it
                await asyncio.sleep(0.01)
            started = loop.time()
        assert loop.time() - started < 5
        with pytest.raises(aiohttp.ClientError):
            await request


def test_config_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="probability"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="script step"):
        Faults(scripts={"c": ["teapot"]})
    with pytest.raises(ValueError, match="window"):
        SandboxConfig(window="leaky")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SandboxConfig(tokens="abc")  # type: ignore[arg-type]
    assert "secret-token" not in repr(SandboxConfig(tokens=frozenset({"secret-token"})))
