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
  exceptions or events.

Expiry math uses the event loop's monotonic clock; :func:`refresh_due` is pure, ``now``
given. Wall-clock (Unix) time is used only for :attr:`TokenSet.expires_at`, the persisted
form that must survive a restart.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import aiohttp
import msgspec
import yarl

from growthhub_async.errors import (
    ConfigurationError,
    HTTPStatusError,
    TokenRefreshFailed,
    TransportError,
    error_for_status,
)
from growthhub_async.retry import RetryPolicy, is_transient

__all__ = [
    "DEFAULT_TOKEN_URL",
    "SCOPE_MESSAGE",
    "AccessToken",
    "FixedToken",
    "OAuthProvider",
    "RotationCallback",
    "TokenProvider",
    "TokenSet",
    "is_scope_error",
    "refresh_due",
    "write_token_file",
]

log = logging.getLogger("growthhub_async.auth")

DEFAULT_TOKEN_URL: Final = "https://services.leadconnectorhq.com/oauth/token"  # noqa: S105
SCOPE_MESSAGE: Final = "The token is not authorized for this scope."
"""The 401 message that a refresh does not cure (contract README)."""

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


def is_scope_error(error: HTTPStatusError) -> bool:
    """A 401 saying the token lacks a scope: a refresh would not help."""
    return error.status_code == 401 and any(
        SCOPE_MESSAGE.rstrip(".").lower() in m.lower() for m in error.messages
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

    async def rejected(self, generation: int) -> bool:
        """The server refused the token of ``generation`` (401, not a scope error).

        Returns ``True`` when a newer token is ready to retry with (refreshing at most once
        for all callers), ``False`` when not; raises ``TokenRefreshFailed`` if a refresh failed.
        """
        return False

    def accepted(self, generation: int) -> None:  # noqa: B027 (an optional hook)
        """The server accepted the token of ``generation`` (a request got past auth)."""

    async def aclose(self) -> None:  # noqa: B027 (an optional hook)
        """Release what the provider holds (its HTTP session); it may be used again later."""


class FixedToken(TokenProvider):
    """A token that never changes: a Private Integration Token. Repr hides it."""

    def __init__(self, token: str) -> None:
        self._token = AccessToken(token, 0)

    def __repr__(self) -> str:
        return "<FixedToken>"

    async def token(self) -> AccessToken:
        """The fixed value."""
        return self._token


class _TokenAnswer(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: float | None = None
    scope: str | None = None
    userType: str | None = None  # noqa: N815 (the wire's name)
    locationId: str | None = None  # noqa: N815
    companyId: str | None = None  # noqa: N815


class _ErrorAnswer(msgspec.Struct):
    error: str | None = None
    error_description: str | None = None
    message: str | list[str] | None = None
    traceId: str | None = None  # noqa: N815


_decode_tokens = msgspec.json.Decoder(_TokenAnswer).decode
_decode_error = msgspec.json.Decoder(_ErrorAnswer).decode
_GENERIC_ERRORS: Final = frozenset({"unauthorized", "bad request", "unprocessable entity"})


def read_token_answer(status: int, body: bytes) -> _TokenAnswer:
    """The token endpoint's 200 body, or :class:`TokenRefreshFailed` with its reason. Pure.

    A 429 or 5xx raises the status's :class:`~growthhub_async.errors.HTTPStatusError` instead
    (transient: the caller retries).
    """
    if status == 200:
        try:
            answer = _decode_tokens(body)
        except msgspec.DecodeError:
            raise TokenRefreshFailed(
                f"the token endpoint answered 200 without tokens ({len(body)} bytes)",
                refresh_status=status,
            ) from None
        if not answer.access_token or not answer.refresh_token:
            raise TokenRefreshFailed("the token endpoint answered empty tokens", refresh_status=200)
        return answer
    try:
        error = _decode_error(body)
    except msgspec.DecodeError:
        error = _ErrorAnswer()
    messages = [error.message] if isinstance(error.message, str) else list(error.message or [])
    if error.error_description:
        messages.insert(0, error.error_description)
    if status == 429 or status >= 500:
        raise error_for_status(status)(status, messages, trace_id=error.traceId)
    code = error.error
    if code is not None and code.lower() in _GENERIC_ERRORS:
        code = None  # the HTTP reason phrase ("Unauthorized"), not an OAuth error code
    text = "; ".join(dict.fromkeys(messages)) or f"HTTP {status}"
    reason = f"{code}: {text}" if code else f"HTTP {status}: {text}"
    raise TokenRefreshFailed(
        reason, refresh_status=status, error_code=error.error, trace_id=error.traceId
    )


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
      that as for the client).
    - ``refresh_margin``: seconds before expiry to refresh (capped at a tenth of the lifetime).
    - ``user_type``: sent as ``user_type`` (``"Location"`` or ``"Company"``) when given.
    - ``timeout``: seconds to connect and between reads; ``retry``: tries for transient
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
        token_url: str = DEFAULT_TOKEN_URL,
        allow_insecure: bool = False,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        user_type: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        from growthhub_async.client import check_base_url  # noqa: PLC0415 (client imports us)

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
        self.token_url: yarl.URL = check_base_url(token_url, allow_insecure=allow_insecure)
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
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
        ``access_token``, ``expires_at`` (Unix time), ``user_type``, ``token_url``; other keys
        are kept. Each rotation rewrites it atomically with :func:`write_token_file` (mode
        0600) before the new token is used; a callback in ``options["on_rotation"]`` runs after
        that. ``options`` are the constructor's keywords. Raises ``ConfigurationError`` for a
        missing, unreadable or incomplete file (the message never shows its values).
        """
        target = Path(path)
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the token file {str(target)!r}: {exc.strerror}"
            ) from None
        except ValueError:
            raise ConfigurationError(f"the token file {str(target)!r} is not JSON") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"the token file {str(target)!r} is not a JSON object")
        missing = [
            k
            for k in ("client_id", "client_secret", "refresh_token")
            if not isinstance(data.get(k), str) or not data[k]
        ]
        if missing:
            raise ConfigurationError(
                f"the token file {str(target)!r} lacks {', '.join(missing)} (non-empty strings)"
            )
        extra = options.pop("on_rotation", None)
        kept = dict(data)

        async def persist(tokens: TokenSet) -> None:
            kept.update(
                {
                    "access_token": tokens.access_token,
                    "refresh_token": tokens.refresh_token,
                    "expires_at": tokens.expires_at,
                }
            )
            if tokens.location_id is not None:
                kept["location_id"] = tokens.location_id
            await asyncio.to_thread(write_token_file, target, kept)
            if extra is not None:
                result = extra(tokens)
                if inspect.isawaitable(result):
                    await result

        for key in ("token_url", "user_type"):
            if isinstance(data.get(key), str) and key not in options:
                options[key] = data[key]
        expires_at = data.get("expires_at")
        access_token = data.get("access_token")
        return cls(
            data["client_id"],
            data["client_secret"],
            data["refresh_token"],
            access_token=access_token if isinstance(access_token, str) and access_token else None,
            expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
            on_rotation=persist,
            **options,
        )

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

    async def rejected(self, generation: int) -> bool:
        """Refresh once for every caller refused with ``generation``; see the module's rules."""
        self._raise_if_failed()
        if generation != self._generation:
            return True  # already replaced: retry with the current token, no refresh
        if self._generation > 0 and not self._confirmed:
            # A token fresh from a refresh, refused before any success: refreshing again
            # would only burn refresh tokens. The client counts this 401 instead.
            log.warning("a freshly refreshed access token was refused; not refreshing again")
            return False
        await self._refresh(generation)
        self._raise_if_failed()
        return True

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
            tokens, lifetime = await self._request_tokens()
            self.tokens = tokens
            # The rotated refresh token is the only valid one from now on: keep it before
            # anything else can fail.
            self._refresh_token = tokens.refresh_token
            if self.on_rotation is not None:
                try:
                    result = self.on_rotation(tokens)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:  # noqa: BLE001 (the caller's callback)
                    raise TokenRefreshFailed(
                        f"the rotation callback raised {type(exc).__name__}; the new tokens "
                        "were not used (see OAuthProvider.tokens)"
                    ) from None
            now = asyncio.get_running_loop().time()
            self._lifetime = lifetime
            self._expires_at = now + lifetime if lifetime is not None else None
            self._current = AccessToken(tokens.access_token, self._generation + 1)
            self._confirmed = False
            self._generation += 1
            log.debug(
                "access token refreshed (generation %d, expires in %s s)",
                self._generation,
                "?" if lifetime is None else f"{lifetime:.0f}",
            )
        except TokenRefreshFailed as exc:
            self._failure = exc
            log.warning("OAuth token refresh failed: %s", exc.reason)
        except Exception as exc:  # noqa: BLE001 (anything else ends the provider too)
            self._failure = TokenRefreshFailed(f"internal error: {type(exc).__name__}")
            # No traceback: frames of the refresh hold the form with the secrets.
            log.error("OAuth token refresh failed: internal error")  # noqa: TRY400
        finally:
            self._inflight = None

    async def _request_tokens(self) -> tuple[TokenSet, float | None]:
        """POST the refresh with ``retry``'s tries for transient failures."""
        from growthhub_async.client import map_exceptions  # noqa: PLC0415 (client imports us)

        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout, sock_read=self.timeout
                ),
                headers={"Accept": "application/json"},
                trust_env=False,
            )
            # As in the client: no hidden re-send by aiohttp. A re-sent refresh would burn
            # the refresh token that the first one may already have rotated.
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
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
                with map_exceptions():
                    # Never follow a redirect: a 307/308 would re-send the client secret and
                    # the refresh token to wherever it points (issue 12).
                    async with self._session.post(
                        self.token_url, data=form, allow_redirects=False
                    ) as resp:
                        raw = await resp.read()
                        status = resp.status
                answer = read_token_answer(status, raw)
                break
            except (TransportError, HTTPStatusError) as exc:
                if isinstance(exc, TokenRefreshFailed):
                    raise
                delay = self.retry.next_delay(exc, tries=tries, elapsed=loop.time() - first)
                if delay is None or not is_transient(exc):
                    raise TokenRefreshFailed(
                        f"the token endpoint failed after {tries} tries: {_describe(exc)}",
                        refresh_status=getattr(exc, "status_code", None),
                    ) from None
                await asyncio.sleep(delay)
        lifetime = answer.expires_in
        if lifetime is not None and not (math.isfinite(lifetime) and lifetime > 0):
            lifetime = None
        tokens = TokenSet(
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            # Wall-clock time only for the persisted form (it must survive a restart).
            expires_at=time.time() + lifetime if lifetime is not None else None,
            scope=answer.scope,
            user_type=answer.userType,
            location_id=answer.locationId,
            company_id=answer.companyId,
        )
        return tokens, lifetime


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


def write_token_file(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically, readable by the owner only (0600).

    A temporary file in the same directory (created 0600), flushed and synced, then
    ``os.replace``: a reader, or a crash, sees the old file or the new one, never half of
    one. The directory is synced too, so the rename survives a power cut where supported.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # mkstemp's mode already; explicit for umask-proof clarity
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
