"""The example web apps under their real servers (issue 15, item 1).

Each example runs as a subprocess, the way it is deployed: ``uvicorn examples.fastapi_app:app``
and ``python -m examples.aiohttp_app``, configured by environment variables, against the
sandbox on loopback (in this process, its window scaled down). The tests fire concurrent
requests with aiohttp and check the answers, the one budget (no 429, the server's counts),
disconnects (an update whose caller went away before it started is never sent) and SIGTERM
(every request answered or closed, no traceback, the process ends cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from fastapi import FastAPI

from examples.common import Settings
from growthhub_async import GrowthHubClient, Outcome, UpdateContact
from growthhub_async.sandbox import Faults, Sandbox
from tests.conftest import TEST_TOKEN, StartSandbox, sandbox_config
from tests.test_adversarial_server import Server, contact_of, serve

ROOT = Path(__file__).resolve().parent.parent
APPS = ["fastapi", "aiohttp"]


@dataclass
class App:
    """A running example app: its URL, its process, and what it logged so far."""

    url: str
    process: asyncio.subprocess.Process
    log: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.log)


def _command(kind: str, *extra: str) -> list[str]:
    if kind == "fastapi":
        return [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", "0", *extra]
    return [sys.executable, "-m", "examples.aiohttp_app", "--port", "0", *extra]


def _environ(sandbox: Sandbox | Server, **env: str) -> dict[str, str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GROWTHHUB_") and not key.startswith("PYTHON")
    }
    environ |= {
        "GROWTHHUB_TOKEN": TEST_TOKEN,
        "GROWTHHUB_BASE_URL": sandbox.base_url,
        "PYTHONUNBUFFERED": "1",
    }
    environ |= {f"GROWTHHUB_{key.upper()}": value for key, value in env.items()}
    return environ


@contextlib.asynccontextmanager
async def run_app(
    kind: str, sandbox: Sandbox | Server, *extra: str, **env: str
) -> AsyncIterator[App]:
    """Start an example app on a free loopback port, configured as documented (``extra``:
    more command-line arguments)."""
    process = await asyncio.create_subprocess_exec(
        *_command(kind, *extra),
        cwd=ROOT,
        env=_environ(sandbox, **env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    app = App("", process)
    address = re.compile(rb"(?:Uvicorn running|Running) on (http://127\.0\.0\.1:\d+)")
    try:
        async with asyncio.timeout(20):
            while not app.url:
                line = await process.stdout.readline()
                if not line:
                    raise AssertionError(f"the app did not start:\n{app.text}")
                app.log.append(line.decode(errors="replace").rstrip())
                if found := address.search(line):
                    app.url = found.group(1).decode()

        async def keep_reading() -> None:
            assert process.stdout is not None
            async for line in process.stdout:
                app.log.append(line.decode(errors="replace").rstrip())

        reader = asyncio.create_task(keep_reading())
        try:
            yield app
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
                await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _put(
    http: aiohttp.ClientSession, url: str, body: bytes | dict[str, Any]
) -> tuple[int | str, Any]:
    """``(status, JSON body)``, or ``(exception name, None)`` when the connection closed."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        async with http.put(url, data=data) as resp:
            text = await resp.read()
            return resp.status, json.loads(text) if text else None
    except aiohttp.ClientError as exc:
        return type(exc).__name__, None


def _no_trouble_logged(app: App) -> None:
    text = app.text
    for bad in ("Traceback", "Exception in ASGI", "ERROR", "Task was destroyed", "Unclosed"):
        assert bad not in text, f"{bad!r} in the app's log:\n{text}"


def _put_many(
    http: aiohttp.ClientSession, app: App, count: int
) -> list[asyncio.Task[tuple[int | str, Any]]]:
    """``count`` concurrent PUTs of ``c0``, ``c1``... to the app, as tasks."""
    return [
        asyncio.create_task(_put(http, f"{app.url}/contacts/c{i}", {"firstName": "A"}))
        for i in range(count)
    ]


