"""``growthhub-async report``: what one or more outcome journals say, as text or one HTML page.

Reads journals (OUTCOMES.jsonl, or the journals of several shards) one line at a time and keeps
only counts: memory does not grow with the journal, except one small slot per input line for
its last outcome (a resumed journal repeats lines: a record's status is its *last* outcome, as
``--resume`` reads it). Prints the records by status and by location, the most frequent error
reasons, the requests, retries and 429s; ``--html FILE`` writes a self-contained page (inline
SVG drawn by inline JavaScript, no network) with requests per second against the limit and
outcomes over time.

Hostile journals are read, not trusted: blank lines, a torn last line, lines that are not
outcomes, unknown fields, absurd numbers and lines over 1 MiB are counted and skipped; every
text from a journal is escaped in the page (a reason may hold ``</script>``).

The timeline needs the run's facts that the command writes on each line since issue 16 (``at``,
``location``, ``rateLimited``, ``runId``; see :class:`~growthhub_async.journal.RunFacts`): older
journals get the summary without it. A record's requests are counted in the second its outcome
was written (its retries included): a record retried over a pause shows its requests at its end.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

import msgspec

from growthhub_async.outcomes import SUCCEEDED, Status
from growthhub_async.progress import format_duration
from growthhub_async.ratelimit import Rate

__all__ = ["Report", "read_journals", "render_html", "render_text"]

MAX_LINE_BYTES: Final = 1 << 20
MAX_REASONS: Final = 10_000  # distinct reasons kept; the rest are counted as "other reasons"
MAX_LOCATIONS: Final = 100_000  # distinct locations kept; the rest go to "(other locations)"
MAX_BUCKETS: Final = 2_000  # timeline buckets kept; beyond, each bucket covers twice the time
_BARS: Final = 600  # at most this many bars in a chart
_STATUSES: Final = tuple(Status)
_CODE: Final = {status.value: n for n, status in enumerate(_STATUSES, start=1)}
_NO_LOCATION: Final = "(none)"
_OTHER_LOCATIONS: Final = "(other locations)"
_OTHER_REASONS: Final = "(other reasons)"
_EPOCH_RANGE: Final = (946_684_800.0, 32_503_680_000.0)  # 2000 to 3000: a plausible `at`
_LINE_PREFIX = re.compile(r"\bline \d+\b")
_ID = re.compile(r"\b(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{16,}\b")


class _Entry(msgspec.Struct, rename="camel"):
    """What the report reads of a journal line; other keys are ignored."""

    line: int
    status: str
    http_status: int | None = None
    attempts: int = 0
    error: str | None = None
    location: str | None = None
    at: float | None = None
    rate_limited: int = 0
    run_id: str | None = None


_decoder: Final = msgspec.json.Decoder(_Entry)


def reason_of(error: str) -> str:
    """An error as a reason shared by many records: line numbers and ids taken out."""
    text = _LINE_PREFIX.sub("line N", error.strip())
    text = text.removeprefix("line N: ")
    return _ID.sub("<id>", text)[:300]


class _LastOutcome:
    """Per input line of one journal: its last status, location and reason, 9 bytes each.

    Arrays indexed by line while lines stay near the count of entries read; a line number far
    beyond (a hostile journal's ``"line": 2147483647``) goes to a dict instead of growing the
    arrays to it.
    """

    def __init__(self) -> None:
        self.status = bytearray()
        self.location = array("I")
        self.reason = array("I")
        self.sparse: dict[int, tuple[int, int, int]] = {}
        self.entries = 0

    def set(self, line: int, status: int, location: int, reason: int) -> None:
        self.entries += 1
        if line >= len(self.status) and line <= 16 * self.entries + 65_536:
            grow = line + 1 - len(self.status)
            self.status.extend(bytes(grow))
            self.location.frombytes(bytes(self.location.itemsize * grow))
            self.reason.frombytes(bytes(self.reason.itemsize * grow))
        if line < len(self.status):
            self.status[line] = status
            self.location[line] = location
            self.reason[line] = reason
        else:
            self.sparse[line] = (status, location, reason)

    def finals(self) -> Iterator[tuple[int, int, int]]:
        """``(status code, location index, reason index)`` of each line's last outcome."""
        for line, status in enumerate(self.status):
            if status:
                yield status, self.location[line], self.reason[line]
        yield from self.sparse.values()


def _intern(names: list[str], index: dict[str, int], key: str, cap: int, other: str) -> int:
    """``key``'s number in ``names``; past ``cap`` names, new keys all get ``other``'s."""
    found = index.get(key)
    if found is None:
        if len(names) >= cap:
            key = other
            found = index.get(key)
        if found is None:
            found = index[key] = len(names)
            names.append(key)
    return found


@dataclass
class _Bucket:
    requests: int = 0
    outcomes: Counter[int] = field(default_factory=Counter)


@dataclass
class Report:
    """What the journals hold: counts only (see the module docstring)."""

    files: list[str] = field(default_factory=list)
    entries: int = 0
    """Outcome lines read (a resumed record counts once per line)."""
    by_status: Counter[str] = field(default_factory=Counter)
    """Records by their last outcome's status."""
    by_location: dict[str, Counter[str]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    """Reasons of the records not updated (last outcomes), line numbers and ids taken out."""
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    runs: set[str] = field(default_factory=set)
    first_at: float | None = None
    last_at: float | None = None
    blank: int = 0
    skipped: list[str] = field(default_factory=list)
    """Lines that are not outcomes, each named by file and line (the first 20)."""
    skipped_count: int = 0
    timed: int = 0
    """Entries that had an ``at`` (the timeline's)."""
    resolution: float = 1.0
    """Seconds per timeline bucket."""
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    _locations: list[str] = field(default_factory=list)
    _location_index: dict[str, int] = field(default_factory=dict)
    _spans: dict[int, list[float]] = field(default_factory=dict)
    _reason_names: list[str] = field(default_factory=lambda: [""])
    _reason_index: dict[str, int] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------

    def _location(self, name: str | None) -> int:
        key = _NO_LOCATION if name is None else name[:200]
        return _intern(self._locations, self._location_index, key, MAX_LOCATIONS, _OTHER_LOCATIONS)

    def _skip(self, name: str, number: int, why: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < 20:
            self.skipped.append(f"{name}:{number}: {why}")

    def read(self, name: str, stream: IO[bytes]) -> None:
        """Add one journal (``name`` for messages)."""
        self.files.append(name)
        last = _LastOutcome()
        for number, raw, torn in _lines(stream):
            if raw is None:
                self._skip(name, number, f"longer than {MAX_LINE_BYTES} bytes")
                continue
            if not raw.strip():
                self.blank += 1
                continue
            try:
                entry = _decoder.decode(raw)
            except msgspec.DecodeError as exc:
                why = "torn last line (no newline)" if torn else f"not an outcome ({exc})"
                self._skip(name, number, why)
                continue
            code = _CODE.get(entry.status)
            if code is None or not 0 < entry.line < 1 << 31:
                self._skip(name, number, "not an outcome (status or line)")
                continue
            self._add(entry, code, last)
        for code, location, reason in last.finals():
            status = _STATUSES[code - 1].value
            self.by_status[status] += 1
            place = self._locations[location]
            counts = self.by_location.get(place)
            if counts is None:
                counts = self.by_location[place] = Counter()
            counts[status] += 1
            if reason:
                self.reasons[self._reason_names[reason]] += 1

    def _reason(self, error: str) -> int:
        """The index of an error's reason (0: none); at most MAX_REASONS distinct ones."""
        reason = reason_of(error)
        return _intern(
            self._reason_names, self._reason_index, reason, MAX_REASONS + 1, _OTHER_REASONS
        )

    def _add(self, entry: _Entry, code: int, last: _LastOutcome) -> None:
        self.entries += 1
        attempts = max(0, min(entry.attempts, 1_000_000))
        self.requests += attempts
        self.retries += max(0, attempts - 1)
        self.rate_limited += max(0, min(entry.rate_limited, 1_000_000))
        if entry.run_id is not None and len(self.runs) < 1000:
            self.runs.add(entry.run_id[:64])
        location = self._location(entry.location)
        failed = _STATUSES[code - 1] not in SUCCEEDED
        reason = self._reason(entry.error or entry.status) if failed else 0
        last.set(entry.line, code, location, reason)
        at = entry.at
        if at is None or not _EPOCH_RANGE[0] < at < _EPOCH_RANGE[1]:
            return
        self.timed += 1
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        key = int(at // self.resolution)
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._coarsen()
                key = int(at // self.resolution)
                bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = _Bucket()
        bucket.requests += attempts
        bucket.outcomes[code] += 1
        span = self._spans.get(location)
        if span is None:
            self._spans[location] = [at, at]
        else:
            span[0], span[1] = min(span[0], at), max(span[1], at)

    def _coarsen(self) -> None:
        """Each bucket now covers twice the time (memory stays bounded on long journals)."""
        self.resolution *= 2
        merged: dict[int, _Bucket] = {}
        for key, bucket in self.buckets.items():
            into = merged.setdefault(key // 2, _Bucket())
            into.requests += bucket.requests
            into.outcomes.update(bucket.outcomes)
        self.buckets = merged

    # -- reading back ----------------------------------------------------------------------

    @property
    def records(self) -> int:
        """Records (input lines) with an outcome, over all journals."""
        return sum(self.by_status.values())

    def timeline(self, rate: Rate | None) -> tuple[float, list[dict[str, object]]]:
        """``(seconds per bar, bars)``, at most 600 bars from the first outcome to the last.

        Each bar: ``t`` (seconds from the first bar), ``rps`` (requests per second),
        ``limit`` (what ``rate`` allows per second times the locations at work then: between
        their first and last outcome; or ``None``) and ``outcomes`` (status -> records that
        ended then)."""
        if not self.buckets:
            return self.resolution, []
        first, last = min(self.buckets), max(self.buckets)
        factor = max(1, math.ceil((last - first + 1) / _BARS))
        width = self.resolution * factor
        merged: dict[int, _Bucket] = {}
        for key, bucket in self.buckets.items():
            into = merged.setdefault((key - first) // factor, _Bucket())
            into.requests += bucket.requests
            into.outcomes.update(bucket.outcomes)
        # Locations at work in a bar: those whose first outcome came before its end and last
        # after its start (one span per location, not a set per bar: memory stays bounded).
        nowhere = self._location_index.get(_NO_LOCATION)  # records rejected before routing
        bars_count = (last - first) // factor + 1
        busy_delta = [0] * (bars_count + 1)
        for location, (start, end) in self._spans.items():
            if location == nowhere:
                continue
            begin = max(0, (int(start // self.resolution) - first) // factor)
            finish = min(bars_count - 1, (int(end // self.resolution) - first) // factor)
            busy_delta[begin] += 1
            busy_delta[finish + 1] -= 1
        bars: list[dict[str, object]] = []
        per_second = rate.requests / rate.window if rate is not None else None
        busy = 0
        for index in range(bars_count):
            bucket = merged.get(index, _Bucket())
            busy += busy_delta[index]
            bars.append(
                {
                    "t": round(index * width, 3),
                    "rps": round(bucket.requests / width, 3),
                    "limit": round(per_second * busy, 3) if per_second and busy else None,
                    "outcomes": {
                        _STATUSES[code - 1].value: n for code, n in sorted(bucket.outcomes.items())
                    },
                }
            )
        return width, bars


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None, bool]]:
    """``(number, line or None when too long, torn)`` for each line, read in bounded pieces."""
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, in pieces
                raw = stream.readline(MAX_LINE_BYTES)
            yield number, None, False
            continue
        yield number, raw, not raw.endswith(b"\n")


def read_journals(paths: Sequence[str]) -> Report:
    """Read every journal in ``paths`` into one :class:`Report` (``OSError`` if unreadable)."""
    report = Report()
    for path in paths:
        with open(path, "rb") as stream:
            report.read(path, stream)
    return report


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(rows: Iterable[Sequence[object]], header: Sequence[str]) -> list[str]:
    body = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  " + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]


def _status_rows(report: Report) -> list[list[object]]:
    return [[s.value, report.by_status[s.value]] for s in Status if report.by_status[s.value]]


def _location_rows(report: Report, top: int) -> list[list[object]]:
    ordered = sorted(report.by_location.items(), key=lambda kv: (-kv[1].total(), kv[0]))
    rows: list[list[object]] = []
    for name, counts in ordered[:top]:
        ok = sum(counts[s.value] for s in SUCCEEDED)
        rows.append([name, counts.total(), ok, counts.total() - ok])
    rest = ordered[top:]
    if rest:
        total = sum(c.total() for _, c in rest)
        ok = sum(c[s.value] for _, c in rest for s in SUCCEEDED)
        rows.append([f"({len(rest)} more)", total, ok, total - ok])
    return rows


def render_text(report: Report, *, top: int = 10) -> str:
    """The report as text for a terminal."""
    out = [f"journals: {', '.join(report.files)}"]
    out.append(
        f"records: {report.records:,} ({report.entries:,} outcome lines"
        + (f"; {len(report.runs)} run(s)" if report.runs else "")
        + ")"
    )
    if report.first_at is not None and report.last_at is not None:
        span = report.last_at - report.first_at
        out.append(
            f"from {_utc(report.first_at)} to {_utc(report.last_at)} ({format_duration(span)})"
        )
    out += ["", "by status (each record's last outcome):"]
    status_rows = [
        [s.value, report.by_status[s.value]] for s in Status if report.by_status[s.value]
    ]
    out += _table([*status_rows, ["total", report.records]], ["status", "records"])
    if report.by_location:
        out += ["", "by location:"]
        out += _table(_location_rows(report, 20), ["location", "records", "ok", "not ok"])
    out += ["", f"top error reasons ({sum(report.reasons.values()):,} records not updated):"]
    if report.reasons:
        out += _table(
            [[reason, count] for reason, count in report.reasons.most_common(top)],
            ["reason", "records"],
        )
    else:
        out.append("  none")
    out += [
        "",
        f"requests: {report.requests:,}; retries: {report.retries:,}; "
        f"429 answers: {report.rate_limited:,}",
    ]
    if report.timed < report.entries:
        out.append(
            f"note: {report.entries - report.timed:,} outcome lines have no time (written before "
            "the journal carried it): they are not in the timeline"
        )
    if report.blank:
        out.append(f"note: {report.blank} blank line(s) skipped")
    if report.skipped_count:
        out.append(f"note: {report.skipped_count} line(s) skipped, not outcomes:")
        out += [f"  {why}" for why in report.skipped]
    return "\n".join(out) + "\n"


# -- the page ------------------------------------------------------------------------------

_COLORS: Final = {
    "updated": "#2e7d32",
    "unchanged": "#81c784",
    "rejected": "#8e24aa",
    "invalid": "#ef6c00",
    "bad_request": "#f9a825",
    "unauthorized": "#c62828",
    "not_found": "#6d4c41",
    "failed": "#d32f2f",
}

_SCRIPT: Final = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, value, anchor) {
    var node = el("text", {x: x, y: y, "text-anchor": anchor || "start", "class": "axis"}, parent);
    node.textContent = value;
  }
  function frame(svg, top, label) {
    var W = 1000, H = 260, L = 60, B = 30;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    el("line", {x1: L, y1: H - B, x2: W - 10, y2: H - B, "class": "grid"}, svg);
    el("line", {x1: L, y1: 10, x2: L, y2: H - B, "class": "grid"}, svg);
    text(svg, L - 6, 16, String(Math.round(top * 10) / 10), "end");
    text(svg, L - 6, H - B, "0", "end");
    text(svg, L, H - 8, "0 s", "start");
    var span = data.bars.length * data.width;
    text(svg, W - 10, H - 8, Math.round(span) + " s", "end");
    text(svg, W / 2, H - 8, label, "middle");
    return {x: L, y: 10, w: W - 10 - L, h: H - B - 10};
  }
  var bars = data.bars, n = bars.length;
  var rps = document.getElementById("chart-rps");
  var top = 1;
  bars.forEach(function (b) { top = Math.max(top, b.rps, b.limit || 0); });
  top *= 1.1;
  var box = frame(rps, top, "requests per second, and the limit (dashed)");
  var bw = box.w / Math.max(n, 1);
  bars.forEach(function (b, i) {
    var h = box.h * b.rps / top;
    el("rect", {x: box.x + i * bw, y: box.y + box.h - h, width: Math.max(bw - 0.5, 0.5),
                height: h, "class": "rps"}, rps);
  });
  var points = [];
  bars.forEach(function (b, i) {
    if (b.limit !== null) {
      var y = box.y + box.h - box.h * b.limit / top;
      points.push((box.x + i * bw) + "," + y, (box.x + (i + 1) * bw) + "," + y);
    }
  });
  if (points.length) el("polyline", {points: points.join(" "), "class": "limit"}, rps);
  rps.setAttribute("data-bars", String(n));

  var out = document.getElementById("chart-outcomes");
  var most = 1;
  bars.forEach(function (b) {
    var sum = 0;
    for (var s in b.outcomes) sum += b.outcomes[s];
    most = Math.max(most, sum);
  });
  most *= 1.1;
  var box2 = frame(out, most, "records finished, by status");
  var stacks = 0;
  bars.forEach(function (b, i) {
    var y = box2.y + box2.h;
    data.statuses.forEach(function (s) {
      var count = b.outcomes[s] || 0;
      if (!count) return;
      var h = box2.h * count / most;
      y -= h;
      var rect = el("rect", {x: box2.x + i * bw, y: y, width: Math.max(bw - 0.5, 0.5),
                             height: h, fill: data.colors[s], "class": "outcome"}, out);
      rect.setAttribute("data-status", s);
      stacks += 1;
    });
  });
  out.setAttribute("data-rects", String(stacks));
  var legend = document.getElementById("legend");
  data.statuses.forEach(function (s) {
    var item = document.createElement("span");
    item.className = "key";
    item.style.background = data.colors[s];
    legend.appendChild(item);
    legend.appendChild(document.createTextNode(" " + s + "  "));
  });
  document.body.setAttribute("data-rendered", "yes");
})();
"""

_STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 24px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; max-width: 700px; overflow-wrap: anywhere; }
svg { width: 100%; height: auto; background: #fafafa; border: 1px solid #e0e0e0; }
.rps { fill: #1976d2; } .limit { fill: none; stroke: #d32f2f; stroke-width: 2;
stroke-dasharray: 6 4; } .grid { stroke: #999; } .axis { font-size: 12px; fill: #555; }
.key { display: inline-block; width: 10px; height: 10px; }
.figures span { margin-right: 24px; } .note { color: #666; }
"""


def _html_table(rows: Iterable[Sequence[object]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _script_json(value: object) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` in it at all."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(report: Report, *, rate: Rate | None, top: int = 10) -> str:
    """The report as one self-contained HTML page (no network: inline SVG and script)."""
    width, bars = report.timeline(rate)
    statuses = [s.value for s in Status]
    data = {"width": width, "bars": bars, "statuses": statuses, "colors": _COLORS}
    status_rows = [
        [s.value, report.by_status[s.value]] for s in Status if report.by_status[s.value]
    ]
    span = ""
    if report.first_at is not None and report.last_at is not None:
        span = (
            f"{_utc(report.first_at)} to {_utc(report.last_at)} "
            f"({format_duration(report.last_at - report.first_at)})"
        )
    figures = [
        ("records", f"{report.records:,}"),
        ("requests", f"{report.requests:,}"),
        ("retries", f"{report.retries:,}"),
        ("429 answers", f"{report.rate_limited:,}"),
        ("runs", f"{len(report.runs):,}"),
    ]
    notes = []
    if not bars:
        notes.append("The journals carry no times (written before they had them): no timeline.")
    if report.skipped_count or report.blank:
        notes.append(
            f"{report.skipped_count} line(s) were not outcomes and {report.blank} were blank: "
            "skipped."
        )
    limit = f" against {rate} per location at work" if rate is not None else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'\">",
        "<title>growthhub-async run report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>growthhub-async run report</h1>",
        f"<p>{html.escape(', '.join(report.files))}<br>{html.escape(span)}</p>",
        '<p class="figures">'
        + "".join(f"<span>{html.escape(k)}: <b>{html.escape(v)}</b></span>" for k, v in figures)
        + "</p>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        f"<h2>Requests per second{html.escape(limit)}</h2>",
        '<svg id="chart-rps" role="img" aria-label="requests per second"></svg>',
        "<h2>Outcomes over time</h2>",
        '<svg id="chart-outcomes" role="img" aria-label="outcomes over time"></svg>',
        '<p id="legend"></p>',
        "<h2>By status</h2>",
        _html_table([*status_rows, ["total", report.records]], ["status", "records"]),
    ]
    if report.by_location:
        parts += [
            "<h2>By location</h2>",
            _html_table(_location_rows(report, 50), ["location", "records", "ok", "not ok"]),
        ]
    parts += [
        "<h2>Top error reasons</h2>",
        _html_table(report.reasons.most_common(top), ["reason", "records"])
        if report.reasons
        else "<p>none</p>",
        f'<script type="application/json" id="report-data">{_script_json(data)}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
