"""A faithful local emulator of GrowthHub's Update Contact endpoint, for tests, demos, benchmarks.

``PUT /contacts/{contactId}`` answers as the real API is documented and reported to (auth,
``Version`` header, class-validator style 422s, merge semantics, per-token rate limits with the
``X-RateLimit-*`` headers), with seeded, switchable faults; ``GET /__sandbox/stats`` shows what
a client did from the server's side.

    async with run_sandbox(SandboxConfig(tokens=frozenset({"t"}))) as sb:
        ...  # point a client at sb.base_url
"""

from growthhub_async.sandbox.app import API_VERSION, Sandbox, create_app, run_sandbox
from growthhub_async.sandbox.config import DEFAULT_TOKEN, Faults, SandboxConfig
from growthhub_async.sandbox.oauth import OAuthConfig

__all__ = [
    "API_VERSION",
    "DEFAULT_TOKEN",
    "Faults",
    "OAuthConfig",
    "Sandbox",
    "SandboxConfig",
    "create_app",
    "run_sandbox",
]
