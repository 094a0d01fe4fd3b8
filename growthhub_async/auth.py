"""Where a token's bearer value comes from: a fixed token, or OAuth with refresh (issue 6).

The client asks a :class:`TokenProvider` for the value before each request and tells it when
the server refused one. Two providers ship:

- :class:`FixedToken`: a Private Integration Token. A 401 is final. (A plain ``str`` given to the
  client becomes one.)
- :class:`OAuthProvider`: an OAuth app's access token, refreshed with ``POST /oauth/token``
  (``grant_type=refresh_token``, form-encoded; contract ``apps/oauth.json``).

Rules of the OAuth provider, and why:

- **Refresh a little before expiry** (``refresh_margin``, at most a tenth of the token's
  lifetime), and after a 401 that means "expired or invalid token". A 401 ``The token is not
  authorized for this scope.`` and a 403 are not refreshed: a new token has the same scope.
- **Single flight.** HighLevel's refresh tokens rotate on every use, so two refreshes racing
  lock the integrator out. However many requests fail at once, one refresh request is made;
  the others wait for it and retry with the new token. Every token handed out carries a
  *generation*; a request that failed with an older generation than the current one just
  retries with the current token, without a refresh.
- **Persist before use.** Every rotation goes to ``on_rotation`` (sync or async) *before* the
  new access token is used. If the callback raises, the new tokens are not used (they stay in
  :attr:`OAuthProvider.tokens` for salvage) and the provider fails like a refused refresh.
- **No refresh storm.** A refresh that fails (``invalid_grant``, bad client credentials, the
  endpoint unreachable after ``retry``'s tries) is final for the provider: every later request
  gets :class:`~growthhub_async.errors.TokenRefreshFailed` at once, and the client stops the
  token (its records end ``unauthorized`` with the server's reason). A token obtained by a
  refresh that is refused before it was ever accepted is not refreshed again.
- The refresh itself runs in its own task: a caller cancelled while waiting does not cancel it
  (a lost answer would lose the rotated refresh token).
- **Secrets** (client secret, refresh token, access token) never appear in reprs, logs,
  exceptions or events; whatever the token endpoint says goes through the provider's
  :class:`~growthhub_async.redact.Redactor` first (an endpoint may echo the form).
- **Lenient answers.** Of a 200, only ``access_token`` and ``refresh_token`` are essential;
  other fields of an unexpected type are coerced or ignored with a warning. The new refresh
  token is saved before anything else is judged: a spent refresh token is an installation lost.
- **The token URL follows the API**: without ``token_url``, ``{base_url}/oauth/token`` of the
  client that uses the provider, so secrets never go to a host the user did not name.
- **A token file** (:meth:`OAuthProvider.from_file`) is locked around each refresh, re-read
  first (another process may have rotated it) and again after an ``invalid_grant``, and saved
  with fallbacks (:mod:`growthhub_async.token_file`).
- **A fresh token refused** before it ever worked is not refreshed again: the client retries
  with it after pauses and declares it dead after ``unauthorized_limit`` refusals in a row.

Expiry math uses the event loop's monotonic clock; :func:`refresh_due` is pure, ``now``
given. Wall-clock (Unix) time is used only for :attr:`TokenSet.expires_at`, the persisted
form that must survive a restart.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import aiohttp
import msgspec
import yarl

from growthhub_async.errors import (
    ConfigurationError,
    HTTPStatusError,
    ResponseError,
    TokenRefreshFailed,
    TransportError,
    error_for_status,
)
from growthhub_async.redact import Redactor
from growthhub_async.retry import RetryPolicy, is_transient
from growthhub_async.token_file import Saved, TokenFile, write_token_file
from growthhub_async.transport import (
    check_base_url,
    map_exceptions,
    no_hidden_resend,
    read_capped,
)

__all__ = [
    "DEFAULT_TOKEN_URL",
    "LOCATION_MESSAGE",
    "SCOPE_MESSAGE",
    "AccessToken",
    "FixedToken",
    "OAuthProvider",
    "RotationCallback",
    "TokenProvider",
    "TokenSet",
    "is_location_error",
    "is_scope_error",
    "refresh_due",
    "write_token_file",
]

log = logging.getLogger("growthhub_async.auth")

DEFAULT_TOKEN_URL: Final = "https://services.leadconnectorhq.com/oauth/token"  # noqa: S105
SCOPE_MESSAGE: Final = "The token is not authorized for this scope."
"""The 401 message that a refresh does not cure (contract README)."""
LOCATION_MESSAGE: Final = "The token does not have access to this location."
"""The 403 message of a token used for another location's contacts: it stops the token."""

