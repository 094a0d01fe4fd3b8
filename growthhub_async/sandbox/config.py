"""Configuration of the sandbox: the API's limits and the faults to inject.

Both records are frozen and validated on construction, so a bad setting fails where it is
written, not in the middle of a test run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from growthhub_async.sandbox.hostile import HOSTILE_MODES
from growthhub_async.sandbox.oauth import OAuthConfig

__all__ = [
    "DEFAULT_TOKEN",
    "Faults",
    "OAuthConfig",
    "SandboxConfig",
    "ScriptStep",
    "WindowMode",
    "parse_script_step",
]

# A throwaway token for local use, not a secret.
DEFAULT_TOKEN: Final = "sandbox-token"  # noqa: S105

WindowMode: TypeAlias = Literal["fixed", "sliding"]

_STATUS_STEP = re.compile(r"[1-5]\d\d")


@dataclass(frozen=True, slots=True)
class ScriptStep:
    """One parsed step of a per-contact script.

    ``kind`` is ``"ok"`` (normal handling), ``"status"`` (answer ``status`` instead),
    ``"reset"`` (drop the connection) or ``"slow"`` (sleep ``delay`` seconds, then normal).
    """

    kind: Literal["ok", "status", "reset", "slow", "hostile"]
    status: int = 0
    delay: float = 0.0
    mode: str = ""
    """For ``"hostile"``: one of :data:`~growthhub_async.sandbox.hostile.HOSTILE_MODES`."""


def parse_script_step(step: str) -> ScriptStep:
    """Parse ``"ok"``, ``"reset"``, ``"503"`` or ``"slow:2.5"``; raises ``ValueError`` otherwise."""
    text = step.strip().lower()
    if text == "ok":
        return ScriptStep("ok")
    if text == "reset":
        return ScriptStep("reset")
    if _STATUS_STEP.fullmatch(text):
        return ScriptStep("status", status=int(text))
    if text in HOSTILE_MODES:
        return ScriptStep("hostile", mode=text)
    if text.startswith("slow:"):
        try:
            delay = float(text[5:])
        except ValueError:
            delay = math.nan
        if math.isfinite(delay) and delay >= 0:
            return ScriptStep("slow", delay=delay)
    raise ValueError(
        f"script step {step!r}: expected 'ok', 'reset', an HTTP status such as '503',"
        f" 'slow:SECONDS' or one of {', '.join(sorted(HOSTILE_MODES))}"
    )


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, not {value!r}")


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject, all off by default; every random choice comes from ``seed``.

    Each PUT draws the same number of random values whatever the settings, so a given seed and
    a given arrival order of requests always give the same faults.
    """

    seed: int = 0
    error_rate: float = 0.0
    """Probability of a 500/502/503/504 (502 and 503 with an HTML body, as proxies send)."""
    drop_rate: float = 0.0
    """Probability of closing the connection without any response."""
    rate_limit_rate: float = 0.0
    """Probability of a 429 whatever the budget says."""
    spent_429_share: float = 0.0
    """Share of those forced 429s that say the budget is spent (``X-RateLimit-Remaining: 0``
    and a ``Retry-After``), as when another client spends the same budget; the others report
    the budget as it is (a 429 that is not about the budget)."""
    latency: float = 0.0
    """Seconds added before every PUT is answered."""
    jitter: float = 0.0
    """Up to this many more seconds, uniformly drawn, added to ``latency``."""
    scripts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Per contact id, the fate of its successive PUTs (see :func:`parse_script_step`);
    after the list ends, normal handling."""

    def __post_init__(self) -> None:
        _check_probability("error_rate", self.error_rate)
        _check_probability("drop_rate", self.drop_rate)
        _check_probability("rate_limit_rate", self.rate_limit_rate)
        _check_probability("spent_429_share", self.spent_429_share)
        if self.error_rate + self.drop_rate + self.rate_limit_rate > 1.0:
            raise ValueError("error_rate + drop_rate + rate_limit_rate must not exceed 1")
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(
                f"latency must be a non-negative number of seconds, not {self.latency!r}"
            )
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise ValueError(
                f"jitter must be a non-negative number of seconds, not {self.jitter!r}"
            )
        for steps in self.scripts.values():
            if isinstance(steps, str):
                raise TypeError("a script is a list of steps, not a single string")
            for step in steps:
                parse_script_step(step)

    @property
    def random_enabled(self) -> bool:
        """Whether any random fault or delay can happen (lets the hot path skip the draws)."""
        return bool(
            self.error_rate or self.drop_rate or self.rate_limit_rate or self.latency or self.jitter
        )


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox behaves: accepted tokens, rate limits, known contacts, faults.

    ``contacts=None`` accepts any contact id (created on its first PUT); a mapping seeds the
    store and makes unknown ids answer 404. Seeded contacts are in the API's contact JSON shape
    (``firstName``, ``customFields`` as ``{id, value}``...); ``id`` and ``locationId`` are filled
    in when missing.
    """

    tokens: frozenset[str] = frozenset({DEFAULT_TOKEN})
    rate_limit: int = 100
    rate_window: float = 10.0
    window: WindowMode = "sliding"
    daily_limit: int = 200_000
    retry_after: bool = True
    contacts: Mapping[str, Mapping[str, Any]] | None = None
    faults: Faults = field(default_factory=Faults)
    location_id: str = "sandboxLocation0000001"
    day_length: float = 86_400.0
    """Seconds in the daily limit's window; tests scale it down like ``rate_window``."""
    oauth: OAuthConfig | None = None
    """An OAuth app: enables ``POST /oauth/token`` and the access tokens it issues."""
    location_tokens: Mapping[str, str] = field(default_factory=dict)
    """More fixed tokens, each of one location (token -> locationId, issue 13): a contact
    belongs to the location of the token that created it (or its seed's ``locationId``), a
    token of another location gets 403 ``The token does not have access to this location.``,
    and each location has its own rate budget. Tokens in ``tokens`` belong to
    ``location_id`` and keep a budget each."""

    def __post_init__(self) -> None:
        if isinstance(self.tokens, str):
            raise TypeError("tokens is a set of strings, not a single string")
        if not self.tokens or not all(isinstance(t, str) and t for t in self.tokens):
            raise ValueError("tokens must hold at least one non-empty string")
        if self.rate_limit < 1:
            raise ValueError(f"rate_limit must be at least 1, not {self.rate_limit!r}")
        if not (math.isfinite(self.rate_window) and self.rate_window > 0):
            raise ValueError(
                f"rate_window must be a positive number of seconds, not {self.rate_window!r}"
            )
        if self.window not in ("fixed", "sliding"):
            raise ValueError(f"window must be 'fixed' or 'sliding', not {self.window!r}")
        if self.daily_limit < 1:
            raise ValueError(f"daily_limit must be at least 1, not {self.daily_limit!r}")
        if not all(
            isinstance(t, str) and t and isinstance(loc, str) and loc
            for t, loc in self.location_tokens.items()
        ):
            raise ValueError("location_tokens maps non-empty tokens to non-empty location ids")
        if not (math.isfinite(self.day_length) and self.day_length > 0):
            raise ValueError(
                f"day_length must be a positive number of seconds, not {self.day_length!r}"
            )

    def __repr__(self) -> str:
        # Tokens are secrets: never in a repr, a log line or an exception message.
        return (
            f"SandboxConfig(tokens=<{len(self.tokens)} hidden>, "
            f"location_tokens=<{len(self.location_tokens)} hidden>, rate_limit={self.rate_limit}, "
            f"rate_window={self.rate_window}, window={self.window!r}, "
            f"daily_limit={self.daily_limit}, retry_after={self.retry_after}, "
            f"contacts={'None' if self.contacts is None else len(self.contacts)}, "
            f"faults={self.faults!r}, oauth={self.oauth!r})"
        )
