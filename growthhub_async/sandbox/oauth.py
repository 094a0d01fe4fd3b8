"""The sandbox's ``POST /oauth/token`` (``grant_type=refresh_token``) and its access tokens.

What it emulates of HighLevel's OAuth 2.0 (contract: ``apps/oauth.json``, issue 6):

- The body is form-encoded: ``client_id``, ``client_secret``, ``grant_type``, ``refresh_token``
  (``user_type`` is accepted and ignored). Missing fields: 422 with one message per field; a
  grant type other than ``refresh_token``: 400 ``unsupported_grant_type``; wrong client
  credentials: 401 (``UnauthorizedDTO``); an unknown, used or revoked refresh token: 400
  ``invalid_grant``.
- **Rotation**: each refresh token works once. The answer carries a new access token and a new
  refresh token; the old refresh token stops working at once (which is why a lost answer, or
  two refreshes racing, lock an integrator out).
- Access tokens live ``access_token_lifetime`` seconds (the event loop's clock). An expired
  one gets the API's 401 body (``Invalid token: access token is invalid``); one whose scope
  lacks ``contacts.write`` gets ``The token is not authorized for this scope.``, so a client
  can tell "refresh helps" from "refresh does not help". Old access tokens stay valid until
  they expire, as the real API's do.
- The rate budget of OAuth tokens is per location (one budget whatever the access token), as
  the API's per app and location limits are.
- **Agency apps** (``user_type="Company"``, issue 13): the refresh gives an agency token, which
  opens no contact (403 ``The token does not have access to this location.``) but mints a
  location's token with ``POST /oauth/locationToken`` (``Version`` header, bearer agency token,
  form ``companyId``, ``locationId``): 401 for an agency token that is unknown or expired, 422
  for a missing field, 400 for another company or a location the app is not installed on
  (``locations``). A minted token writes that location's contacts only, on that location's
  budget.

Stats (``oauth`` in ``/__sandbox/stats``): ``requests`` to the token endpoint, ``refreshes``
that succeeded, and ``byStatus``.
"""

from __future__ import annotations

import itertools
import math
import secrets
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web

__all__ = [
    "SCOPE_MESSAGE",
    "WRITE_SCOPE",
    "OAuthConfig",
    "OAuthServer",
]

WRITE_SCOPE: Final = "contacts.write"
SCOPE_MESSAGE: Final = "The token is not authorized for this scope."

_encode = msgspec.json.Encoder().encode

_EXPIRED: Final = _encode(
    {
        "statusCode": 401,
        "message": "Invalid token: access token is invalid",
        "error": "Unauthorized",
    }
)
_NO_SCOPE: Final = _encode({"statusCode": 401, "message": SCOPE_MESSAGE, "error": "Unauthorized"})
_BAD_CLIENT: Final = _encode(
    {
        "statusCode": 401,
        "message": "Invalid client: client credentials are invalid",
        "error": "Unauthorized",
    }
)
_INVALID_GRANT: Final = _encode(
    {
        "statusCode": 400,
        "error": "invalid_grant",
        "message": "Invalid grant: refresh token is invalid",
    }
)
_BAD_GRANT_TYPE: Final = _encode(
    {
        "statusCode": 400,
        "error": "unsupported_grant_type",
        "message": "grant_type must be refresh_token here",
    }
)


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """The OAuth app the sandbox knows: its credentials, valid refresh tokens, token lifetime.

    ``refresh_tokens`` are the ones valid at start (and again after a reset); each works once.
    ``scope`` is what issued access tokens may do: without ``contacts.write`` every PUT with
    them gets the scope 401.
    """

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"  # noqa: S105 (a throwaway local value)
    refresh_tokens: frozenset[str] = frozenset({"sandbox-refresh-token"})
    access_token_lifetime: float = 86_399.0
    scope: str = "contacts.readonly contacts.write"
    location_id: str = "sandboxLocation0000001"
    user_type: str = "Location"
    """``"Company"``: an agency app, whose tokens mint location tokens (issue 13)."""
    company_id: str = "sandboxCompany00000001"
    locations: frozenset[str] | None = None
    """The locations an agency app is installed on (``None``: any)."""

    def __post_init__(self) -> None:
        if isinstance(self.refresh_tokens, str):
            raise TypeError("refresh_tokens is a set of strings, not a single string")
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if not (math.isfinite(self.access_token_lifetime) and self.access_token_lifetime > 0):
            raise ValueError(
                "access_token_lifetime must be a positive number of seconds, "
                f"not {self.access_token_lifetime!r}"
            )

    def __repr__(self) -> str:
        # Secrets stay out of reprs, as the main config's tokens do.
        return (
            f"OAuthConfig(client_id={self.client_id!r}, client_secret=<hidden>, "
            f"refresh_tokens=<{len(self.refresh_tokens)} hidden>, "
            f"access_token_lifetime={self.access_token_lifetime}, scope={self.scope!r})"
        )


@dataclass(slots=True)
class _Issued:
    expires_at: float
    can_write: bool
    location: str | None  # None: an agency (Company) token