def _session() -> aiohttp.ClientSession:
    # No client-side pool limit: every request is on the wire at once.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


@pytest.mark.parametrize("kind", APPS)
async def test_hundreds_of_concurrent_requests_get_their_answers_within_one_budget(
    kind: str, start_sandbox: StartSandbox
) -> None:
    scripts = {f"invalid{i}": ["422"] for i in range(3)} | {f"gone{i}": ["404"] for i in range(2)}
    sandbox = await start_sandbox(
        sandbox_config(rate_limit=100, rate_window=0.5, faults=Faults(scripts=scripts))
    )
    good = [f"c{i}" for i in range(300)]
    async with (
        run_app(kind, sandbox, rate="100/0.5s", deadline="30", concurrency="20") as app,
        _session() as http,
    ):
        calls = [_put(http, f"{app.url}/contacts/{cid}", {"firstName": cid}) for cid in good]
        calls += [_put(http, f"{app.url}/contacts/{cid}", {"lastName": "X"}) for cid in scripts]
        calls += [_put(http, f"{app.url}/contacts/bad{i}", {"gender": "x"}) for i in range(3)]
        calls.append(_put(http, f"{app.url}/contacts/bad", b"{not json"))
        calls.append(_put(http, f"{app.url}/contacts/a%3Fb", {"firstName": "x"}))
        answers = await asyncio.gather(*calls)
    for cid, (status, body) in zip(good, answers, strict=False):
        assert status == 200, (cid, status, body)
        assert body["status"] == "updated"
        assert body["contactId"] == cid
        assert body["attempts"] == 1
        contact = body["response"]["contact"]
        assert (contact["id"], contact["firstName"]) == (cid, cid)  # the updated contact
    rest = answers[len(good) :]
    assert [status for status, _ in rest[:3]] == [422] * 3
    assert all(body["status"] == "invalid" for _, body in rest[:3])
    assert [status for status, _ in rest[3:5]] == [404] * 2
    # Bodies that are not Update Contact bodies: 422 naming the problem, nothing sent.
    for status, body in rest[5:8]:
        assert status == 422
        assert body["status"] == "rejected"
        assert "gender" in body["error"]
    assert rest[8][0] == 422
    assert rest[9][0] == 422  # a contact id that could address another path
    assert rest[9][1]["status"] == "rejected"
    stats = sandbox.stats()
    assert stats["rateLimited"] == 0
    assert stats["maxInWindow"] <= 100
    assert stats["requests"] == len(good) + len(scripts)
    assert set(stats["attempts"]) == set(good) | set(scripts)
    _no_trouble_logged(app)


@pytest.mark.parametrize("kind", APPS)
async def test_a_request_past_its_deadline_is_504_and_its_update_never_sent(
    kind: str, start_sandbox: StartSandbox
) -> None:
    sandbox = await start_sandbox(sandbox_config(rate_limit=10, rate_window=0.5))
    async with run_app(kind, sandbox, rate="10/0.5s", deadline="1") as app, _session() as http:
        answers = await asyncio.gather(
            *(_put(http, f"{app.url}/contacts/c{i}", {"firstName": "A"}) for i in range(60))
        )
        await asyncio.sleep(1.0)  # the budget would have let the late ones go by now
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) == {200, 504}, statuses
        assert 10 <= statuses[200] <= 35
        for status, body in answers:
            if status == 504:
                assert body["status"] == "failed"
                assert body["error"].startswith("deadline (1 s) passed")
        unsent = [body["contactId"] for status, body in answers if body["attempts"] == 0]
        assert unsent
        stats = sandbox.stats()
        assert stats["requests"] == sum(body["attempts"] for _, body in answers)
        assert not set(unsent) & set(stats["attempts"])
    _no_trouble_logged(app)


