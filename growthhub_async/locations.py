"""Many locations in one run (issue 13): location ids, tokens per location, agency tokens.

HighLevel limits each app *per location* (sub-account). A record that carries a ``locationId``
(a JSONL key or a CSV column) is routed by it: its :attr:`~growthhub_async.sources.Record.token_key`
is the location id, and the client sends it with that location's token, paced by that
location's own budget. The id is never sent in the body (the API answers 422 to it there).

Where a location's token comes from:

- :func:`load_tokens_file`: a JSON object ``{"<locationId>": "<token>"}`` (Private Integration
  Tokens, one per sub-account); an entry may instead be ``{"oauthFile": "path.json"}``, an
  OAuth token file for that location (:meth:`~growthhub_async.auth.OAuthProvider.from_file`,
  refreshed and rewritten as with ``--oauth``). The file holds secrets: one that others may
  read (mode wider than 0600) is refused unless the caller says so.
- :class:`AgencyTokens`: an agency (Company) OAuth app. Each location's access token is minted
  on first use with ``POST /oauth/locationToken`` (form ``companyId``, ``locationId``; contract
  ``apps/oauth.json``), cached until it expires, minted again on expiry or on an "invalid
  token" 401, one mint in flight per location. The agency token itself is an
  :class:`~growthhub_async.auth.OAuthProvider`: its refresh token rotates and is refreshed in
  that one place, persisted before use.

A record whose location has no token is ``rejected``, naming the location: it is never sent with
another location's token.

:func:`shard_of` is the stable hash that splits locations over machines (``--shard K/N``): BLAKE2b
of the id's UTF-8 bytes, the same on every machine and Python version (``hash()`` is salted
per process).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import yarl

from growthhub_async.auth import (
    AccessToken,
    OAuthProvider,
    TokenProvider,
    at_hand,
    refresh_due,
)
from growthhub_async.contact_id import LOCATION_KEY, MAX_LOCATION_LENGTH, location_problem
from growthhub_async.contact_id import json_type as _json_type
from growthhub_async.errors import (
    ConfigurationError,
    HTTPStatusError,
    TokenRefreshFailed,
    TransportError,
    error_for_status,
)
from growthhub_async.models import decode_error_body
from growthhub_async.retry import RetryPolicy, is_transient
from growthhub_async.transport import map_exceptions, no_hidden_resend

__all__ = [
    "LOCATION_KEY",
    "MAX_LOCATION_LENGTH",
    "AgencyTokens",
    "LocationToken",
    "LocationTokens",
    "check_location_id",
    "load_tokens_file",
    "location_problem",
    "shard_of",
]

log = logging.getLogger("growthhub_async.locations")

_API_VERSION: Final = "2021-07-28"


def check_location_id(value: object) -> str:
    """``value`` when it is a valid location id, else ``ConfigurationError`` saying why."""
    problem = location_problem(value)
    if problem is not None:
        raise ConfigurationError(problem)
    assert isinstance(value, str)
    return value


def shard_of(location_id: str, shards: int) -> int:
    """The shard (``0 .. shards-1``) of a location: BLAKE2b-64 of its UTF-8 id, mod ``shards``.

    Stable across machines, processes and Python versions, so every machine of a sharded job
    agrees on who owns a location and no location's budget is spent by two machines.
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.blake2b(location_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


# -- the tokens file ----------------------------------------------------------------------------


def load_tokens_file(
    path: str | os.PathLike[str], *, allow_readable: bool = False
) -> dict[str, str | TokenProvider]:
    """The tokens of ``path``: ``{locationId: token or OAuthProvider}``.

    ``path`` holds a JSON object whose keys are location ids and whose values are either a
    token (a non-empty string) or ``{"oauthFile": "<path>"}`` (relative to ``path``'s folder),
    an OAuth token file for that location. A file that others may read (group or other bits
    set) is refused unless ``allow_readable``. Raises ``ConfigurationError`` naming the entry,
    never its value.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(16 << 20)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the tokens file {where!r}: {exc.strerror or exc}"
        ) from None
    if stat.S_IMODE(mode) & 0o077 and not allow_readable:
        raise ConfigurationError(
            f"the tokens file {where!r} may be read by others (mode "
            f"{stat.S_IMODE(mode):04o}): run chmod 600 {where!r}, or pass "
            "--allow-readable-tokens if that is intended"
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        # The message of json would quote the text around the error: a token, perhaps.
        raise ConfigurationError(f"the tokens file {where!r} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"the tokens file {where!r} must hold a JSON object "
            '{"<locationId>": "<token>" or {"oauthFile": "<path>"}}'
        )
    if not data:
        raise ConfigurationError(f"the tokens file {where!r} names no location")
    folder = Path(where).parent
    tokens: dict[str, str | TokenProvider] = {}
    for key, value in data.items():
        problem = location_problem(key)
        if problem is not None:
            raise ConfigurationError(f"the tokens file {where!r}: a key: {problem}")
        tokens[key] = _entry(where, folder, key, value)
    return tokens


def _entry(where: str, folder: Path, key: str, value: object) -> str | TokenProvider:
    if isinstance(value, str):
        if not value or any(c.isspace() or not c.isprintable() for c in value):
            raise ConfigurationError(
                f"the tokens file {where!r}: the token of {key!r} is empty or holds "
                "whitespace or control characters"
            )
        return value
    if (
        isinstance(value, dict)
        and set(value) == {"oauthFile"}
        and isinstance(value["oauthFile"], str)
    ):
        return OAuthProvider.from_file(folder / value["oauthFile"])
    raise ConfigurationError(
        f"the tokens file {where!r}: the entry of {key!r} must be a token (a string) or "
        f'{{"oauthFile": "<path>"}}, not {_json_type(value)}'
    )


# -- agency tokens -----------------------------------------------------------------------------


class _Answer(msgspec.Struct):
    access_token: Any = None
    expires_in: Any = None


_decode_answer: Final = msgspec.json.Decoder(_Answer)


class AgencyTokens:
    """An agency (Company) OAuth app that mints each location's access token (issue 13).

    ``agency`` is the agency's :class:`~growthhub_async.auth.OAuthProvider` (a token file with
    ``user_type`` ``Company``): it alone refreshes the agency token, once for all locations,
    and persists every rotation before use. ``company_id`` is the agency's id (the token file's
    ``company_id``). :meth:`for_location` gives the provider of one location, made on first
    use; the client calls it for every location a record names.
    """

    def __init__(
        self,
        agency: OAuthProvider,
        company_id: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        refresh_margin: float = 300.0,
    ) -> None:
        if not isinstance(company_id, str) or not company_id:
            raise ConfigurationError("company_id must be a non-empty string")
        self.agency = agency
        self.company_id = company_id
        self.timeout = timeout
        self.retry = retry or RetryPolicy(max_tries=4, max_time=30.0, base_delay=0.5, max_delay=5.0)
        self.refresh_margin = refresh_margin
        self.mint_url: yarl.URL | None = None
        self._session: aiohttp.ClientSession | None = None
        self.mints = 0
        """Mint requests made (each try counts)."""

    def __repr__(self) -> str:
        return f"<AgencyTokens company={self.company_id!r} {self.mint_url}>"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **options: Any) -> AgencyTokens:
        """From an agency OAuth token file (``company_id`` beside the OAuth fields)."""
        agency = OAuthProvider.from_file(path)
        company = agency_company_id(path)
        return cls(agency, company, **options)

    def attach(self, base_url: yarl.URL) -> None:
        """Mint at ``{base_url}/oauth/locationToken``; the agency token refreshes beside it."""
        self.agency.attach(base_url)
        self.mint_url = base_url.joinpath("oauth", "locationToken")

    def for_location(self, location_id: str) -> LocationToken:
        """A new provider for ``location_id`` (the client keeps one per location)."""
        return LocationToken(self, check_location_id(location_id))

    async def aclose(self) -> None:
        """Close the mint session and the agency provider."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.agency.aclose()

    async def mint(self, location_id: str) -> tuple[str, float | None]:
        """One location token: ``(access_token, lifetime in seconds or None)``.

        Transient failures (connection errors, timeouts, 429, 5xx) are tried again; a 401
        from the agency token refreshes it once (the agency provider's single flight) and
        tries again. Anything else raises :class:`TokenRefreshFailed` with the reason.
        """
        loop = asyncio.get_running_loop()
        first = loop.time()
        tries = 0
        refreshed = False
        while True:
            tries += 1
            self.mints += 1
            agency = await self.agency.token()
            try:
                status, raw = await self._post(location_id, agency.value)
                if status == 200:
                    return self._read(raw, location_id)
                error = self._error(status, raw)
                raise error
            except (TransportError, HTTPStatusError) as exc:
                if isinstance(exc, TokenRefreshFailed):
                    raise
                if isinstance(exc, HTTPStatusError) and exc.status_code == 401 and not refreshed:
                    refreshed = True
                    if await self.agency.rejected(agency.generation):
                        continue
                delay = self.retry.next_delay(exc, tries=tries, elapsed=loop.time() - first)
                if delay is None or not is_transient(exc):
                    raise TokenRefreshFailed(
                        f"location {location_id}: the location token could not be minted "
                        f"after {tries} tries: {_describe(exc)}",
                        refresh_status=getattr(exc, "status_code", None),
                    ) from None
                await asyncio.sleep(delay)

    async def _post(self, location_id: str, bearer: str) -> tuple[int, bytes]:
        assert self.mint_url is not None, "attach() first (the client does it)"
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
                ),
                headers={"Accept": "application/json", "Version": _API_VERSION},
                trust_env=False,
            )
            no_hidden_resend(self._session)
        form = {"companyId": self.company_id, "locationId": location_id}
        with map_exceptions(self.agency.redactor):
            async with self._session.post(
                self.mint_url,
                data=form,
                headers={"Authorization": f"Bearer {bearer}"},
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(1 << 20)
                return resp.status, raw

    def _read(self, raw: bytes, location_id: str) -> tuple[str, float | None]:
        try:
            answer = _decode_answer.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            answer = _Answer()
        token = answer.access_token
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise TokenRefreshFailed(
                f"location {location_id}: the location token endpoint answered 200 without "
                f"an access token ({len(raw)} bytes)",
                refresh_status=200,
            )
        self.agency.redactor.add(token)
        lifetime = answer.expires_in
        if isinstance(lifetime, str):
            try:
                lifetime = float(lifetime)
            except ValueError:
                lifetime = None
        if not (
            isinstance(lifetime, int | float)
            and not isinstance(lifetime, bool)
            and math.isfinite(lifetime)
            and lifetime > 0
        ):
            lifetime = None
        return token, lifetime

    def _error(self, status: int, raw: bytes) -> HTTPStatusError:
        """The typed error of a mint's answer, the server's text redacted."""
        clean = self.agency.redactor
        body = decode_error_body(raw)
        found = body.message if body is not None else None
        listed = found if isinstance(found, list) else [found] if found is not None else []
        messages = [clean(m) for m in listed if isinstance(m, str)] or [f"HTTP {status}"]
        return error_for_status(status)(status, messages)


def agency_company_id(path: str | os.PathLike[str]) -> str:
    """The ``company_id`` (or ``companyId``) of an agency token file."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(16 << 20))
    except (OSError, ValueError, RecursionError):
        raise ConfigurationError(f"cannot read the agency token file {os.fspath(path)!r}") from None
    company = data.get("company_id", data.get("companyId")) if isinstance(data, dict) else None
    if not isinstance(company, str) or not company:
        raise ConfigurationError(
            f"the agency token file {os.fspath(path)!r} lacks company_id (the agency's id, "
            "as the token endpoint answered it)"
        )
    return company


class LocationToken(TokenProvider):
    """One location's access token, minted from the agency token; see :class:`AgencyTokens`.

    Minted on first use, cached until a little before it expires, minted again then or after
    a 401 "invalid token" on a token that has worked (one mint in flight, whoever asks). A
    token fresh from a mint that is refused before it ever worked is not minted again at once:
    the client retries with it after pauses, as for a refreshed OAuth token.
    """

    def __init__(self, agency: AgencyTokens, location_id: str) -> None:
        self._agency = agency
        self.location_id = location_id
        self._current: AccessToken | None = None
        self._expires_at: float | None = None
        self._lifetime: float | None = None
        self._generation = 0
        self._confirmed = False
        self._inflight: asyncio.Task[None] | None = None
        self._failure: TokenRefreshFailed | None = None
        # One redactor for all locations: a server may echo any token.
        self.__dict__["_redactor"] = agency.agency.redactor

    def __repr__(self) -> str:
        return f"<LocationToken {self.location_id} generation={self._generation}>"

    @property
    def refreshable(self) -> bool:
        """A 401 (not a scope error) mints again."""
        return True

    async def token(self) -> AccessToken:
        """The location's token, minted first when missing or due."""
        self._raise_if_failed()
        now = asyncio.get_running_loop().time()
        current = self._current
        if current is None or refresh_due(
            now, self._expires_at, self._lifetime, self._agency.refresh_margin
        ):
            await self._mint(self._generation)
            self._raise_if_failed()
            current = self._current
        assert current is not None
        return current

    def current(self) -> AccessToken | None:
        """The location's token when no mint is due (else :meth:`token` mints)."""
        return at_hand(
            self._current,
            self._failure,
            self._expires_at,
            self._lifetime,
            self._agency.refresh_margin,
        )

    async def rejected(self, generation: int) -> bool:
        """Mint again once for every caller refused with ``generation``."""
        self._raise_if_failed()
        if generation != self._generation:
            return True
        if not self._confirmed:
            return False  # fresh from a mint: the client pauses and tries it again
        await self._mint(generation)
        self._raise_if_failed()
        return True

    def fresh(self, generation: int) -> bool:
        """The current token, fresh from a mint, has not worked yet."""
        return generation == self._generation > 0 and not self._confirmed

    def expires_in(self) -> float | None:
        """Seconds until the current location token expires, by the event loop's clock."""
        if self._expires_at is None:
            return None
        return self._expires_at - asyncio.get_running_loop().time()

    def accepted(self, generation: int) -> None:
        """The current token works."""
        if generation == self._generation:
            self._confirmed = True

    async def aclose(self) -> None:
        """Wait for a mint in flight (the agency provider is closed by the client)."""
        if self._inflight is not None:
            await asyncio.wait((self._inflight,))

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if failure is not None:
            raise TokenRefreshFailed(
                failure.reason, refresh_status=failure.refresh_status, trace_id=failure.trace_id
            )

    async def _mint(self, generation: int) -> None:
        if generation != self._generation or self._failure is not None:
            return
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(
                self._run_mint(), name=f"growthhub-mint-{self.location_id}"
            )
        await asyncio.shield(task)

    async def _run_mint(self) -> None:
        try:
            token, lifetime = await self._agency.mint(self.location_id)
        except TokenRefreshFailed as exc:
            self._failure = exc
            log.warning("%s", exc.reason)
        except Exception as exc:  # noqa: BLE001 (anything else ends this location's token)
            self._failure = TokenRefreshFailed(
                f"location {self.location_id}: minting failed: internal error {type(exc).__name__}"
            )
        else:
            now = asyncio.get_running_loop().time()
            self._lifetime = lifetime
            self._expires_at = now + lifetime if lifetime is not None else None
            self._generation += 1
            self._current = AccessToken(token, self._generation)
            self._confirmed = False
        finally:
            self._inflight = None


def _describe(error: BaseException) -> str:
    if isinstance(error, HTTPStatusError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class LocationTokens:
    """Where each location's token comes from: a tokens map first, then an agency app.

    The client asks for a location's token the first time a record names it (``__call__``),
    attaches the agency to its base URL and closes it with itself.
    """

    def __init__(
        self,
        tokens: Mapping[str, str | TokenProvider] | None = None,
        agency: AgencyTokens | None = None,
    ) -> None:
        self.tokens = dict(tokens or {})
        for key in self.tokens:
            check_location_id(key)
        self.agency = agency

    def __repr__(self) -> str:
        return f"<LocationTokens {len(self.tokens)} locations, agency={self.agency!r}>"

    def __call__(self, location_id: str) -> str | TokenProvider | None:
        """The token of ``location_id``; ``None`` when it has none."""
        found = self.tokens.get(location_id)
        if found is not None:
            return found
        if self.agency is not None and location_problem(location_id) is None:
            return self.agency.for_location(location_id)
        return None

    def attach(self, base_url: yarl.URL) -> None:
        """The client's base URL: the agency mints and refreshes under it."""
        if self.agency is not None:
            self.agency.attach(base_url)

    async def aclose(self) -> None:
        """Close the agency's sessions (each location's provider is closed by its lane)."""
        if self.agency is not None:
            await self.agency.aclose()
