"""GrowthHubClient over loopback against the sandbox, plus its pure edges (config, responses)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from growthhub_async.client import (
    GrowthHubClient,
    check_base_url,
    map_exceptions,
    read_response,
)
from growthhub_async.errors import (
    BadRequest,
    ConfigurationError,
    ConnectionFailed,
    Forbidden,
    GrowthHubError,
    HTTPStatusError,
    InvalidContactId,
    NotFound,
    RateLimited,
    RequestTimeout,
    ResponseError,
    ServerError,
    Unauthorized,
    UnprocessableEntity,
)
from growthhub_async.models import UpdateContact
from growthhub_async.sandbox import Faults, Sandbox, SandboxConfig, run_sandbox

TOKEN = "tok-s3cr3t-value"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(tokens=frozenset({TOKEN}), rate_limit=1000, rate_window=1.0)
    async with run_sandbox(config) as sb:
        yield sb


def _client(sb: Sandbox, **kwargs: object) -> GrowthHubClient:
    kwargs.setdefault("rate", None)
    return GrowthHubClient(TOKEN, base_url=sb.base_url, **kwargs)  # type: ignore[arg-type]


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "insecure", "ok"),
    [
        ("https://services.leadconnectorhq.com", False, True),
        ("https://services.leadconnectorhq.com/", False, True),
        ("https://proxy.example/ghl/", False, True),
        ("http://127.0.0.1:8080", False, True),
        ("http://127.5.0.1:8080", False, True),
        ("http://localhost:8080", False, True),
        ("http://[::1]:8080", False, True),
        ("http://services.leadconnectorhq.com", False, False),
        ("http://10.0.0.5", False, False),
        ("http://10.0.0.5", True, True),
        ("ftp://127.0.0.1", False, False),
        ("https://", False, False),
        ("services.leadconnectorhq.com", False, False),
        ("https://user:pw@host.example", False, False),
        ("https://host.example/?x=1", False, False),
        ("https://host.example/#frag", False, False),
    ],
)
def test_check_base_url(url: str, insecure: bool, ok: bool) -> None:
    if ok:
        assert not str(check_base_url(url, allow_insecure=insecure)).endswith("/")
    else:
        with pytest.raises(ConfigurationError):
            check_base_url(url, allow_insecure=insecure)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"token": "a", "tokens": {"k": "b"}},
        {"tokens": {}},
        {"token": ""},
        {"token": "abc def"},
        {"token": "abc\r\nX-Evil: 1"},
        {"tokens": {"": "abc"}},
        {"token": "a", "concurrency": 0},
        {"token": "a", "timeout": 0},
        {"token": "a", "rate": "fast"},
        {"token": "a", "max_pending": 0},
        {"token": "a", "base_url": "http://example.com"},
    ],
)
def test_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as info:
        GrowthHubClient(**kwargs)  # type: ignore[arg-type]
    assert "abc" not in str(info.value)


def test_repr_hides_the_token() -> None:
    gh = GrowthHubClient(tokens={"locA": TOKEN, "locB": "other-secret"}, rate="25/10s")
    text = repr(gh) + str(gh) + repr(gh.for_token("locA"))
    assert TOKEN not in text
    assert "other-secret" not in text
    assert "locA" in text
    assert "25/10s" in text
    assert gh.token_keys == ["locA", "locB"]


def test_for_token_unknown_key() -> None:
    gh = GrowthHubClient(tokens={"locA": TOKEN})
    with pytest.raises(ConfigurationError):
        gh.for_token("nope")


# -- pure response reading -----------------------------------------------------------------


def test_read_response_ok() -> None:
    resp = read_response(200, {}, b'{"succeded":true,"contact":{"id":"c1","firstName":"A"}}')
    assert resp.contact is not None
    assert resp.contact.first_name == "A"


@pytest.mark.parametrize(
    # An empty body was here too: since issue 12 it is a success (tests/test_adversarial_server).
    "body",
    [b'{"succeded":true,"contact":', b"<html>ok</html>", b'{"succeded":false}'],
)
def test_read_response_unreadable_200(body: bytes) -> None:
    with pytest.raises(ResponseError) as info:
        read_response(200, {}, body)
    assert info.value.status_code == 200


@pytest.mark.parametrize(
    ("status", "body", "cls", "messages"),
    [
        (400, b'{"statusCode":400,"message":"Version header was not found"}', BadRequest, 1),
        (401, b'{"statusCode":401,"message":"Invalid token"}', Unauthorized, 1),
        (403, b'{"statusCode":403,"message":"no access"}', Forbidden, 1),
        (404, b'{"statusCode":404,"message":"Contact not found"}', NotFound, 1),
        (422, b'{"statusCode":422,"message":["a bad","b bad"]}', UnprocessableEntity, 2),
        (500, b'{"statusCode":500,"message":"boom"}', ServerError, 1),
        (502, b"<html>502 Bad Gateway</html>", ServerError, 0),
        (418, b"", HTTPStatusError, 0),
    ],
)
def test_read_response_errors(
    status: int, body: bytes, cls: type[HTTPStatusError], messages: int
) -> None:
    with pytest.raises(cls) as info:
        read_response(status, {"X-Thing": "1"}, body)
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert len(info.value.messages) == messages
    assert info.value.headers["X-Thing"] == "1"
    assert info.value.message  # the reason when the body had none


def test_read_response_429_retry_after_and_trace_id() -> None:
    body = b'{"statusCode":429,"message":"Too many requests","traceId":"t-1"}'
    with pytest.raises(RateLimited) as info:
        read_response(429, {"retry-after": "3"}, body)
    assert info.value.retry_after == 3.0
    assert info.value.trace_id == "t-1"
    date = {"Retry-After": "Tue, 14 Nov 2023 22:13:25 GMT", "Date": "Tue, 14 Nov 2023 22:13:20 GMT"}
    with pytest.raises(RateLimited) as info:
        read_response(429, date, b"")
    assert info.value.retry_after == 5.0
    with pytest.raises(RateLimited) as info:
        read_response(429, {}, b"")
    assert info.value.retry_after is None


def test_map_exceptions_translates() -> None:
    with pytest.raises(RequestTimeout), map_exceptions():
        raise aiohttp.ServerTimeoutError("read")
    with pytest.raises(ConnectionFailed), map_exceptions():
        raise aiohttp.ServerDisconnectedError()
    with pytest.raises(ConnectionFailed) as info, map_exceptions():
        raise ConnectionResetError("peer")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# -- over loopback -------------------------------------------------------------------------


async def test_update_contact_sends_and_decodes(sandbox: Sandbox) -> None:
    async with _client(sandbox) as gh:
        resp = await gh.update_contact(
            "ocQHyuzHvysMo5N5VsXc", UpdateContact(first_name="Rosan", tags=["vip"])
        )
    assert resp.succeded is True
    assert resp.contact is not None
    assert resp.contact.first_name == "Rosan"
    stored = sandbox.contacts["ocQHyuzHvysMo5N5VsXc"]
    assert stored["firstName"] == "Rosan"
    assert stored["tags"] == ["vip"]
    assert sandbox.history["ocQHyuzHvysMo5N5VsXc"] == [{"firstName": "Rosan", "tags": ["vip"]}]


@pytest.mark.parametrize(
    "contact_id", ["", "a/b", "a?b=1", "a#b", "..", "a%2Fb", "a b", "a\nb", "a\x00b", "x" * 129]
)
async def test_unsafe_contact_id_is_never_sent(sandbox: Sandbox, contact_id: str) -> None:
    async with _client(sandbox) as gh:
        with pytest.raises(InvalidContactId):
            await gh.update_contact(contact_id, UpdateContact(first_name="X"))
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("step", "cls"),
    [
        ("400", BadRequest),
        ("401", Unauthorized),
        ("403", Forbidden),
        ("404", NotFound),
        ("422", UnprocessableEntity),
        ("429", RateLimited),
        ("500", ServerError),
        ("502", ServerError),
        ("503", ServerError),
        ("504", ServerError),
        ("reset", ConnectionFailed),
        ("slow:2", RequestTimeout),
    ],
)
async def test_typed_error_per_status(step: str, cls: type[GrowthHubError]) -> None:
    config = SandboxConfig(
        tokens=frozenset({TOKEN}), faults=Faults(scripts={"c1": [step]}), retry_after=True
    )
    async with run_sandbox(config, shutdown_timeout=0.1) as sb, _client(sb, timeout=0.3) as gh:
        with pytest.raises(cls) as info:
            await gh.update_contact("c1", UpdateContact(first_name="X"))
        assert type(info.value) is cls
        assert TOKEN not in str(info.value)
        assert TOKEN not in repr(info.value)
        if isinstance(info.value, HTTPStatusError):
            assert info.value.status_code == int(step)
            assert "X-RateLimit-Remaining" in info.value.headers
            assert info.value.message
        # the script is over: the next request is handled normally
        resp = await gh.update_contact("c1", UpdateContact(first_name="Y"))
        assert resp.contact is not None
        assert resp.contact.first_name == "Y"


async def test_429_retry_after_is_parsed() -> None:
    config = SandboxConfig(tokens=frozenset({TOKEN}), rate_limit=1, rate_window=5.0)
    async with run_sandbox(config) as sb, _client(sb) as gh:
        await gh.update_contact("c1", UpdateContact(first_name="X"))
        with pytest.raises(RateLimited) as info:
            await gh.update_contact("c2", UpdateContact(first_name="X"))
    assert info.value.retry_after is not None
    assert 1.0 <= info.value.retry_after <= 5.0


async def test_wrong_token_is_unauthorized(sandbox: Sandbox) -> None:
    async with GrowthHubClient("wrong-token", base_url=sandbox.base_url, rate=None) as gh:
        with pytest.raises(Unauthorized) as info:
            await gh.update_contact("c1", UpdateContact(first_name="X"))
    assert info.value.status_code == 401
    assert "wrong-token" not in str(info.value)


async def test_not_found_with_a_seeded_store() -> None:
    config = SandboxConfig(tokens=frozenset({TOKEN}), contacts={"known": {"firstName": "A"}})
    async with run_sandbox(config) as sb, _client(sb) as gh:
        await gh.update_contact("known", UpdateContact(last_name="B"))
        with pytest.raises(NotFound) as info:
            await gh.update_contact("unknown", UpdateContact(last_name="B"))
    assert info.value.message == "Contact not found"
    assert sb.contacts["known"]["firstName"] == "A"
    assert sb.contacts["known"]["lastName"] == "B"


async def test_connection_refused_is_connection_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with GrowthHubClient(TOKEN, base_url=f"http://127.0.0.1:{port}", rate=None) as gh:
        with pytest.raises(ConnectionFailed):
            await gh.update_contact("c1", UpdateContact(first_name="X"))


async def test_several_tokens_need_a_key(sandbox: Sandbox) -> None:
    async with GrowthHubClient(
        tokens={"locA": TOKEN, "locB": "other"}, base_url=sandbox.base_url, rate=None
    ) as gh:
        with pytest.raises(ConfigurationError):
            await gh.update_contact("c1", UpdateContact(first_name="X"))
        await gh.update_contact("c1", UpdateContact(first_name="X"), token_key="locA")
        await gh.for_token("locA").update_contact("c2", UpdateContact(first_name="Y"))
        with pytest.raises(Unauthorized):
            await gh.for_token("locB").update_contact("c3", UpdateContact(first_name="Z"))
    assert set(sandbox.contacts) == {"c1", "c2"}


async def test_shared_across_concurrent_tasks_and_keep_alive(sandbox: Sandbox) -> None:
    async with _client(sandbox, concurrency=4) as gh:
        await asyncio.gather(
            *(gh.update_contact(f"c{i}", UpdateContact(first_name=str(i))) for i in range(60))
        )
        connector = gh._connector
        assert connector is not None
        assert connector.limit == 4
    assert len(sandbox.contacts) == 60


async def test_closed_client_refuses_work(sandbox: Sandbox) -> None:
    gh = _client(sandbox)
    await gh.update_contact("c1", UpdateContact(first_name="X"))  # opens lazily
    await gh.close()
    await gh.close()  # idempotent
    with pytest.raises(RuntimeError):
        await gh.update_contact("c1", UpdateContact(first_name="X"))


@pytest.mark.parametrize(
    "contact_id", ["ocQHyuzHvysMo5N5VsXc", "abc", "ab\u00e9", "\u6f22\u5b57", "a-b_c.d"]
)
@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:1/api/",
        "https://services.leadconnectorhq.com",
        "https://services.leadconnectorhq.com:443/",
        "http://[::1]:8080/a%20b/v2",
        "https://xn--bcher-kva.example/proxy/%C3%A9",
    ],
)
def test_contact_url_fast_path_equals_yarl_join(base_url: str, contact_id: str) -> None:
    gh = GrowthHubClient(token="t", base_url=base_url)
    expected = gh.base_url.joinpath("contacts", contact_id)
    assert gh.contact_url(contact_id) == expected
    assert str(gh.contact_url(contact_id)) == str(expected)
