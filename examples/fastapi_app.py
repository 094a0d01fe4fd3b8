"""A FastAPI app that updates contacts through one ``GrowthHubClient`` per worker process.

PROVISIONAL (branch h15-redis): a minimal app following the contract of the h15-web branch's
example, so that ``benchmarks/web_workers.py`` can run; that branch's version replaces it.

    GROWTHHUB_TOKEN=... GROWTHHUB_SHARED_BUDGET=redis://127.0.0.1:6379/0 \\
        uvicorn examples.fastapi_app:app --workers 4

Environment: ``GROWTHHUB_TOKEN`` (required), ``GROWTHHUB_BASE_URL``, ``GROWTHHUB_RATE``
(``N/Ws``), ``GROWTHHUB_SHARED_BUDGET`` (a ``redis://`` URL: one budget for every worker).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from growthhub_async import GrowthHubClient, Status, UpdateContact

_HTTP_STATUS = {
    Status.UPDATED: 200,
    Status.UNCHANGED: 200,
    Status.REJECTED: 422,
    Status.INVALID: 422,
    Status.BAD_REQUEST: 400,
    Status.NOT_FOUND: 404,
    Status.UNAUTHORIZED: 502,
    Status.FAILED: 503,
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client per worker process, for the life of the app."""
    options: dict[str, Any] = {}
    if base_url := os.environ.get("GROWTHHUB_BASE_URL"):
        options["base_url"] = base_url
    if rate := os.environ.get("GROWTHHUB_RATE"):
        options["rate"] = rate
    if shared := os.environ.get("GROWTHHUB_SHARED_BUDGET"):
        options["shared_budget"] = shared
    async with GrowthHubClient(os.environ["GROWTHHUB_TOKEN"], **options) as gh:
        app.state.gh = gh
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/contacts/{contact_id}")
async def update_contact(contact_id: str, request: Request) -> JSONResponse:
    """Update one contact; the answer is the outcome, its status code mapped from it."""
    try:
        update = msgspec.json.decode(await request.body(), type=UpdateContact)
    except msgspec.DecodeError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    gh: GrowthHubClient = request.app.state.gh
    outcome = await gh.submit(contact_id, update)
    return JSONResponse(
        msgspec.to_builtins(outcome), status_code=_HTTP_STATUS.get(outcome.status, 500)
    )