@pytest.mark.parametrize("kind", APPS)
async def test_an_update_whose_caller_went_away_before_it_started_is_never_sent(
    kind: str, start_sandbox: StartSandbox
) -> None:
    """100 requests fill the queue for 2.5 s; 20 more arrive behind them and their callers
    disconnect after 0.4 s: those 20 updates are cancelled and never reach the server, the
    100 are all answered 200."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=20, rate_window=0.5))
    async with run_app(kind, sandbox, rate="20/0.5s", deadline="30") as app, _session() as http:
        staying = [
            asyncio.create_task(_put(http, f"{app.url}/contacts/c{i}", {"firstName": "A"}))
            for i in range(100)
        ]
        await asyncio.sleep(0.2)
        async with _session() as leaving:
            gone = [
                asyncio.create_task(_put(leaving, f"{app.url}/contacts/gone{i}", {"city": "X"}))
                for i in range(20)
            ]
            await asyncio.sleep(0.4)
            for task in gone:
                task.cancel()  # aiohttp closes the connection
            await asyncio.gather(*gone, return_exceptions=True)
        answers = await asyncio.gather(*staying)
        assert all(status == 200 for status, _ in answers)
        await asyncio.sleep(0.3)
        stats = sandbox.stats()
        assert stats["requests"] == 100
        assert not [cid for cid in stats["attempts"] if cid.startswith("gone")]
        assert stats["rateLimited"] == 0
        # Not vacuous: the app saw each of the 20 callers go while its update waited.
        went = re.findall(r"the caller of (gone\d+) went away", app.text)
        assert sorted(went) == sorted(f"gone{i}" for i in range(20))
    _no_trouble_logged(app)


@pytest.mark.parametrize("kind", APPS)
async def test_sigterm_while_requests_are_queued_answers_each_and_exits_cleanly(
    kind: str, start_sandbox: StartSandbox
) -> None:
    sandbox = await start_sandbox(sandbox_config(rate_limit=10, rate_window=0.5))
    async with run_app(kind, sandbox, rate="10/0.5s", deadline="1.5") as app, _session() as http:
        calls = _put_many(http, app, 60)
        await asyncio.sleep(0.4)
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        app.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*calls)
        async with asyncio.timeout(10):
            returncode = await app.process.wait()
        took = loop.time() - signalled
    statuses = Counter(status for status, _ in answers)
    # Each request: a defined answer (its update done, or its deadline passed), or, at worst,
    # the connection closed; never a 500.
    assert set(statuses) <= {200, 503, 504, "ServerDisconnectedError", "ClientOSError"}, statuses
    assert statuses[200] >= 5
    answered = [body for _, body in answers if body is not None]
    assert all(body["status"] in {"updated", "failed"} for body in answered)
    if len(answered) == len(answers):
        assert sandbox.stats()["requests"] == sum(body["attempts"] for body in answered)
    assert took < 1.5 + 3
    # aiohttp's run_app exits 0; uvicorn (>= 0.29) re-raises the signal after its graceful
    # shutdown, so the status says "ended by SIGTERM" (systemd and Kubernetes count it clean).
    assert returncode in ((0, -signal.SIGTERM) if kind == "fastapi" else (0,)), returncode
    await asyncio.sleep(0.1)
    assert "growthhub client closed" in app.text  # the lifespan / cleanup context ran
    _no_trouble_logged(app)


async def test_fastapi_takes_outcome_as_a_return_annotation_and_response_model(
    start_sandbox: StartSandbox,
) -> None:
    """``-> Outcome`` and ``response_model=Outcome`` import, serve the outcome's JSON (the
    updated contact included) and document it in the OpenAPI schema; before issue 15 the
    annotation failed at import and a returned Outcome was a 500."""
    # Module-level names: FastAPI resolves the string annotations (``from __future__ import
    # annotations``) in the module's globals, as in any application.
    sandbox = await start_sandbox()
    async with GrowthHubClient(TEST_TOKEN, base_url=sandbox.base_url, rate=None) as gh:
        api = FastAPI()

        @api.put("/annotated/{contact_id}")
        async def annotated(contact_id: str) -> Outcome:
            return await gh.submit(contact_id, UpdateContact(first_name="Ada"), response=True)

        @api.put("/model/{contact_id}", response_model=Outcome)
        async def model(contact_id: str) -> Any:
            return await gh.submit(contact_id, UpdateContact(first_name="Bo"))

        server = uvicorn.Server(
            uvicorn.Config(api, host="127.0.0.1", port=0, log_config=None, lifespan="off")
        )
        serving = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, no event)
                    await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            url = f"http://127.0.0.1:{port}"
            async with _session() as http:
                first = await _put(http, f"{url}/annotated/c1", b"")
                second = await _put(http, f"{url}/model/c2", b"")
                async with http.get(f"{url}/openapi.json") as resp:
                    assert resp.status == 200
                    openapi = await resp.json()
        finally:
            server.should_exit = True
            await serving
    assert first[0] == 200
    assert first[1]["status"] == "updated"
    assert first[1]["contactId"] == "c1"
    assert first[1]["response"]["contact"]["firstName"] == "Ada"
    assert second[0] == 200
    assert second[1] == {
        "line": 2,
        "contactId": "c2",
        "status": "updated",
        "httpStatus": 200,
        "attempts": 1,
        "error": None,
    }
    schema = json.dumps(openapi)
    for key in ("contactId", "httpStatus", "attempts", "firstName"):
        assert key in schema


def _nested_200(contact_id: str, depth: int) -> bytes:
    value = "[" * depth + "1" + "]" * depth
    return (
        b'{"succeded": true, "contact": {"id": "%s", "customFields": [{"id": "f", "value": '
        % contact_id.encode()
        + value.encode()
        + b"}]}}"
    )


@pytest.mark.parametrize("kind", APPS)
async def test_a_hostile_200_gives_the_caller_no_token_and_no_500(kind: str) -> None:
    """The upstream echoes the bearer in the contact, or nests a custom field value 300 or 950
    deep (pydantic and ``json.dumps`` give up there): the caller gets 200 and the outcome,
    with the contact redacted or left out; never the token, never a 500."""

    async def hostile(request: web.Request, server: Server) -> web.StreamResponse:
        contact_id = contact_of(request)
        if contact_id.startswith("deep"):
            return web.Response(body=_nested_200(contact_id, int(contact_id[4:])))
        bearer = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        contact = {"id": contact_id, "firstName": bearer, "tags": [f"by {bearer}"]}
        return web.json_response({"succeded": True, "contact": contact})

    async with serve(hostile) as upstream, run_app(kind, upstream) as app, _session() as http:
        for contact_id in ("echo", "deep300", "deep950"):
            async with http.put(
                f"{app.url}/contacts/{contact_id}", data=b'{"tags": ["x"]}'
            ) as resp:
                raw = await resp.read()
                assert resp.status == 200, raw[:300]
            assert TEST_TOKEN.encode() not in raw
            body = json.loads(raw)
            assert body["status"] == "updated"
            contact = body["response"].get("contact")
            if contact_id == "echo":
                assert contact["firstName"] == "<redacted>"
            else:
                assert contact is None
    _no_trouble_logged(app)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("deadline", "1e9"), ("deadline", "0"), ("rate", "fast"), ("concurrency", "2.5")],
)
def test_settings_the_client_would_refuse_are_refused_naming_the_variable(
    variable: str, value: str
) -> None:
    environ = {"GROWTHHUB_TOKEN": TEST_TOKEN, f"GROWTHHUB_{variable.upper()}": value}
    with pytest.raises(RuntimeError, match=f"^GROWTHHUB_{variable.upper()}") as info:
        Settings.from_env(environ)
    assert TEST_TOKEN not in str(info.value)
    assert Settings.from_env({"GROWTHHUB_TOKEN": TEST_TOKEN, "GROWTHHUB_DEADLINE": "1e8"})


@pytest.mark.parametrize("kind", APPS)
async def test_settings_submit_would_refuse_stop_the_app_at_start_up(
    kind: str, sandbox: Sandbox
) -> None:
    """Checked once at start-up with the rule ``submit`` applies, naming the variable; before,
    ``GROWTHHUB_DEADLINE=1e9`` started and then answered every request 500."""
    variable = "deadline"
    process = await asyncio.create_subprocess_exec(
        *_command(kind),
        cwd=ROOT,
        env=_environ(sandbox, deadline="1e9"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(20):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode not in (0, None)
    text = output.decode(errors="replace")
    assert f"GROWTHHUB_{variable.upper()}" in text
    assert "Running on" not in text
    assert TEST_TOKEN not in text
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize("kind", APPS)
async def test_a_second_signal_during_shutdown_answers_each_and_closes_the_client(
    kind: str, start_sandbox: StartSandbox
) -> None:
    """SIGTERM, then SIGINT (a second Ctrl-C) while requests wait for the budget. aiohttp:
    the second signal is ignored, each request ends by its deadline with its answer, the
    client is closed, exit 0. uvicorn force-quits on it (its design): the connections still
    open are dropped, the lifespan's shutdown is skipped; no 500 and no traceback."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=4, rate_window=0.5))
    async with run_app(kind, sandbox, rate="4/0.5s", deadline="1.5") as app, _session() as http:
        calls = _put_many(http, app, 16)
        await asyncio.sleep(0.4)
        app.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        app.process.send_signal(signal.SIGINT)
        answers = await asyncio.gather(*calls)
        async with asyncio.timeout(10):
            returncode = await app.process.wait()
    statuses = Counter(status for status, _ in answers)
    assert statuses[200] >= 2, statuses
    await asyncio.sleep(0.1)
    if kind == "aiohttp":
        assert returncode == 0
        assert set(statuses) == {200, 504}, statuses  # each ended on its own, with its answer
        assert "SIGINT during the shutdown: ignored" in app.text
        assert "growthhub client closed" in app.text
    else:
        assert returncode in (0, -signal.SIGINT, -signal.SIGTERM), returncode
        dropped = {"ServerDisconnectedError", "ClientOSError", "ClientConnectorError"}
        assert set(statuses) <= {200, 503, 504, *dropped}, statuses
    _no_trouble_logged(app)


