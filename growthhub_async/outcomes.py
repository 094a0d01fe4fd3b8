"""What happened to each record: ``Status``, ``Outcome``, the status table, and ``Summary``.

Pure: no I/O, no clock. The one table below maps an HTTP status onto an outcome status; the
retry policy reads the same table (a status that classifies as ``FAILED`` is transient), so
"what we retry" and "what we report as failed" cannot drift apart.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Any, Final

import msgspec

from growthhub_async.models import Contact, UpdateContactResponse

__all__ = [
    "FINAL_STATUSES",
    "SUCCEEDED",
    "Outcome",
    "Status",
    "Summary",
    "classify_status",
    "decode_outcome",
    "encode_outcome",
]


class Status(enum.StrEnum):
    """The outcome of one record (../shared/DESIGN.md, "Outcome statuses")."""

    UPDATED = "updated"
    """2xx: the server applied the update."""
    REJECTED = "rejected"
    """Never sent: the record failed local validation."""
    INVALID = "invalid"
    """422: the server refused the body."""
    BAD_REQUEST = "bad_request"
    """400 (and any other non-transient 4xx the API has no better name for)."""
    UNAUTHORIZED = "unauthorized"
    """401 or 403."""
    NOT_FOUND = "not_found"
    """404."""
    FAILED = "failed"
    """Transient failures outlasted the retry budget, or the run stopped before the record did."""
    UNCHANGED = "unchanged"
    """Never sent: with a sync state, the body equals the one last applied to this contact."""


FINAL_STATUSES: Final[frozenset[Status]] = frozenset(
    {
        Status.UPDATED,
        Status.UNCHANGED,
        Status.REJECTED,
        Status.INVALID,
        Status.BAD_REQUEST,
        Status.NOT_FOUND,
    }
)
"""Statuses that sending the same record again cannot change: resume skips these records.
``unauthorized`` and ``failed`` may succeed on another try (a new token, a calmer server)."""

SUCCEEDED: Final[frozenset[Status]] = frozenset({Status.UPDATED, Status.UNCHANGED})
"""Statuses that count as success (exit status 0): applied, or already applied before."""

_EXACT: Final[dict[int, Status]] = {
    400: Status.BAD_REQUEST,
    401: Status.UNAUTHORIZED,
    403: Status.UNAUTHORIZED,
    404: Status.NOT_FOUND,
    408: Status.FAILED,  # request timeout: the same request may well pass next time
    422: Status.INVALID,
    429: Status.FAILED,
}


def classify_status(status_code: int) -> Status:
    """The outcome status for an HTTP status code; ``FAILED`` means transient (retry it)."""
    if 200 <= status_code < 300:
        return Status.UPDATED
    if status_code in _EXACT:
        return _EXACT[status_code]
    if status_code >= 500:
        return Status.FAILED
    return Status.BAD_REQUEST


class Outcome(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One record's result. In JSONL: ``line, contactId, status, httpStatus, attempts, error``.

    ``line`` is the record's 1-based number in its input; ``attempts`` counts the HTTP requests
    sent for it (0 for a record never sent); ``error`` is a human message, never a token.

    ``response`` is the decoded 2xx body (with ``contact``, the contact as the server holds it
    now), only on an ``updated`` outcome of ``submit(..., response=True)``; otherwise it is
    ``msgspec.UNSET`` and absent from the JSON, so journal lines and a bulk run's memory never
    carry it.

    As JSON: :meth:`to_dict` (plain types, the JSONL keys), :meth:`to_json` (bytes). A web
    framework built on pydantic (FastAPI) accepts ``Outcome`` as a return annotation or
    ``response_model`` and serialises it with :meth:`to_dict`.
    """

    line: int
    contact_id: str | None
    status: Status
    http_status: int | None = None
    attempts: int = 0
    error: str | None = None
    response: UpdateContactResponse | msgspec.UnsetType = msgspec.UNSET

    @property
    def final(self) -> bool:
        """Whether sending this record again could not change its outcome."""
        return self.status in FINAL_STATUSES

    @property
    def contact(self) -> Contact | None:
        """The updated contact from the 2xx body, when ``response`` holds one."""
        response = self.response
        return response.contact if isinstance(response, UpdateContactResponse) else None

    def to_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready builtins, keyed as in JSONL (``contactId``, ``httpStatus``;
        ``response`` only when it is set). ``json.dumps``, a web framework's JSON response
        (``JSONResponse(outcome.to_dict())``, ``web.json_response(...)``) take it as it is."""
        built: dict[str, Any] = msgspec.to_builtins(self)
        return built

    def to_json(self) -> bytes:
        """The outcome as JSON bytes (:meth:`to_dict`'s keys), without a newline."""
        return _outcome_encoder.encode(self)

    # pydantic (FastAPI) support, without importing pydantic unless pydantic asks.
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Let pydantic validate an ``Outcome`` (or its JSON shape) and serialise it as
        :meth:`to_dict`: what a FastAPI ``-> Outcome`` annotation needs."""
        from pydantic_core import core_schema  # noqa: PLC0415 (pydantic calls this: it is there)

        return core_schema.no_info_plain_validator_function(
            _outcome_from_python,
            serialization=core_schema.plain_serializer_function_ser_schema(
                Outcome.to_dict, when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        """The JSON schema of :meth:`to_dict`'s output (for OpenAPI documents)."""
        return _json_schema()


_outcome_encoder: Final = msgspec.json.Encoder()
_outcome_decoder: Final = msgspec.json.Decoder(Outcome)


def _outcome_from_python(value: Any) -> Outcome:
    if isinstance(value, Outcome):
        return value
    return msgspec.convert(value, Outcome)  # a dict in the JSON shape; ValidationError else


def _json_schema() -> dict[str, Any]:
    """msgspec's JSON schema of ``Outcome`` with its ``$ref``s inlined (no cycles in it)."""
    generated = msgspec.json.schema(Outcome)
    defs = generated.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline({k: v for k, v in generated.items() if k != "$defs"})
    return inlined


def encode_outcome(outcome: Outcome) -> bytes:
    """One JSONL line (with its newline) for ``outcome``; every key is always present."""
    return _outcome_encoder.encode(outcome) + b"\n"


def decode_outcome(line: bytes) -> Outcome:
    """Parse one journal line; raises ``msgspec.DecodeError`` for a torn or foreign line."""
    return _outcome_decoder.decode(line)


class Summary:
    """Counts over a run: outcomes per status, requests sent, retries, 429s, elapsed time.

    ``elapsed`` is set by whoever owns the clock (the bulk engine), never read here.
    """

    def __init__(self) -> None:
        self.by_status: Counter[Status] = Counter()
        self.requests = 0
        self.retries = 0
        self.rate_limited = 0
        self.elapsed = 0.0
        self.paused_until = 0.0
        """The ``elapsed`` at which the latest 429 pause of a token ends (the progress shows it)."""

    def add(self, outcome: Outcome) -> None:
        """Count one finished record."""
        self.by_status[outcome.status] += 1
        self.requests += outcome.attempts

    @property
    def records(self) -> int:
        """How many records have an outcome."""
        return sum(self.by_status.values())

    @property
    def rate(self) -> float:
        """Requests sent per second of elapsed time (0 before any time has passed)."""
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def succeeded(self) -> int:
        """How many records were updated or found unchanged."""
        return sum(self.by_status[s] for s in SUCCEEDED)

    @property
    def all_updated(self) -> bool:
        """Whether every record was updated or unchanged (the command line's exit status 0)."""
        return self.records == self.succeeded

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.value}={n}" for s, n in sorted(self.by_status.items()))
        return (
            f"Summary({counts or 'no records'}; requests={self.requests}, "
            f"retries={self.retries}, rate_limited={self.rate_limited}, "
            f"elapsed={self.elapsed:.3f}s)"
        )
