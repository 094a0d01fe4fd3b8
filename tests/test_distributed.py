"""The shards of a many-location job on a real Dask cluster (issue 13, item 6).

One ``LocalCluster`` of two worker processes serves the whole module (its start costs seconds);
the sandbox runs in the test's event loop on loopback and the workers talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import distributed
import pytest
import yaml

from growthhub_async.cli import main
from growthhub_async.distributed import (
    ShardTask,
    TokenBroker,
    journal_name,
    run_shard,
    run_shards,
    shard_tasks,
)
from growthhub_async.job import JobSettings
from growthhub_async.locations import AgencyTokens, LocationTokens, load_tokens_file, shard_of
from growthhub_async.ratelimit import Rate
from growthhub_async.sandbox import SandboxConfig, run_sandbox
from growthhub_async.sandbox.config import Faults
from growthhub_async.sandbox.oauth import OAuthConfig
from tests.cli_helpers import cli_env, finish, journal_lines, run_cli, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
LOCATION_TOKENS = {f"tok-LOC{i}-SECRET-5d0e12": f"loc{i}" for i in range(6)}
TOKENS = {loc: token for token, loc in LOCATION_TOKENS.items()}
OWN_TOKEN = "tok-OWN-SECRET-8c1f77"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real LocalCluster: two worker processes (with nannies, which restart a killed one)."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # Port 8787, the HTTP server's default, may be taken (Dask would warn and move).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as local:
        yield local.scheduler_address


def _config(**overrides: Any) -> SandboxConfig:
    options: dict[str, Any] = {
        "tokens": frozenset({OWN_TOKEN}),
        "location_tokens": LOCATION_TOKENS,
        "rate_limit": 1_000_000,
        "rate_window": 1.0,
    }
    options.update(overrides)
    return SandboxConfig(**options)


def _tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(TOKENS))
    path.chmod(0o600)
    return path


def _final(folder: Path) -> dict[str, dict[str, Any]]:
    """The last outcome of each contact over every shard's journal."""
    last: dict[str, dict[str, Any]] = {}
    for journal in sorted(folder.glob("shard-*.jsonl")):
        for line in journal_lines(journal):
            last[line["contactId"]] = line
    return last


