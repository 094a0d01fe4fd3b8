"""OAuth against a hostile token endpoint and API written for these tests (issue 18).

The server (``tests/oauth_server.py``) rotates strictly (a refresh token used twice gets
``400 invalid_grant``), echoes forms and headers, answers odd field types, refuses fresh
tokens for a while and says 403 for another location. Each item of issue 18 has its tests
here; the secrets have characters that URL-encoding changes (``+``, ``/``, ``=``).
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
import yarl
from aiohttp import web

from growthhub_async import GrowthHubClient, Status, UpdateContact
from growthhub_async.auth import OAuthProvider, read_token_answer
from growthhub_async.client import read_response
from growthhub_async.errors import (
    ConfigurationError,
    ConnectionFailed,
    GrowthHubError,
    ResponseError,
    TokenRefreshFailed,
    Unauthorized,
)
from growthhub_async.events import Event, TokenStopped
from growthhub_async.outcomes import Outcome, encode_outcome
from growthhub_async.redact import REDACTED, Redactor
from growthhub_async.retry import RetryPolicy
from growthhub_async.token_file import TokenFile, write_token_file
from growthhub_async.transport import map_exceptions
from tests.oauth_server import (
    CLIENT_ID,
    CLIENT_SECRET,
    FIRST_REFRESH,
    STALE_ACCESS,
    OAuthServer,
    serve,
    token_file_data,
)

UPDATE = UpdateContact(first_name="Ada")
FAST = RetryPolicy(max_tries=6, max_time=5.0, base_delay=0.01, max_delay=0.05)


@pytest.fixture
async def strict() -> AsyncIterator[OAuthServer]:
    async with serve(OAuthServer()) as server:
        yield server


def write_file(folder: Path, **overrides: Any) -> Path:
    path = folder / "oauth.json"
    path.write_text(json.dumps(token_file_data(**overrides)))
    path.chmod(0o600)
    return path


def client(server: OAuthServer, provider: OAuthProvider, **options: Any) -> GrowthHubClient:
    options.setdefault("rate", None)
    options.setdefault("retry", FAST)
    return GrowthHubClient(token=provider, base_url=server.url, **options)


async def run(gh: GrowthHubClient, count: int, prefix: str = "c") -> list[Outcome]:
    async with gh:
        return [o async for o in gh.update_contacts((f"{prefix}{n}", UPDATE) for n in range(count))]


def lower_hex(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def every_form(*secrets: str) -> list[str]:
    forms = []
    for s in secrets:
        forms += [s, quote(s, safe=""), quote_plus(s), lower_hex(quote(s, safe=""))]
    return forms


# -- 1. a 200 is never thrown away while it holds a new refresh token -----------------------


@pytest.mark.parametrize(
    ("changes", "expires_in", "scope", "location", "company"),
    [
        ({"expires_in": "86399"}, 86399.0, "contacts.write", "loc1", "comp1"),
        ({"scope": ["contacts.write", "x"]}, 86399.0, "contacts.write x", "loc1", "comp1"),
        ({"locationId": 123}, 86399.0, "contacts.write", "123", "comp1"),
        ({"companyId": {"id": "c"}}, 86399.0, "contacts.write", "loc1", None),
        ({"expires_in": None, "scope": 7.5, "userType": []}, None, None, "loc1", "comp1"),
        ({"expires_in": "soon", "locationId": True}, None, "contacts.write", None, "comp1"),
        ({"expires_in": -5}, None, "contacts.write", "loc1", "comp1"),
    ],
)
def test_odd_field_types_are_coerced_or_ignored_with_a_warning(
    changes: dict[str, Any],
    expires_in: float | None,
    scope: str | None,
    location: str | None,
    company: str | None,
) -> None:
    body = {"access_token": "a-123456", "refresh_token": "r-123456", "expires_in": 86399}
    body |= {"scope": "contacts.write", "locationId": "loc1", "companyId": "comp1"} | changes
    answer = read_token_answer(200, json.dumps(body).encode())
    assert (answer.access_token, answer.refresh_token) == ("a-123456", "r-123456")
    assert (answer.expires_in, answer.scope) == (expires_in, scope)
    assert (answer.location_id, answer.company_id) == (location, company)
    assert answer.warnings  # each odd field is named
    assert all(str(v) not in " ".join(answer.warnings) for v in changes.values() if v)


@pytest.mark.parametrize(
    "shape",
    [
        lambda a: {**a, "expires_in": str(a["expires_in"])},
        lambda a: {**a, "scope": a["scope"].split(), "locationId": 42, "companyId": {"x": 1}},
        lambda a: {**a, "userType": ["Location"], "extra": {"deep": [1, 2]}},
    ],
    ids=["expires_in-string", "scope-list-ids-odd", "usertype-list"],
)
async def test_an_odd_200_is_saved_and_used_so_the_next_run_still_works(
    strict: OAuthServer, tmp_path: Path, shape: Any, caplog: pytest.LogCaptureFixture
) -> None:
    strict.answer = shape
    path = write_file(tmp_path)
    outcomes = await run(client(strict, OAuthProvider.from_file(path, retry=FAST)), 20)
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert json.loads(path.read_text())["refresh_token"] == strict.live_refresh_token()
    assert "the token endpoint's answer:" in caplog.text  # the warning, without values
    # The next run starts from the file: its access token works, no refresh needed.
    outcomes = await run(client(strict, OAuthProvider.from_file(path, retry=FAST)), 5, "d")
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert strict.token_statuses == [200]


async def test_a_200_with_a_refresh_token_but_no_access_token_still_saves_it(
    strict: OAuthServer, tmp_path: Path
) -> None:
    strict.answer = lambda a: {"refresh_token": a["refresh_token"], "access_token": 12}
    path = write_file(tmp_path)
    outcomes = await run(client(strict, OAuthProvider.from_file(path, retry=FAST)), 5)
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert "no access token" in (outcomes[0].error or "")
    assert json.loads(path.read_text())["refresh_token"] == strict.live_refresh_token()
    strict.answer = None  # a well-behaved endpoint again: the saved refresh token works
    outcomes = await run(client(strict, OAuthProvider.from_file(path, retry=FAST)), 5, "d")
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert strict.token_statuses == [200, 200]


# -- 2. a rotation is never lost ---------------------------------------------------------------


async def test_a_rotation_left_in_a_temporary_file_by_a_killed_run_is_used_and_cleaned(
    strict: OAuthServer, tmp_path: Path
) -> None:
    # The state a SIGKILL between write_token_file's temporary file and its rename leaves:
    # the file holds the spent refresh token, a 0600 .tmp the rotated one.
    path = write_file(tmp_path, rotated_at=1000.0)
    rotated = strict.issue()  # the server rotated: the file's refresh token is spent now
    leftover = tmp_path / ".oauth.json.k1ll3d.tmp"
    content = token_file_data(
        refresh_token=rotated["refresh_token"],
        access_token=rotated["access_token"],
        rotated_at=2000.0,
    )
    leftover.write_text(json.dumps(content))
    leftover.chmod(0o600)
    older = tmp_path / ".oauth.json.older.tmp"
    older.write_text(json.dumps(token_file_data(refresh_token="rt-older-123", rotated_at=500.0)))
    torn = tmp_path / ".oauth.json.torn.tmp"
    torn.write_text('{"client_id": "app-7f3a", "refresh_tok')
    other = tmp_path / ".other.json.x.tmp"  # another file's leftovers are not ours
    other.write_text("{}")

    provider = OAuthProvider.from_file(path, retry=FAST)
    assert sorted(os.listdir(tmp_path)) == [".other.json.x.tmp", "oauth.json"]
    assert json.loads(path.read_text())["refresh_token"] == rotated["refresh_token"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    outcomes = await run(client(strict, provider), 10)
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert strict.token_requests == 0  # the recovered access token just works


def test_an_older_leftover_never_replaces_a_newer_file(tmp_path: Path) -> None:
    path = write_file(tmp_path, refresh_token="rt-current-1", rotated_at=3000.0)
    stale = tmp_path / ".oauth.json.s.tmp"
    stale.write_text(json.dumps(token_file_data(refresh_token="rt-stale-99", rotated_at=10.0)))
    with TokenFile(path).locked():
        assert TokenFile(path).load()["refresh_token"] == "rt-current-1"
    assert [p.name for p in tmp_path.iterdir()] == ["oauth.json"]


# -- 3. secrets echoed by the server never reach the journal, stderr, exceptions, logs --------


def test_the_redactor_removes_every_form() -> None:
    secret = "s3cr+t/Value=="
    redact = Redactor(secret, "short")  # under MIN_SECRET: not a secret, left alone
    texts = [
        f"Bearer {secret}",
        f"refresh_token={quote_plus(secret)}&x=1",
        f"got {quote(secret, safe='')}",
        f"lower {lower_hex(quote(secret, safe=''))}",
        json.dumps({"echo": secret}).replace("/", "\\/"),
        f"truncated at the end: {secret[:9]}",
    ]
    for text in texts:
        cleaned = redact(text)
        assert REDACTED in cleaned, text
        for form in every_form(secret):
            assert form not in cleaned
        assert secret[:9] not in cleaned
    assert redact("a short text") == "a short text"
    assert redact.bytes(f"\xff {secret}".encode("latin-1")) == f"\xff {REDACTED}".encode("latin-1")
    outer = Redactor()
    outer.include(redact)
    redact.add("later-secret-1")  # included redactors are seen as they grow
    assert outer("x later-secret-1 y") == f"x {REDACTED} y"
    assert "later" not in repr(outer)


ENCODED = {
    "x-escapes": lambda t: _escaped(t, "\\x{:02x}"),
    "u-braces": lambda t: _escaped(t, "\\u{{{:x}}}"),
    "percent-u": lambda t: _escaped(t, "%u{:04X}"),
    "octal": lambda t: _escaped(t, "\\{:03o}"),
    "0x-hex": lambda t: _escaped(t, "0x{:02x}"),
    "quoted-printable": lambda t: _escaped(t, "={:02X}"),
    "double-percent": lambda t: _escaped(t, "%25{:02X}"),
    "html-no-semicolon": lambda t: _escaped(t, "&#x{:x}"),
    "hex-colons": lambda t: ":".join(f"{b:02x}" for b in t.encode()),
    "byte-array": lambda t: str(list(t.encode())),
    "zero-width-split": "\u200b".join,
    "json-zero-width-split": lambda t: json.dumps("\u200b".join(t))[1:-1],
    "comma-split": ",".join,
    "upper-case": str.upper,
    "utf16-hex": lambda t: t.encode("utf-16-le").hex(),
    "utf16-base64": lambda t: base64.b64encode(t.encode("utf-16-le")).decode(),
}


@pytest.mark.parametrize("encode", ENCODED.values(), ids=ENCODED.keys())
def test_a_secret_escaped_or_encoded_character_by_character_is_redacted(encode: Any) -> None:
    token = "pit-7f3c9a1e-5b2d-4e8f-a6c0-d9e1b2f3a4c5"
    text = f"bad token {encode(token)} end"
    cleaned = Redactor(token)(text)
    assert REDACTED in cleaned
    # What is left of the encoded token is a few edge characters, never a readable run.
    assert len(cleaned) <= len("bad token  end") + len(REDACTED) + 24, cleaned


async def test_a_token_endpoint_echoing_the_form_leaks_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(OAuthServer(refresh_tokens={"someone-else-rt"}, echo_form=True)) as server:
        events: list[Event] = []
        provider = OAuthProvider.from_file(write_file(tmp_path), retry=FAST)
        outcomes = await run(client(server, provider, hooks=[events.append]), 50)
        assert server.token_statuses == [400]
        assert server.forms[0]["client_secret"] == CLIENT_SECRET  # echoed back, URL-encoded
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert REDACTED in (outcomes[0].error or "")
    assert "invalid_grant" in (outcomes[0].error or "")
    seen = [encode_outcome(o).decode() for o in outcomes]
    seen += [repr(e) for e in events] + [caplog.text]
    failure = provider.failure
    assert failure is not None
    seen += [str(failure), repr(failure), repr(vars(failure))]
    text = "\n".join(seen)
    for form in every_form(CLIENT_SECRET, FIRST_REFRESH, STALE_ACCESS):
        assert form not in text


async def test_a_put_401_echoing_authorization_leaks_no_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "pit+Echoed/Token=="
    async with serve(OAuthServer(echo_authorization=True)) as server:
        gh = GrowthHubClient(token, base_url=server.url, rate=None, retry=FAST)
        async with gh:
            outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(9))]
            try:
                await gh.update_contact("x1", UPDATE)
            except GrowthHubError as exc:
                raised = exc
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert REDACTED in (outcomes[0].error or "")
    assert raised.headers["X-Echo-Authorization"] == f"Bearer {REDACTED}"  # type: ignore[attr-defined]
    text = "\n".join(
        [*(encode_outcome(o).decode() for o in outcomes), str(raised), repr(vars(raised))]
    )
    for form in every_form(token):
        assert form not in text
        assert form not in caplog.text


def _escaped(text: str, form: str) -> str:
    return "".join(form.format(ord(c)) for c in text)


# How servers and gateways have been seen to mangle an echoed Authorization header.
MANGLED = {
    "cut-mid-text": lambda t: f"got {t[:20]}... (truncated) at {t[-14:]}",
    "wrapped": lambda t: f"auth:\n  {t[:16]}\n  {t[16:32]}\n  {t[32:]}\nend",
    "spaced": lambda t: " ".join(t[i : i + 4] for i in range(0, len(t), 4)),
    "json-u-escaped": lambda t: _escaped(t, "\\u{:04x}"),
    "percent-every-char": lambda t: _escaped(t, "%{:02X}"),
    "html-hex-references": lambda t: _escaped(t, "&#x{:x};"),
    "html-decimal-references": lambda t: _escaped(t, "&#{};"),
    "hex": lambda t: t.encode().hex(),
    "hex-upper-cut": lambda t: "dump " + t.encode().hex().upper()[3:40] + "...",
    "base64-basic": lambda t: "Basic " + base64.b64encode(f"u:{t}".encode()).decode(),
    "base64-aligned-1": lambda t: base64.b64encode(f"x{t}".encode()).decode(),
    "base64-urlsafe": lambda t: base64.urlsafe_b64encode(f"ab{t}".encode()).decode(),
}


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
async def test_a_secret_echoed_in_pieces_or_encoded_leaks_no_run_of_it(
    mangle: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An adversarial server (not the sandbox): every PUT gets a 401 quoting the token mangled.
    caplog.set_level(logging.DEBUG)
    token = "pit-5f0e9c1b7a/42d8+b3e6a9c0d1f2e3a4b5c6d7e8f9"

    async def put(request: web.Request) -> web.Response:
        echoed = mangle(request.headers["Authorization"].removeprefix("Bearer "))
        headers = {"X-Debug": echoed.replace("\n", " ")}
        body = {"statusCode": 401, "message": echoed}
        return web.json_response(body, status=401, headers=headers)

    app = web.Application()
    app.router.add_put("/contacts/{id}", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gh = GrowthHubClient(token, base_url=f"http://127.0.0.1:{port}", rate=None, retry=FAST)
        async with gh:
            outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(3))]
            with pytest.raises(GrowthHubError) as raised:
                await gh.update_contact("x1", UPDATE)
    finally:
        await runner.cleanup()
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert REDACTED in (outcomes[0].error or "")
    text = "\n".join(
        [
            *(encode_outcome(o).decode() for o in outcomes),
            str(raised.value),
            repr(vars(raised.value)),
            caplog.text,
        ]
    )
    # No run of 12 characters of the token, nor of its base64, in what was kept or logged.
    runs = {token[i : i + 12] for i in range(len(token) - 11)}
    for align in range(3):
        encoded = base64.b64encode(b"#" * align + token.encode()).decode()
        runs |= {encoded[i : i + 12] for i in range(4, len(encoded) - 15)}
    readable = re.sub(r"\s+", "", text)
    readable = re.sub(r"\\\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)), readable)
    readable = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), readable)
    readable = html.unescape(readable)
    runs |= {token.encode().hex()[i : i + 12] for i in range(2 * len(token) - 11)}
    readable += " " + readable.lower()  # hex in either case
    leaked = sorted(run for run in runs if run in readable)
    assert not leaked, leaked


# -- 4. a 403 for another location stops the token -----------------------------------------


async def test_a_403_for_another_location_stops_the_token() -> None:
    async with serve(OAuthServer(location_403=True)) as server:
        events: list[Event] = []
        gh = GrowthHubClient(
            "pit-123456", base_url=server.url, rate=None, retry=FAST, concurrency=5,
            hooks=[events.append],
        )  # fmt: skip
        outcomes = await run(gh, 500)
        assert server.puts <= 5  # those in flight when the first answer came
    assert len(outcomes) == 500
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    stops = [e for e in events if isinstance(e, TokenStopped)]
    assert len(stops) == 1
    assert "does not have access to this location" in stops[0].reason
    assert all("does not have access to this location" in (o.error or "") for o in outcomes)


# -- 5. two processes (here: two providers, real locks) on one token file ------------------


async def test_two_providers_sharing_a_file_refresh_once_and_both_succeed(
    strict: OAuthServer, tmp_path: Path
) -> None:
    path = write_file(tmp_path)
    first = OAuthProvider.from_file(path, retry=FAST)
    second = OAuthProvider.from_file(path, retry=FAST)
    results = await asyncio.gather(
        run(client(strict, first, concurrency=10), 200, "a"),
        run(client(strict, second, concurrency=10), 200, "b"),
    )
    assert [o.status for r in results for o in r] == [Status.UPDATED] * 400
    assert strict.token_statuses == [200]  # the loser took the winner's rotation
    assert json.loads(path.read_text())["refresh_token"] == strict.live_refresh_token()


async def test_a_token_file_behind_a_link_stays_a_link_and_its_target_gets_the_rotation(
    strict: OAuthServer, tmp_path: Path
) -> None:
    # A shared secrets folder, linked from two places: each rotation must reach the target,
    # and the two names must share one lock (the target's directory's).
    shared = tmp_path / "secrets"
    shared.mkdir()
    target = write_file(shared)
    links = []
    for name in ("app-a", "app-b"):
        (tmp_path / name).mkdir()
        links.append(tmp_path / name / "oauth.json")
        links[-1].symlink_to(target)
    first = OAuthProvider.from_file(links[0], retry=FAST)
    second = OAuthProvider.from_file(links[1], retry=FAST)
    results = await asyncio.gather(
        run(client(strict, first, concurrency=10), 100, "a"),
        run(client(strict, second, concurrency=10), 100, "b"),
    )
    assert [o.status for r in results for o in r] == [Status.UPDATED] * 200
    assert strict.token_statuses == [200]  # one lock: the second took the first's rotation
    assert all(link.is_symlink() for link in links)
    assert json.loads(target.read_text())["refresh_token"] == strict.live_refresh_token()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(shared)) == ["oauth.json"]  # no temporary file left beside it
    # A third app reading the target directly starts from the live tokens.
    outcomes = await run(client(strict, OAuthProvider.from_file(target, retry=FAST)), 5, "c")
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert strict.token_statuses == [200]


def test_write_token_file_through_a_link_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_token_file(link, {"a": 1})
    assert link.is_symlink()
    assert json.loads(target.read_text()) == {"a": 1}


async def test_after_invalid_grant_the_file_is_read_again(
    strict: OAuthServer, tmp_path: Path
) -> None:
    path = write_file(tmp_path)
    provider = OAuthProvider.from_file(path, retry=FAST)
    # Another tool (no lock) rotates the token and writes the file behind our back: its
    # access token is then refused as expired, so we must refresh with the file's token.
    rotated = strict.issue()
    strict.access.pop(rotated["access_token"])
    write_token_file(path, token_file_data(refresh_token=rotated["refresh_token"]))
    outcomes = await run(client(strict, provider), 10)
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert strict.token_statuses == [200]  # the file was re-read before refreshing


async def test_an_invalid_grant_is_retried_with_what_the_file_holds_now(
    strict: OAuthServer, tmp_path: Path
) -> None:
    path = write_file(tmp_path)
    provider = OAuthProvider.from_file(path, retry=FAST)

    def another_tool_rotates() -> None:
        # Between our re-read and our request, a tool that takes no lock rotates the token
        # and writes the file: our refresh token is spent when it arrives.
        strict.before_token = None
        rotated = strict.issue()
        write_token_file(path, token_file_data(**rotated))

    strict.before_token = another_tool_rotates
    outcomes = await run(client(strict, provider), 10)
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert strict.token_statuses == [400]  # invalid_grant, then the file's tokens just work


# -- 6. the token URL follows the API's base URL -----------------------------------------------


async def test_without_token_url_the_refresh_goes_to_the_base_url(
    strict: OAuthServer, tmp_path: Path
) -> None:
    provider = OAuthProvider.from_file(write_file(tmp_path), retry=FAST)
    outcomes = await run(client(strict, provider), 5)
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert str(provider.token_url) == f"{strict.url}/oauth/token"
    assert strict.token_statuses == [200]
    with pytest.raises(ConfigurationError, match="another base URL"):
        GrowthHubClient(token=provider, base_url="http://127.0.0.1:9")


async def test_an_explicit_token_url_in_the_file_is_honoured(tmp_path: Path) -> None:
    async with serve(OAuthServer()) as api, serve(OAuthServer()) as tokens:
        api.access = tokens.access  # the API accepts what the token host issues
        path = write_file(tmp_path, token_url=f"{tokens.url}/oauth/token")
        outcomes = await run(client(api, OAuthProvider.from_file(path, retry=FAST)), 5)
        assert {o.status for o in outcomes} == {Status.UPDATED}
        assert (api.token_requests, tokens.token_requests) == (0, 1)


# -- 7. a fresh token's 401s are retried with pauses before it is declared dead -----------------


async def test_a_fresh_token_refused_a_few_times_is_retried_not_declared_dead(
    tmp_path: Path,
) -> None:
    async with serve(OAuthServer(fresh_refusals=2)) as server:
        events: list[Event] = []
        provider = OAuthProvider.from_file(write_file(tmp_path), retry=FAST)
        outcomes = await run(client(server, provider, concurrency=5, hooks=[events.append]), 60)
        assert server.token_statuses == [200]
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert not [e for e in events if isinstance(e, TokenStopped)]


async def test_intermittent_401s_end_no_record_unauthorized(tmp_path: Path) -> None:
    async with serve(OAuthServer(every_nth_refused=7)) as server:
        provider = OAuthProvider.from_file(write_file(tmp_path), retry=FAST)
        outcomes = await run(client(server, provider, concurrency=5), 150)
    assert {o.status for o in outcomes} == {Status.UPDATED}


async def test_a_record_pausing_after_a_401_holds_no_worker(tmp_path: Path) -> None:
    # One contact's requests are refused three times ("Invalid JWT" for a moment): after its
    # refresh, it pauses 0.4 s, then 0.8 s, before it is sent again. With one worker, the
    # other records must not wait behind those pauses.
    async with serve(OAuthServer(refused_contacts={"flaky": 3})) as server:
        issued = server.issue()  # the file's access token works from the start
        tokens = {k: issued[k] for k in ("access_token", "refresh_token")}
        path = write_file(tmp_path, **tokens)
        policy = RetryPolicy(max_tries=6, max_time=10, base_delay=0.4, jitter=lambda v: v)
        provider = OAuthProvider.from_file(path, retry=FAST)
        gh = client(server, provider, concurrency=1, retry=policy)
        ids = ["flaky"] + [f"c{n}" for n in range(30)]
        async with gh:
            outcomes = [o async for o in gh.update_contacts((i, UPDATE) for i in ids)]
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert outcomes[-1].contact_id == "flaky"  # everyone else went while it paused
    assert outcomes[-1].attempts == 4
    assert server.token_statuses == [200]  # one refresh; the pauses did not refresh again


async def test_a_401_after_the_run_stops_refreshes_nothing_and_sends_nothing_again(
    tmp_path: Path,
) -> None:
    # SIGTERM's stop(): the five requests on the wire come back 401 (the file's access token
    # is stale). A refresh would send the client secret and re-send all five: neither happens,
    # and the records end "cancelled" (not final: a resumed run sends them).
    async with serve(OAuthServer(put_delay=0.3)) as server:
        provider = OAuthProvider.from_file(write_file(tmp_path), retry=FAST)
        async with (
            client(server, provider, concurrency=5) as gh,
            gh.update_contacts((f"c{n}", UPDATE) for n in range(5)) as stream,
        ):
            first = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.15)  # all five on the wire
            stream.stop()
            outcomes = [await first, *[o async for o in stream]]
    assert [(o.status, o.error) for o in outcomes] == [(Status.FAILED, "cancelled")] * 5
    assert server.puts == 5
    assert server.token_requests == 0


async def test_a_fresh_token_always_refused_is_declared_dead_after_the_limit(
    tmp_path: Path,
) -> None:
    async with serve(OAuthServer(fresh_refusals=1000)) as server:
        events: list[Event] = []
        provider = OAuthProvider.from_file(write_file(tmp_path), retry=FAST)
        gh = client(server, provider, concurrency=5, hooks=[events.append], unauthorized_limit=3)
        outcomes = await run(gh, 100)
        assert server.token_statuses == [200]  # never a second refresh: no storm
        assert server.puts < 30
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    [stop] = [e for e in events if isinstance(e, TokenStopped)]
    assert "refused (401) 3 times in a row" in stop.reason


def test_a_redactor_in_the_client_knows_every_provider(tmp_path: Path) -> None:
    provider = OAuthProvider(CLIENT_ID, CLIENT_SECRET, FIRST_REFRESH)
    gh = GrowthHubClient(tokens={"a": provider, "b": "pit-other-123"})
    cleaned = gh.redactor(f"{CLIENT_SECRET} {FIRST_REFRESH} pit-other-123")
    assert cleaned == " ".join([REDACTED] * 3)
    assert gh.base_url == yarl.URL("https://services.leadconnectorhq.com")


def test_write_token_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_token_file(tmp_path / "t.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.json").stat().st_mode) == 0o600


async def test_a_refresh_failure_reason_names_no_secret(strict: OAuthServer) -> None:
    provider = OAuthProvider(CLIENT_ID, CLIENT_SECRET, "rt-unknown+1/2", token_url=strict.url)
    with pytest.raises(TokenRefreshFailed) as info:
        await provider.token()
    await provider.aclose()
    assert "rt-unknown" not in str(info.value)


def test_read_response_and_map_exceptions_redact_what_the_server_said() -> None:
    secret = "tok+Seen/In=Body"
    redact = Redactor(secret)
    with pytest.raises(ResponseError) as bad:
        read_response(200, {}, f"<html>Bearer {secret}</html>".encode(), redact=redact)
    assert bad.value.body == f"<html>Bearer {REDACTED}</html>".encode()
    body = json.dumps({"message": [f"no {quote_plus(secret)}"], "traceId": secret}).encode()
    with pytest.raises(Unauthorized) as refused:
        read_response(401, {"X-Echo": f"Bearer {secret}"}, body, redact=redact)
    assert refused.value.messages == (f"no {REDACTED}",)
    assert refused.value.trace_id == REDACTED
    assert refused.value.headers == {"X-Echo": f"Bearer {REDACTED}"}
    with pytest.raises(ConnectionFailed) as dropped, map_exceptions(redact):
        raise aiohttp.ClientPayloadError(f"bad header: {secret}")
    assert secret not in str(dropped.value)
    assert REDACTED in str(dropped.value)
