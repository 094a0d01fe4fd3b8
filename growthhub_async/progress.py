"""What the command line shows while a bulk job runs and when it ends. Pure rendering.

A live bar on a terminal (one line redrawn with ``\\r``), a plain line now and then otherwise, and
the closing summary table. Everything here turns numbers into text: the caller owns the clock,
the stream and when to draw, so the rendering is tested without a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from growthhub_async.outcomes import Status, Summary
from growthhub_async.ratelimit import Rate

__all__ = [
    "LocationStats",
    "eta_seconds",
    "format_duration",
    "pace_against_limit",
    "render_bar",
    "render_line",
    "render_location_progress",
    "render_locations",
    "render_summary",
]

_BAR_WIDTH: Final = 24


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; under a minute, one decimal of seconds."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def eta_seconds(
    done: int,
    total: int | None,
    elapsed: float,
    rate: Rate | None = None,
    *,
    tokens: int = 1,
    requests: int | None = None,
) -> float | None:
    """Seconds until ``total`` records are done, ``done`` of them in ``elapsed`` seconds;
    ``None`` when unknown (no total, nothing done yet, or all done).

    The pace so far, but never sooner than ``rate`` (per token, ``tokens`` of them) lets the
    last request through: the limiter sends a first window's allowance at once, then one
    allowance per window, so the last request goes out no sooner than
    ``ceil(last / allowance) - 1`` windows after the start, ``last`` being ``requests`` (sent
    for the records done, retries included; default ``done``) plus one for each record left.
    At a slow rate (``1/1h``) the pace so far alone is the first burst's, answered in
    milliseconds: it promised seconds for what takes hours.
    """
    if not total or done == 0 or elapsed <= 0 or done >= total:
        return None
    seconds = (total - done) * elapsed / done
    if rate is not None:
        last = (done if requests is None else requests) + total - done
        allowance = rate.requests * max(1, tokens)
        last_window = (math.ceil(last / allowance) - 1) * rate.window
        seconds = max(seconds, last_window - elapsed)
    return seconds


def _eta(summary: Summary, total: int | None, rate: Rate | None, tokens: int) -> str:
    seconds = eta_seconds(
        summary.records, total, summary.elapsed, rate, tokens=tokens, requests=summary.requests
    )
    return "--" if seconds is None else format_duration(seconds)


def _counts(summary: Summary) -> str:
    """Records per status, in the summary table's words, then retries and 429s."""
    by_status = summary.by_status
    counts = [f"{s.value} {by_status[s]}" for s in Status if by_status[s] or s is Status.UPDATED]
    return "  ".join([*counts, f"retries {summary.retries}", f"429s {summary.rate_limited}"])


def _paused(summary: Summary) -> str | None:
    # A token paused by a 429 sends nothing: say so, or the line only shows a growing ETA.
    rest = summary.paused_until - summary.elapsed
    return f"PAUSED {format_duration(rest)} (429)" if rest > 0 else None


