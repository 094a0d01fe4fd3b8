"""The whole exception tree of growthhub_async: a leaf module that imports nothing of ours.

    GrowthHubError
    ├── ConfigurationError          bad arguments to the client (rate, base URL, token)
    ├── InvalidContactId            a contact id that could address another path; never sent
    ├── ClientClosed                the client was used after ``close()``
    ├── InputError                  an input file that cannot be read at all (missing, unknown kind)
    ├── JournalError                an outcome journal that must not be written (exists, not ours)
    ├── StateError                  a sync state file that cannot be used (foreign, corrupt, locked)
    ├── TransportError              no HTTP answer: the request may or may not have arrived
    │   ├── ConnectionFailed        refused, reset, dropped before the status line
    │   └── RequestTimeout          no complete answer in time
    ├── ResponseError               an answer we cannot read (bad JSON on a 200, `succeded: false`)
    │   └── ContactMismatch         a 200 naming another contact than the one we sent (not retried)
    └── HTTPStatusError             the server answered with an error status
        ├── Redirected              3xx: never followed, never retried
        ├── BadRequest              400
        ├── Unauthorized            401 (and 403 as its subclass Forbidden)
        │   ├── Forbidden           403
        │   └── TokenRefreshFailed  an OAuth refresh failed: the token can send nothing more
        ├── NotFound                404
        ├── UnprocessableEntity     422
        ├── RateLimited             429, with `retry_after` when the server gave one
        └── ServerError             5xx

The server's message, status and headers are attributes, not only text in ``str(exc)``. No
attribute ever holds the token: requests are not kept on the exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "BadRequest",
    "ClientClosed",
    "ConfigurationError",
    "ConnectionFailed",
    "ContactMismatch",
    "Forbidden",
    "GrowthHubError",
    "HTTPStatusError",
    "InputError",
    "InvalidContactId",
    "JournalError",
    "NotFound",
    "RateLimited",
    "Redirected",
    "RequestTimeout",
    "ResponseError",
    "ServerError",
    "StateError",
    "TokenRefreshFailed",
    "TransportError",
    "Unauthorized",
    "UnprocessableEntity",
    "error_for_status",
]


class GrowthHubError(Exception):
    """Base of every error this library raises."""


class ConfigurationError(GrowthHubError, ValueError):
    """The client was given arguments it cannot work with."""


class InvalidContactId(GrowthHubError, ValueError):
    """A contact id that is empty, too long, or could change the request's path or query."""


class ClientClosed(GrowthHubError, RuntimeError):
    """The client was used after ``close()`` (or after its ``async with`` block ended)."""


class InputError(GrowthHubError):
    """An input file cannot be read at all: missing, unreadable, or of an unknown kind.

    A bad *record* is not an error: it becomes a ``rejected`` outcome and the others go on.
    """


class JournalError(GrowthHubError):
    """The outcome journal must not be written: it exists without resume, or is not a journal."""


class StateError(GrowthHubError):
    """The sync state (``--state FILE``) cannot be used: not a state file, corrupt, locked by
    another run, unwritable, or a write failed (issue 14)."""


class TransportError(GrowthHubError):
    """The request got no HTTP answer. A PUT is idempotent, so retrying it is safe."""


class ConnectionFailed(TransportError):
    """The connection was refused, reset or dropped before a complete answer."""


class RequestTimeout(TransportError):
    """No complete answer arrived within the timeout."""


