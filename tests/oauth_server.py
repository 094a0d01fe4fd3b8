"""A hostile OAuth app and API on loopback, written for the OAuth tests (issue 18).

Not the project's sandbox: this server does what HighLevel (or a gateway in front of it) may do
and the sandbox never will, each behaviour switched on by a field:

- **strict rotation**: a refresh token works once; used twice it gets ``400 invalid_grant``;
- ``echo_form``: a 400 whose body quotes the raw form it received (URL-encoded secrets);
- ``echo_authorization``: a PUT 401 whose body and headers quote the ``Authorization`` header;
- ``answer``: reshapes a 200 token answer (odd field types, missing fields);
- ``fresh_refusals``: each new access token is refused (401 "Invalid JWT") for its first N
  requests; ``every_nth_refused``: every Nth PUT is refused whatever the token;
- ``location_403``: every PUT gets ``403 The token does not have access to this location.``;
- ``before_token``: runs as a token request arrives (another tool rotating the token).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CLIENT_ID = "app-7f3a"
CLIENT_SECRET = "cs+Zq81/x=Secret"  # '+', '/' and '=' change when URL-encoded
FIRST_REFRESH = "rt0+Kd92m/Refresh=="
STALE_ACCESS = "at-stale/Pw55r+Access"  # never issued by this server: refused as expired


@dataclass
class OAuthServer:
    """The state of one hostile OAuth app and API; ``url`` once started."""

    refresh_tokens: set[str] = field(default_factory=lambda: {FIRST_REFRESH})
    echo_form: bool = False
    echo_authorization: bool = False
    answer: Callable[[dict[str, Any]], Any] | None = None
    fresh_refusals: int = 0
    every_nth_refused: int = 0
    refused_contacts: dict[str, int] = field(default_factory=dict)  # contact -> 401s still due
    put_delay: float = 0.0  # seconds before each PUT is answered
    location_403: bool = False
    before_token: Callable[[], None] | None = None
    lifetime: Any = 86_399
    url: str = ""
    token_requests: int = 0
    token_statuses: list[int] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    puts: int = 0
    put_statuses: list[int] = field(default_factory=list)
    access: dict[str, int] = field(default_factory=dict)  # token -> refusals still due
    used: set[str] = field(default_factory=set)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def live_refresh_token(self) -> str:
        (token,) = self.refresh_tokens
        return token

    def issue(self) -> dict[str, Any]:
        n = next(self._serial)
        access, refresh = f"at{n}+New/Access=={n}", f"rt{n}+New/Refresh=={n}"
        self.access[access] = self.fresh_refusals
        self.refresh_tokens = {refresh}
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": "contacts.write",
            "userType": "Location",
            "locationId": "loc1",
            "companyId": "comp1",
        }

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self.before_token is not None:
            self.before_token()
        raw = await request.text()
        form = dict(await request.post())
        self.forms.append({k: str(v) for k, v in form.items()})
        status, body = self._token_answer(form, raw)
        self.token_statuses.append(status)
        return web.Response(status=status, text=body, content_type="application/json")

    def _token_answer(self, form: dict[str, Any], raw: str) -> tuple[int, str]:
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, json.dumps({"statusCode": 401, "message": "Invalid client"})
        refresh = form.get("refresh_token")
        if refresh not in self.refresh_tokens:
            self.used.add(str(refresh))
            message = "Invalid grant: refresh token is invalid"
            if self.echo_form:
                message += f" (received: {raw})"
            body = {"statusCode": 400, "error": "invalid_grant", "message": message}
            if self.echo_form:
                body["received"] = raw
                body["traceId"] = f"trace {form.get('client_secret')}"
            return 400, json.dumps(body)
        self.used.add(str(refresh))
        issued = self.issue()
        shaped = self.answer(issued) if self.answer is not None else issued
        return 200, shaped if isinstance(shaped, str) else json.dumps(shaped)

    async def put(self, request: web.Request) -> web.Response:
        self.puts += 1
        await request.read()
        if self.put_delay:
            await asyncio.sleep(self.put_delay)
        status, body, headers = self._put_answer(request)
        self.put_statuses.append(status)
        return web.Response(
            status=status, text=json.dumps(body), content_type="application/json", headers=headers
        )

    def _put_answer(self, request: web.Request) -> tuple[int, Any, dict[str, str]]:
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        if self.location_403:
            message = "The token does not have access to this location."
            return 403, {"statusCode": 403, "message": message}, {}
        refused = token not in self.access
        if not refused and self.access[token] > 0:
            self.access[token] -= 1
            refused = True
        if self.every_nth_refused and self.puts % self.every_nth_refused == 0:
            refused = True
        contact_id = request.match_info["contact_id"]
        if self.refused_contacts.get(contact_id, 0) > 0:
            self.refused_contacts[contact_id] -= 1
            refused = True
        if refused:
            message = "Invalid JWT"
            headers: dict[str, str] = {}
            if self.echo_authorization:
                message += f": got {authorization!r}"
                headers["X-Echo-Authorization"] = authorization
            return 401, {"statusCode": 401, "message": message, "error": "Unauthorized"}, headers
        return 200, {"succeded": True, "contact": {"id": contact_id}}, {}


@contextlib.asynccontextmanager
async def serve(server: OAuthServer) -> AsyncIterator[OAuthServer]:
    """Run ``server`` on a free loopback port for the block."""
    app = web.Application()
    app.router.add_post("/oauth/token", server.token)
    app.router.add_put("/contacts/{contact_id}", server.put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await asyncio.shield(runner.cleanup())


def token_file_data(server: OAuthServer | None = None, **overrides: Any) -> dict[str, Any]:
    """A token file's content for this app (no token_url: it follows the base URL)."""
    data: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": FIRST_REFRESH,
        "access_token": STALE_ACCESS,
        "expires_at": 4_102_444_800,  # 2100: trusted until a 401
    }
    data.update(overrides)
    return data
