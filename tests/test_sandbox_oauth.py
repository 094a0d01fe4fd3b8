"""The sandbox's POST /oauth/token: rotation, contract-shaped errors, expiry, scope."""

from __future__ import annotations

from typing import Any

import aiohttp
from openapi_schema_validator import OAS30Validator

from growthhub_async.sandbox import OAuthConfig, Sandbox
from tests.conftest import StartSandbox, sandbox_config
from tests.contract_spec import COMMON, CONTRACT, load_json, validator

OAUTH = CONTRACT / "apps" / "oauth.json"
CLIENT = {"client_id": "app-id", "client_secret": "app-secret"}


def oauth_config(**overrides: Any) -> OAuthConfig:
    settings: dict[str, Any] = {
        "client_id": "app-id",
        "client_secret": "app-secret",
        "refresh_tokens": frozenset({"rt-0"}),
    }
    settings.update(overrides)
    return OAuthConfig(**settings)


async def token_call(
    http: aiohttp.ClientSession, sb: Sandbox, form: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(f"{sb.base_url}/oauth/token", data=form) as resp:
        return resp.status, await resp.json()


async def put(
    http: aiohttp.ClientSession, sb: Sandbox, token: str, contact_id: str = "c1"
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Version": "2021-07-28"}
    async with http.put(
        f"{sb.base_url}/contacts/{contact_id}", json={"firstName": "A"}, headers=headers
    ) as resp:
        return resp.status, await resp.json()


def refresh_form(refresh_token: str) -> dict[str, str]:
    return {**CLIENT, "grant_type": "refresh_token", "refresh_token": refresh_token}


async def test_refresh_rotates_and_the_old_refresh_token_stops_working(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(oauth=oauth_config()))
    status, body = await token_call(http, sb, refresh_form("rt-0"))
    assert status == 200
    spec = load_json(OAUTH)["components"]["schemas"]["GetAccessCodeSuccessfulResponseDto"]
    OAS30Validator(spec).validate(body)
    assert body["refresh_token"] != "rt-0"
    assert body["expires_in"] == 86_399.0
    # The issued access token writes; the used refresh token is dead.
    assert (await put(http, sb, body["access_token"]))[0] == 200
    status, error = await token_call(http, sb, refresh_form("rt-0"))
    assert status == 400
    assert error["error"] == "invalid_grant"
    validator("BadRequestDTO", document=COMMON).validate(error)
    # The rotated one works once.
    assert (await token_call(http, sb, refresh_form(body["refresh_token"])))[0] == 200
    assert sb.stats()["oauth"] == {
        "requests": 3,
        "refreshes": 2,
        "byStatus": {"200": 2, "400": 1},
    }


async def test_token_endpoint_errors(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(oauth=oauth_config()))
    status, body = await token_call(http, sb, {**refresh_form("rt-0"), "client_secret": "wrong"})
    assert status == 401
    validator("UnauthorizedDTO", document=COMMON).validate(body)
    status, body = await token_call(http, sb, {"grant_type": "refresh_token"})
    assert status == 422
    validator("UnprocessableDTO", document=COMMON).validate(body)
    assert body["message"] == [
        "client_id should not be empty",
        "client_secret should not be empty",
    ]
    status, body = await token_call(http, sb, {**CLIENT, "grant_type": "authorization_code"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    # None of these used up the refresh token.
    assert (await token_call(http, sb, refresh_form("rt-0")))[0] == 200


async def test_expired_and_unscoped_access_tokens_get_distinct_401s(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(
        sandbox_config(oauth=oauth_config(access_token_lifetime=0.05, scope="contacts.readonly"))
    )
    _, body = await token_call(http, sb, refresh_form("rt-0"))
    status, error = await put(http, sb, body["access_token"])
    assert (status, error["message"]) == (401, "The token is not authorized for this scope.")
    sb2 = await start_sandbox(sandbox_config(oauth=oauth_config(access_token_lifetime=0.05)))
    _, body = await token_call(http, sb2, refresh_form("rt-0"))
    assert (await put(http, sb2, body["access_token"]))[0] == 200
    assert sb2.oauth is not None
    sb2.oauth.access[body["access_token"]].expires_at = 0.0  # expire it now, no sleeping
    status, error = await put(http, sb2, body["access_token"])
    assert status == 401
    assert error == {
        "statusCode": 401,
        "message": "Invalid token: access token is invalid",
        "error": "Unauthorized",
    }


async def test_no_oauth_app_means_no_token_endpoint(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sandbox.base_url}/oauth/token", data=refresh_form("x")) as resp:
        assert resp.status == 404
    assert "oauth" not in sandbox.stats()


async def test_reset_restores_the_configured_refresh_tokens(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    sb = await start_sandbox(sandbox_config(oauth=oauth_config()))
    assert (await token_call(http, sb, refresh_form("rt-0")))[0] == 200
    assert (await token_call(http, sb, refresh_form("rt-0")))[0] == 400
    sb.reset()
    assert sb.stats()["oauth"]["requests"] == 0
    assert (await token_call(http, sb, refresh_form("rt-0")))[0] == 200


def test_oauth_config_repr_hides_secrets() -> None:
    config = oauth_config(client_secret="very-secret-value", refresh_tokens=frozenset({"rt-x"}))
    shown = repr(sandbox_config(oauth=config))
    assert "very-secret-value" not in shown
    assert "rt-x" not in shown
