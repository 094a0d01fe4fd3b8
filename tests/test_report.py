"""``growthhub-async report`` (issue 16): the summary of journals, as text and as an HTML page.

The page is opened in a real headless Chromium (the Debian package; ``make test`` installs it
when it can): the charts must be drawn by its script, and a hostile reason must stay text.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from growthhub_async import report
from growthhub_async.cli import main
from growthhub_async.ratelimit import Rate

T0 = 1_796_000_000.0
HOSTILE = '</script><script>document.title="pwned"</script><b>bold</b> & more'


def entry(line: int, status: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "line": line,
        "contactId": f"c{line}",
        "status": status,
        "httpStatus": 200 if status == "updated" else None,
        "attempts": 1,
        "error": None,
        "recordHash": None,
    }
    base.update(extra)
    return base


def write(path: Path, rows: list[Any], tail: bytes = b"") -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode() + tail)
    return path


def hostile_journals(tmp_path: Path) -> list[Path]:
    """Two shard journals: a resumed line, retries, 429s, a hostile reason, junk of every kind."""
    shard0 = write(
        tmp_path / "shard0.jsonl",
        [
            entry(1, "updated", location="locA", at=T0 + 0.2, runId="run1"),
            entry(2, "failed", attempts=3, error="HTTP 503: down", location="locA", at=T0 + 1.5),
            "",
            "   ",
            entry(3, "invalid", httpStatus=422, error=f"line 3: {HOSTILE}", location="locA")
            | {"at": T0 + 2.1, "rateLimited": 2, "somethingNew": {"x": [1]}},
            "not json at all",
            json.dumps(entry(9, "exploded")),  # an unknown status
            json.dumps({"line": "seven", "status": "updated"}),  # a wrong type
            entry(2, "updated", attempts=2, location="locA", at=T0 + 4.9, runId="run2"),
            entry(2_000_000_000, "not_found", attempts=1, error="HTTP 404: gone", at=T0 + 3.0),
        ],
        tail=b'{"line":99,"contactId":"torn","sta',  # a torn last line
    )
    shard1 = write(
        tmp_path / "shard1.jsonl",
        [
            entry(4, "updated", location="locB", at=T0 + 0.9),
            entry(5, "rejected", attempts=0, error="line 5: Object contains unknown field `x`"),
            # Written before journals carried the run's facts: no time, no location.
            entry(6, "updated"),
        ],
    )
    (tmp_path / "huge.jsonl").write_bytes(b'{"line":1,"error":"' + b"x" * (2 << 20) + b'"}\n')
    return [shard0, shard1, tmp_path / "huge.jsonl"]


def test_the_text_report_of_hostile_shard_journals(tmp_path: Path) -> None:
    found = report.read_journals([str(p) for p in hostile_journals(tmp_path)])
    # Each record counted once, by its last outcome (line 2 failed, then updated on resume).
    assert dict(found.by_status) == {
        "updated": 4,
        "invalid": 1,
        "not_found": 1,
        "rejected": 1,
    }
    assert dict(found.by_location["locA"]) == {"updated": 2, "invalid": 1}
    assert found.by_location["(none)"]["rejected"] == 1
    assert dict(found.reasons) == {
        HOSTILE: 1,  # "line 3: " taken out
        "HTTP 404: gone": 1,
        "Object contains unknown field `x`": 1,
    }
    assert found.requests == 1 + 3 + 1 + 2 + 1 + 1 + 0 + 1
    assert found.retries == 2 + 1
    assert found.rate_limited == 2
    assert found.runs == {"run1", "run2"}
    assert found.blank == 2
    assert found.skipped_count == 5
    text = "\n".join(found.skipped)
    assert "shard0.jsonl:11: torn last line" in text
    assert "huge.jsonl:1: longer than" in text
    rendered = report.render_text(found)
    assert "requests: 10; retries: 3; 429 answers: 2" in rendered
    assert "HTTP 404: gone" in rendered
    assert "outcome lines have no time" in rendered
    width, bars = found.timeline(Rate(10, 1.0))
    assert width == 1.0
    assert len(bars) == 5  # seconds 0 to 4
    assert bars[0]["rps"] == 2.0  # line 1 and line 4 (another shard)
    assert bars[0]["limit"] == 20.0  # two locations at work in that second
    assert bars[4]["outcomes"] == {"updated": 1}


def test_the_command_prints_the_report_and_writes_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journals = [str(p) for p in hostile_journals(tmp_path)[:2]]
    page = tmp_path / "report.html"
    assert main(["report", *journals, "--html", str(page), "--rate", "10/1s"]) == 0
    out = capsys.readouterr().out
    assert "by status" in out
    assert "locB" in out
    assert f"page: {page}" in out
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def _long_journal(lines: int) -> bytes:
    rows = []
    for n in range(1, lines + 1):
        failed = n % 2 == 0
        rows.append(
            json.dumps(
                entry(
                    n,
                    "failed" if failed else "updated",
                    error=f"HTTP 500: refused by node {n % 3000}" if failed else None,
                    location=f"loc{n % 300}",
                    at=T0 + 30 * n,  # 5 days for 16,000 lines: the timeline coarsens
                )
            ).encode()
        )
    return b"\n".join(rows) + b"\n"


def _peak(data: bytes) -> tuple[report.Report, int]:
    tracemalloc.start()
    try:
        found = report.Report()
        found.read("long", io.BytesIO(data))
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_on_a_long_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twice the lines cost a few bytes per line (the last outcomes), not twice the memory."""
    small, peak_small = _peak(_long_journal(8_000))
    large, peak_large = _peak(_long_journal(16_000))
    assert large.records == 16_000
    assert large.by_status["failed"] == 8_000
    assert len(large.buckets) <= report.MAX_BUCKETS
    assert large.resolution > small.resolution >= 128
    assert len(large.timeline(None)[1]) <= 600
    assert (peak_large - peak_small) / 8_000 < 40, (peak_small, peak_large)
    # Distinct reasons are capped too: the rest are counted together.
    monkeypatch.setattr(report, "MAX_REASONS", 100)
    capped = report.Report()
    capped.read("long", io.BytesIO(_long_journal(2_000)))
    assert len(capped.reasons) == 101
    assert sum(capped.reasons.values()) == 1_000
    assert capped.reasons["(other reasons)"] == 1_000 - 100


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("this test needs Chromium: run  sudo apt-get install -y chromium")
    return found


