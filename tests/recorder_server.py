"""A loopback Update Contact endpoint for tests: records every PUT, answers when let."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web


class Recorder:
    """A loopback Update Contact endpoint: records each PUT and answers 200, at once for the
    first ``free`` requests, later ones once ``gate`` is set (it is, unless a test clears it)."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, dict[str, object]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()
        self.free = 0
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        contact_id = request.match_info["cid"]
        body = msgspec.json.decode(await request.read())
        assert isinstance(body, dict)
        self.puts.append((contact_id, body))
        self.arrived.set()
        if len(self.puts) > self.free:
            await self.gate.wait()
        return web.json_response({"succeded": True, "contact": {"id": contact_id, **body}})


@contextlib.asynccontextmanager
async def serve_recorder() -> AsyncIterator[Recorder]:
    """A :class:`Recorder` on a free loopback port, stopped at the end."""
    rec = Recorder()
    app = web.Application()
    app.router.add_put("/contacts/{cid}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.base_url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        rec.gate.set()
        await runner.cleanup()
