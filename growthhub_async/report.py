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
_MAX_RUN_IDS: Final = 100_000  # run ids that name a group of journals (see _LastOutcome)
_EPOCH_RANGE: Final = (946_684_800.0, 32_503_680_000.0)  # 2000 to 3000: a plausible `at`
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_PREFIX = re.compile(r"\bline \d+\b")
# Ids, as they vary from record to record (see reason_of); the order matters: longest first.
_IDS: Final = re.compile(
    r"\b[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}\b"  # a UUID
    r"|\b[A-Za-z0-9]{20,}\b"  # the API's ids: 20 letters and digits (with no digit too)
    r"|\b(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{16,}\b"  # long, with a digit
    r"|\b(?=(?:[\w-]*?\d){3})[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)+\b"  # dashed, 3 digits: c-0001
    r"|\b[A-Za-z]+\d{3,}\b"  # a name and a number: contact0042
    r"|\b\d{5,}\b"  # a long number (a status or a count has fewer digits)
)
# A quoted value that holds a digit or an @ (data: an id, a number, a date, an email); a quoted
# word alone (a field's name) stays, since it tells causes apart.
_QUOTED: Final = re.compile(
    r"'[^'\n]{0,200}?[\d@][^'\n]{0,200}?'"
    r'|"[^"\n]{0,200}?[\d@][^"\n]{0,200}?"'
)


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
    """An error as a reason shared by many records: line numbers, ids and data taken out.

    Ids: a UUID, 20 or more letters and digits (the API's ids have 20), 16 or more with a
    digit, letters and digits joined by ``-`` or ``_`` with 3 digits or more (``c-0001``, not
    ``utf-8``), letters then
    3 or more digits (``contact0042``), 5 or more digits; each becomes ``<id>``. A quoted
    value holding a digit or ``@`` becomes ``'<value>'``. What is left is the cause.
    """
    text = _LINE_PREFIX.sub("line N", error.strip())
    text = text.removeprefix("line N: ")
    text = _QUOTED.sub(lambda m: f"{m.group()[0]}<value>{m.group()[0]}", text)
    return _IDS.sub("<id>", text)[:300]


