"""Logs through the standard :mod:`logging` module, and the command line's JSON lines (issue 16).

The library logs under ``growthhub_async.*`` (``growthhub_async.events`` for what the engine
does: a record not updated, a pause, a token stopped, a run's end; retries, 429s and records
updated at ``DEBUG``) and configures nothing: the package has a ``NullHandler``, and the
application decides where records go and at which level. Every message is free of secrets: server
text is redacted where it enters the client (:mod:`~growthhub_async.redact`), and no event holds a
token. The records of :func:`log_event` carry ``runId`` (``record.runId``) and their facts as
attributes (``line``, ``status``, ``httpStatus``, ``location``...): the id of the run in progress
comes from :data:`RUN_ID`, which the command line sets once per run (the same id is the run span's
``growthhub.run.id`` and the journal lines' ``runId``).

The command line's ``--log-format json`` turns stderr into JSON lines: one object per line,
``{"time", "level", "logger", "runId", "msg", ...}`` plus a record's own fields (``line``,
``status``, ``httpStatus``, ``location``...). What the command prints on stderr by itself
(progress lines, warnings, the resume command) goes through :class:`JsonLines`, so that every
line of stderr is JSON, whatever wrote it; :class:`JsonFormatter` redacts once more with the
run's secrets before writing.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any, Final, TextIO

from growthhub_async.events import (
    Event,
    Paused,
    RateLimitHit,
    RecordFinished,
    RetryScheduled,
    RunFinished,
    TokenStopped,
    listens,
)
from growthhub_async.outcomes import SUCCEEDED
from growthhub_async.redact import Redactor

__all__ = [
    "RUN_ID",
    "JsonFormatter",
    "JsonLines",
    "LogSetup",
    "Redacting",
    "configure",
    "current_run_id",
    "log_event",
    "new_run_id",
]

RUN_ID: ContextVar[str | None] = ContextVar("growthhub_async_run_id", default=None)
"""The id of the run in progress (set by the command line; tasks inherit it)."""

FORMATS: Final = ("text", "json")
LEVELS: Final = ("debug", "info", "warning", "error")

_events_log = logging.getLogger("growthhub_async.events")
# The fields a record may carry into a JSON line (logging's own attributes are not copied).
_FIELDS: Final = ("line", "status", "httpStatus", "attempts", "location", "delay", "seconds")


def new_run_id() -> str:
    """A run's id: 16 random hex digits."""
    return uuid.uuid4().hex[:16]


def current_run_id() -> str | None:
    """The id of the run in progress, if one was set (:data:`RUN_ID`)."""
    return RUN_ID.get()


def _extra(**fields: Any) -> dict[str, Any]:
    return {"runId": current_run_id(), **fields}


@listens(RecordFinished, RetryScheduled, RateLimitHit, Paused, TokenStopped, RunFinished)
def log_event(event: Event) -> None:
    """The client's own subscriber: each event as a log record of ``growthhub_async.events``.

    Cheap when nobody listens: a level check per event.
    """
    if type(event) is RecordFinished:  # one per record: the first look, and a cheap one
        outcome = event.outcome
        level = logging.DEBUG if outcome.status in SUCCEEDED else logging.INFO
        if _events_log.isEnabledFor(level):
            _events_log.log(
                level,
                "line %d %s%s",
                outcome.line,
                outcome.status.value,
                f": {outcome.error}" if outcome.error else "",
                extra={
                    "runId": current_run_id(),
                    "line": outcome.line,
                    "status": outcome.status.value,
                    "httpStatus": outcome.http_status,
                    "attempts": outcome.attempts,
                    "location": event.token_key,
                },
            )
        return
    match event:
        case RetryScheduled():
            if _events_log.isEnabledFor(logging.DEBUG):
                _events_log.debug(
                    "line %d: retry in %.2fs after %s",
                    event.line,
                    event.delay,
                    event.error,
                    extra=_extra(line=event.line, delay=event.delay, location=event.token_key),
                )
        case RateLimitHit():
            if _events_log.isEnabledFor(logging.DEBUG):
                _events_log.debug(
                    "line %d: 429",
                    event.line,
                    extra=_extra(line=event.line, httpStatus=429, location=event.token_key),
                )
        case Paused():
            _events_log.info(
                "token %s paused for %.2fs (%s)",
                event.token_key,
                event.seconds,
                event.reason,
                extra=_extra(seconds=event.seconds, location=event.token_key),
            )
        case TokenStopped():
            _events_log.warning(
                "token %s stopped: %s",
                event.token_key,
                event.reason,
                extra=_extra(status=event.status.value, location=event.token_key),
            )
        case RunFinished(summary=summary):
            _events_log.info("run finished: %r", summary, extra=_extra())
        case _:
            return


