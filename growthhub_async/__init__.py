"""growthhub_async: bulk, paced, retried updates of GrowthHub (HighLevel) contacts.

The public API is what ``__all__`` lists; every other name is private.
"""

from growthhub_async.errors import (
    BadRequest,
    ConfigurationError,
    ConnectionFailed,
    Forbidden,
    GrowthHubError,
    HTTPStatusError,
    InvalidContactId,
    NotFound,
    RateLimited,
    RequestTimeout,
    ResponseError,
    ServerError,
    TransportError,
    Unauthorized,
    UnprocessableEntity,
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

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "ConfigurationError",
    "ConnectionFailed",
    "Contact",
    "CustomField",
    "DndChannel",
    "DndSettings",
    "ErrorBody",
    "Forbidden",
    "GrowthHubError",
    "HTTPStatusError",
    "InboundDndChannel",
    "InboundDndSettings",
    "InvalidContactId",
    "NotFound",
    "RateLimited",
    "RequestTimeout",
    "ResponseError",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "UnprocessableEntity",
    "UpdateContact",
    "UpdateContactCodec",
    "UpdateContactResponse",
    "UploadedFile",
    "UploadedFileMeta",
    "__version__",
]