class _LastOutcome:
    """Per input line of one input: its last status, location, reason and source, 13 bytes.

    One per group of journals of the same input (the journals that share a run id: a run's
    shards, their resumed runs, a copy), so that a line in two of them is one record. Arrays
    indexed by ``line - base`` while the lines read stay within a window 8 times their count:
    13 bytes a line as the command writes them (1 to N, or any dense range, in any order), at
    most 104 with gaps between line numbers. A line number far outside (a hand-made journal's
    ``"line": 2147483647`` beside ``"line": 1``) goes to a dict instead of growing the arrays
    to it, at about 220 bytes per such line: the most a line costs, whatever its number.
    """

    def __init__(self) -> None:
        self.base = 0
        self.status = bytearray()
        self.location = array("I")
        self.reason = array("I")
        self.source = array("I")
        self.sparse: dict[int, tuple[int, int, int, int]] = {}
        self.entries = 0

    def _grow(self, front: int, back: int) -> None:
        for column in (self.location, self.reason, self.source):
            zeros = array("I", bytes(column.itemsize * front))
            column[0:0] = zeros
            column.frombytes(bytes(column.itemsize * back))
        self.status[0:0] = bytes(front)
        self.status.extend(bytes(back))
        self.base -= front

    def _index(self, line: int, grow: bool) -> int | None:
        """The arrays' index of ``line``, if it is (or, with ``grow``, may be made) there."""
        if not self.status:
            if not grow:
                return None
            self.base = line
        low, high = self.base, self.base + len(self.status)
        if low <= line < high:
            return line - low
        most = 8 * self.entries + 65_536  # slots at most: 8 per line read (104 bytes)
        if not grow or max(high, line + 1) - min(low, line) > most:
            return None
        if line >= high:
            self._grow(0, line + 1 - high)
        else:  # before the window: grow it by its size if it may, so that it is done rarely
            room = most - (high - line)
            self._grow(min(low, low - line + min(len(self.status), room)), 0)
        return line - self.base

    def get(self, line: int) -> tuple[int, int, int, int] | None:
        """``(status code, location, reason, source)`` of ``line``'s last outcome, if any."""
        found = self.sparse.get(line)
        if found is not None:
            return found
        index = self._index(line, grow=False)
        if index is None or not self.status[index]:
            return None
        return self.status[index], self.location[index], self.reason[index], self.source[index]

    def set(self, line: int, status: int, location: int, reason: int, source: int) -> None:
        self.entries += 1
        index = None if line in self.sparse else self._index(line, grow=True)
        if index is not None:
            self.status[index] = status
            self.location[index] = location
            self.reason[index] = reason
            self.source[index] = source
        else:
            self.sparse[line] = (status, location, reason, source)


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
    _groups: dict[str, _LastOutcome] = field(default_factory=dict)
    _run_numbers: dict[str, int] = field(default_factory=dict)
    _run_files: dict[int, int] = field(default_factory=dict)
    """Each run's first journal (by number)."""
    _repeats: Counter[tuple[int, int]] = field(default_factory=Counter)

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
        file = min(len(self.files), 0xFFFF)
        group: _LastOutcome | None = None
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
            run = entry.run_id[:64] if entry.run_id is not None else None
            if group is None:  # the journals of one input share a run id: one group
                group = self._groups.get(run) if run is not None else None
                if group is None:
                    group = _LastOutcome()
            if run is not None and len(self._groups) < _MAX_RUN_IDS:
                self._groups.setdefault(run, group)
            self._add(entry, code, group, file << 16 | self._run_number(run))
        self.by_status = +self.by_status
        self.reasons = +self.reasons
        self.by_location = {k: +v for k, v in self.by_location.items() if +v}

    def _run_number(self, run: str | None) -> int:
        """A run id's number (1 to 0xFFFF; 0: none, or too many runs to tell apart)."""
        if run is None:
            return 0
        found = self._run_numbers.get(run)
        if found is None:
            if len(self._run_numbers) >= 0xFFFE:
                return 0
            found = self._run_numbers[run] = len(self._run_numbers) + 1
        return found

    def _reason(self, error: str) -> int:
        """The index of an error's reason (0: none); at most MAX_REASONS distinct ones."""
        reason = reason_of(error)
        return _intern(
            self._reason_names, self._reason_index, reason, MAX_REASONS + 1, _OTHER_REASONS
        )

    def _count(self, code: int, location: int, reason: int, by: int) -> None:
        """Count a line's last outcome (``by`` 1), or stop counting it (``by`` -1)."""
        status = _STATUSES[code - 1].value
        self.by_status[status] += by
        place = self._locations[location]
        counts = self.by_location.get(place)
        if counts is None:
            counts = self.by_location[place] = Counter()
        counts[status] += by
        if reason:
            self.reasons[self._reason_names[reason]] += by

    def _add(self, entry: _Entry, code: int, last: _LastOutcome, source: int) -> None:
        previous = last.get(entry.line)
        if previous is not None:
            # A run writes a line in one journal only (a shard's lines are its own): this run's
            # line, in another journal than the run's first, that holds the line too, is a copy.
            file, run = source >> 16, source & 0xFFFF
            first = self._run_files.setdefault(run, file) if run else file
            if first != file and previous[3] >> 16 == first:
                self._repeats[(file, first)] += 1
                return
            self._count(*previous[:3], by=-1)
        elif source & 0xFFFF:
            self._run_files.setdefault(source & 0xFFFF, source >> 16)
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
        last.set(entry.line, code, location, reason, source)
        self._count(code, location, reason, by=1)
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

    @property
    def repeats(self) -> list[str]:
        """One note per journal that repeats another's outcomes (a copy), counted once."""
        return [
            f"{self.files[copy - 1]} repeats {count:,} outcome line(s) of "
            f"{self.files[first - 1]} (the same runs', for the same lines): counted once"
            for (copy, first), count in sorted(self._repeats.items())
        ]

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
    out += [f"warning: {note}" for note in report.repeats]
    return "\n".join(_printable(line) for line in out) + "\n"


def _printable(text: str) -> str:
    """``text`` with control characters escaped as Python writes them (``\\x1b``): a journal's
    text must not drive the terminal (move the cursor, set the title, hide a line)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


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
    notes += report.repeats
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