class ResponseError(GrowthHubError):
    """The server answered, but with a body this library cannot accept."""

    def __init__(self, message: str, *, status_code: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class ContactMismatch(ResponseError):
    """A 2xx whose body names another contact than the one the request was for.

    The update may have been applied to that other contact (a misrouting proxy or server), or
    the answer belongs to another request; sending it again could repeat the damage, so it is
    not retried. ``expected`` is the id we sent, ``received`` the one the answer names.
    """

    def __init__(
        self, *, status_code: int, expected: str, received: str, body: bytes = b""
    ) -> None:
        super().__init__(
            f"HTTP {status_code} names contact {_shown(received)}, not {_shown(expected)}: "
            "the update may have been applied to another contact (not retried)",
            status_code=status_code,
            body=body,
        )
        self.expected = expected
        self.received = received


class HTTPStatusError(GrowthHubError):
    """The server answered with an error status.

    ``messages`` holds every message of the body (a 422 lists one per problem); ``message`` joins
    them. ``headers`` are the response headers, for the ``X-RateLimit-*`` family and ``traceId``.
    """

    status_code: int = 0

    def __init__(
        self,
        status_code: int,
        messages: Sequence[str] = (),
        *,
        headers: Mapping[str, str] | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.messages = tuple(messages)
        self.headers: Mapping[str, str] = dict(headers or {})
        self.trace_id = trace_id
        super().__init__(f"HTTP {status_code}: {self.message}")

    @property
    def message(self) -> str:
        """The server's messages joined into one line, or the status's reason if it gave none."""
        return "; ".join(self.messages) or _REASONS.get(self.status_code, "error")


class Redirected(HTTPStatusError):
    """3xx: the server points elsewhere. Never followed and never retried.

    The API never redirects an Update Contact; following would re-send the body (contact data)
    and the token to wherever ``Location`` says, and a 303 would turn the PUT into a GET that
    applies nothing. ``location`` is the ``Location`` header (``None`` without one).
    """

    def __init__(
        self,
        status_code: int,
        messages: Sequence[str] = (),
        *,
        headers: Mapping[str, str] | None = None,
        trace_id: str | None = None,
    ) -> None:
        given = headers or {}
        self.location = next((v for k, v in given.items() if k.lower() == "location"), None)
        super().__init__(status_code, messages, headers=headers, trace_id=trace_id)

    @property
    def message(self) -> str:
        """Where the redirect pointed, and that it was not followed."""
        target = _shown(self.location) if self.location is not None else "nowhere (no Location)"
        return (
            f"redirect to {target} not followed (the API never redirects an Update Contact:"
            " check base_url)"
        )


class BadRequest(HTTPStatusError):
    """400: the request was malformed (missing `Version`, broken JSON)."""


class Unauthorized(HTTPStatusError):
    """401: the token is invalid, expired or lacks the scope."""


class Forbidden(Unauthorized):
    """403: the token has no access to this location."""


class TokenRefreshFailed(Unauthorized):
    """The OAuth token endpoint refused to refresh (``invalid_grant``...) or could not be reached.

    It counts as a 401 (records end ``unauthorized``); ``str(exc)`` is ``token refresh failed:``
    and the reason. ``refresh_status`` is the token endpoint's HTTP status (``None`` when it
    gave no answer), ``error_code`` the OAuth ``error`` field when it sent one. Never holds a
    token or the client secret.
    """

    def __init__(
        self,
        reason: str,
        *,
        refresh_status: int | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(401, [reason], headers=headers, trace_id=trace_id)
        self.reason = reason
        self.refresh_status = refresh_status
        self.error_code = error_code
        self.args = (f"token refresh failed: {reason}",)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.reason,),
            {"refresh_status": self.refresh_status, "error_code": self.error_code},
        )


class NotFound(HTTPStatusError):
    """404: no contact with this id."""


class UnprocessableEntity(HTTPStatusError):
    """422: the body failed the server's validation; ``messages`` has one entry per problem."""


class RateLimited(HTTPStatusError):
    """429: over the rate limit. ``retry_after`` is in seconds when the server said."""

    def __init__(
        self,
        status_code: int = 429,
        messages: Sequence[str] = (),
        *,
        headers: Mapping[str, str] | None = None,
        trace_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status_code, messages, headers=headers, trace_id=trace_id)
        self.retry_after = retry_after


class ServerError(HTTPStatusError):
    """5xx: the server or a proxy in front of it failed; transient."""


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_BY_STATUS: dict[int, type[HTTPStatusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    422: UnprocessableEntity,
    429: RateLimited,
}


def error_for_status(status_code: int) -> type[HTTPStatusError]:
    """The exception class for an error status: exact matches first, then its family."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    if 300 <= status_code < 400:
        return Redirected
    return HTTPStatusError


def _shown(text: str, limit: int = 200) -> str:
    """A server-given string for a message: quoted, control characters escaped, bounded."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