DEFAULT_REFRESH_MARGIN: Final = 300.0
_MARGIN_SHARE: Final = 0.1  # never refresh earlier than this share of a token's lifetime


@dataclass(frozen=True, slots=True, repr=False)
class AccessToken:
    """A bearer value and its generation (0 for the first; +1 per rotation). Repr hides it."""

    value: str
    generation: int = 0

    def __repr__(self) -> str:
        return f"<AccessToken generation={self.generation}>"


@dataclass(frozen=True, slots=True, repr=False)
class TokenSet:
    """The tokens of one rotation, as the callback receives them (and a token file holds them).

    ``expires_at`` is Unix time (it must survive a restart); ``None`` when unknown.
    """

    access_token: str
    refresh_token: str
    expires_at: float | None = None
    scope: str | None = None
    user_type: str | None = None
    location_id: str | None = None
    company_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"<TokenSet access_token=<hidden> refresh_token=<hidden> "
            f"expires_at={self.expires_at!r} location_id={self.location_id!r}>"
        )


RotationCallback: TypeAlias = Callable[[TokenSet], Awaitable[None] | None]
"""``on_rotation(tokens)``: sync or async; runs before the new access token is used."""


def refresh_due(
    now: float, expires_at: float | None, lifetime: float | None, margin: float
) -> bool:
    """Whether a token expiring at ``expires_at`` (same clock as ``now``) is due for refresh.

    Due ``margin`` seconds before expiry, but never earlier than a tenth of ``lifetime`` before
    it (when known), so a short-lived token is not refreshed on every request. Pure.
    """
    if expires_at is None:
        return False
    lead = margin if lifetime is None else min(margin, lifetime * _MARGIN_SHARE)
    return now >= expires_at - lead


def at_hand(
    current: AccessToken | None,
    failed: object,
    expires_at: float | None,
    lifetime: float | None,
    margin: float,
) -> AccessToken | None:
    """``current`` when a provider may hand it over without waiting (its ``current()``): a
    token, no failure to raise, no refresh due. ``expires_at`` is on the event loop's clock,
    which for asyncio and uvloop alike is :func:`time.monotonic` (asking the loop costs a
    ``getpid`` per request)."""
    if current is None or failed is not None:
        return None
    if refresh_due(time.monotonic(), expires_at, lifetime, margin):
        return None
    return current


def is_scope_error(error: HTTPStatusError) -> bool:
    """A 401 saying the token lacks a scope: a refresh would not help."""
    return error.status_code == 401 and any(
        SCOPE_MESSAGE.rstrip(".").lower() in m.lower() for m in error.messages
    )


def is_location_error(error: HTTPStatusError) -> bool:
    """A 403 saying the token belongs to another location: no record of it can succeed."""
    return error.status_code == 403 and any(
        LOCATION_MESSAGE.rstrip(".").lower() in m.lower() for m in error.messages
    )


