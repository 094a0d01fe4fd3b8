"""Progress rendering: numbers in, text out."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from pathlib import Path

import pytest
from conftest import TEST_TOKEN, StartSandbox, sandbox_config

import growthhub_async.job as job_module
from growthhub_async.job import JobSettings, run_job
from growthhub_async.outcomes import Outcome, Status, Summary
from growthhub_async.progress import (
    eta_seconds,
    format_duration,
    pace_against_limit,
    render_bar,
    render_line,
    render_summary,
)
from growthhub_async.ratelimit import Rate


def make_summary(updated: int, failed: int, elapsed: float) -> Summary:
    summary = Summary()
    for i in range(updated):
        summary.add(Outcome(line=i + 1, contact_id=f"c{i}", status=Status.UPDATED, attempts=1))
    for i in range(failed):
        summary.add(Outcome(line=i + 1, contact_id=f"f{i}", status=Status.FAILED, attempts=3))
    summary.retries = 2 * failed
    summary.rate_limited = 1
    summary.elapsed = elapsed
    return summary


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0.0s"), (9.94, "9.9s"), (75.2, "1m15s"), (3600, "1h00m00s"), (3725, "1h02m05s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_bar_shows_done_of_total_rate_counts_and_eta() -> None:
    line = render_bar(make_summary(40, 10, 5.0), total=100)
    assert line.startswith("[############------------] 50/100  50.0%  ETA 5.0s")
    assert "14.0 req/s" in line  # 40 + 30 requests in 5 s
    assert line.endswith("updated 40  failed 10  retries 20  429s 1")


def test_bar_fits_the_terminal_keeping_progress_and_eta_first() -> None:
    summary = make_summary(40, 10, 5.0)
    narrow = render_bar(summary, total=100, width=79)
    assert len(narrow) <= 79
    assert narrow == "[############------------] 50/100  50.0%  ETA 5.0s  14.0 req/s"
    assert len(render_bar(summary, total=100, width=30)) <= 30


def test_bar_without_a_known_total() -> None:
    line = render_bar(make_summary(3, 0, 1.0), total=None)
    assert line.startswith("3 records  ETA --")


def test_plain_line_has_no_control_characters() -> None:
    line = render_line(make_summary(5, 0, 2.0), total=10)
    assert line.startswith("progress: 5/10 records, 2.5 req/s")
    assert "\r" not in line
    assert "\x1b" not in line


def test_summary_table_against_the_limit() -> None:
    text = render_summary(make_summary(40, 10, 5.0), rate=Rate(20, 1.0), outcomes="out.jsonl")
    assert "  updated       40\n  failed        10\n" in text
    assert "  total         50\n" in text
    assert "invalid" not in text
    assert "70 requests in 5.0s (14.0 req/s); 20 retries, 1 answered 429" in text
    assert "pace: 70% of the 100 requests that 20/1s allows in 5.0s" in text
    assert text.endswith("outcomes: out.jsonl")


def test_bar_and_table_use_the_same_words() -> None:
    summary = make_summary(3, 2, 1.0)
    summary.add(Outcome(line=9, contact_id="r", status=Status.REJECTED))
    bar = render_bar(summary, total=10)
    table = render_summary(summary, rate=None, outcomes=None)
    for status in ("updated", "failed", "rejected"):
        assert f"{status} " in bar
        assert f"  {status} " in table
    assert "not updated" not in bar


@pytest.mark.parametrize(
    ("requests", "elapsed", "expected"),
    [
        # 11.6 req/s against 10 req/s used to read "116%": the first window's 100, then 16
        # more once it had passed; two windows started, so at most 200 were allowed.
        (116, 10.02, "58% of the 200 requests that 100/10s allows in 10.0s"),
        (100, 0.5, "100% of the 100 requests that 100/10s allows in 0.5s"),
        (980, 99.5, "98% of the 1000 requests that 100/10s allows in 1m40s"),
    ],
)
def test_pace_is_against_what_the_limit_allows(
    requests: int, elapsed: float, expected: str
) -> None:
    assert pace_against_limit(requests, elapsed, Rate(100, 10.0)) == expected


def test_whole_job_column_beside_this_run() -> None:
    summary = make_summary(4, 1, 1.0)
    whole = {Status.UPDATED: 94, Status.FAILED: 1, Status.REJECTED: 5}
    text = render_summary(summary, rate=None, outcomes=None, whole_job=whole)
    assert "  status    this run  whole job\n" in text
    assert "  updated          4         94\n" in text
    assert "  rejected         0          5\n" in text
    assert "  total            5        100\n" in text


def test_eta_at_a_slow_rate_waits_for_the_limit_not_the_first_burst() -> None:
    # --rate 1/1h, 10 records, with the clock injected as the summary's elapsed seconds: the
    # first record is answered in 50 ms, the nine others go out one an hour.
    hour = 3600.0
    rate = Rate(1, hour)
    first = make_summary(1, 0, 0.05)
    assert eta_seconds(1, 10, 0.05) == pytest.approx(0.45)  # the pace alone: wrong by hours
    assert eta_seconds(1, 10, 0.05, rate) == pytest.approx(9 * hour - 0.05)
    assert "ETA 9h00m00s" in render_bar(first, 10, rate=rate)
    assert render_line(first, 10, rate=rate).endswith("ETA 9h00m00s")
    # Half an hour later, still one done: the wait counts down instead of growing.
    assert eta_seconds(1, 10, 1800.0, rate) == pytest.approx(8.5 * hour)
    # Five done after four hours and a bit: five hours left, not the pace's four.
    assert eta_seconds(5, 10, 4 * hour + 1, rate) == pytest.approx(5 * hour - 1)
    # Two tokens (locations), each 1/1h: twice the allowance, half the windows.
    assert eta_seconds(2, 10, 1.0, rate, tokens=2) == pytest.approx(4 * hour - 1)
    # Records rejected at once take no request: five of ten, then one answered. The four
    # left need four more hours, not nine; a record that took 3 requests (retries) adds two.
    assert eta_seconds(6, 10, 0.05, rate, requests=1) == pytest.approx(4 * hour - 0.05)
    assert eta_seconds(6, 10, 0.05, rate, requests=3) == pytest.approx(6 * hour - 0.05)
    # A server slower than the limit: its own pace rules.
    assert eta_seconds(5, 10, 50.0, Rate(100, 10.0)) == pytest.approx(50.0)
    assert eta_seconds(10, 10, 5.0, rate) is None  # done
    assert eta_seconds(0, 10, 5.0, rate) is None  # nothing to go by yet


async def test_a_slow_run_shows_the_eta_its_rate_allows(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # A real job at 1 request an hour against the sandbox; its first progress line (drawn a
    # tenth of a second in) must say about two hours for three records, then the job stops.
    sandbox = await start_sandbox(sandbox_config(tokens=frozenset({TEST_TOKEN})))
    data = tmp_path / "in.jsonl"
    data.write_text("".join(f'{{"contactId":"c{n}","firstName":"A"}}\n' for n in range(3)))
    err = io.StringIO()
    stop = asyncio.Event()
    settings = JobSettings(
        input=str(data),
        out=str(tmp_path / "out.jsonl"),
        base_url=sandbox.base_url,
        rate=Rate(1, 3600.0),
        progress="line",
        progress_every=0.1,
        grace=0.1,
        handle_signals=False,
    )
    job = asyncio.create_task(
        run_job(settings, token=TEST_TOKEN, stdout=io.StringIO(), stderr=err, stop=stop)
    )
    while "progress: 1/3 records" not in err.getvalue():
        assert not job.done(), err.getvalue()
        await asyncio.sleep(0.05)
    stop.set()
    result = await asyncio.wait_for(job, 10)
    assert result.summary.records == 3  # one updated, two cancelled unsent
    line = next(x for x in err.getvalue().splitlines() if "progress: 1/3 records" in x)
    eta = re.search(r"ETA (\d+)h(\d\d)m(\d\d)s", line)
    assert eta is not None, line
    hours, minutes, seconds = map(int, eta.groups())
    assert 2 * 3600 - 60 < hours * 3600 + minutes * 60 + seconds <= 2 * 3600


async def test_the_last_progress_line_has_the_total_when_the_count_comes_after_the_run(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The total is counted beside the run (a thread): a short run on a busy machine can end
    # first. Its input was read to the end, so the last line shows the records as the total.
    release = threading.Event()

    def late_count(path: str) -> int | None:
        release.wait(10)
        return None

    monkeypatch.setattr(job_module, "count_records", late_count)
    sandbox = await start_sandbox(sandbox_config(tokens=frozenset({TEST_TOKEN})))
    data = tmp_path / "in.jsonl"
    data.write_text("".join(f'{{"contactId":"c{n}","firstName":"A"}}\n' for n in range(4)))
    err = io.StringIO()
    settings = JobSettings(
        input=str(data),
        out=str(tmp_path / "out.jsonl"),
        base_url=sandbox.base_url,
        rate=Rate(1000, 1.0),
        progress="bar",
        handle_signals=False,
    )
    try:
        result = await run_job(settings, token=TEST_TOKEN, stdout=io.StringIO(), stderr=err)
    finally:
        release.set()
    assert result.exit_status == 0, err.getvalue()
    assert "4/4 100.0%" in err.getvalue().rsplit("\r", 1)[-1]