def test_the_page_renders_its_charts_in_chromium(tmp_path: Path) -> None:
    found = report.read_journals([str(p) for p in hostile_journals(tmp_path)[:2]])
    page = tmp_path / "report.html"
    page.write_text(report.render_html(found, rate=Rate(10, 1.0)), encoding="utf-8")
    html_text = page.read_text(encoding="utf-8")
    assert "http://" not in html_text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html_text
    assert html_text.count("<script") == 2  # the data and the drawing, nothing injected
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-rendered="yes"' in dom, dom[-2000:]  # the script ran to its end
    _, bars = found.timeline(Rate(10, 1.0))
    assert dom.count('class="rps"') == len(bars) == 5
    assert 'data-bars="5"' in dom
    stacked = sum(len(b["outcomes"]) for b in bars)  # type: ignore[arg-type]
    assert dom.count('class="outcome"') == stacked == 5
    assert '<polyline points="' in dom  # the limit line
    assert "<title>growthhub-async run report</title>" in dom  # not "pwned"
    assert dom.count("<script") == 2
    assert "&lt;/script&gt;&lt;script&gt;document.title" in dom  # the reason, as text
    assert "<b>bold</b>" not in dom


def _far_journal(lines: int) -> bytes:
    """Line numbers counting down from 2**31 - 1: dense, but nowhere near 1."""
    return b"".join(
        b'{"line":%d,"status":"updated","attempts":1}\n' % (2_147_483_647 - i) for i in range(lines)
    )


def test_memory_per_line_does_not_depend_on_where_the_line_numbers_are() -> None:
    """rt16 #3 (report memory): a dense range far from 1 costs what 1 to N does."""
    small, peak_small = _peak(_far_journal(8_000))
    large, peak_large = _peak(_far_journal(16_000))
    assert (small.records, large.records) == (8_000, 16_000)
    assert (peak_large - peak_small) / 8_000 < 40, (peak_small, peak_large)