async def test_the_command_runs_shards_on_the_cluster_once_each_and_shows_no_token(
    tmp_path: Path, cluster: str
) -> None:
    tokens = _tokens_file(tmp_path)
    rows: list[dict[str, Any]] = [
        {"contactId": f"c{loc}x{n}", "locationId": f"loc{loc}", "firstName": "A"}
        for loc in range(6)
        for n in range(10)
    ]
    rows += [{"contactId": "own1", "firstName": "A"}, {"contactId": "bad1", "gender": "x"}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    folder = tmp_path / "shards"
    args = ["update", str(data), "--out-dir", str(folder), "--shards", "3", "--dask", cluster]
    args += ["--base-url", "", "--tokens", str(tokens), "--no-progress"]
    async with run_sandbox(_config()) as sb:
        args[args.index("--base-url") + 1] = sb.base_url
        ran = await run_cli(*args, "--log-format", "json", token=OWN_TOKEN, limit=90)
        requests = sb.stats()["requests"]
        first_journals = [line for p in folder.glob("*.jsonl") for line in journal_lines(p)]
        again = await run_cli(*args, "--resume", token=OWN_TOKEN, limit=90)
        requests_after_resume = sb.stats()["requests"]
        # In process (the command's own path is above): journals there, no resume; then the
        # same folder split 2 ways.
        settings = JobSettings(input=str(data), out=str(folder), base_url=sb.base_url)
        outputs = io.StringIO()
        kept = LocationTokens(load_tokens_file(tokens))
        refused = await run_shards(
            settings,
            out_dir=str(folder),
            shards=3,
            cluster=cluster,
            locations=kept,
            stdout=outputs,
            stderr=outputs,
        )
        resumed = replace(settings, resume=True)
        split_otherwise = await run_shards(
            resumed,
            out_dir=str(folder),
            shards=2,
            cluster=cluster,
            locations=kept,
            stdout=outputs,
            stderr=outputs,
        )
        missing = await run_shards(
            replace(resumed, input=str(tmp_path / "elsewhere.jsonl")),
            out_dir=str(folder),
            shards=3,
            cluster=cluster,
            locations=kept,
            stdout=outputs,
            stderr=outputs,
        )
        final_requests = sb.stats()["requests"]
        contacts = sb.contacts
    assert ran.status == 1, ran.stderr  # the bad record is rejected, as in one run
    # One run, one id: on every stderr line of the coordinator and every shard's journal line.
    (run_id,) = {json.loads(line)["runId"] for line in ran.stderr.splitlines()}
    assert run_id
    assert len(first_journals) == len(rows)
    assert {line["runId"] for line in first_journals} == {run_id}
    assert requests == 61  # 60 located records and the run's own token's one, each once
    assert {contacts[f"c{loc}x0"]["locationId"] for loc in range(6)} == {
        f"loc{loc}" for loc in range(6)
    }
    final = _final(folder)
    assert len(final) == len(rows)
    assert Counter(line["status"] for line in final.values()) == {"updated": 61, "rejected": 1}
    for loc in range(6):  # each location in its shard's journal only
        owner = shard_of(f"loc{loc}", 3)
        owned = journal_lines(folder / journal_name(owner, 3))
        assert sum(line["contactId"].startswith(f"c{loc}x") for line in owned) == 10
    assert "by location (all shards):" in ran.stdout
    assert "loc5" in ran.stdout
    assert re.search(r"updated\s+61\n", ran.stdout), ran.stdout
    assert re.search(r"rejected\s+1\n", ran.stdout), ran.stdout
    assert "shard 0/3" in ran.stderr
    assert "shard 2/3" in ran.stderr
    assert "--resume" in ran.stderr  # the command that resumes the whole sharded job
    # Resumed: nothing final is sent again, the whole job's column counts every record.
    assert again.status == 1, again.stderr
    assert requests_after_resume == requests
    assert "whole job" in again.stdout
    # Without --resume, a shard's existing journal is refused as in one run: exit 2.
    assert refused.exit_status == 2
    # Failed shards' journals still count in the whole job's column (they are the truth).
    assert refused.summary.records == 0
    assert sum(refused.whole_job.values()) == len(rows)
    assert all("--resume" in (r.error or "") for r in refused.reports), outputs.getvalue()
    # Journals of a job split 3 ways are never resumed 2 ways (a record would be sent twice).
    assert split_otherwise.exit_status == 2
    assert "split 3 ways" in outputs.getvalue()
    assert final_requests == requests
    assert missing.exit_status == 2  # what a worker without the shared storage says
    assert "is not on this worker" in outputs.getvalue()
    everything = ran.stdout + ran.stderr + again.stdout + again.stderr + outputs.getvalue()
    everything += "".join(p.read_text() for p in folder.iterdir())
    for secret in (*LOCATION_TOKENS, OWN_TOKEN):
        assert secret not in everything


async def test_a_worker_killed_mid_shard_is_run_again_from_its_journal(
    tmp_path: Path, cluster: str
) -> None:
    """SIGKILL the worker process running a shard: the scheduler runs the shard again, the
    new attempt resumes from the journal, every record ends updated, and no record whose
    outcome was journaled before the kill is sent again."""
    locations = [f"loc{i}" for i in range(6)]
    victim_shard = shard_of("loc0", 2)
    rows = [
        {"contactId": f"k{loc}x{n}", "locationId": loc, "firstName": "A"}
        for loc in locations
        for n in range(40)
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    folder = tmp_path / "shards"
    folder.mkdir()
    victim = folder / journal_name(victim_shard, 2)
    settings = JobSettings(
        input=str(data), out=str(folder), rate=Rate(40, 1.0), concurrency=4, base_url=""
    )
    out, err = io.StringIO(), io.StringIO()
    async with (
        run_sandbox(_config()) as sb,
        await distributed.Client(cluster, asynchronous=True) as client,
    ):
        job = asyncio.create_task(
            run_shards(
                replace(settings, base_url=sb.base_url),
                out_dir=str(folder),
                shards=2,
                cluster=client,
                locations=LocationTokens(TOKENS),
                stdout=out,
                stderr=err,
            )
        )
        for _ in range(400):  # the victim shard under way: some records journaled
            if victim.exists() and len(journal_lines(victim)) >= 20:
                break
            await asyncio.sleep(0.02)
        processing = await client.processing()
        holder = next(
            worker
            for worker, keys in processing.items()
            if any(f"shard-{victim_shard}-of-2" in str(key) for key in keys)
        )
        finished_before = {line["contactId"] for line in journal_lines(victim)}
        pids = await client.run(os.getpid, workers=[holder])
        os.kill(pids[holder], signal.SIGKILL)
        result = await asyncio.wait_for(job, 120)
        history = sb.history
    assert 20 <= len(finished_before) < 120
    assert result.exit_status == 0, err.getvalue()
    report = next(r for r in result.reports if r.shard == victim_shard)
    assert report.retried  # the last attempt followed the killed one
    final = _final(folder)
    assert len(final) == len(rows)
    assert all(line["status"] == "updated" for line in final.values())
    for contact in finished_before:  # journaled before the kill: never sent again
        assert len(history[contact]) == 1, contact
    assert sum(result.whole_job.values()) == len(rows)
    # The summary is the journals' (both attempts of the victim), not the last attempt's.
    lines = [line for j in folder.glob("shard-*.jsonl") for line in journal_lines(j)]
    assert result.summary.by_status == Counter(line["status"] for line in lines)
    assert result.summary.requests == sum(line["attempts"] for line in lines)
    assert {loc: stats.records for loc, stats in result.by_location.items()} == dict.fromkeys(
        locations, 40
    )
    text = out.getvalue()
    assert re.search(rf"updated\s+{len(rows)}\s+{len(rows)}\n", text), text
    assert f"{sum(line['attempts'] for line in lines)} requests in" in text
    assert all(re.search(rf"{loc}\s+40\s+40\s", text) for loc in locations), text


def _rows(prefix: str, per_location: int) -> list[dict[str, Any]]:
    return [
        {"contactId": f"{prefix}{loc}x{n}", "locationId": f"loc{loc}", "firstName": "A"}
        for loc in range(4)
        for n in range(per_location)
    ]


async def _started(
    settings: JobSettings, cluster: str, out: io.StringIO, journaled: int
) -> asyncio.Task[Any]:
    """``run_shards`` in a task, once ``journaled`` records have a final line."""
    job = asyncio.create_task(
        run_shards(
            settings,
            out_dir=settings.out,
            shards=2,
            cluster=cluster,
            locations=LocationTokens(TOKENS),
            stdout=out,
            stderr=out,
            resume_command="the resume command",
        )
    )
    for _ in range(500):
        if len(_final(Path(settings.out))) >= journaled:
            break
        await asyncio.sleep(0.02)
    return job


async def test_a_cancelled_run_stops_every_shard_and_the_resume_sends_the_rest(
    tmp_path: Path, cluster: str
) -> None:
    """Cancelled (the command's Ctrl-C): every shard stops as on SIGTERM, journals what it
    sent, the summary and the resume command are printed; resuming sends each record once in
    all."""
    rows = _rows("s", 60)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    folder = tmp_path / "shards"
    folder.mkdir()
    out = io.StringIO()
    async with run_sandbox(_config()) as sb:
        settings = JobSettings(
            input=str(data), out=str(folder), base_url=sb.base_url, rate=Rate(20, 1.0), grace=2.0
        )
        job = await _started(settings, cluster, out, 20)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(job, 60)
        sent_first = sb.stats()["requests"]
        first = _final(folder)
        resumed = await run_shards(
            replace(settings, resume=True),
            out_dir=str(folder),
            shards=2,
            cluster=cluster,
            locations=LocationTokens(TOKENS),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
        history = sb.history
    text = out.getvalue()
    assert "asking every shard to stop" in text
    assert "the resume command" in text
    assert sent_first < len(rows)  # stopped early
    assert sum(line["status"] == "updated" for line in first.values()) == sent_first
    assert any(line["error"] and "cancelled" in line["error"] for line in first.values())
    assert resumed.exit_status == 0
    assert all(len(history[row["contactId"]]) == 1 for row in rows)  # each sent once in all


async def test_a_second_cancel_stops_at_once_quietly_with_the_summary_and_resume_command(
    tmp_path: Path, cluster: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Cancelled twice (a second Ctrl-C) while the shards use their grace: the coordinator
    stops waiting at once, prints the journals' counts marked partial and the resume command,
    and no Dask traceback or error log."""
    rows = _rows("q", 30)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    folder = tmp_path / "shards"
    folder.mkdir()
    out = io.StringIO()
    async with (
        run_sandbox(_config(faults=Faults(latency=1.0))) as sb,
        await distributed.Client(cluster, asynchronous=True) as client,
    ):
        settings = JobSettings(
            input=str(data), out=str(folder), base_url=sb.base_url, rate=Rate(40, 1.0), grace=20.0
        )
        job = await _started(settings, cluster, out, 10)
        job.cancel()
        await asyncio.sleep(0.3)
        cancelled_again = asyncio.get_running_loop().time()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(job, 15)
        took = asyncio.get_running_loop().time() - cancelled_again
        text = out.getvalue()
        lines = [line for j in folder.glob("shard-*.jsonl") for line in journal_lines(j)]
        for _ in range(300):  # the shards, told to stop, end within their grace
            if not any((await client.processing()).values()):
                break
            await asyncio.sleep(0.1)
    assert took < 10  # not the 20 s grace
    assert "interrupted again: stopping now" in text
    assert "partial:" in text
    assert "the resume command" in text
    assert re.search(rf"total\s+{len(lines)}\n", text), text
    logged = capfd.readouterr()
    assert "Traceback" not in logged.err + logged.out
    assert "distributed.scheduler - ERROR" not in logged.err


async def test_ctrl_c_on_the_terminal_stops_local_shards_instead_of_killing_their_workers(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C reaches the whole process group, --dask local's worker processes
    included: they ignore it, and their shards stop as the coordinator asks (each reports;
    no KeyboardInterrupt traceback), with the resume command."""
    rows = _rows("t", 20)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    folder = tmp_path / "shards"
    async with run_sandbox(_config(faults=Faults(latency=0.5))) as sb:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "growthhub_async", "update", str(data), "--out-dir"],
            *[str(folder), "--shards", "1", "--dask", "local:1", "--base-url", sb.base_url],
            *["--tokens", str(_tokens_file(tmp_path)), "--no-progress", "--rate", "100/1s"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(None),
            start_new_session=True,  # its own process group, as a terminal's job
        )
        for _ in range(1500):
            if len(_final(folder)) >= 4:
                break
            await asyncio.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        ran = await finish(proc, limit=60)
    assert ran.status == 1, ran.stderr
    assert "asking every shard to stop" in ran.stderr
    assert re.search(r"shard 0/1: \d+ records, exit 1", ran.stderr), ran.stderr
    assert "Traceback" not in ran.stderr
    assert "--resume" in ran.stderr
    assert sum(line["status"] == "updated" for line in _final(folder).values()) < len(rows)


def _agency_file(tmp_path: Path) -> Path:
    path = tmp_path / "agency.json"
    path.write_text(
        json.dumps(
            {
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret-DASK-42",
                "refresh_token": "agency-refresh-DASK-1",
                "user_type": "Company",
                "company_id": "sandboxCompany00000001",
            }
        )
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("revoke", [False, True], ids=["expiry", "revocation"])
async def test_agency_tokens_stay_with_the_coordinator_and_are_renewed_mid_shard(
    tmp_path: Path, cluster: str, revoke: bool
) -> None:
    """The coordinator alone refreshes the agency token (its rotation saved); workers get
    minted location tokens through the broker, again before they expire (a 1.5 s lifetime,
    shards of several seconds), or after a revocation mid-run (401 on a token that worked).
    The tasks sent to the workers carry neither the refresh token nor the client secret."""
    path = _agency_file(tmp_path)
    rows = [
        {"contactId": f"a{loc}x{n}", "locationId": f"loc{loc}", "firstName": "A"}
        for loc in range(4)
        for n in range(50)
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    folder = tmp_path / "shards"
    folder.mkdir()
    oauth = OAuthConfig(
        client_secret="sandbox-secret-DASK-42",
        refresh_tokens=frozenset({"agency-refresh-DASK-1"}),
        user_type="Company",
        access_token_lifetime=1.5,
    )
    out, err = io.StringIO(), io.StringIO()
    async with run_sandbox(_config(oauth=oauth)) as sb:
        assert sb.oauth is not None
        server = sb.oauth
        settings = JobSettings(
            input=str(data), out=str(folder), base_url=sb.base_url, rate=Rate(20, 1.0)
        )
        agency = AgencyTokens.from_file(path)
        tasks, providers = shard_tasks(
            settings,
            out_dir=str(folder),
            shards=2,
            run_id="x",
            token=None,
            locations=LocationTokens(agency=agency),
        )
        shipped = pickle.dumps(tasks) + repr(tasks).encode()
        job = asyncio.create_task(
            run_shards(
                settings,
                out_dir=str(folder),
                shards=2,
                cluster=cluster,
                locations=LocationTokens(agency=agency),
                stdout=out,
                stderr=err,
            )
        )
        for _ in range(500):
            if len(_final(folder)) >= 60:
                break
            await asyncio.sleep(0.02)
        for token, issued in list(server.access.items()):  # as a revocation would
            if revoke and issued.location is not None:
                del server.access[token]
        result = await asyncio.wait_for(job, 120)
        stats = server.stats()
        live = set(server.refresh_tokens)
        refused = sb.stats()["byStatus"].get("401", 0)
    assert result.exit_status == 0, err.getvalue() + out.getvalue()
    final = _final(folder)
    assert len(final) == len(rows)
    assert all(line["status"] == "updated" for line in final.values())
    assert stats["byStatus"].keys() == {"200"}  # no refresh token was ever spent twice
    assert stats["refreshes"] >= 2  # the 1.5 s agency token, refreshed by the coordinator
    assert stats["mints"] > 4  # more than once per location
    # Four first asks (one per location); more "token" asks are renewals before expiry.
    assert result.token_requests["token"] > 4
    if revoke:  # the revoked tokens were refused, and the coordinator minted them again
        assert refused >= 1
        assert result.token_requests["rejected"] >= 1
    assert json.loads(path.read_text())["refresh_token"] in live  # rotation saved
    assert providers == {}
    for secret in (b"agency-refresh-DASK-1", b"sandbox-secret-DASK-42", b"sandbox-access"):
        assert secret not in shipped
    assert all(task.agency and task.tokens is None for task in tasks)


async def test_the_broker_serves_a_shard_only_its_own_locations() -> None:
    broker = TokenBroker(4, providers={})
    other = next(f"loc{i}" for i in range(50) if shard_of(f"loc{i}", 4) != 1)
    answer = await broker.answer(
        {"shard": 1, "key": other, "op": "token", "generation": -1, "confirmed": False}
    )
    assert answer.keys() == {"error"}
    assert f"belongs to shard {shard_of(other, 4)}" in answer["error"]
    malformed = await broker.answer({"shard": "1", "key": 5})
    assert malformed == {"error": "a malformed token request"}
    mine = next(f"loc{i}" for i in range(50) if shard_of(f"loc{i}", 4) == 1)
    none = await broker.answer(
        {"shard": 1, "key": mine, "op": "token", "generation": -1, "confirmed": False}
    )
    assert none == {"error": f"location {mine!r} has no token"}


async def test_a_failed_task_is_logged_by_dask_without_its_tokens(
    tmp_path: Path, cluster: str
) -> None:
    """Dask logs a failed task (older releases with its arguments' repr): no token shows."""
    tokens = load_tokens_file(_tokens_file(tmp_path))
    settings = JobSettings(input=str(tmp_path / "in.jsonl"), out=str(tmp_path))
    [task] = shard_tasks(
        settings,
        out_dir=str(tmp_path),
        shards=1,
        run_id="failing",
        token=OWN_TOKEN,
        locations=LocationTokens(tokens),
    )[0]
    broken = ShardTask(
        settings=None,  # type: ignore[arg-type]  # the task raises, as a bug would
        run_id="failing",
        token=task.token,
        tokens=task.tokens,
    )
    async with await distributed.Client(cluster, asynchronous=True) as client:
        future = client.submit(run_shard, broken, key="growthhub-shard-0-of-1-failing")
        with pytest.raises(AttributeError):
            await future
        logs = await client.get_worker_logs()
        logs["scheduler"] = await client.get_scheduler_logs()
    text = json.dumps(logs)
    assert "Compute Failed" in text
    # Older Dask releases log the task's arguments by their repr: the secrets' is hidden.
    assert "Secret(<hidden>)" in repr(broken)
    for secret in (*LOCATION_TOKENS, OWN_TOKEN):
        assert secret not in text
        assert secret not in repr(task)


async def test_an_address_that_is_no_scheduler_exits_2_naming_it_not_the_out_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port that accepts and never answers, an HTTP server (it answers the handshake with a
    400 and keeps the connection: Dask reads "HTTP/1.1" as a frame's length), a port where
    nothing listens: each ends within Dask's connect timeout (1 s here)
    with exit 2 and one line naming the address, never as an --out-dir error."""
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "1s")
    data = write_jsonl(tmp_path / "in.jsonl", [{"contactId": "c1", "locationId": "loc0"}])
    tokens = _tokens_file(tmp_path)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # never answers; until the command hangs up
        writer.close()
        await writer.wait_closed()

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await silent(reader, writer)  # the connection kept open, as http.server's keep-alive

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (silent, http)]
    closed = await asyncio.start_server(silent, "127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in [*servers, closed]]
    closed.close()
    await closed.wait_closed()
    addresses = [f"tcp://127.0.0.1:{port}" for port in ports]
    try:
        runs = await asyncio.gather(
            *(
                run_cli(
                    *["update", str(data), "--out-dir", str(tmp_path / f"out{n}"), "--shards"],
                    *["2", "--dask", address, "--tokens", str(tokens), "--no-progress"],
                    *["--base-url", "http://127.0.0.1:9"],
                    token=None,
                    limit=30,
                )
                for n, address in enumerate(addresses)
            )
        )
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    for address, ran in zip(addresses, runs, strict=True):
        assert ran.status == 2, ran.stderr
        assert f"no Dask scheduler answered at {address}" in ran.stderr
        assert "--out-dir" not in ran.stderr
        assert "Traceback" not in ran.stderr
        assert "never awaited" not in ran.stderr
        assert len(ran.stderr.splitlines()) == 1, ran.stderr
    assert "within 1s" in runs[0].stderr
    assert "does not speak Dask's protocol" in runs[1].stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shards", "2"], "--dask needs --out-dir DIR and --shards N"),
        (["--out-dir", "d"], "--dask needs --out-dir DIR and --shards N"),
        (["--out-dir", "d", "--shards", "2", "--out", "o.jsonl"], "not --out"),
        (["--out-dir", "d", "--shards", "2", "--shard", "0/2"], "--shard is for a run"),
        (["--out-dir", "d", "--shards", "2", "--state", "s.db"], "--state is for a run"),
        (["--out-dir", "d", "--shards", "2", "--dry-run"], "--dry-run is for a run"),
        (["--out-dir", "d", "--shards", "2", "--dask", "nowhere"], "neither a scheduler"),
        (["--out-dir", "d", "--shards", "2", "--dask", "local:0"], "N from 1 to 256"),
        (["--out-dir", "d", "--shards", "2", "-"], "cannot read standard input"),
    ],
)
def test_dask_options_that_do_not_go_together_are_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GROWTHHUB_TOKEN", OWN_TOKEN)
    data = write_jsonl(tmp_path / "in.jsonl", [{"contactId": "c1"}])
    words = ["update", "--dask", "local:1", *extra]
    if "-" not in extra:
        words.insert(1, str(data))
    assert main(words) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_shards_out_of_range_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["update", "in.jsonl", "--dask", "local", "--out-dir", "d", "--shards", "0"])
    assert exited.value.code == 2
    assert "from 1 to 10000" in capsys.readouterr().err


async def test_without_dask_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    """The core never imports Dask; --dask without it exits 2 naming the extra."""
    data = write_jsonl(tmp_path / "in.jsonl", [{"contactId": "c1"}])
    program = (
        "import sys\n"
        "sys.modules['distributed'] = None  # as if the extra were not installed\n"
        "from growthhub_async.cli import main\n"
        "import growthhub_async, growthhub_async.job\n"
        "assert 'dask' not in sys.modules, 'the core imported dask'\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        "update",
        str(data),
        "--dask",
        "local",
        "--out-dir",
        str(tmp_path / "d"),
        "--shards",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GROWTHHUB_TOKEN": OWN_TOKEN},
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 2, stderr
    assert "pip install 'growthhub-async[dask]'" in stderr.decode()


async def test_the_kubernetes_indexed_job_runs_one_shard_per_index(tmp_path: Path) -> None:
    """The manifest the README points at: an Indexed Job whose pod K runs --shard K/N, N the
    job's completions, each shard with its own journal on the shared volume. The pod's own
    shell command, run here against the sandbox (its /data and /secrets in a temporary
    folder), works on a fresh volume (no outcomes folder yet) and again as a retried pod;
    exit 1 (some records not updated) fails the index without retries, exit 2 is retried."""
    manifest = yaml.safe_load((ROOT / "deploy" / "k8s-indexed-job.yaml").read_text())
    assert manifest["kind"] == "Job"
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed"
    shards = spec["completions"]
    assert 1 <= spec["parallelism"] <= shards
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["sh", "-c"]
    [script] = container["args"]
    assert f'--shard "$JOB_COMPLETION_INDEX/{shards}"' in script
    assert f'--out "/data/outcomes/shard-$JOB_COMPLETION_INDEX-of-{shards}.jsonl"' in script
    assert "--resume" in script  # a pod restarted by the Job resumes its shard
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["GROWTHHUB_TOKEN"]["valueFrom"]  # never in the manifest
    assert spec["backoffLimitPerIndex"] >= 1
    # Exit 1 fails the index at once; exit 2 and crashes are retried; evictions not counted.
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    by_code = {
        code: rule["action"]
        for rule in rules
        if "onExitCodes" in rule
        for code in rule["onExitCodes"]["values"]
    }
    assert by_code == {1: "FailIndex"}
    assert all(
        r["onExitCodes"]["operator"] == "In" and r["onExitCodes"]["containerName"] == "growthhub"
        for r in rules
        if "onExitCodes" in r
    )
    # The pod's command on a fresh volume: paths moved into tmp_path, the sandbox's URL added.
    data, secrets = tmp_path / "data", tmp_path / "secrets"
    (data / "input").mkdir(parents=True)
    secrets.mkdir()
    rows = [f"c{loc}x{n},loc{loc},A" for loc in range(6) for n in range(3)]
    owner = shard_of("loc0", shards)
    (data / "input" / "export.csv").write_text(
        "contactId,locationId,firstName\n" + "\n".join(rows) + "\n,loc0,A\n"
    )
    tokens = secrets / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    tokens.chmod(0o400)
    local = script.replace("/data/", f"{data}/").replace("/secrets/", f"{secrets}/")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

    async def pod_runs(index: int, base_url: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            f"{local} --base-url {base_url}",
            env={**os.environ, "PATH": path, "JOB_COMPLETION_INDEX": str(index)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 60)

    async with run_sandbox(_config()) as sb:
        first = await pod_runs(owner, sb.base_url)  # no outcomes folder yet
        sent = sb.stats()["requests"]
        again = await pod_runs(owner, sb.base_url)  # the Job's retry of that pod
        resent = sb.stats()["requests"]
        zero = await pod_runs(0, sb.base_url)
    assert owner != 0
    assert (first, again) == (0, 0)
    journal = data / "outcomes" / journal_name(owner, shards)
    assert [line["status"] for line in journal_lines(journal)] == ["updated"] * 3
    assert sent == 3
    assert resent == sent  # the retry resumed: nothing sent again
    # Shard 0 holds the rejected line (the empty contactId): exit 1, which FailIndex stops.
    assert zero == 1
