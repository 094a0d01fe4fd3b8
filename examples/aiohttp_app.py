"""aiohttp.web: one ``GrowthHubClient`` per process, an update per request (issue 15).

Run it (the token from the environment, never on the command line)::

    GROWTHHUB_TOKEN=... python -m examples.aiohttp_app --port 8080

then ``curl -X PUT localhost:8080/contacts/ocQHyuzHvysMo5N5VsXc -d '{"firstName": "Rosan"}'``.
Settings: see :mod:`examples.common` (``GROWTHHUB_TOKEN``, ``GROWTHHUB_BASE_URL``,
``GROWTHHUB_RATE``, ``GROWTHHUB_CONCURRENCY``, ``GROWTHHUB_DEADLINE``,
``GROWTHHUB_SHARED_BUDGET``).

What it shows:

- **One client per process** in a cleanup context: made at start-up, closed at shutdown after
  the last handler has ended.
- **The answer**: the outcome as JSON with the status code it calls for (see
  :func:`examples.common.answer`).
- **A deadline per request** (``submit(..., timeout=)``).
- **Disconnects**: ``handler_cancellation=True`` (of ``web.run_app`` or ``AppRunner``; off
  by default since aiohttp 3.9) cancels the handler when its caller goes away, and cancelling
  ``submit`` cancels the update: one still queued is never sent. (Under gunicorn's aiohttp
  worker, which does not set it, a disconnect goes unnoticed and the update runs to its
  deadline.)
- **Shutdown** (SIGTERM or SIGINT): :func:`serve` stops accepting, lets the handlers finish
  for up to ``shutdown_timeout`` (more than the deadline, so each ends on its own with an
  answer), then the cleanup context closes the client; the process exits 0. A second signal
  during that wait is logged and ignored: the shutdown it would interrupt ends within
  ``shutdown_timeout`` anyway. (``web.run_app`` handles the signals itself, and a second one
  breaks its shutdown: tracebacks, callers left without an answer, the client never closed,
  exit status 1. So :func:`serve` is ``run_app`` with its own signal handling.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from examples.common import MAX_BODY, Settings, answer, invalid_body, make_client, read_update
from growthhub_async import GrowthHubClient

log = logging.getLogger("examples.aiohttp_app")

GROWTHHUB = web.AppKey("growthhub", GrowthHubClient)
SETTINGS = web.AppKey("settings", Settings)


async def growthhub_client(app: web.Application) -> AsyncIterator[None]:
    """The process's one client, for the life of the app."""
    if SETTINGS not in app:
        app[SETTINGS] = Settings.from_env()
    settings = app[SETTINGS]
    async with make_client(settings) as growthhub:
        app[GROWTHHUB] = growthhub
        yield
    log.info("growthhub client closed")


async def update_contact(request: web.Request) -> web.Response:
    """``PUT /contacts/{contact_id}`` with an Update Contact body (the API's field names)."""
    contact_id = request.match_info["contact_id"]
    update = read_update(await request.read())  # over client_max_size: aiohttp answers 413
    if isinstance(update, str):
        return web.json_response(invalid_body(contact_id, update), status=422)
    settings = request.app[SETTINGS]
    try:
        outcome = await request.app[GROWTHHUB].submit(
            contact_id, update, timeout=settings.deadline, response=True
        )
    except asyncio.CancelledError:
        # The caller went away (handler_cancellation) or the server is stopping: the update
        # is cancelled with this handler.
        log.info("the caller of %s went away: its update is cancelled", contact_id)
        raise
    code, payload = answer(outcome)
    return web.Response(body=payload, status=code, content_type="application/json")


def create_app(settings: Settings | None = None) -> web.Application:
    """The application; ``settings`` default to the environment's, read at start-up."""
    app = web.Application(client_max_size=MAX_BODY)
    if settings is not None:
        app[SETTINGS] = settings
    app.cleanup_ctx.append(growthhub_client)
    app.router.add_put("/contacts/{contact_id}", update_contact)
    return app


async def serve(app: web.Application, *, host: str, port: int, shutdown_timeout: float) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down gracefully, once: stop accepting,
    let the handlers finish (for up to ``shutdown_timeout``), run the cleanup contexts."""
    runner = web.AppRunner(
        app,
        handle_signals=False,  # ours, below: a second signal must not break the shutdown
        handler_cancellation=True,  # a caller that disconnects cancels its handler
        shutdown_timeout=shutdown_timeout,
        access_log=None,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.info(
                "%s during the shutdown: ignored (it ends within %g s)",
                signum.name,
                shutdown_timeout,
            )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        print(f"======== Running on {site.name} ========", flush=True)  # noqa: T201
        await stop.wait()
        log.info("shutting down: waiting for the requests in progress")
    finally:
        await runner.cleanup()  # the signal handlers stay: a second signal is ignored
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m examples.aiohttp_app [--host 127.0.0.1] [--port 8080]``."""
    parser = argparse.ArgumentParser(prog="python -m examples.aiohttp_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        settings = Settings.from_env()
    except RuntimeError as exc:
        raise SystemExit(f"examples.aiohttp_app: {exc}") from None
    # Every handler ends within its deadline: the shutdown waits a little more than that.
    app = create_app(settings)
    asyncio.run(serve(app, host=args.host, port=args.port, shutdown_timeout=settings.deadline + 5))


app = create_app()
"""For a server that imports the app (``gunicorn examples.aiohttp_app:app --worker-class
aiohttp.GunicornWebWorker``): settings from the environment at start-up. Such a worker does
not set ``handler_cancellation``: prefer :func:`main`."""


if __name__ == "__main__":
    main()