def test_a_copy_of_a_journal_is_counted_once_and_named(tmp_path: Path) -> None:
    """rt16 #4: the same run's outcomes of the same lines in two journals are one record."""
    rows = [
        entry(1, "updated", runId="r1", at=T0),
        entry(2, "failed", error="HTTP 500: x", runId="r1", at=T0 + 1),
        entry(2, "updated", attempts=2, runId="r2", at=T0 + 2),  # resumed
    ]
    first = write(tmp_path / "a.jsonl", rows)
    copy = write(tmp_path / "a-copy.jsonl", rows)
    other_input = write(tmp_path / "b.jsonl", [entry(1, "updated", runId="r9")])
    alone = report.read_journals([str(first)])
    both = report.read_journals([str(first), str(copy), str(other_input)])
    assert alone.records == 2
    assert both.records == 3  # a.jsonl's 2 records once, and b.jsonl's own line 1
    assert both.by_status == {"updated": 3}
    assert (both.entries, both.requests) == (alone.entries + 1, alone.requests + 1)
    assert not both.reasons
    text = report.render_text(both)
    assert f"warning: {copy} repeats 3 outcome line(s) of {first}" in text
    assert "counted once" in report.render_html(both, rate=None)
    # Shards of one run (one runId since rt16 #2) have lines of their own: all counted.
    shard0 = write(tmp_path / "s0.jsonl", [entry(1, "updated", runId="r5")])
    shard1 = write(tmp_path / "s1.jsonl", [entry(2, "invalid", error="bad", runId="r5")])
    shards = report.read_journals([str(shard0), str(shard1)])
    assert shards.by_status == {"updated": 1, "invalid": 1}
    assert not shards.repeats


def test_the_text_report_escapes_control_characters(tmp_path: Path) -> None:
    """A journal's text must not drive the terminal: ESC and friends are shown as \\x1b."""
    journal = write(
        tmp_path / "j.jsonl",
        [
            entry(1, "failed", error="x\x1b]0;PWNED\x07\x1b[2J\x1b[31mred\n\u2028next", at=T0)
            | {"location": "loc\x1b[1mbold\x9b"}
        ],
    )
    text = report.render_text(report.read_journals([str(journal)]))
    assert not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "\u2028" not in text
    assert "x\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31mred\\n\\u2028next" in text
    assert "loc\\x1b[1mbold\\x9b" in text


@pytest.mark.parametrize(
    ("errors", "reason"),
    [
        (
            [  # the API's 20-character ids, with or without a digit
                "HTTP 200 names contact abcdefghijklmnopqrst, not ocQHyuzHvysMo5N5VsXc",
                "HTTP 200 names contact ABCDEFGHIJKLMNOPQRST, not ocQHyuzHvysMo5N5VsX1",
            ],
            "HTTP 200 names contact <id>, not <id>",
        ),
        (
            ["line 4: HTTP 404: contact c-0001 not found", "HTTP 404: contact c-0002 not found"],
            "HTTP 404: contact <id> not found",
        ),
        (
            [
                "contact contact0042 of 7f3a9c2e-41b8-4c2e-9d3f-123456789abc",
                "contact x991 of 12345",
            ],
            "contact <id> of <id>",
        ),
        (
            [
                "Invalid date '1990-13-01', expected YYYY-MM-DD",
                "Invalid date '2/3/1990', expected YYYY-MM-DD",
            ],
            "Invalid date '<value>', expected YYYY-MM-DD",
        ),
        (['email "bob@x.com" is invalid', 'email "a@b" is invalid'], 'email "<value>" is invalid'),
        # What tells causes apart stays: a field's name, a status, a small count, utf-8.
        (['unknown field "email"'], 'unknown field "email"'),
        (["HTTP 429 after 3 attempts"], "HTTP 429 after 3 attempts"),
        (["invalid utf-8 at byte 12"], "invalid utf-8 at byte 12"),
    ],
)
def test_one_cause_is_one_reason(errors: list[str], reason: str) -> None:
    """rt16 #7: ids and data are taken out of reasons, the cause stays."""
    assert {report.reason_of(error) for error in errors} == {reason}
