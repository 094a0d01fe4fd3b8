"""growthhub_async: bulk, paced, retried updates of GrowthHub (HighLevel) contacts.

The public API is what ``__all__`` lists; every other name is private.
"""

import logging
from typing import TYPE_CHECKING, Any

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
from growthhub_async.telemetry import Telemetry

if TYPE_CHECKING:
    from growthhub_async.state import SyncState

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # SyncState (sqlite3) is imported on first use: `update` without --state never needs it,
    # and the command's start-up pays for every import (issue 17).
    if name == "SyncState":
        from growthhub_async.state import SyncState  # noqa: PLC0415

        return SyncState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