class OAuthServer:
    """The token endpoint's state: issued access tokens, live refresh tokens, counters."""

    def __init__(self, config: OAuthConfig) -> None:
        self.config = config
        self.access: dict[str, _Issued] = {}
        self.refresh_tokens: set[str] = set()
        self._serial = itertools.count(1)
        self.requests = 0
        self.refreshes = 0
        self.mints = 0
        self.by_status: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the configured refresh tokens; forget issued tokens and counters."""
        self.access.clear()
        self.refresh_tokens = set(self.config.refresh_tokens)
        self.requests = 0
        self.refreshes = 0
        self.mints = 0
        self.by_status.clear()

    def stats(self) -> dict[str, Any]:
        """The ``oauth`` part of the sandbox's stats."""
        stats: dict[str, Any] = {
            "requests": self.requests,
            "refreshes": self.refreshes,
            "byStatus": dict(self.by_status),
        }
        if self.config.user_type == "Company":
            stats["mints"] = self.mints
        return stats

    def issue(self, now: float) -> dict[str, Any]:
        """A new access and refresh token pair (the refresh token becomes valid)."""
        serial = next(self._serial)
        access = f"sandbox-access-{serial}-{_nonce()}"
        refresh = f"sandbox-refresh-{serial}-{_nonce()}"
        lifetime = self.config.access_token_lifetime
        agency = self.config.user_type == "Company"
        location = None if agency else self.config.location_id
        can_write = WRITE_SCOPE in self.config.scope.split()
        self.access[access] = _Issued(now + lifetime, can_write, location)
        self.refresh_tokens.add(refresh)
        answer = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "refresh_token": refresh,
            "scope": self.config.scope,
            "userType": self.config.user_type,
            "companyId": self.config.company_id,
            "userId": "sandboxUser0000000001",
        }
        if location is not None:
            answer["locationId"] = location
        return answer

    def authenticate(self, token: str, now: float) -> tuple[str | None, str | None, bytes]:
        """For an access token: ``(budget key, location, b"")`` when it may write, else
        ``(None, None, 401 body)``. An agency token's location is ``None`` (it opens no
        contact). An unknown token gets the same body as an expired one."""
        issued = self.access.get(token)
        if issued is None or now >= issued.expires_at:
            return None, None, _EXPIRED
        if not issued.can_write:
            return None, None, _NO_SCOPE
        return f"oauth:{issued.location or 'agency'}", issued.location, b""

    def mint(self, bearer: str | None, form: Any, now: float) -> tuple[int, bytes]:
        """``POST /oauth/locationToken``: a location token from an agency token. Counts it."""
        self.requests += 1
        status, body = self._mint(bearer, form, now)
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if status == 200:
            self.mints += 1
        return status, body

    def _mint(self, bearer: str | None, form: Any, now: float) -> tuple[int, bytes]:
        issued = self.access.get(bearer or "")
        if issued is None or now >= issued.expires_at or issued.location is not None:
            return 401, _EXPIRED
        missing = [
            f"{name} should not be empty"
            for name in ("companyId", "locationId")
            if not form.get(name)
        ]
        if missing:
            message = {"statusCode": 422, "message": missing, "error": "Unprocessable Entity"}
            return 422, _encode(message)
        location = form.get("locationId")
        allowed = self.config.locations
        if form.get("companyId") != self.config.company_id or (
            allowed is not None and location not in allowed
        ):
            message = {
                "statusCode": 400,
                "message": "Location not found or the app is not installed on it",
                "error": "Bad Request",
            }
            return 400, _encode(message)
        serial = next(self._serial)
        access = f"sandbox-location-{serial}-{_nonce()}"
        lifetime = self.config.access_token_lifetime
        self.access[access] = _Issued(now + lifetime, issued.can_write, location)
        return 200, _encode(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": lifetime,
                "scope": self.config.scope,
                "locationId": location,
                "userId": "sandboxUser0000000001",
            }
        )

    def answer(self, form: Any, now: float) -> tuple[int, bytes]:
        """The token endpoint's status and JSON body for a parsed form. Counts it."""
        self.requests += 1
        status, body = self._answer(form, now)
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if status == 200:
            self.refreshes += 1
        return status, body

    def _answer(self, form: Any, now: float) -> tuple[int, bytes]:
        missing = [
            f"{name} should not be empty"
            for name in ("client_id", "client_secret", "grant_type")
            if not form.get(name)
        ]
        if missing:
            message = {"statusCode": 422, "message": missing, "error": "Unprocessable Entity"}
            return 422, _encode(message)
        if form.get("grant_type") != "refresh_token":
            return 400, _BAD_GRANT_TYPE
        if (
            form.get("client_id") != self.config.client_id
            or form.get("client_secret") != self.config.client_secret
        ):
            return 401, _BAD_CLIENT
        refresh = form.get("refresh_token")
        if not refresh or refresh not in self.refresh_tokens:
            return 400, _INVALID_GRANT
        self.refresh_tokens.discard(refresh)  # rotation: each refresh token works once
        return 200, _encode(self.issue(now))


def _nonce() -> str:
    return secrets.token_urlsafe(12)


async def read_form(request: web.Request) -> Any:
    """The request's form fields (an empty mapping for a body that is not a form)."""
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    return await request.post()
