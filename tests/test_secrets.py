"""Secrets and request safety: the token is nowhere; http, TLS and contact ids cannot betray it.

- With a recognisable token, the library runs at DEBUG logging (ours, aiohttp's, asyncio's)
  through 401, 422, 429, 5xx, dropped connections, timeouts and hostile answers, by
  ``update_contact``, ``submit`` and the bulk engine; the token is in no log record, no repr
  (client, token view, lane), no exception (``str``, ``repr``, ``args``, attributes, the
  ``__cause__``/``__context__`` chain, the formatted traceback), no event, no outcome.
- The command line (``growthhub-async update``, token from ``GROWTHHUB_TOKEN``) prints it
  nowhere and writes it into no file.
- Plain ``http://`` to a non-loopback host is refused unless ``allow_insecure=True``.
- TLS certificates are verified by default: a self-signed server is refused.
- A contact id can never make the client request another path: a table of hostile ids is
  refused before anything is sent, and any id that is accepted (a property test) arrives at the
  sandbox as exactly ``/contacts/<id>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from growthhub_async import GrowthHubClient, UpdateContact
from growthhub_async.contact_id import check_contact_id
from growthhub_async.errors import (
    ConfigurationError,
    ConnectionFailed,
    GrowthHubError,
    InvalidContactId,
)
from growthhub_async.events import Event
from growthhub_async.outcomes import Outcome, Status, encode_outcome
from growthhub_async.retry import RetryPolicy
from growthhub_async.sandbox import Faults, Sandbox, create_app
from tests.conftest import StartSandbox, sandbox_config

TOKEN = "tok-SECRET-5b1e"
WRONG = "tok-SECRET-wr0ng"
SECRETS = (TOKEN, WRONG, "SECRET")

# Per contact, the fates of its PUTs: every kind of failure, then (for most) success.
SCRIPTS: dict[str, list[str]] = {
    "c401": ["401", "401", "ok"],
    "c403": ["403"],
    "c404": ["404"],
    "c422": ["422"],
    "c429": ["429", "ok"],
    "c500": ["500", "502", "503", "504", "ok"],
    "cdrop": ["reset", "reset", "ok"],
    "cslow": ["slow:1", "ok"],
    "chang": ["hang", "ok"],
    "cbadjson": ["badjson", "ok"],
    "ctrunc": ["truncated", "badjson", "html200", "notsucceeded", "html500", "ok"],
    "cgarbage": ["garbage-429", "garbage-headers"],
}

STOPPING = ("c403",)  # answers that stop the token: sent on a client of their own

HOSTILE_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "/",
    "a?b",
    "a#b",
    "%2e%2e",
    "a%2Fb",
    "a\\b",
    "a b",
    "a\n",
    "a\r\nX-Evil: 1",
    "a\x00b",
    "a\u2215b",
    "a\uff0fb",
    "a\u2044b",
    "a\uff1fb",
    "\u2025",
    "\uff0e",  # FULLWIDTH FULL STOP alone: "." once NFKC-normalised
    "\uff41\uff42\uff43",  # fullwidth "abc": another contact's id once normalised
    "a\u061cb",  # ARABIC LETTER MARK: invisible
    "a\u180eb",  # MONGOLIAN VOWEL SEPARATOR
    "a\u034fb",  # COMBINING GRAPHEME JOINER
    "a\ufe0fb",  # VARIATION SELECTOR-16
    "a\U000e0041b",  # TAG LATIN CAPITAL LETTER A
    "a\u200bb",
    "\ud800",
    "",
    "x" * 129,
    "x" * 100_000,
]


def scan(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} found in {where}: {text[:300]!r}"


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Everything an exception could show: str, repr, args, attributes, its whole chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        yield repr(getattr(current, "__dict__", {}))
        yield "".join(traceback.format_exception(current))
        todo += [current.__cause__, current.__context__]


def client(base_url: str, token: str = TOKEN, **kwargs: Any) -> GrowthHubClient:
    settings_: dict[str, Any] = {
        "base_url": base_url,
        "rate": "20/0.5s",
        "timeout": 0.3,
        "retry": RetryPolicy(max_tries=6, max_time=10.0, jitter=lambda _: 0.0),
        "unauthorized_limit": 10,
    }
    settings_.update(kwargs)
    return GrowthHubClient(token, **settings_)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("growthhub_async", "aiohttp", "aiohttp.client", "aiohttp.server", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


async def test_token_never_shows_in_logs_reprs_errors_events_outcomes(
    start_sandbox: StartSandbox, debug_logs: pytest.LogCaptureFixture
) -> None:
    sandbox = await start_sandbox(
        sandbox_config(tokens=frozenset({TOKEN}), faults=Faults(scripts=SCRIPTS))
    )
    texts: list[tuple[str, str]] = []
    events: list[Event] = []
    errors: list[BaseException] = []
    async with client(sandbox.base_url, hooks=[events.append]) as gh:
        texts += [("repr(client)", repr(gh)), ("str(client)", str(gh))]
        texts += [(f"repr(lane {k})", repr(lane)) for k, lane in gh._lanes.items()]
        view = gh.for_token("default")
        texts += [("repr(view)", repr(view))]
        # One request each, errors raised.
        for contact_id in SCRIPTS:
            if contact_id in STOPPING:
                continue
            try:
                await gh.update_contact(contact_id, UpdateContact(first_name="Sam"))
            except GrowthHubError as exc:
                errors.append(exc)
        for bad_id in ("a/b", ""):
            try:
                await view.update_contact(bad_id, UpdateContact(first_name="Sam"))
            except GrowthHubError as exc:
                errors.append(exc)
        sandbox.reset()  # rewind the scripts: the bulk run meets every fault again
        async with gh.update_contacts(
            [
                (cid, UpdateContact(email=f"{cid}@example.com"))
                for cid in SCRIPTS
                if cid not in STOPPING
            ]
        ) as stream:
            outcomes: list[Outcome] = [o async for o in stream]
        outcomes.append(await gh.submit("c401", UpdateContact(first_name="Sub")))
        texts += [("repr(client) after", repr(gh))]
    # A 403 for another location stops its token (issue 18): on a client of its own.
    async with client(sandbox.base_url, hooks=[events.append]) as forbidden:
        for contact_id in STOPPING:
            try:
                await forbidden.update_contact(contact_id, UpdateContact(first_name="Sam"))
            except GrowthHubError as exc:
                errors.append(exc)
    # The faults did happen, so that the scan is not vacuous.
    assert {type(e).__name__ for e in errors} >= {
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "UnprocessableEntity",
        "RateLimited",
        "ServerError",
        "ConnectionFailed",
        "RequestTimeout",
        "ResponseError",
        "InvalidContactId",
    }
    assert {o.status for o in outcomes} >= {Status.UPDATED, Status.NOT_FOUND, Status.INVALID}
    assert any(type(e).__name__ == "RetryScheduled" for e in events)
    assert debug_logs.records  # DEBUG logging did record things

    async with client(sandbox.base_url, token=WRONG) as wrong:
        try:
            await wrong.update_contact("c1", UpdateContact(first_name="x"))
        except GrowthHubError as exc:
            errors.append(exc)
        outcomes += [o async for o in wrong.update_contacts([("c2", UpdateContact())])]
        texts.append(("repr(wrong client)", repr(wrong)))
    assert outcomes[-1].status is Status.UNAUTHORIZED

    for exc in errors:
        texts += [(f"exception {type(exc).__name__}", t) for t in exception_texts(exc)]
    texts += [("event", repr(e)) for e in events]
    texts += [("outcome", encode_outcome(o).decode()) for o in outcomes]
    texts += [("outcome repr", repr(o)) for o in outcomes]
    texts += [("log", debug_logs.text)]
    texts += [("log args", repr([(r.msg, r.args) for r in debug_logs.records]))]
    for where, text in texts:
        scan(text, where)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"token": "tok-SECRET 5b1e"}, "whitespace"),
        ({"token": "tok-SECRET-5b1e\n"}, "whitespace"),
        ({"tokens": {"locA": TOKEN, "locB": ""}}, "empty"),
        ({"token": TOKEN, "base_url": "http://api.example.com"}, "https"),
        ({"token": TOKEN, "base_url": f"https://user:{TOKEN}@api.example.com"}, "credentials"),
        ({"token": TOKEN, "base_url": f"https://api.example.com/?token={TOKEN}"}, "query"),
    ],
)
def test_configuration_errors_never_show_the_token(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as caught:
        GrowthHubClient(**kwargs)
    for text in exception_texts(caught.value):
        assert "SECRET" not in text.replace("base_url", ""), text


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com",
        "http://services.leadconnectorhq.com",
        "http://10.0.0.1:8080",
        "http://192.168.1.10",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://0.0.0.0",
        "http://[::ffff:10.0.0.1]",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="https"):
        GrowthHubClient(TOKEN, base_url=url)
    # Explicitly allowed: accepted (a TLS-terminating proxy on a private network).
    assert GrowthHubClient(TOKEN, base_url=url, allow_insecure=True).base_url.scheme == "http"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:9", "http://127.8.9.10"]
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    GrowthHubClient(TOKEN, base_url=url)


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.skipif(
    subprocess.run(["which", "openssl"], capture_output=True, check=False).returncode,
    reason="openssl is needed to make a self-signed certificate",
)
async def test_tls_certificates_are_verified_by_default(tmp_path: Path) -> None:
    runner = web.AppRunner(create_app(sandbox_config(tokens=frozenset({TOKEN}))))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed(tmp_path))
        await site.start()
        port = runner.addresses[0][1]
        async with client(f"https://127.0.0.1:{port}") as gh:
            with pytest.raises(ConnectionFailed, match=r"(?i)certificate") as caught:
                await gh.update_contact("c1", UpdateContact(first_name="x"))
            [outcome] = [o async for o in gh.update_contacts([("c1", UpdateContact())])]
        assert outcome.status is Status.FAILED
        for text in exception_texts(caught.value):
            scan(text, "TLS error")
        # Nothing reached the application: the handshake failed first.
        assert Sandbox(runner.app, "127.0.0.1", port).stats()["requests"] == 0
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("bad_id", HOSTILE_IDS, ids=lambda v: repr(v)[:24])
async def test_hostile_contact_ids_are_never_sent(sandbox: Sandbox, bad_id: str) -> None:
    async with client(sandbox.base_url, token="test-token") as gh:
        with pytest.raises(InvalidContactId):
            await gh.update_contact(bad_id, UpdateContact(first_name="x"))
        outcome = await gh.submit(bad_id, UpdateContact(first_name="x"))
        assert outcome.status is Status.REJECTED
        [bulk] = [o async for o in gh.update_contacts([(bad_id, UpdateContact(first_name="x"))])]
        assert bulk.status is Status.REJECTED
        assert bulk.attempts == 0
    assert sandbox.stats()["requests"] == 0


def accepted_ids() -> list[str]:
    """Ids the rule accepts, drawn by hypothesis from text heavy in URL-special characters."""
    found: list[str] = []
    nasty = st.sampled_from(list("/?#%.\\;:@&=+$,!*'()[]~_-\u2215\uff0f\u00e9\u0130\u00df"))
    alphabet = st.characters(codec="utf-8") | nasty

    # derandomize: the same ids every run (a random draw found only 46 once, failing the suite).
    @settings(max_examples=300, database=None, deadline=None, derandomize=True)
    @given(st.text(alphabet=alphabet, min_size=1, max_size=30))
    def collect(value: str) -> None:
        try:
            check_contact_id(value)
        except InvalidContactId:
            return
        found.append(value)

    collect()
    return list(dict.fromkeys(found))


async def test_any_accepted_id_is_requested_at_exactly_its_own_path(
    start_sandbox: StartSandbox,
) -> None:
    ids = accepted_ids()
    assert len(ids) > 50
    sandbox = await start_sandbox(sandbox_config(rate_limit=10_000))
    # A timeout for a loaded machine: this test is about paths, and a retry would hide one.
    async with client(
        sandbox.base_url, token="test-token", rate=None, concurrency=20, timeout=10.0
    ) as gh:
        outcomes = [o async for o in gh.update_contacts([(i, UpdateContact()) for i in ids])]
    assert [o for o in outcomes if o.status is not Status.UPDATED or o.attempts != 1] == []
    # The sandbox's route is /contacts/{contactId}: one segment, decoded. Each id arrived once,
    # as itself, and nothing else was requested.
    assert sandbox.stats()["attempts"] == dict.fromkeys(ids, 1)


async def test_command_line_never_prints_or_writes_the_token(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # One failure of each kind, each followed by success (the default retry policy's waits).
    scripts = {
        "c401": ["401", "ok"],
        "c404": ["404"],
        "c422": ["422"],
        "c429": ["429", "ok"],
        "c503": ["503", "ok"],
        "cdrop": ["reset", "ok"],
        "cbadjson": ["badjson", "ok"],
    }
    sandbox = await start_sandbox(
        sandbox_config(tokens=frozenset({TOKEN}), faults=Faults(scripts=scripts))
    )
    lines = [f'{{"contactId":"{cid}","firstName":"Cli"}}' for cid in scripts]
    lines += ['{"contactId":"a/b"}', "{bad json", '{"contactId":"c1","firstName":12}']
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    for token in (TOKEN, WRONG):
        out = tmp_path / f"out-{token[-4:]}.jsonl"
        env = {**os.environ, "GROWTHHUB_TOKEN": token, "PYTHONDEVMODE": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "growthhub_async",
            "update",
            str(source),
            "--out",
            str(out),
            "--base-url",
            sandbox.base_url,
            "--rate",
            "20/0.5s",
            "--no-progress",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1, stderr.decode()
        scan(stdout.decode(errors="replace"), "stdout")
        scan(stderr.decode(errors="replace"), "stderr")
        assert stdout or stderr
    scan_files(tmp_path)


def scan_files(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            scan(path.read_bytes().decode(errors="replace"), str(path))
