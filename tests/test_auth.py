"""OAuth token refresh (issue 6): providers, single flight, rotation persisted first, no storm.

Everything runs against the sandbox's ``POST /oauth/token`` over loopback; expiry is scaled down
(access tokens of 0.3 s) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from growthhub_async import GrowthHubClient, Status, UpdateContact
from growthhub_async.auth import (
    DEFAULT_TOKEN_URL,
    AccessToken,
    FixedToken,
    OAuthProvider,
    TokenSet,
    is_scope_error,
    read_token_answer,
    refresh_due,
    write_token_file,
)
from growthhub_async.errors import (
    ConfigurationError,
    HTTPStatusError,
    ServerError,
    TokenRefreshFailed,
    Unauthorized,
)
from growthhub_async.events import Event
from growthhub_async.retry import RetryPolicy
from growthhub_async.sandbox import Faults, OAuthConfig, Sandbox
from tests.cli_helpers import journal_lines, run_cli, write_jsonl
from tests.conftest import TEST_TOKEN, StartSandbox, sandbox_config

CLIENT_ID = "client-id-7f3a"
CLIENT_SECRET = "client-secret-Zq81x"
REFRESH = "refresh-token-Kd92m"
STALE_ACCESS = "stale-access-Pw55r"  # unknown to the sandbox: answered like an expired token
UPDATE = UpdateContact(first_name="Ada")
FAST_RETRY = RetryPolicy(max_tries=3, max_time=5.0, base_delay=0.01, max_delay=0.02)


def oauth_sandbox_config(**oauth: Any) -> Any:
    settings: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_tokens": frozenset({REFRESH}),
    }
    settings.update(oauth)
    return sandbox_config(rate_limit=1000, rate_window=0.5, oauth=OAuthConfig(**settings))


def provider_for(sb: Sandbox, **options: Any) -> OAuthProvider:
    options.setdefault("retry", FAST_RETRY)
    return OAuthProvider(
        CLIENT_ID, CLIENT_SECRET, REFRESH, token_url=f"{sb.base_url}/oauth/token", **options
    )


def client_for(sb: Sandbox, provider: OAuthProvider, **options: Any) -> GrowthHubClient:
    options.setdefault("rate", None)
    options.setdefault("retry", FAST_RETRY)
    return GrowthHubClient(token=provider, base_url=sb.base_url, **options)


def oauth_stats(sb: Sandbox) -> dict[str, Any]:
    stats: dict[str, Any] = sb.stats()["oauth"]
    return stats


def live_refresh_token(sb: Sandbox) -> str:
    assert sb.oauth is not None
    (token,) = sb.oauth.refresh_tokens  # rotation: exactly one is valid at any time
    return token


# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expires_at", "lifetime", "margin", "due"),
    [
        (0.0, None, None, 300.0, False),  # no known expiry: wait for a 401
        (0.0, 1000.0, None, 300.0, False),
        (700.0, 1000.0, None, 300.0, True),  # margin before expiry
        (699.9, 1000.0, None, 300.0, False),
        (1000.0, 1000.0, 86_399.0, 300.0, True),
        (999.0, 1000.0, 10.0, 300.0, True),  # short lifetime: a tenth of it, not 300 s
        (998.9, 1000.0, 10.0, 300.0, False),
        (0.0, 0.5, 0.5, 300.0, False),
        (0.46, 0.5, 0.5, 300.0, True),
    ],
)
def test_refresh_due(
    now: float, expires_at: float | None, lifetime: float | None, margin: float, due: bool
) -> None:
    assert refresh_due(now, expires_at, lifetime, margin) is due


def test_scope_401_is_told_from_an_expired_token() -> None:
    assert is_scope_error(Unauthorized(401, ["The token is not authorized for this scope."]))
    assert not is_scope_error(Unauthorized(401, ["Invalid token: access token is invalid"]))
    assert not is_scope_error(Unauthorized(403, ["The token is not authorized for this scope."]))


@pytest.mark.parametrize(
    ("status", "body", "reason", "code"),
    [
        (
            400,
            b'{"statusCode":400,"error":"invalid_grant","message":"Invalid grant: refresh token is'
            b' invalid"}',
            "invalid_grant: Invalid grant: refresh token is invalid",
            "invalid_grant",
        ),
        (
            400,
            b'{"error":"invalid_grant","error_description":"expired"}',
            "invalid_grant: expired",
            "invalid_grant",
        ),
        (
            401,
            b'{"statusCode":401,"message":"Invalid client","error":"Unauthorized"}',
            "HTTP 401: Invalid client",
            "Unauthorized",
        ),
        (422, b'{"message":["a","b"]}', "HTTP 422: a; b", None),
        (400, b"<html>", "HTTP 400: HTTP 400", None),
        (200, b"{}", "the token endpoint answered 200 without tokens (2 bytes)", None),
    ],
)
def test_read_token_answer_failures(
    status: int, body: bytes, reason: str, code: str | None
) -> None:
    with pytest.raises(TokenRefreshFailed) as info:
        read_token_answer(status, body)
    assert info.value.reason == reason
    assert info.value.error_code == code
    assert info.value.status_code == 401  # a refused refresh counts as a 401
    assert str(info.value) == f"token refresh failed: {reason}"


def test_read_token_answer_transient_and_ok() -> None:
    with pytest.raises(ServerError):
        read_token_answer(503, b"<html>busy</html>")
    answer = read_token_answer(
        200, b'{"access_token":"a","refresh_token":"r","expires_in":86399,"userId":"u"}'
    )
    assert (answer.access_token, answer.refresh_token, answer.expires_in) == ("a", "r", 86399)


def test_token_url_rules() -> None:
    kwargs: dict[str, Any] = {}
    assert str(OAuthProvider("i", "s", "r").token_url) == DEFAULT_TOKEN_URL
    with pytest.raises(ConfigurationError, match="https"):
        OAuthProvider("i", "s", "r", token_url="http://example.com/oauth/token", **kwargs)
    assert OAuthProvider("i", "s", "r", token_url="http://127.0.0.1:1/oauth/token").token_url
    assert OAuthProvider(
        "i", "s", "r", token_url="http://proxy.internal/oauth/token", allow_insecure=True
    ).token_url
    with pytest.raises(ConfigurationError, match="client_secret") as info:
        OAuthProvider("i", "", "r")
    assert "r" not in str(info.value).split()


def test_reprs_hide_secrets() -> None:
    provider = OAuthProvider(CLIENT_ID, CLIENT_SECRET, REFRESH, access_token=STALE_ACCESS)
    tokens = TokenSet(access_token=STALE_ACCESS, refresh_token=REFRESH, expires_at=1.0)
    client = GrowthHubClient(token=provider)
    shown = " ".join(
        repr(x)
        for x in (
            provider,
            tokens,
            AccessToken(STALE_ACCESS, 3),
            FixedToken(STALE_ACCESS),
            client,
        )
    )
    for secret in (CLIENT_SECRET, REFRESH, STALE_ACCESS):
        assert secret not in shown


# -- single flight --------------------------------------------------------------------------


async def test_fifty_concurrent_updates_with_an_expired_token_make_one_refresh(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    rotations: list[TokenSet] = []
    provider = provider_for(sb, access_token=STALE_ACCESS, on_rotation=rotations.append)
    async with client_for(sb, provider, concurrency=50) as gh:
        outcomes = await asyncio.gather(*(gh.submit(f"c{n}", UPDATE) for n in range(50)))
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert oauth_stats(sb) == {"requests": 1, "refreshes": 1, "byStatus": {"200": 1}}
    assert provider.generation == 1
    assert len(rotations) == 1
    assert rotations[0].refresh_token == live_refresh_token(sb)
    # Each record: the refused try with the old token (at most), then one with the new one.
    assert all(o.attempts <= 2 for o in outcomes)
    assert sb.stats()["byStatus"]["200"] == 50


async def test_fifty_concurrent_update_contact_calls_make_one_refresh(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    provider = provider_for(sb, access_token=STALE_ACCESS)
    async with client_for(sb, provider, concurrency=50) as gh:
        answers = await asyncio.gather(*(gh.update_contact(f"c{n}", UPDATE) for n in range(50)))
    assert all(a.succeded for a in answers)
    assert oauth_stats(sb)["requests"] == 1


async def test_a_401_with_an_old_token_after_the_refresh_does_not_refresh_again(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    provider = provider_for(sb, access_token=STALE_ACCESS)
    try:
        first = await provider.token()
        assert first.generation == 0
        assert await asyncio.gather(*(provider.rejected(0) for _ in range(10))) == [True] * 10
        assert oauth_stats(sb)["requests"] == 1
        # A late answer for generation 0: the token is already replaced, no new refresh.
        assert await provider.rejected(0) is True
        assert oauth_stats(sb)["requests"] == 1
        # The new token refused before any success: refreshing again would only burn tokens.
        assert await provider.rejected(1) is False
        provider.accepted(1)
        assert await provider.rejected(1) is True  # it had worked: now a refresh is right
        assert oauth_stats(sb)["requests"] == 2
    finally:
        await provider.aclose()


async def test_the_rotation_reaches_the_callback_before_the_new_token_is_used(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    seen: list[tuple[str, int]] = []

    async def persist(tokens: TokenSet) -> None:
        # Nothing has been written with the new token yet, and the caller may take its time.
        seen.append((tokens.refresh_token, sb.stats()["byStatus"].get("200", 0)))
        await asyncio.sleep(0.05)
        assert sb.stats()["byStatus"].get("200", 0) == 0

    provider = provider_for(sb, on_rotation=persist)  # no access token: refresh first
    async with client_for(sb, provider, concurrency=5) as gh:
        outcomes = await asyncio.gather(*(gh.submit(f"c{n}", UPDATE) for n in range(10)))
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert seen == [(live_refresh_token(sb), 0)]
    assert all(o.attempts == 1 for o in outcomes)  # a proactive refresh: nothing refused


async def test_a_failing_callback_stops_the_token_and_keeps_the_tokens_for_salvage(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())

    def broken(tokens: TokenSet) -> None:
        raise OSError("disk full")

    provider = provider_for(sb, on_rotation=broken)
    async with client_for(sb, provider) as gh:
        outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(5))]
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert "rotation callback raised OSError" in (outcomes[0].error or "")
    assert provider.tokens is not None
    assert provider.tokens.refresh_token == live_refresh_token(sb)
    assert sb.stats()["requests"] == 0  # the unsaved token was never used


# -- the token file -------------------------------------------------------------------------


async def test_token_file_is_rewritten_atomically_with_mode_0600(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    path = tmp_path / "oauth.json"
    path.write_text(
        json.dumps(
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH,
                "access_token": STALE_ACCESS,
                "expires_at": 4_102_444_800,  # 2100: the client trusts it until a 401
                "token_url": f"{sb.base_url}/oauth/token",
                "note": "kept",
            }
        )
    )
    path.chmod(0o644)
    callback: list[TokenSet] = []
    provider = OAuthProvider.from_file(path, on_rotation=callback.append, retry=FAST_RETRY)
    async with client_for(sb, provider, concurrency=10) as gh:
        outcomes = await asyncio.gather(*(gh.submit(f"c{n}", UPDATE) for n in range(20)))
    assert {o.status for o in outcomes} == {Status.UPDATED}
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] == live_refresh_token(sb) == callback[0].refresh_token
    assert saved["access_token"] == callback[0].access_token != STALE_ACCESS
    assert saved["client_secret"] == CLIENT_SECRET
    assert saved["note"] == "kept"
    assert saved["expires_at"] > 4_000_000  # Unix time, for the next run
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["oauth.json"]  # no temp file left
    # The next run starts from the file with the rotated tokens and needs no refresh.
    again = OAuthProvider.from_file(path, retry=FAST_RETRY)
    async with client_for(sb, again) as gh:
        assert (await gh.submit("c1", UPDATE)).status is Status.UPDATED
    assert oauth_stats(sb)["requests"] == 1


def test_write_token_file_replaces_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    old_umask = os.umask(0)
    try:
        write_token_file(path, {"a": 1})
        write_token_file(path, {"a": 2})
    finally:
        os.umask(old_umask)
    assert json.loads(path.read_text()) == {"a": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(TypeError):
        write_token_file(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2}  # a failed write leaves the old file
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read"),
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"client_id": "i", "client_secret": CLIENT_SECRET}), "lacks refresh_token"),
    ],
)
def test_from_file_errors_never_show_values(
    tmp_path: Path, content: str | None, match: str
) -> None:
    path = tmp_path / "oauth.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=match) as info:
        OAuthProvider.from_file(path)
    assert CLIENT_SECRET not in str(info.value)


# -- long runs, failures, scope --------------------------------------------------------------


async def test_a_run_longer_than_the_token_lifetime_updates_every_record(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config(access_token_lifetime=0.3))
    provider = provider_for(sb)
    gh = client_for(sb, provider, rate="100/0.5s", concurrency=10)
    records = ((f"c{n}", UPDATE) for n in range(300))
    async with gh, gh.update_contacts(records) as stream:
        outcomes = [o async for o in stream]
    assert len(outcomes) == 300
    assert {o.status for o in outcomes} == {Status.UPDATED}
    assert stream.summary.elapsed > 1.0  # several lifetimes
    refreshes = oauth_stats(sb)["refreshes"]
    assert refreshes >= 4
    assert oauth_stats(sb)["requests"] == refreshes  # never a refused refresh
    assert provider.generation == refreshes


async def test_a_revoked_refresh_token_ends_records_unauthorized_after_one_attempt(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config(refresh_tokens=frozenset({"someone-else"})))
    events: list[Event] = []
    provider = provider_for(sb, access_token=STALE_ACCESS)
    async with client_for(sb, provider, concurrency=10, hooks=[events.append]) as gh:
        outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(40))]
    assert len(outcomes) == 40
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    reason = "token refresh failed: invalid_grant: Invalid grant: refresh token is invalid"
    assert {o.error for o in outcomes} == {reason}
    assert oauth_stats(sb) == {"requests": 1, "refreshes": 0, "byStatus": {"400": 1}}
    assert sb.stats()["requests"] <= 10  # only those in flight when it failed were sent
    stops = [e for e in events if type(e).__name__ == "TokenStopped"]
    assert len(stops) == 1
    with pytest.raises(TokenRefreshFailed, match="invalid_grant"):
        await provider.token()  # still failed, still no new attempt
    assert oauth_stats(sb)["requests"] == 1


async def test_token_endpoint_down_gives_unauthorized_after_the_retries(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OAuthProvider(
        CLIENT_ID,
        CLIENT_SECRET,
        REFRESH,
        token_url=f"http://127.0.0.1:{port}/oauth/token",
        retry=FAST_RETRY,
    )
    async with client_for(sb, provider) as gh:
        outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(20))]
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert all("token endpoint failed after 3 tries" in (o.error or "") for o in outcomes)
    assert provider.refreshes == 3  # the retry policy's tries, then never again
    assert sb.stats()["requests"] == 0


async def test_a_scope_401_and_a_403_are_not_refreshed(start_sandbox: StartSandbox) -> None:
    sb = await start_sandbox(oauth_sandbox_config(scope="contacts.readonly"))
    provider = provider_for(sb)
    async with client_for(sb, provider, concurrency=1, unauthorized_limit=3) as gh:
        with pytest.raises(Unauthorized, match="not authorized for this scope") as info:
            await gh.update_contact("c0", UPDATE)
        assert type(info.value) is Unauthorized
        outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(6))]
    assert {o.status for o in outcomes} == {Status.UNAUTHORIZED}
    assert oauth_stats(sb)["requests"] == 1  # the first token only: no refresh on the 401s
    assert sb.stats()["requests"] == 3  # stopped after unauthorized_limit refusals
    assert "refused (401) 3 times" in (outcomes[-1].error or "")

    sb403 = await start_sandbox(oauth_sandbox_config())
    sb403.set_faults(Faults(scripts={"c1": ["403"]}))
    provider = provider_for(sb403)
    async with client_for(sb403, provider) as gh:
        outcome = await gh.submit("c1", UPDATE)
    assert (outcome.status, outcome.http_status, outcome.attempts) == (Status.UNAUTHORIZED, 403, 1)
    assert oauth_stats(sb403)["requests"] == 1


async def test_current_hands_over_a_token_without_waiting_only_when_token_would_too(
    start_sandbox: StartSandbox,
) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    assert provider_for(sb).current() is None  # no access token yet: token() refreshes
    # Within the refresh margin of its expiry: due.
    provider = provider_for(sb, access_token="soon-gone", expires_at=time.time() + 60)
    assert provider.current() is None
    async with client_for(sb, provider) as gh:
        assert (await gh.submit("c1", UPDATE)).status is Status.UPDATED
        token = provider.current()
        assert token is not None
        assert token.value != "soon-gone"
        assert token is await provider.token()  # at hand: nothing due
    assert oauth_stats(sb)["refreshes"] == 1
    revoked = OAuthProvider(
        CLIENT_ID,
        CLIENT_SECRET,
        "revoked-refresh",
        access_token="refused",
        token_url=f"{sb.base_url}/oauth/token",
    )
    assert revoked.current() is not None  # no expiry known: not due
    with pytest.raises(TokenRefreshFailed):
        await revoked.rejected(0)  # a 401, and the refresh fails
    assert revoked.current() is None  # token() raises now: so must the client's path
    await revoked.aclose()

    asked: list[int] = []

    class Counted(FixedToken):
        """A subclass with its own token(): the client must ask it, not the fixed value."""

        async def token(self) -> AccessToken:
            asked.append(1)
            return await super().token()

    async with client_for(sb, Counted(TEST_TOKEN)) as gh:  # type: ignore[arg-type]
        for n in range(3):
            assert (await gh.submit(f"c{n}", UPDATE)).status is Status.UPDATED
    assert len(asked) == 3


async def test_fixed_tokens_and_providers_mix(start_sandbox: StartSandbox) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    provider = provider_for(sb, access_token=STALE_ACCESS)
    async with GrowthHubClient(
        tokens={"pit": TEST_TOKEN, "app": provider, "bad": FixedToken("nope")},
        base_url=sb.base_url,
        rate=None,
        retry=FAST_RETRY,
    ) as gh:
        assert (await gh.submit("c1", UPDATE, token_key="pit")).status is Status.UPDATED
        assert (await gh.submit("c2", UPDATE, token_key="app")).status is Status.UPDATED
        bad = await gh.submit("c3", UPDATE, token_key="bad")
    assert (bad.status, bad.attempts) == (Status.UNAUTHORIZED, 1)  # no refresher: final
    assert oauth_stats(sb)["requests"] == 1


async def test_no_secret_in_logs_errors_events_or_outcomes(
    start_sandbox: StartSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sb = await start_sandbox(oauth_sandbox_config(access_token_lifetime=0.2))
    seen: list[str] = []
    events: list[Event] = []
    provider = provider_for(sb, access_token=STALE_ACCESS)
    async with client_for(sb, provider, rate="50/0.5s", hooks=[events.append]) as gh:
        outcomes = [o async for o in gh.update_contacts((f"c{n}", UPDATE) for n in range(40))]
        seen.append(repr(gh))
    assert {o.status for o in outcomes} == {Status.UPDATED}
    issued = (
        [provider.tokens.access_token, provider.tokens.refresh_token] if provider.tokens else []
    )
    # Now revoke everything: the failure path's messages too.
    assert sb.oauth is not None
    sb.oauth.refresh_tokens.clear()
    provider2 = provider_for(sb, access_token=STALE_ACCESS)
    async with client_for(sb, provider2) as gh:
        outcomes += [o async for o in gh.update_contacts((f"d{n}", UPDATE) for n in range(5))]
        try:
            await gh.update_contact("d9", UPDATE)
        except HTTPStatusError as exc:
            seen.extend((str(exc), repr(exc), repr(vars(exc))))
    seen.extend(repr(o) for o in outcomes)
    seen.extend(repr(e) for e in events)
    seen.extend((repr(provider), repr(provider.tokens), repr(provider2.failure)))
    seen.append(caplog.text)
    assert "refreshed" in caplog.text  # the DEBUG lines are there, without values
    text = "\n".join(seen)
    for secret in (CLIENT_SECRET, REFRESH, STALE_ACCESS, *issued):
        assert secret not in text


# -- the command line -------------------------------------------------------------------------


def oauth_file(tmp_path: Path, sb: Sandbox, refresh_token: str = REFRESH) -> Path:
    path = tmp_path / "oauth.json"
    path.write_text(
        json.dumps(
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": refresh_token,
                "access_token": STALE_ACCESS,
                "token_url": f"{sb.base_url}/oauth/token",
            }
        )
    )
    path.chmod(0o600)
    return path


async def test_cli_update_with_oauth_file(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    sb = await start_sandbox(oauth_sandbox_config())
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [{"contactId": f"c{n:03d}", "firstName": "Ada"} for n in range(30)])
    path = oauth_file(tmp_path, sb)
    out = tmp_path / "out.jsonl"
    common = ["--base-url", sb.base_url, "--rate", "1000/1s", "--no-progress"]
    ran = await run_cli(
        "update", str(source), "--out", str(out), "--oauth", str(path), *common, token=None
    )
    assert ran.status == 0, ran.stderr
    assert {line["status"] for line in journal_lines(out)} == {"updated"}
    assert oauth_stats(sb)["requests"] == 1
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] == live_refresh_token(sb)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    issued = (saved["access_token"], saved["refresh_token"])
    for secret in (CLIENT_SECRET, REFRESH, STALE_ACCESS, *issued):
        assert secret not in ran.stdout + ran.stderr
        assert secret not in out.read_text()

    # A revoked refresh token: every record unauthorized with the server's reason, one try.
    path = oauth_file(tmp_path, sb, refresh_token="revoked-Hh31")
    saved = json.loads(path.read_text())
    out2 = tmp_path / "out2.jsonl"
    ran = await run_cli(
        "update", str(source), "--out", str(out2), "--oauth", str(path), *common, token=None
    )
    assert ran.status == 1
    lines = journal_lines(out2)
    assert len(lines) == 30
    assert {line["status"] for line in lines} == {"unauthorized"}
    assert all("invalid_grant" in line["error"] for line in lines)
    assert oauth_stats(sb)["requests"] == 2  # one attempt for the whole run
    assert json.loads(path.read_text()) == saved  # nothing rotated, file untouched

    # A missing file is a usage problem, exit 2, before anything is sent.
    ran = await run_cli(
        "update", str(source), "--out", str(tmp_path / "o3.jsonl"), "--oauth",
        str(tmp_path / "missing.json"), *common, token=None,
    )  # fmt: skip
    assert ran.status == 2
    assert "cannot read the token file" in ran.stderr


async def test_cli_oauth_file_without_token_url_refreshes_at_the_sandbox(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # Issue 18: the token URL follows --base-url; the secrets never go to the production host.
    sb = await start_sandbox(oauth_sandbox_config())
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [{"contactId": f"c{n:03d}", "firstName": "Ada"} for n in range(10)])
    path = oauth_file(tmp_path, sb)
    data = json.loads(path.read_text())
    del data["token_url"]
    path.write_text(json.dumps(data))
    out = tmp_path / "out.jsonl"
    common = ["--base-url", sb.base_url, "--rate", "1000/1s", "--no-progress"]
    ran = await run_cli(
        "update", str(source), "--out", str(out), "--oauth", str(path), *common, token=None
    )
    assert ran.status == 0, ran.stderr
    assert oauth_stats(sb) == {"requests": 1, "refreshes": 1, "byStatus": {"200": 1}}
    assert json.loads(path.read_text())["refresh_token"] == live_refresh_token(sb)
