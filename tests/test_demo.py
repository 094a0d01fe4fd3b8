"""``growthhub-async demo``: the sample input, and a scaled-down run in-process and as a command."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cli_helpers import run_cli

from growthhub_async.demo import BAD_RECORDS, run_demo, write_sample


def test_sample_holds_the_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    assert write_sample(path, 100) == 100
    lines = path.read_bytes().splitlines()
    assert len(lines) == 100
    assert sorted(line for line in lines if line in BAD_RECORDS) == sorted(BAD_RECORDS)
    good = [json.loads(line) for line in lines if line not in BAD_RECORDS]
    assert len({g["contactId"] for g in good}) == len(good)


async def test_demo_runs_twice_in_the_same_folder(tmp_path: Path) -> None:
    for _ in range(2):
        out = io.StringIO()
        err = io.StringIO()
        status = await run_demo(tmp_path, records=120, progress=True, stdout=out, stderr=err)
        assert status == 0, out.getvalue() + err.getvalue()
        outcomes = (tmp_path / "outcomes.jsonl").read_bytes().splitlines()
        assert len(outcomes) == 120  # a fresh outcome file each run
        statuses = [json.loads(line)["status"] for line in outcomes]
        assert statuses.count("rejected") == len(BAD_RECORDS)
        assert statuses.count("updated") == 120 - len(BAD_RECORDS)
        text = out.getvalue()
        assert str(tmp_path / "outcomes.jsonl") in text
        assert "unknown field `favouriteColour`" in text
        assert "rejected" in text


async def test_demo_command(tmp_path: Path) -> None:
    ran = await run_cli(
        "demo", "--dir", str(tmp_path / "d"), "--records", "80", "--no-progress", token=None
    )
    assert ran.status == 0, ran.stderr
    assert "outcomes: " in ran.stdout
    assert (tmp_path / "d" / "contacts.jsonl").exists()