class TokenProvider(abc.ABC):
    """What the client asks of a token source. Subclass it for your own (a vault, a cache).

    Only :meth:`token` is required; the defaults describe a token that cannot be refreshed.
    """

    @property
    def refreshable(self) -> bool:
        """Whether a 401 ("expired or invalid") can be cured by :meth:`rejected`."""
        return False

    @abc.abstractmethod
    async def token(self) -> AccessToken:
        """The value to send now. May refresh first; raises ``TokenRefreshFailed`` if that fails."""

    def current(self) -> AccessToken | None:
        """The value to send now when it is at hand without waiting (nothing to refresh, no
        failure to raise): the client's fast path, asked before each request. ``None`` (the
        default): the client awaits :meth:`token`, which must then give the same answer."""
        return None

    async def rejected(self, generation: int) -> bool:
        """The server refused the token of ``generation`` (401, not a scope error).

        Returns ``True`` when a newer token is ready to retry with (refreshing at most once
        for all callers), ``False`` when not; raises ``TokenRefreshFailed`` if a refresh failed.
        """
        return False

    @property
    def redactor(self) -> Redactor:
        """The secrets this provider knows; the client removes them from any server text.

        A provider adds what it holds (its tokens, OAuth secrets) as it gets them. The client
        adds every bearer value it sends, whatever the provider.
        """
        found: Redactor | None = self.__dict__.get("_redactor")
        if found is None:
            found = self.__dict__["_redactor"] = Redactor()
        return found

    def fresh(self, generation: int) -> bool:
        """Whether the token of ``generation`` came from a refresh and has not worked yet."""
        return False

    def expires_in(self) -> float | None:
        """Seconds until the current token expires (``None``: unknown or never); call it in
        the event loop after :meth:`token`. A coordinator hands this to the workers it
        serves (:mod:`growthhub_async.distributed`), so they ask again in time."""
        return None

    @property
    def budget_identity(self) -> str | None:
        """What names this token's rate budget in a shared store (hashed there, never kept):
        the token itself when it never changes, else ``None`` (the client then uses the
        token's key, its location id)."""
        return None

    def attach(self, base_url: yarl.URL) -> None:  # noqa: B027 (an optional hook)
        """The client that uses this provider talks to ``base_url`` (called once per client)."""

    def accepted(self, generation: int) -> None:  # noqa: B027 (an optional hook)
        """The server accepted the token of ``generation`` (a request got past auth)."""

    async def aclose(self) -> None:  # noqa: B027 (an optional hook)
        """Release what the provider holds (its HTTP session); it may be used again later."""


class FixedToken(TokenProvider):
    """A token that never changes: a Private Integration Token. Repr hides it."""

    def __init__(self, token: str) -> None:
        self._token = AccessToken(token, 0)
        self.redactor.add(token)

    def __repr__(self) -> str:
        return "<FixedToken>"

    async def token(self) -> AccessToken:
        """The fixed value."""
        return self._token

    def current(self) -> AccessToken | None:
        """The fixed value (unless a subclass gives its own :meth:`token`)."""
        return self._token if type(self).token is FixedToken.token else None

    @property
    def budget_identity(self) -> str:
        """The token: a fixed token is its own budget."""
        return self._token.value


@dataclass(frozen=True, slots=True, repr=False)
class TokenAnswer:
    """The token endpoint's 200, read leniently (issue 18): only the two tokens are essential.

    ``access_token`` is ``None`` when the answer brought a refresh token but no usable access
    token: the refresh token must still be saved (the old one is spent). ``warnings`` name the
    fields that had an unexpected type and were coerced or ignored (never their values).
    """

    refresh_token: str
    access_token: str | None
    expires_in: float | None = None
    scope: str | None = None
    user_type: str | None = None
    location_id: str | None = None
    company_id: str | None = None
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<TokenAnswer expires_in={self.expires_in!r} warnings={len(self.warnings)}>"


def _token_value(value: object) -> str | None:
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    return None