def render_bar(
    summary: Summary,
    total: int | None,
    width: int = 160,
    *,
    rate: Rate | None = None,
    tokens: int = 1,
) -> str:
    """The live terminal line, at most ``width`` characters (no newline).

    Pieces go in order of use until the width is spent: bar and done/total, a running 429
    pause, ETA, rate, then the counts, so an 80-column terminal still shows how far and how
    long. ``rate`` and ``tokens`` (the run's limit, and the tokens it applies to each) keep
    the ETA from promising more than the limit lets through (:func:`eta_seconds`).
    """
    done = summary.records
    if total:
        filled = min(_BAR_WIDTH, done * _BAR_WIDTH // total)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        head = f"[{bar}] {done}/{total} {100 * done / total:5.1f}%"
    else:
        head = f"{done} records"
    line = head[:width]
    for piece in (
        _paused(summary),
        f"ETA {_eta(summary, total, rate, tokens)}",
        f"{summary.rate:.1f} req/s",
        _counts(summary),
    ):
        if piece is not None and len(line) + 2 + len(piece) <= width:
            line += "  " + piece
    return line


def render_line(
    summary: Summary, total: int | None, *, rate: Rate | None = None, tokens: int = 1
) -> str:
    """The plain progress line for logs and pipes (no terminal control characters); ``rate``
    and ``tokens`` as for :func:`render_bar`."""
    of_total = f"/{total}" if total else ""
    paused = _paused(summary)
    return (
        f"progress: {summary.records}{of_total} records, {summary.rate:.1f} req/s, "
        f"{_counts(summary)}, elapsed {format_duration(summary.elapsed)}, "
        f"ETA {_eta(summary, total, rate, tokens)}" + (f", {paused}" if paused else "")
    )


@dataclass(slots=True)
class LocationStats:
    """One location's (token's) part of a run, for the table by location."""

    records: int = 0
    updated: int = 0
    last: float = 0.0
    """The run's elapsed seconds at this location's latest outcome."""

    @property
    def rate(self) -> float:
        """Updated records per second, from the run's start to this location's last outcome."""
        return self.updated / self.last if self.last > 0 else 0.0


LOCATIONS_SHOWN: Final = 20
"""Rows of the table by location; the other locations share one line."""


def render_locations(stats: Mapping[str, LocationStats], shown: int = LOCATIONS_SHOWN) -> str:
    """The table by location: records, updated, not updated, achieved rate (issue 13).

    Locations with the most records first; beyond ``shown`` rows, one line sums the others, so
    a run over 1,000 locations stays readable.
    """
    ordered = sorted(stats.items(), key=lambda item: (-item[1].records, item[0]))
    rows: list[tuple[str, ...]] = [("location", "records", "updated", "not updated", "updated/s")]

    def row(name: str, s: LocationStats) -> tuple[str, ...]:
        return (name, str(s.records), str(s.updated), str(s.records - s.updated), f"{s.rate:.1f}")

    rows.extend(row(name, s) for name, s in ordered[:shown])
    rest = ordered[shown:]
    if rest:
        others = LocationStats(
            sum(s.records for _, s in rest),
            sum(s.updated for _, s in rest),
            max(s.last for _, s in rest),
        )
        rows.append(row(f"{len(rest)} other locations", others))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  "
        + "  ".join(
            [f"{r[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in rows
    ]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_location_progress(left: Mapping[str, int], done: int, top: int = 3) -> str:
    """One short piece for the progress line: locations at work and done, the ones with the
    most records left (``left``: records not yet finished, by location), the rest counted."""
    busiest = sorted(left.items(), key=lambda item: (-item[1], item[0]))[:top]
    piece = f"locations: {len(left)} at work, {done} done"
    if busiest:
        piece += "; most left: " + ", ".join(f"{name} {n}" for name, n in busiest)
        if len(left) > top:
            piece += f" (+{len(left) - top} more)"
    return piece


def render_summary(
    summary: Summary,
    *,
    rate: Rate | None,
    outcomes: str | None,
    whole_job: Mapping[Status, int] | None = None,
    tokens: int = 1,
) -> str:
    """The closing table: records per status (this run's, and with ``whole_job`` the whole
    job's beside them), requests, and the achieved pace against what the limit allows."""
    header = ("status", "records") if whole_job is None else ("status", "this run", "whole job")
    counts = [whole_job or {}, summary.by_status] if whole_job is not None else [summary.by_status]
    shown = [s for s in Status if any(c.get(s) for c in counts)]
    rows = [header]
    for s in shown:
        row = (s.value, str(summary.by_status[s]))
        rows.append(row if whole_job is None else (*row, str(whole_job.get(s, 0))))
    total = (str(summary.records),)
    rows.append(
        ("total", *(total if whole_job is None else (*total, str(sum(whole_job.values())))))
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  " + "  ".join(
            [f"{first:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = line(["-" * w for w in widths])
    lines = [line(row) for row in rows]
    lines.insert(1, rule)
    lines.insert(-1, rule)
    lines.append("")
    lines.append(
        f"  {summary.requests} requests in {format_duration(summary.elapsed)} "
        f"({summary.rate:.1f} req/s); {summary.retries} retries, "
        f"{summary.rate_limited} answered 429"
    )
    if rate is not None and summary.elapsed > 0:
        pace = pace_against_limit(summary.requests, summary.elapsed, rate, tokens)
        lines.append(f"  pace: {pace}")
    if outcomes:
        lines.append(f"  outcomes: {outcomes}")
    return "\n".join(lines)


def pace_against_limit(requests: int, elapsed: float, rate: Rate, tokens: int = 1) -> str:
    """How a run's requests compare with the most that ``rate`` lets through in ``elapsed``.

    No window of ``rate.window`` may hold more than ``rate.requests``, so a run of ``elapsed``
    seconds can send at most ``rate.requests`` per started window. Measured against that, and not
    against ``requests / elapsed`` alone, a short run that spends its first window's whole
    allowance reads 100%, not 116%, and a long one reads its steady pace.
    """
    windows = max(1, math.ceil(elapsed / rate.window - 1e-9))
    allowed = rate.requests * windows * max(1, tokens)
    per = f" per location for {tokens} locations" if tokens > 1 else ""
    return (
        f"{requests / allowed:.0%} of the {allowed} requests that {rate}{per} allows "
        f"in {format_duration(elapsed)}"
    )