class _RunIdFilter(logging.Filter):
    """Stamps ``runId`` and removes the run's secrets from the message (a last line of defence)."""

    def __init__(self, redactor: Redactor | None) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.runId = current_run_id()
        if self.redactor is not None:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # a bad format: the handler reports it, as ever
                return True
            clean = self.redactor(message)
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redactor(record.exc_text)
            if clean != message or record.args:
                record.msg, record.args = clean, None
        return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(level: str, logger: str, message: str, **fields: Any) -> str:
    """One JSON log line (with its newline)."""
    entry: dict[str, Any] = {
        "time": _now(),
        "level": level,
        "logger": logger,
        "runId": current_run_id(),
        "msg": message,
    }
    entry.update((key, value) for key, value in fields.items() if value is not None)
    return json.dumps(entry, ensure_ascii=False, default=str) + "\n"


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line: time (UTC), level, logger, runId, msg,
    the record's fields (``extra=``) and ``exc`` (a traceback, as one string)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {k: record.__dict__[k] for k in _FIELDS if k in record.__dict__}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc"] = record.exc_text
        return json_line(
            record.levelname.lower(), record.name, record.getMessage(), **fields
        ).rstrip("\n")


# What a user must see whatever --log-level, or loses work: how to resume; rotated OAuth tokens
# left beside their file (cli.report_token_file).
_ALWAYS: Final = ("to resume", "warning: the rotated oauth tokens")
_INTERRUPTION: Final = re.compile(r"(sigint|sigterm)( again)?:|interrupted\b")


def _level_of(lowered: str) -> tuple[str, bool]:
    """``(level, always written)`` of a line the command printed itself (see JsonLines)."""
    if lowered.startswith(_ALWAYS):
        return "warning", True
    if lowered.startswith("warning") or _INTERRUPTION.match(lowered):
        return "warning", False
    if "error:" in lowered or lowered.startswith("traceback"):
        return "error", False
    return "info", False


class JsonLines(io.TextIOBase):
    """A text stream whose every line becomes a JSON log line on ``stream``.

    Takes the place of ``sys.stderr`` in JSON mode, so that what the command writes there
    itself (progress lines, warnings, a traceback) is JSON too. A line starting ``warning`` is
    logged as a warning, one holding ``error:`` as an error, an interruption (``SIGTERM: ...``,
    ``interrupted...``) and the command that resumes the run as warnings, the rest (progress,
    notes) as info; an indented line continues the line before it (its level). Lines below
    ``least`` (a :mod:`logging` level: ``--log-level``) are dropped, except the resume command
    (``to resume...`` and its indented lines) and the rotated OAuth tokens' rescue notice: they
    are how nothing is lost, so they are always written. Blank lines are dropped.
    """

    def __init__(
        self, stream: TextIO, redactor: Redactor | None = None, least: int = logging.NOTSET
    ) -> None:
        super().__init__()
        self.stream = stream
        self.redactor = redactor
        self.least = least
        self._pending = ""
        self._previous: tuple[str, bool] = ("info", False)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # never a live bar: it redraws a line in place

    def write(self, text: str) -> int:
        self._pending += text.replace("\r\x1b[K", "\n").replace("\r", "\n")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        if self.redactor is not None:
            text = self.redactor(text)
        if line[:1].isspace():  # the rest of the message above (a command, a hint)
            level, kept = self._previous
        else:
            level, kept = _level_of(text.lower())
            self._previous = level, kept
        if kept or logging.getLevelName(level.upper()) >= self.least:
            self.stream.write(json_line(level, "growthhub_async.cli", text))

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = ""
        self.flush()


class Redacting(io.TextIOBase):
    """A text stream that writes to ``stream`` what it is given, ``redactor`` applied.

    Stands for ``sys.stderr`` in text mode while the options are parsed: argparse's usage
    error quotes argv, where a mistyped option may hold the token."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        super().__init__()
        self.stream = stream
        self.redactor = redactor

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.stream.write(self.redactor(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class LogSetup:
    """What :func:`configure` installed; :meth:`remove` takes it away again."""

    def __init__(self, handler: logging.Handler, logger: logging.Logger, level: int) -> None:
        self.handler = handler
        self.logger = logger
        self._previous = logger.level
        logger.addHandler(handler)
        logger.setLevel(level)

    def remove(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self._previous)


def configure(
    log_format: str, level: str | None, stream: TextIO, redactor: Redactor | None = None
) -> LogSetup:
    """The command line's logging: ``growthhub_async.*`` to ``stream`` (the real stderr).

    ``text``: the message alone, as Python prints a warning nobody configured (the default
    level ``warning`` keeps the command's output as it was); ``json``: :class:`JsonFormatter`,
    default level ``info``. Only our own logger is touched, never the root.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    chosen = level or ("info" if log_format == "json" else "warning")
    if chosen not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter("%(message)s")
    )
    handler.addFilter(_RunIdFilter(redactor))
    return LogSetup(handler, logging.getLogger("growthhub_async"), getattr(logging, chosen.upper()))
