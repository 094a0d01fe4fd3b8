"""growthhub_async: bulk, paced, retried updates of GrowthHub (HighLevel) contacts.

The public API is what ``__all__`` lists; every other name is private.

Each public name is imported from its module on first use (PEP 562): importing the package
itself costs next to nothing, so that the command's entry point
(:mod:`growthhub_async.console`) is running, and can turn a Ctrl-C into a short message,
before the heavy imports (aiohttp, msgspec) start; and ``update`` without ``--state`` never
imports SQLite (issue 17).
"""

import logging
from importlib import import_module

# Not typing's: importing typing takes milliseconds in which a Ctrl-C would still print a
# traceback (type checkers read any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from growthhub_async.auth import FixedToken, OAuthProvider, TokenProvider, TokenSet
    from growthhub_async.bulk import OutcomeStream
    from growthhub_async.client import GrowthHubClient, TokenView
    from growthhub_async.errors import (
        BadRequest,
        ClientClosed,
        ConfigurationError,
        ConnectionFailed,
        ContactMismatch,
        Forbidden,
        GrowthHubError,
        HTTPStatusError,
        InvalidContactId,
        NotFound,
        RateLimited,
        Redirected,
        RequestTimeout,
        ResponseError,
        ServerError,
        StateError,
        TokenRefreshFailed,
        TransportError,
        Unauthorized,
        UnprocessableEntity,
    )
    from growthhub_async.events import (
        Event,
        Hook,
        Paused,
        RateLimitHit,
        RecordFinished,
        RequestFinished,
        RetryScheduled,
        RunFinished,
        TokenStopped,
        listens,
    )
    from growthhub_async.models import (
        Contact,
        CustomField,
        DndChannel,
        DndSettings,
        ErrorBody,
        InboundDndChannel,
        InboundDndSettings,
        UpdateContact,
        UpdateContactCodec,
        UpdateContactResponse,
        UploadedFile,
        UploadedFileMeta,
    )
    from growthhub_async.outcomes import Outcome, Status, Summary
    from growthhub_async.ratelimit import Rate
    from growthhub_async.retry import RetryPolicy
    from growthhub_async.shared_budget import RedisBudgets
    from growthhub_async.sources import Record
    from growthhub_async.state import SyncState
    from growthhub_async.telemetry import Telemetry

__version__ = "0.1.0"

# Public name -> the module (of this package) that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(["FixedToken", "OAuthProvider", "TokenProvider", "TokenSet"], "auth"),
    **dict.fromkeys(["OutcomeStream"], "bulk"),
    **dict.fromkeys(["GrowthHubClient", "TokenView"], "client"),
    **dict.fromkeys(
        [
            "BadRequest",
            "ClientClosed",
            "ConfigurationError",
            "ConnectionFailed",
            "ContactMismatch",
            "Forbidden",
            "GrowthHubError",
            "HTTPStatusError",
            "InvalidContactId",
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
        ],
        "errors",
    ),
    **dict.fromkeys(
        [
            "Event",
            "Hook",
            "Paused",
            "RateLimitHit",
            "RecordFinished",
            "RequestFinished",
            "RetryScheduled",
            "RunFinished",
            "TokenStopped",
            "listens",
        ],
        "events",
    ),
    **dict.fromkeys(
        [
            "Contact",
            "CustomField",
            "DndChannel",
            "DndSettings",
            "ErrorBody",
            "InboundDndChannel",
            "InboundDndSettings",
            "UpdateContact",
            "UpdateContactCodec",
            "UpdateContactResponse",
            "UploadedFile",
            "UploadedFileMeta",
        ],
        "models",
    ),
    **dict.fromkeys(["Outcome", "Status", "Summary"], "outcomes"),
    **dict.fromkeys(["Rate"], "ratelimit"),
    **dict.fromkeys(["RetryPolicy"], "retry"),
    **dict.fromkeys(["RedisBudgets"], "shared_budget"),
    **dict.fromkeys(["Record"], "sources"),
    **dict.fromkeys(["SyncState"], "state"),
    **dict.fromkeys(["Telemetry"], "telemetry"),
}


def __getattr__(name: str) -> "Any":
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BadRequest",
    "ClientClosed",
    "ConfigurationError",
    "ConnectionFailed",
    "Contact",
    "ContactMismatch",
    "CustomField",
    "DndChannel",
    "DndSettings",
    "ErrorBody",
    "Event",
    "FixedToken",
    "Forbidden",
    "GrowthHubClient",
    "GrowthHubError",
    "HTTPStatusError",
    "Hook",
    "InboundDndChannel",
    "InboundDndSettings",
    "InvalidContactId",
    "NotFound",
    "OAuthProvider",
    "Outcome",
    "OutcomeStream",
    "Paused",
    "Rate",
    "RateLimitHit",
    "RateLimited",
    "Record",
    "RecordFinished",
    "Redirected",
    "RedisBudgets",
    "RequestFinished",
    "RequestTimeout",
    "ResponseError",
    "RetryPolicy",
    "RetryScheduled",
    "RunFinished",
    "ServerError",
    "StateError",
    "Status",
    "Summary",
    "SyncState",
    "Telemetry",
    "TokenProvider",
    "TokenRefreshFailed",
    "TokenSet",
    "TokenStopped",
    "TokenView",
    "TransportError",
    "Unauthorized",
    "UnprocessableEntity",
    "UpdateContact",
    "UpdateContactCodec",
    "UpdateContactResponse",
    "UploadedFile",
    "UploadedFileMeta",
    "__version__",
    "listens",
]

# The library logs under growthhub_async.* and configures nothing: the application decides.
logging.getLogger("growthhub_async").addHandler(logging.NullHandler())