async def test_uvicorn_cutting_handlers_at_its_graceful_timeout_answers_503_not_500(
    start_sandbox: StartSandbox,
) -> None:
    """``--timeout-graceful-shutdown`` shorter than the deadline: uvicorn cancels the handlers
    still waiting; each caller gets 503 "cancelled", never a 500 or a traceback."""
    sandbox = await start_sandbox(sandbox_config(rate_limit=2, rate_window=0.5))
    async with (
        run_app(
            "fastapi", sandbox, "--timeout-graceful-shutdown", "1", rate="2/0.5s", deadline="5"
        ) as app,
        _session() as http,
    ):
        calls = _put_many(http, app, 20)
        await asyncio.sleep(0.3)
        app.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*calls)
        async with asyncio.timeout(10):
            await app.process.wait()
    statuses = Counter(status for status, _ in answers)
    assert statuses[503] >= 5, statuses
    assert set(statuses) <= {200, 503}, statuses
    for status, body in answers:
        if status == 503:
            assert body["error"].startswith("cancelled: the server is shutting down")
    await asyncio.sleep(0.1)
    assert "growthhub client closed" in app.text
    # uvicorn's own line about the timeout is its ERROR; nothing else may be.
    text = "\n".join(line for line in app.log if "timeout graceful shutdown exceeded" not in line)
    for bad in ("Traceback", "Exception in ASGI", "ERROR", "Task was destroyed", "Unclosed"):
        assert bad not in text, f"{bad!r} in the app's log:\n{app.text}"
