"""FastAPI: one ``GrowthHubClient`` per process, an update per request (issue 15).

Run it (the token from the environment, never on the command line)::

    GROWTHHUB_TOKEN=... uvicorn examples.fastapi_app:app --workers 4

then ``curl -X PUT localhost:8000/contacts/ocQHyuzHvysMo5N5VsXc -d '{"firstName": "Rosan"}'``.
Settings: see :mod:`examples.common` (``GROWTHHUB_TOKEN``, ``GROWTHHUB_BASE_URL``,
``GROWTHHUB_RATE``, ``GROWTHHUB_CONCURRENCY``, ``GROWTHHUB_DEADLINE``,
``GROWTHHUB_SHARED_BUDGET``).

What it shows:

- **One client per process**, opened in the lifespan and closed after the last request: the
  connection pool, the rate budget and the workers are shared by every request of the process.
  (``uvicorn --workers 4`` makes four processes, so four clients: give them one budget with
  ``GROWTHHUB_SHARED_BUDGET``, or each paces as if alone.)
- **The answer**: the outcome as JSON with the status code it calls for (200 with the updated
  contact, 422, 404, 502, 503, 504 for a deadline); see :func:`examples.common.answer`.
- **A deadline per request** (``submit(..., timeout=)``): a request never waits longer; an
  update that could not start in time is never sent.
- **Disconnects**: neither Starlette nor uvicorn cancels a handler whose caller went away, so
  the handler watches the ASGI receive channel for ``http.disconnect`` while the update waits,
  and cancels the update: one still queued is never sent.
- **Shutdown** (SIGTERM): uvicorn stops accepting and lets the requests in progress finish,
  each within its deadline; then the lifespan closes the client (anything still queued would
  end ``failed``, "cancelled", unsent). Give ``--timeout-graceful-shutdown`` more than the
  deadline: otherwise (or on a second Ctrl-C) uvicorn cancels the requests still running, and
  each caller gets a 503, "cancelled: the server is shutting down", no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypedDict

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from examples.common import (
    MAX_BODY,
    Settings,
    answer,
    cancelled_body,
    invalid_body,
    make_client,
    read_update,
)
from growthhub_async import GrowthHubClient, Outcome

log = logging.getLogger("examples.fastapi_app")


class State(TypedDict):
    """What the lifespan hands every request (``request.state``)."""

    growthhub: GrowthHubClient
    settings: Settings


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """One client for the life of the process: made at start-up, closed after the last
    request has its answer."""
    logging.basicConfig(level=logging.INFO)  # no-op when the server configured logging
    settings = Settings.from_env()
    async with make_client(settings) as growthhub:
        yield {"growthhub": growthhub, "settings": settings}
    log.info("growthhub client closed")


app = FastAPI(title="growthhub_async example", lifespan=lifespan)


@app.put("/contacts/{contact_id}")
async def update_contact(contact_id: str, request: Request) -> Response:
    """Update one contact; the body is an Update Contact body with the API's field names."""
    body = await _read_body(request)
    if body is None:
        return JSONResponse(invalid_body(contact_id, "body too large"), status_code=413)
    update = read_update(body)
    if isinstance(update, str):
        return JSONResponse(invalid_body(contact_id, update), status_code=422)
    growthhub: GrowthHubClient = request.state.growthhub
    settings: Settings = request.state.settings
    try:
        outcome = await _unless_disconnected(
            request,
            growthhub.submit(contact_id, update, timeout=settings.deadline, response=True),
        )
    except asyncio.CancelledError:
        # uvicorn cancels the handlers still running when its graceful shutdown times out (or
        # on a second Ctrl-C); the update is cancelled with this one. Answer that, rather than
        # let the cancellation out as a 500 and an "Exception in ASGI application" traceback.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        log.info("shutting down: the update of %s is cancelled", contact_id)
        return JSONResponse(cancelled_body(contact_id), status_code=503)
    if outcome is None:
        log.info("the caller of %s went away: its update is cancelled", contact_id)
        return Response(status_code=499)  # nobody reads it; the connection is gone
    code, payload = answer(outcome)
    return Response(payload, status_code=code, media_type="application/json")


async def _read_body(request: Request) -> bytes | None:
    """The body, or ``None`` beyond :data:`MAX_BODY` (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Returns when the caller disconnects. Once the body is read, the ASGI receive channel
    has nothing more to say until ``http.disconnect``."""
    while True:
        message: dict[str, Any] = dict(await request.receive())
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, submitting: Awaitable[Outcome]) -> Outcome | None:
    """The outcome, or ``None`` when the caller went away first (the update is then cancelled:
    one still queued is never sent, one in flight ends ``failed``, "cancelled")."""
    submit = asyncio.ensure_future(submitting)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((submit, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself is cancelled: so is its update
        submit.cancel()
        raise
    finally:
        gone.cancel()
    if submit.done():
        return submit.result()
    submit.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await submit  # the record has its outcome (the hooks see it) before we answer
    return None
