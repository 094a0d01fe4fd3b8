"""Shared fixtures: a running sandbox on loopback and an HTTP session to talk to it.

Generic on purpose, so that every test module can use them: ``sandbox`` is a sandbox with
``TEST_TOKEN``, a scaled-down burst window and faults off; ``start_sandbox`` starts one with any
config (stopped at the end of the test); ``http`` is a plain ``aiohttp.ClientSession``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from growthhub_async.sandbox import Sandbox, SandboxConfig, run_sandbox
from tests.redis_helpers import RedisServer

TEST_TOKEN = "test-token"

StartSandbox = Callable[..., Awaitable[Sandbox]]


def sandbox_config(**overrides: object) -> SandboxConfig:
    """The tests' default sandbox config (``TEST_TOKEN``, 20 requests per 0.5 s), overridden."""
    settings: dict[str, object] = {
        "tokens": frozenset({TEST_TOKEN}),
        "rate_limit": 20,
        "rate_window": 0.5,
    }
    settings.update(overrides)
    return SandboxConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def start_sandbox() -> AsyncIterator[StartSandbox]:
    """``await start_sandbox(config=None, **run_sandbox_kwargs)``: a sandbox for this test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(config: SandboxConfig | None = None, **kwargs: object) -> Sandbox:
            return await stack.enter_async_context(
                run_sandbox(config or sandbox_config(), **kwargs)  # type: ignore[arg-type]
            )

        yield start


@pytest.fixture
async def sandbox(start_sandbox: StartSandbox) -> Sandbox:
    """A running sandbox with ``TEST_TOKEN``, 20 requests per 0.5 s, faults off."""
    return await start_sandbox()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` for the whole session (with a password), stopped at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