def _lenient_answer(data: dict[str, Any]) -> TokenAnswer | None:
    refresh = _token_value(data.get("refresh_token"))
    if refresh is None:
        return None
    warnings: list[str] = []

    def kind(value: object) -> str:
        return type(value).__name__

    lifetime: float | None = None
    raw = data.get("expires_in")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        lifetime = float(raw)
    elif isinstance(raw, str):
        try:
            lifetime = float(raw)
            warnings.append("expires_in was a string; read as a number")
        except ValueError:
            warnings.append("expires_in was a string that is not a number; ignored")
    elif raw is not None:
        warnings.append(f"expires_in was {kind(raw)}; ignored")
    if lifetime is not None and not (math.isfinite(lifetime) and lifetime > 0):
        warnings.append("expires_in was not a positive number; ignored")
        lifetime = None

    def text(name: str) -> str | None:
        value = data.get(name)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            warnings.append(f"{name} was a number; read as text")
            return str(value)
        if name == "scope" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            warnings.append("scope was a list; joined with spaces")
            return " ".join(value)
        warnings.append(f"{name} was {kind(value)}; ignored")
        return None

    access = data.get("access_token")
    if _token_value(access) is None:
        warnings.append(f"access_token was {kind(access)}, not a token")
    return TokenAnswer(
        refresh_token=refresh,
        access_token=_token_value(access),
        expires_in=lifetime,
        scope=text("scope"),
        user_type=text("userType"),
        location_id=text("locationId"),
        company_id=text("companyId"),
        warnings=tuple(warnings),
    )


class _ErrorAnswer(msgspec.Struct):
    error: str | None = None
    error_description: str | None = None
    message: str | list[str] | None = None
    traceId: str | None = None  # noqa: N815


_decode_error = msgspec.json.Decoder(_ErrorAnswer).decode
_GENERIC_ERRORS: Final = frozenset({"unauthorized", "bad request", "unprocessable entity"})


def read_token_answer(status: int, body: bytes, redact: Redactor | None = None) -> TokenAnswer:
    """The token endpoint's 200 body, or :class:`TokenRefreshFailed` with its reason. Pure.

    A 429 or 5xx raises the status's :class:`~growthhub_async.errors.HTTPStatusError` instead
    (transient: the caller retries). The server's text in the error goes through ``redact``
    first: an endpoint may echo the form it received (client secret, refresh token).
    """
    clean = redact if redact is not None else Redactor()
    if status == 200:
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            data = None
        answer = _lenient_answer(data) if isinstance(data, dict) else None
        if answer is None:
            raise TokenRefreshFailed(
                f"the token endpoint answered 200 without tokens ({len(body)} bytes)",
                refresh_status=status,
            )
        return answer
    try:
        error = _decode_error(body)
    except msgspec.DecodeError:
        error = _ErrorAnswer()
    messages = [error.message] if isinstance(error.message, str) else list(error.message or [])
    if error.error_description:
        messages.insert(0, error.error_description)
    messages = [clean(m) for m in messages if isinstance(m, str)]
    trace_id = clean.text_or_none(error.traceId)
    code = clean.text_or_none(error.error)
    if status == 429 or status >= 500:
        raise error_for_status(status)(status, messages, trace_id=trace_id)
    shown = code
    if shown is not None and shown.lower() in _GENERIC_ERRORS:
        shown = None  # the HTTP reason phrase ("Unauthorized"), not an OAuth error code
    text = "; ".join(dict.fromkeys(messages)) or f"HTTP {status}"
    reason = f"{shown}: {text}" if shown else f"HTTP {status}: {text}"
    raise TokenRefreshFailed(reason, refresh_status=status, error_code=code, trace_id=trace_id)


