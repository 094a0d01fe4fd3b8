"""What the command line shows while a bulk job runs and when it ends. Pure rendering.

A live bar on a terminal (one line redrawn with ``\\r``), a plain line now and then otherwise, and
the closing summary table. Everything here turns numbers into text: the caller owns the clock,
the stream and when to draw, so the rendering is tested without a terminal.
"""

from __future__ import annotations

from typing import Final

from growthhub_async.outcomes import Status, Summary

__all__ = ["format_duration", "render_bar", "render_line", "render_summary"]

_BAR_WIDTH: Final = 24


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; under a minute, one decimal of seconds."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _eta(done: int, total: int | None, elapsed: float) -> str:
    if not total or done == 0 or elapsed <= 0 or done >= total:
        return "--"
    return format_duration((total - done) * elapsed / done)


def _counts(summary: Summary) -> str:
    not_updated = summary.records - summary.by_status[Status.UPDATED]
    return (
        f"updated {summary.by_status[Status.UPDATED]}  not updated {not_updated}  "
        f"retries {summary.retries}  429s {summary.rate_limited}"
    )


def _paused(summary: Summary) -> str | None:
    # A token paused by a 429 sends nothing: say so, or the line only shows a growing ETA.
    rest = summary.paused_until - summary.elapsed
    return f"PAUSED {format_duration(rest)} (429)" if rest > 0 else None


def render_bar(summary: Summary, total: int | None, width: int = 160) -> str:
    """The live terminal line, at most ``width`` characters (no newline).

    Pieces go in order of use until the width is spent: bar and done/total, a running 429
    pause, ETA, rate, then the counts, so an 80-column terminal still shows how far and how
    long.
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
        f"ETA {_eta(done, total, summary.elapsed)}",
        f"{summary.rate:.1f} req/s",
        _counts(summary),
    ):
        if piece is not None and len(line) + 2 + len(piece) <= width:
            line += "  " + piece
    return line


def render_line(summary: Summary, total: int | None) -> str:
    """The plain progress line for logs and pipes (no terminal control characters)."""
    of_total = f"/{total}" if total else ""
    paused = _paused(summary)
    return (
        f"progress: {summary.records}{of_total} records, {summary.rate:.1f} req/s, "
        f"{_counts(summary)}, elapsed {format_duration(summary.elapsed)}, "
        f"ETA {_eta(summary.records, total, summary.elapsed)}" + (f", {paused}" if paused else "")
    )


def render_summary(summary: Summary, *, limit_rate: float | None, outcomes: str | None) -> str:
    """The closing table: records per status, requests, achieved rate against the limit."""
    rows = [("status", "records")]
    rows += [(s.value, str(summary.by_status[s])) for s in Status if summary.by_status[s]]
    rows.append(("total", str(summary.records)))
    width = max(len(name) for name, _ in rows)
    count_width = max(len(count) for _, count in rows)
    lines = [f"  {name:<{width}}  {count:>{count_width}}" for name, count in rows]
    lines.insert(1, f"  {'-' * width}  {'-' * count_width}")
    lines.insert(-1, f"  {'-' * width}  {'-' * count_width}")
    against = ""
    if limit_rate:
        against = f" of a limit of {limit_rate:.1f} req/s ({summary.rate / limit_rate:.0%})"
    lines.append("")
    lines.append(
        f"  {summary.requests} requests in {format_duration(summary.elapsed)}: "
        f"{summary.rate:.1f} req/s{against}; {summary.retries} retries, "
        f"{summary.rate_limited} answered 429"
    )
    if outcomes:
        lines.append(f"  outcomes: {outcomes}")
    return "\n".join(lines)
