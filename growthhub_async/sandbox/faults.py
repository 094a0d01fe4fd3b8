"""Fault injection: which PUT gets a 5xx, a dropped connection, a forced 429 or a delay.

Pure apart from its own ``random.Random(seed)``: every PUT draws exactly three numbers, whatever
the probabilities, so one seed and one arrival order always give the same faults. A contact's
script, while it lasts, overrides the random fate of that contact's PUTs (the draws still
happen, so scripts do not shift the random faults of other contacts).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Literal

import msgspec

from growthhub_async.sandbox.config import Faults, ScriptStep, parse_script_step

__all__ = ["ERROR_STATUSES", "Fate", "FaultInjector", "canned_body"]

ERROR_STATUSES: Final = (500, 502, 503, 504)

# What proxies in front of an API answer: nginx and a CDN send HTML, not the API's JSON.
_HTML: Final[dict[int, bytes]] = {
    502: (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        b"</body>\r\n</html>\r\n"
    ),
    504: (
        b"<!DOCTYPE html>\n<html><head><title>504 Gateway Time-out</title></head>"
        b"<body><h1>504 Gateway Time-out</h1><p>The upstream server did not answer in time."
        b"</p></body></html>\n"
    ),
}

_JSON_MESSAGES: Final[dict[int, object]] = {
    400: "Bad Request",
    401: "Invalid token: access token is invalid",
    403: "The token does not have access to this location.",
    404: "Contact not found",
    422: ["Unprocessable Entity"],
    429: "Too many requests",
    500: "Internal server error",
    503: "Service Unavailable",
}

_ERRORS: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    422: "Unprocessable Entity",
}


def canned_body(status: int) -> tuple[bytes, str]:
    """The body and content type the sandbox sends for an injected ``status``."""
    html = _HTML.get(status)
    if html is not None:
        return html, "text/html"
    message = _JSON_MESSAGES.get(status)
    if message is None:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = "Error"
    body: dict[str, object] = {"statusCode": status, "message": message}
    if status in _ERRORS:
        body["error"] = _ERRORS[status]
    return msgspec.json.encode(body), "application/json"


@dataclass(frozen=True, slots=True)
class Fate:
    """What happens to one PUT before normal handling (``kind="normal"``) or instead of it."""

    kind: Literal["normal", "drop", "status", "hostile"]
    status: int = 0
    delay: float = 0.0
    mode: str = ""


_NORMAL: Final = Fate("normal")


class FaultInjector:
    """Decides each PUT's fate from the :class:`Faults` settings; ``restart()`` rewinds it."""

    __slots__ = ("_positions", "_rng", "_scripts", "faults")

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._scripts: dict[str, Sequence[ScriptStep]] = {
            contact_id: [parse_script_step(step) for step in steps]
            for contact_id, steps in faults.scripts.items()
        }
        self._rng = random.Random(faults.seed)  # noqa: S311 - reproducible faults, not secrets
        self._positions: dict[str, int] = {}

    def restart(self) -> None:
        """Reseed the random source and rewind every script."""
        self._rng = random.Random(self.faults.seed)  # noqa: S311 - as above
        self._positions.clear()

    def fate(self, contact_id: str) -> Fate:
        """The fate of the next PUT to ``contact_id``."""
        faults = self.faults
        fate = _NORMAL
        if faults.random_enabled:
            rng = self._rng
            pick, which, spread = rng.random(), rng.random(), rng.random()
            delay = faults.latency + faults.jitter * spread
            threshold = faults.drop_rate
            if pick < threshold:
                fate = Fate("drop", delay=delay)
            elif pick < (threshold := threshold + faults.error_rate):
                status = ERROR_STATUSES[min(int(which * len(ERROR_STATUSES)), 3)]
                fate = Fate("status", status=status, delay=delay)
            elif pick < threshold + faults.rate_limit_rate:
                spent = which < faults.spent_429_share
                fate = Fate("status", status=429, delay=delay, mode="spent" if spent else "")
            elif delay:
                fate = Fate("normal", delay=delay)
        if self._scripts:
            steps = self._scripts.get(contact_id)
            if steps is not None:
                position = self._positions.get(contact_id, 0)
                if position < len(steps):
                    self._positions[contact_id] = position + 1
                    fate = _script_fate(steps[position])
        return fate


def _script_fate(step: ScriptStep) -> Fate:
    if step.kind == "ok":
        return _NORMAL
    if step.kind == "reset":
        return Fate("drop")
    if step.kind == "slow":
        return Fate("normal", delay=step.delay)
    if step.kind == "hostile":
        return Fate("hostile", mode=step.mode)
    return Fate("status", status=step.status)