class OAuthProvider(TokenProvider):
    """An OAuth access token, refreshed once for everyone; every rotation persisted first.

    Parameters:

    - ``client_id``, ``client_secret``, ``refresh_token``: the OAuth app and its installation.
    - ``access_token``, ``expires_at``: the current access token, if any, and its expiry as
      Unix time (``None``: valid until a 401). Without ``access_token``, the first request
      refreshes.
    - ``on_rotation``: called with the new :class:`TokenSet` (sync or async) before the new
      access token is used: persist ``refresh_token`` there, or lose the installation.
    - ``token_url``: the token endpoint (https, or http to loopback; ``allow_insecure`` lifts
      that as for the client). Not given: ``/oauth/token`` under the base URL of the client
      that uses this provider (:meth:`attach`), so a sandbox's ``--base-url`` gets the
      sandbox's token endpoint and the secrets never go to another host (issue 18);
      :data:`DEFAULT_TOKEN_URL` until attached.
    - ``refresh_margin``: seconds before expiry to refresh (capped at a tenth of the lifetime).
    - ``user_type``: sent as ``user_type`` (``"Location"`` or ``"Company"``) when given.
    - ``timeout``: seconds for each token request, its whole answer included (read up to
      :data:`~growthhub_async.transport.MAX_ANSWER`); ``retry``: tries for transient
      failures of the token endpoint (connection errors, timeouts, 429, 5xx); other answers
      are final at once.

    Create it anywhere; it opens its HTTP session on first use, in the running loop, and the
    client closes it (:meth:`aclose`) when the client closes.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        *,
        access_token: str | None = None,
        expires_at: float | None = None,
        on_rotation: RotationCallback | None = None,
        token_url: str | None = None,
        allow_insecure: bool = False,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        user_type: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        for name, value in (
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("refresh_token", refresh_token),
        ):
            _check_secret(name, value)
        if access_token is not None:
            _check_secret("access_token", access_token)
        if expires_at is not None and not math.isfinite(expires_at):
            raise ConfigurationError("expires_at must be a finite Unix time")
        if not (math.isfinite(refresh_margin) and refresh_margin >= 0):
            raise ConfigurationError("refresh_margin must be a non-negative number of seconds")
        if not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self._explicit_url = token_url is not None
        self.token_url: yarl.URL = check_base_url(
            token_url or DEFAULT_TOKEN_URL, allow_insecure=allow_insecure
        )
        self._attached_to: yarl.URL | None = None
        self._file: TokenFile | None = None
        self._file_data: dict[str, Any] = {}
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.redactor.add(client_secret, refresh_token, access_token)
        self.on_rotation = on_rotation
        self.refresh_margin = refresh_margin
        self.user_type = user_type
        self.timeout = timeout
        self.retry = retry or RetryPolicy(max_tries=3, max_time=30.0, base_delay=0.5, max_delay=5.0)
        self._current = AccessToken(access_token, 0) if access_token is not None else None
        self._expires_unix = expires_at if access_token is not None else None
        self._expires_at: float | None = None  # loop time; set from _expires_unix on first use
        self._lifetime: float | None = None
        self._confirmed = self._current is not None  # the first token was not ours to judge
        self._generation = 0
        self._inflight: asyncio.Task[None] | None = None
        self._failure: TokenRefreshFailed | None = None
        self._session: aiohttp.ClientSession | None = None
        self.saved: Saved | None = None
        """Where the latest rotation was saved by :meth:`from_file` (``saved.rescued``: not in
        the token file, see ``saved.path``)."""
        self.tokens: TokenSet | None = None
        """The latest rotation's tokens (``None`` before the first refresh)."""
        self.refreshes = 0
        """Refresh requests made (each try counts)."""

    def __repr__(self) -> str:
        state = "failed" if self._failure is not None else f"generation={self._generation}"
        return f"<OAuthProvider {self.token_url} {state}>"

    @property
    def refreshable(self) -> bool:
        """Always ``True``: a 401 (not a scope error) triggers a refresh."""
        return True

    @property
    def generation(self) -> int:
        """How many rotations this provider has made."""
        return self._generation

    @property
    def failure(self) -> TokenRefreshFailed | None:
        """The refresh failure that ended this provider, if one did."""
        return self._failure

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **options: Any) -> OAuthProvider:
        """A provider from a JSON token file, that rewrites the file on every rotation.

        The file holds ``client_id``, ``client_secret``, ``refresh_token`` and optionally
        ``access_token``, ``expires_at`` (Unix time), ``user_type``, ``token_url`` (only then
        may the secrets go to a host other than the client's base URL); other keys are kept.
        Every refresh runs under an OS lock on the file, re-reads it first (another process
        sharing it may have rotated it) and saves the rotation before the new token is used:
        atomically, else in place, else to a rescue file (see
        :mod:`growthhub_async.token_file`); a callback in ``options["on_rotation"]`` runs
        after that. A rotation left in a temporary file by a killed run is recovered here.
        ``options`` are the constructor's keywords. Raises ``ConfigurationError`` for a
        missing, unreadable or incomplete file (the message never shows its values).
        """
        store = TokenFile(path)
        with store.locked():
            data = store.load()
        missing = [
            k
            for k in ("client_id", "client_secret", "refresh_token")
            if not isinstance(data.get(k), str) or not data[k]
        ]
        if missing:
            raise ConfigurationError(
                f"the token file {str(store.path)!r} lacks {', '.join(missing)} (non-empty strings)"
            )
        for key in ("token_url", "user_type"):
            if isinstance(data.get(key), str) and key not in options:
                options[key] = data[key]
        provider = cls(
            data["client_id"],
            data["client_secret"],
            data["refresh_token"],
            access_token=_token_value(data.get("access_token")),
            expires_at=_unix_time(data.get("expires_at")),
            **options,
        )
        provider._file = store
        provider._file_data = data
        return provider

    def attach(self, base_url: yarl.URL) -> None:
        """The client using this provider talks to ``base_url``: without an explicit
        ``token_url``, refresh at ``{base_url}/oauth/token``. One provider serves one API."""
        if self._attached_to is not None and self._attached_to != base_url:
            raise ConfigurationError(
                "this OAuthProvider already serves another base URL; give each client its own "
                "provider, or a token_url"
            )
        self._attached_to = base_url
        if not self._explicit_url:
            self.token_url = base_url.joinpath("oauth", "token")

    # -- the provider protocol -------------------------------------------------------------

    async def token(self) -> AccessToken:
        """The current access token, refreshed first when missing or due."""
        self._raise_if_failed()
        now = asyncio.get_running_loop().time()
        if self._expires_unix is not None:
            # Converted once, at first use: from here on only the monotonic clock counts.
            self._expires_at = now + (self._expires_unix - time.time())
            self._expires_unix = None
        current = self._current
        if current is None or refresh_due(
            now, self._expires_at, self._lifetime, self.refresh_margin
        ):
            await self._refresh(self._generation)
            self._raise_if_failed()
            current = self._current
        assert current is not None
        return current

    def current(self) -> AccessToken | None:
        """The access token when no refresh is due (else :meth:`token` refreshes)."""
        if self._expires_unix is not None:
            return None  # not converted to the loop's clock yet: token() does it
        return at_hand(
            self._current, self._failure, self._expires_at, self._lifetime, self.refresh_margin
        )

    async def rejected(self, generation: int) -> bool:
        """Refresh once for every caller refused with ``generation``; see the module's rules."""
        self._raise_if_failed()
        if generation != self._generation:
            return True  # already replaced: retry with the current token, no refresh
        if self._generation > 0 and not self._confirmed:
            # A token fresh from a refresh, refused before any success: refreshing again
            # would only burn refresh tokens. The client retries with it after a pause, a few
            # times, before it declares it dead (an API node may not know it yet).
            log.warning("a freshly refreshed access token was refused; not refreshing again")
            return False
        await self._refresh(generation)
        self._raise_if_failed()
        return True

    def fresh(self, generation: int) -> bool:
        """The current token, from a refresh, refused or unused so far (a 401 then waits)."""
        return generation == self._generation > 0 and not self._confirmed

    def expires_in(self) -> float | None:
        """Seconds until the current access token expires, by the event loop's clock."""
        if self._expires_at is None:
            return None
        return self._expires_at - asyncio.get_running_loop().time()

    def accepted(self, generation: int) -> None:
        """Note that the current token works (the storm guard of :meth:`rejected`)."""
        if generation == self._generation:
            self._confirmed = True

    async def aclose(self) -> None:
        """Wait for a refresh in flight (its answer must not be lost), close the session."""
        if self._inflight is not None:
            await asyncio.wait((self._inflight,))
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the refresh -----------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if failure is not None:
            # A new instance each time: one exception object raised from many tasks would
            # collect their tracebacks.
            raise TokenRefreshFailed(
                failure.reason,
                refresh_status=failure.refresh_status,
                error_code=failure.error_code,
                trace_id=failure.trace_id,
            )

    async def _refresh(self, generation: int) -> None:
        """Make sure the token of ``generation`` is replaced: join the refresh in flight, or
        start one; return when it has ended (check ``_failure``)."""
        if generation != self._generation or self._failure is not None:
            return
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(
                self._run_refresh(), name="growthhub-oauth-refresh"
            )
        # shield: a waiter's cancellation must not cancel the refresh itself.
        await asyncio.shield(task)

    async def _run_refresh(self) -> None:
        try:
            if self._file is None:
                await self._rotate()
            else:
                async with self._file.alocked():
                    await self._rotate()
        except TokenRefreshFailed as exc:
            self._failure = exc
            log.warning("OAuth token refresh failed: %s", exc.reason)
        except Exception as exc:  # noqa: BLE001 (anything else ends the provider too)
            self._failure = TokenRefreshFailed(f"internal error: {type(exc).__name__}")
            # No traceback: frames of the refresh hold the form with the secrets.
            log.error("OAuth token refresh failed: internal error")  # noqa: TRY400
        finally:
            self._inflight = None

    async def _rotate(self) -> None:
        """One refresh (under the file's lock, when there is a file)."""
        if await self._adopt_from_file():
            return
        try:
            answer = await self._request_tokens()
        except TokenRefreshFailed as exc:
            # Another process (or tool) may have rotated the token since we read the file:
            # its refresh token is the valid one now. Try once more with it.
            if exc.error_code != "invalid_grant" or not await self._adopt_from_file():
                raise
            return
        await self._keep(answer)

    async def _adopt_from_file(self) -> bool:
        """Re-read the token file; take its tokens if another process rotated them.

        Returns ``True`` when its access token is ready to use (no refresh needed).
        """
        if self._file is None:
            return False
        try:
            data = await asyncio.to_thread(self._file.load)
        except ConfigurationError as exc:  # gone or damaged: the save will write it anew
            log.warning("could not read the token file again: %s", exc)
            return False
        refresh = _token_value(data.get("refresh_token"))
        self._file_data = data
        if refresh is None or refresh == self._refresh_token:
            return False
        log.info("the token file was rotated by another process: using its tokens")
        self._refresh_token = refresh
        access = _token_value(data.get("access_token"))
        self.redactor.add(refresh, access)
        current = self._current.value if self._current is not None else None
        if access is None or access == current:
            return False
        now = asyncio.get_running_loop().time()
        expires_unix = _unix_time(data.get("expires_at"))
        expires_at = now + (expires_unix - time.time()) if expires_unix is not None else None
        if refresh_due(now, expires_at, None, self.refresh_margin):
            return False
        # Not ours to judge, like the first token: a 401 on it may be refreshed.
        self._use(access, expires_at, None, confirmed=True)
        return True

    async def _keep(self, answer: TokenAnswer) -> None:
        """Save the rotation first (the old refresh token is spent), then use it."""
        lifetime = answer.expires_in
        tokens = TokenSet(
            access_token=answer.access_token or "",
            refresh_token=answer.refresh_token,
            # Wall-clock time only for the persisted form (it must survive a restart).
            expires_at=time.time() + lifetime if lifetime is not None else None,
            scope=answer.scope,
            user_type=answer.user_type,
            location_id=answer.location_id,
            company_id=answer.company_id,
        )
        self.tokens = tokens
        self._refresh_token = tokens.refresh_token
        if self._file is not None:
            await self._save_to_file(tokens)
        if self.on_rotation is not None:
            try:
                result = self.on_rotation(tokens)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 (the caller's callback)
                raise TokenRefreshFailed(
                    f"the rotation callback raised {type(exc).__name__}: the new tokens were "
                    "not saved, so they were not used (OAuthProvider.tokens holds them)"
                ) from None
        for warning in answer.warnings:  # judged only now that the refresh token is safe
            log.warning("the token endpoint's answer: %s", warning)
        if answer.access_token is None:
            raise TokenRefreshFailed(
                "the token endpoint answered a new refresh token but no access token "
                "(the refresh token was saved; the next run will use it)",
                refresh_status=200,
            )
        now = asyncio.get_running_loop().time()
        self._use(answer.access_token, now + lifetime if lifetime is not None else None, lifetime)

    async def _save_to_file(self, tokens: TokenSet) -> None:
        assert self._file is not None
        data = dict(self._file_data)
        data.update(
            {
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "expires_at": tokens.expires_at,
                "rotated_at": time.time(),
            }
        )
        if tokens.location_id is not None:
            data["location_id"] = tokens.location_id
        path = str(self._file.path)
        try:
            saved = await asyncio.to_thread(self._file.save, data)
        except OSError as exc:
            raise TokenRefreshFailed(
                f"the rotated OAuth tokens could not be saved to {path!r} nor to any rescue "
                f"file ({type(exc).__name__}: {exc.strerror or exc}), so they were not used; "
                f"the refresh token in {path!r} is spent: make room (or make the file "
                "writable) and reinstall the app on this location",
                refresh_status=200,
            ) from None
        self._file_data = data
        self.saved = saved
        if saved.how == "in place":
            log.warning(
                "could not replace the token file %s atomically (%s); rewrote it in place",
                path,
                saved.problem,
            )
        elif saved.rescued:
            log.error(
                "COULD NOT SAVE THE ROTATED OAUTH TOKENS TO %s (%s). They were saved to %s "
                "instead. Before the next run, move that file over the token file "
                "(mv %s %s), or the installation is lost: the refresh token in %s is spent.",
                path,
                saved.problem,
                saved.path,
                saved.path,
                path,
                path,
            )

    def _use(
        self,
        access: str,
        expires_at: float | None,
        lifetime: float | None,
        *,
        confirmed: bool = False,
    ) -> None:
        """Hand out ``access`` from now on, as the next generation."""
        self.redactor.add(access)
        self._lifetime = lifetime
        self._expires_at = expires_at
        self._expires_unix = None
        self._current = AccessToken(access, self._generation + 1)
        self._confirmed = confirmed
        self._generation += 1
        log.debug(
            "access token refreshed (generation %d, expires in %s s)",
            self._generation,
            "?" if lifetime is None else f"{lifetime:.0f}",
        )

    async def _request_tokens(self) -> TokenAnswer:
        """POST the refresh with ``retry``'s tries for transient failures."""
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # The whole answer within ``timeout``: a body that trickles a byte at a time
                # must not hold every record of the token waiting for the refresh.
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
                ),
                headers={"Accept": "application/json"},
                trust_env=False,
            )
            # No hidden re-send: it would burn the refresh token the first try may have rotated.
            no_hidden_resend(self._session)
        form = {
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
        }
        if self.user_type is not None:
            form["user_type"] = self.user_type
        first = loop.time()
        tries = 0
        while True:
            tries += 1
            self.refreshes += 1
            log.debug("refreshing the OAuth access token (try %d)", tries)
            try:
                with map_exceptions(self.redactor):
                    # Never follow a redirect: a 307/308 would re-send the client secret and
                    # the refresh token to wherever it points (issue 12).
                    async with self._session.post(
                        self.token_url, data=form, allow_redirects=False
                    ) as resp:
                        raw = await read_capped(resp)
                        status = resp.status
                answer = read_token_answer(status, raw, self.redactor)
            except (TransportError, HTTPStatusError, ResponseError) as exc:
                if isinstance(exc, TokenRefreshFailed):
                    raise
                delay = self.retry.next_delay(exc, tries=tries, elapsed=loop.time() - first)
                if delay is None or not is_transient(exc):
                    raise TokenRefreshFailed(
                        f"the token endpoint failed after {tries} tries: {_describe(exc)}",
                        refresh_status=getattr(exc, "status_code", None),
                    ) from None
                await asyncio.sleep(delay)
            else:
                # Known as secrets before anything can show them.
                self.redactor.add(answer.refresh_token, answer.access_token)
                return answer


def _describe(error: BaseException) -> str:
    if isinstance(error, HTTPStatusError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _check_secret(name: str, value: object) -> None:
    # The message names the field, never the value.
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigurationError(f"{name} contains whitespace or control characters")


def _unix_time(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
