"""Many locations in one run (issue 13): routing, tokens per location, side by side, per-location
budgets and stops, agency-minted tokens, and the promises attacked from outside."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from growthhub_async import GrowthHubClient, Record, Status, UpdateContact
from growthhub_async.auth import OAuthProvider
from growthhub_async.errors import ConfigurationError
from growthhub_async.events import Event, Paused, RateLimitHit, RecordFinished
from growthhub_async.journal import record_hash
from growthhub_async.locations import (
    AgencyTokens,
    LocationTokens,
    load_tokens_file,
    location_problem,
    shard_of,
)
from growthhub_async.models import UpdateContactCodec
from growthhub_async.outcomes import Outcome
from growthhub_async.retry import RetryPolicy
from growthhub_async.sandbox import Faults, SandboxConfig, run_sandbox
from growthhub_async.sandbox.oauth import OAuthConfig
from growthhub_async.sources import read_csv, read_jsonl
from growthhub_async.spill import Spill
from growthhub_async.state import SyncState
from tests.cli_helpers import (
    finish,
    journal_lines,
    run_cli,
    run_command,
    start_cli,
    wait_for_lines,
    write_jsonl,
)

FAST_RETRY = RetryPolicy(max_tries=4, max_time=10.0, base_delay=0.01, max_delay=0.05)
LOCATION_TOKENS = {f"tok-LOC{i}-SECRET-93ab71": f"loc{i}" for i in range(6)}
TOKENS = {loc: token for token, loc in LOCATION_TOKENS.items()}


def _config(**overrides: Any) -> SandboxConfig:
    options: dict[str, Any] = {
        "location_tokens": LOCATION_TOKENS,
        "rate_limit": 1_000_000,
        "rate_window": 1.0,
    }
    options.update(overrides)
    return SandboxConfig(**options)


async def _collect(stream: Any) -> list[Outcome]:
    async with stream:
        return [o async for o in stream]


# -- input: locationId routes, never in the body ------------------------------------------------


def test_location_id_routes_the_record_and_is_never_in_the_body() -> None:
    jsonl = (
        b'{"contactId":"c1","locationId":"locA","firstName":"A"}\n'
        b'{"contactId":"c2","firstName":"B"}\n'
    )
    records = list(read_jsonl(io.BytesIO(jsonl)))
    assert [r.token_key for r in records if isinstance(r, Record)] == ["locA", None]
    csv = b"contactId,locationId,firstName\nc1,locA,A\nc2,,B\n"
    rows = list(read_csv(io.BytesIO(csv)))
    assert [r.token_key for r in rows if isinstance(r, Record)] == ["locA", None]
    for record in (*records, *rows):
        assert isinstance(record, Record)
        assert "locationId" not in json.dumps(record.update.__struct_fields__)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ('""', "locationId is empty"),
        ("42", "must be a string, not int"),
        ("null", "must be a string, not null"),
        ('["locA"]', "must be a string, not array"),
        ('"' + "L" * 5000 + '"', "5000 characters long"),
        ('"loc/../A"', "contains '/'"),
        ('"loc\\u00e9"', "contains 'é'"),
        ('"default"', "is reserved"),
    ],
)
def test_a_bad_location_id_rejects_its_line_naming_the_field(value: str, why: str) -> None:
    line = f'{{"contactId":"c1","locationId":{value},"firstName":"A"}}\n'.encode()
    [item] = list(read_jsonl(io.BytesIO(line)))
    assert isinstance(item, Outcome)
    assert item.status is Status.REJECTED
    assert item.error is not None
    assert item.error.startswith("line 1: ")
    assert why in item.error
    assert "locationId" in item.error


def test_location_problem_accepts_api_ids() -> None:
    assert location_problem("ve9EPM428h8vShlRW1KT") is None
    assert location_problem("sub_account-1") is None
    assert location_problem(" locA") is not None


def test_the_shard_hash_is_stable_and_every_location_has_one_shard() -> None:
    # Fixed values: the same on every machine and Python version (BLAKE2b, not hash()).
    known = {loc: shard_of(loc, 7) for loc in ("locA", "locB", "ve9EPM428h8vShlRW1KT")}
    assert known == {"locA": 2, "locB": 5, "ve9EPM428h8vShlRW1KT": 5}
    assert shard_of("ve9EPM428h8vShlRW1KT", 1000) == 390
    counts = [0] * 8
    for i in range(8000):
        counts[shard_of(f"loc{i}", 8)] += 1
    assert all(800 < c < 1200 for c in counts)  # spread, not clustered
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("locA", 0)


# -- the tokens file ----------------------------------------------------------------------------


def _tokens_file(tmp_path: Path, data: Any, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    path.chmod(mode)
    return path


def test_a_tokens_file_readable_by_others_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = _tokens_file(tmp_path, TOKENS, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600") as caught:
        load_tokens_file(path)
    assert not any(token in str(caught.value) for token in LOCATION_TOKENS)
    assert load_tokens_file(path, allow_readable=True) == TOKENS


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"locA": 12345}, "'locA' must be a token"),
        ({"locA": None}, "'locA' must be a token"),
        ({"locA": ""}, "'locA' is empty"),
        ({"locA": "tok with space"}, "'locA' is empty or holds whitespace"),
        ({"": "tok-SECRET-1"}, "locationId is empty"),
        ({"L" * 300: "tok-SECRET-1"}, "300 characters long"),
        ({"default": "tok-SECRET-1"}, "is reserved"),
        ({"locA": {"oauthFile": 3}}, "'locA' must be a token"),
        (["tok-SECRET-1"], "must hold a JSON object"),
        ({}, "names no location"),
        ('{"locA": "tok-SECRET-1"', "is not valid JSON"),
    ],
)
def test_a_bad_tokens_entry_names_the_location_never_the_value(
    tmp_path: Path, data: Any, why: str
) -> None:
    path = _tokens_file(tmp_path, data)
    with pytest.raises(ConfigurationError) as caught:
        load_tokens_file(path)
    assert why in str(caught.value)
    assert "tok-SECRET-1" not in str(caught.value)
    assert "tok with space" not in str(caught.value)


def test_a_tokens_entry_may_be_an_oauth_token_file(tmp_path: Path) -> None:
    oauth = tmp_path / "locB.json"
    oauth.write_text(json.dumps({"client_id": "c", "client_secret": "s", "refresh_token": "r"}))
    oauth.chmod(0o600)
    tokens = load_tokens_file(
        _tokens_file(tmp_path, {"locA": "t", "locB": {"oauthFile": "locB.json"}})
    )
    assert tokens["locA"] == "t"
    assert isinstance(tokens["locB"], OAuthProvider)


# -- the spill file -----------------------------------------------------------------------------


def test_the_spill_keeps_each_keys_order_whatever_the_interleaving(tmp_path: Path) -> None:
    rng = random.Random(3)
    spill = Spill(str(tmp_path), chunk_bytes=256, buffered_bytes=1024)
    expected: dict[str, list[bytes]] = {}
    got: dict[str, list[bytes]] = {}
    for n in range(3000):
        key = f"k{rng.randrange(40)}"
        payload = f"{key}:{n}:".encode() + b"x" * rng.choice((0, 5, 700, 3000))
        spill.push(key, payload)
        expected.setdefault(key, []).append(payload)
        if rng.random() < 0.3:  # reads interleaved with writes, buffer and file both
            other = f"k{rng.randrange(40)}"
            if (item := spill.pop(other)) is not None:
                got.setdefault(other, []).append(item)
    for key in list(expected):
        while (item := spill.pop(key)) is not None:
            got.setdefault(key, []).append(item)
    assert got == expected
    assert spill.total == 0
    assert spill.written > 0
    assert os.listdir(tmp_path) == []  # unlinked: no name to leak, nothing left behind
    spill.close()


# -- side by side -------------------------------------------------------------------------------


async def test_sorted_input_runs_side_by_side_and_a_tiny_location_is_not_starved() -> None:
    """A huge location first in the file and a tiny one last: the tiny one is done long before
    the huge one, though the reader meets its records only after all of the huge one's."""
    order: list[str] = []

    def hook(event: Event) -> None:
        if isinstance(event, RecordFinished) and event.token_key:
            order.append(event.token_key)

    records = [
        Record(n + 1, f"huge{n}", UpdateContact(first_name="h"), token_key="loc0")
        for n in range(300)
    ]
    records += [
        Record(301 + n, f"tiny{n}", UpdateContact(first_name="t"), token_key="loc1")
        for n in range(5)
    ]
    async with (
        run_sandbox(_config(rate_limit=30, rate_window=0.3)) as sb,
        GrowthHubClient(
            tokens=TOKENS, base_url=sb.base_url, rate="30/0.3s", max_pending=8, hooks=[hook]
        ) as gh,
    ):
        outcomes = await _collect(gh.update_contacts(records, max_held=10))
        assert sb.stats()["rateLimited"] == 0
    assert len(outcomes) == 305
    assert all(o.status is Status.UPDATED for o in outcomes)
    last_tiny = max(i for i, key in enumerate(order) if key == "loc1")
    assert last_tiny < 100, last_tiny  # the huge one had 200+ records left


async def test_spilled_records_keep_their_contacts_order(tmp_path: Path) -> None:
    """Records that went through the spill file are applied per contact in input order."""
    records = []
    for n in range(400):
        loc = n // 100  # sorted by location
        records.append(
            Record(n + 1, f"c{loc}x{n % 7}", UpdateContact(first_name=f"v{n}"), f"loc{loc}")
        )
    async with (
        run_sandbox(_config()) as sb,
        GrowthHubClient(tokens=TOKENS, base_url=sb.base_url, rate=None, max_pending=3) as gh,
    ):
        stream = gh.update_contacts(records, max_held=4, spill_dir=str(tmp_path))
        outcomes = await _collect(stream)
        history = sb.history
    assert sorted(o.line for o in outcomes) == list(range(1, 401))
    assert all(o.status is Status.UPDATED for o in outcomes)
    for contact, bodies in history.items():
        sent = [int(b["firstName"][1:]) for b in bodies]
        assert sent == sorted(sent), contact
    assert os.listdir(tmp_path) == []


async def test_a_record_whose_location_has_no_token_is_rejected_and_never_sent() -> None:
    async with (
        run_sandbox(_config()) as sb,
        GrowthHubClient(
            base_url=sb.base_url, rate=None, locations=LocationTokens({"loc0": TOKENS["loc0"]})
        ) as gh,
    ):
        outcomes = await _collect(
            gh.update_contacts(
                [
                    Record(1, "a1", UpdateContact(first_name="a"), "loc0"),
                    Record(2, "b1", UpdateContact(first_name="b"), "loc1"),
                    Record(3, "n1", UpdateContact(first_name="n")),
                ]
            )
        )
        requests = sb.stats()["requests"]
    by_line = {o.line: o for o in outcomes}
    assert by_line[1].status is Status.UPDATED
    assert by_line[2].status is Status.REJECTED
    assert "location 'loc1' has no token" in (by_line[2].error or "")
    assert by_line[3].status is Status.REJECTED  # no location and no run token
    assert requests == 1


async def test_another_locations_contact_gets_403_which_stops_only_that_location() -> None:
    seeded = {f"b{i}": {"locationId": "loc1"} for i in range(5)}
    records = [Record(i + 1, f"b{i}", UpdateContact(first_name="x"), "loc0") for i in range(5)]
    records += [Record(10 + i, f"b{i}", UpdateContact(first_name="y"), "loc1") for i in range(5)]
    async with (
        run_sandbox(_config(contacts=seeded)) as sb,
        GrowthHubClient(tokens=TOKENS, base_url=sb.base_url, rate=None, concurrency=1) as gh,
    ):
        outcomes = await _collect(gh.update_contacts(records))
        forbidden = sb.stats()["byStatus"].get("403", 0)
    wrong = [o for o in outcomes if o.line < 10]
    right = [o for o in outcomes if o.line >= 10]
    assert all(o.status is Status.UNAUTHORIZED for o in wrong)
    assert any("does not have access to this location" in (o.error or "") for o in wrong)
    assert forbidden == 1  # the location stopped at the first 403: no storm
    assert all(o.status is Status.UPDATED for o in right)


async def test_one_locations_daily_budget_ends_only_that_location() -> None:
    records = [Record(n + 1, f"a{n}", UpdateContact(first_name="a"), "loc0") for n in range(30)]
    records += [Record(100 + n, f"b{n}", UpdateContact(first_name="b"), "loc1") for n in range(8)]
    async with (
        run_sandbox(_config(daily_limit=10)) as sb,
        GrowthHubClient(tokens=TOKENS, base_url=sb.base_url, rate=None, concurrency=1) as gh,
    ):
        # loc1 spends 2 of its own 10 first, so it is far from its own limit.
        await gh.update_contact("warm1", UpdateContact(first_name="w"), token_key="loc1")
        outcomes = await _collect(gh.update_contacts(records))
    loc0 = [o for o in outcomes if o.line <= 30]
    loc1 = [o for o in outcomes if o.line >= 100]
    assert sum(o.status is Status.UPDATED for o in loc0) == 10
    assert all(o.error == "daily limit reached" for o in loc0 if o.status is not Status.UPDATED)
    assert all(o.status is Status.UPDATED for o in loc1)


# -- agency tokens ------------------------------------------------------------------------------


def _agency_file(tmp_path: Path, refresh: str = "agency-refresh-1") -> Path:
    path = tmp_path / "agency.json"
    path.write_text(
        json.dumps(
            {
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
                "refresh_token": refresh,
                "user_type": "Company",
                "company_id": "sandboxCompany00000001",
            }
        )
    )
    path.chmod(0o600)
    return path


def _agency_config(**oauth: Any) -> SandboxConfig:
    options: dict[str, Any] = {
        "user_type": "Company",
        "refresh_tokens": frozenset({"agency-refresh-1"}),
    }
    options.update(oauth)
    return _config(oauth=OAuthConfig(**options))


async def test_agency_tokens_are_minted_once_per_location_and_the_rotation_is_saved(
    tmp_path: Path,
) -> None:
    path = _agency_file(tmp_path)
    records = [
        Record(n + 1, f"m{n}", UpdateContact(first_name="m"), f"loc{n % 4}") for n in range(80)
    ]
    async with run_sandbox(_agency_config()) as sb:
        agency = AgencyTokens.from_file(path)
        async with GrowthHubClient(
            base_url=sb.base_url, rate=None, locations=LocationTokens(agency=agency)
        ) as gh:
            outcomes = await _collect(gh.update_contacts(records))
        assert sb.oauth is not None
        stats = sb.oauth.stats()
        live = set(sb.oauth.refresh_tokens)
        contacts = sb.contacts
    assert all(o.status is Status.UPDATED for o in outcomes)
    assert stats["refreshes"] == 1  # the agency token, once for every location
    assert stats["mints"] == 4  # one per location, however many records asked at once
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] in live  # persisted: the next run can refresh
    assert {contacts[f"m{n}"]["locationId"] for n in range(4)} == {f"loc{n}" for n in range(4)}


async def test_a_401_mid_run_for_one_location_mints_that_location_again(tmp_path: Path) -> None:
    path = _agency_file(tmp_path)
    statuses: list[tuple[str | None, int | None]] = []
    revoked = asyncio.Event()
    forget: list[Any] = []

    async def records() -> AsyncIterator[Record]:
        for n in range(60):
            if n == 30:
                await revoked.wait()  # the rest once loc1's token is gone on the server
            yield Record(n + 1, f"r{n}", UpdateContact(first_name="r"), f"loc{n % 3}")

    def hook(event: Event) -> None:
        if isinstance(event, RecordFinished):
            statuses.append((event.token_key, event.outcome.http_status))
            if len(statuses) == 30 and forget:
                forget[0]()  # as an expiry or a revocation on the server would
                revoked.set()

    async with run_sandbox(_agency_config()) as sb:
        assert sb.oauth is not None
        oauth = sb.oauth

        def revoke() -> None:
            for token, issued in list(oauth.access.items()):
                if issued.location == "loc1":
                    del oauth.access[token]

        forget.append(revoke)
        async with GrowthHubClient(
            base_url=sb.base_url,
            rate=None,
            hooks=[hook],
            locations=LocationTokens(agency=AgencyTokens.from_file(path)),
        ) as gh:
            outcomes = await _collect(gh.update_contacts(records(), side_by_side=True))
        mints = oauth.stats()["mints"]
        refused = sb.stats()["byStatus"].get("401", 0)
    assert all(o.status is Status.UPDATED for o in outcomes), outcomes
    assert refused >= 1
    assert mints == 4  # three first mints, then loc1 once more
    assert len(outcomes) == 60


async def test_a_location_token_endpoint_that_fails_then_answers_is_tried_again(
    tmp_path: Path,
) -> None:
    """An adversarial server: the mint answers 500, then 200; PUTs need the minted token."""
    mints: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "access_token": "agency-ACCESS-1",
                "refresh_token": "agency-refresh-2",
                "expires_in": 3600,
                "userType": "Company",
            }
        )

    async def location_token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        assert request.headers["Authorization"] == "Bearer agency-ACCESS-1"
        mints.append({k: str(v) for k, v in form.items()})
        if len(mints) == 1:
            return web.Response(status=500, text="<html>upstream error</html>")
        return web.json_response(
            {"access_token": f"loc-{form['locationId']}-TOKEN", "expires_in": 3600}
        )

    async def put(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer loc-locA-TOKEN":
            return web.json_response({"statusCode": 401, "message": "Invalid JWT"}, status=401)
        cid = request.match_info["cid"]
        return web.json_response({"succeded": True, "contact": {"id": cid}})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/oauth/locationToken", location_token)
    app.router.add_put("/contacts/{cid}", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        agency = AgencyTokens.from_file(_agency_file(tmp_path), retry=FAST_RETRY)
        async with GrowthHubClient(
            base_url=f"http://127.0.0.1:{port}", rate=None, locations=LocationTokens(agency=agency)
        ) as gh:
            outcomes = await _collect(
                gh.update_contacts(
                    [
                        Record(n + 1, f"x{n}", UpdateContact(first_name="x"), "locA")
                        for n in range(5)
                    ]
                )
            )
    finally:
        await runner.cleanup()
    assert all(o.status is Status.UPDATED for o in outcomes)
    assert len(mints) == 2
    assert mints[-1] == {"companyId": "sandboxCompany00000001", "locationId": "locA"}


async def test_a_location_the_agency_cannot_mint_for_ends_unauthorized_naming_it(
    tmp_path: Path,
) -> None:
    path = _agency_file(tmp_path)
    records = [
        Record(n + 1, f"z{n}", UpdateContact(first_name="z"), f"loc{n % 2}") for n in range(6)
    ]
    async with (
        run_sandbox(_agency_config(locations=frozenset({"loc0"}))) as sb,
        GrowthHubClient(
            base_url=sb.base_url,
            rate=None,
            locations=LocationTokens(agency=AgencyTokens.from_file(path)),
        ) as gh,
    ):
        outcomes = await _collect(gh.update_contacts(records))
    for o in outcomes:
        if o.contact_id in ("z0", "z2", "z4"):
            assert o.status is Status.UPDATED
        else:
            assert o.status is Status.UNAUTHORIZED
            assert "location loc1" in (o.error or "")
            assert "not installed" in (o.error or "")


# -- the command line ---------------------------------------------------------------------------


async def test_the_command_runs_many_locations_with_a_table_and_never_prints_a_token(
    tmp_path: Path,
) -> None:
    tokens = _tokens_file(tmp_path, {k: v for k, v in TOKENS.items() if k != "loc5"})
    rows = [
        {"contactId": f"c{loc}x{n}", "locationId": f"loc{loc}", "firstName": "A"}
        for loc in range(6)
        for n in range(6)
    ]  # sorted by location; loc5 has no token
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    async with run_sandbox(_config(rate_limit=20, rate_window=0.5)) as sb:
        args = [
            "update",
            "-",
            "--out",
            str(out),
            "--base-url",
            sb.base_url,
            "--rate",
            "20/0.5s",
            "--tokens",
            str(tokens),
            "--no-progress",
        ]
        ran = await run_cli(*args, token=None, data=data.read_bytes())
        again = await run_cli(*args, "--resume", token=None, data=data.read_bytes())
        requests = sb.stats()["requests"]
    assert ran.status == 1, ran.stderr
    assert "by location:" in ran.stdout
    assert "loc0" in ran.stdout
    assert "updated/s" in ran.stdout
    lines = journal_lines(out)
    statuses = {line["contactId"]: line["status"] for line in lines}
    assert all(statuses[f"c{loc}x{n}"] == "updated" for loc in range(5) for n in range(6))
    assert all(statuses[f"c5x{n}"] == "rejected" for n in range(6))
    assert any("location 'loc5' has no token" in (line["error"] or "") for line in lines)
    assert requests == 30  # the resume sent nothing again: every sent record was final
    assert again.status == 1
    text = ran.stdout + ran.stderr + again.stdout + again.stderr + out.read_text()
    assert not any(token in text for token in LOCATION_TOKENS)


async def test_the_command_refuses_a_tokens_file_others_can_read(tmp_path: Path) -> None:
    tokens = _tokens_file(tmp_path, TOKENS, 0o640)
    data = write_jsonl(tmp_path / "in.jsonl", [{"contactId": "c1", "locationId": "loc0"}])
    args = [
        "update",
        str(data),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--base-url",
        "http://127.0.0.1:9",
        "--tokens",
        str(tokens),
        "--no-progress",
    ]
    ran = await run_cli(*args, token=None)
    assert ran.status == 2
    assert "chmod 600" in ran.stderr
    assert not any(token in ran.stderr + ran.stdout for token in LOCATION_TOKENS)


async def test_a_location_stopped_while_its_records_wait_for_budget_ends_them_all() -> None:
    """A 403 stops a location whose other records wait for its budget (3 per second): each
    ends at once, none waits forever for a slot that a record never sent still held."""
    seeded = {f"s{i}": {"locationId": "loc1"} for i in range(12)}
    records = [Record(i + 1, f"s{i}", UpdateContact(first_name="x"), "loc0") for i in range(12)]
    async with (
        run_sandbox(_config(contacts=seeded, rate_limit=3, rate_window=1.0)) as sb,
        GrowthHubClient(tokens=TOKENS, base_url=sb.base_url, rate="3/1s") as gh,
    ):
        async with asyncio.timeout(10):
            outcomes = await _collect(gh.update_contacts(records))
        sent = sb.stats()["requests"]
    assert len(outcomes) == 12
    assert all(o.status is Status.UNAUTHORIZED for o in outcomes)
    assert sent <= 3


# -- shards (item 5) ----------------------------------------------------------------------------


async def test_shards_split_the_locations_and_each_resumes_on_its_own(tmp_path: Path) -> None:
    tokens = _tokens_file(tmp_path, TOKENS)
    rows: list[dict[str, Any]] = [
        {"contactId": f"k{loc}x{n}", "locationId": f"loc{loc}", "firstName": "A"}
        for loc in range(6)
        for n in range(3)
    ]
    rows += [{"contactId": "nolocation1", "firstName": "A"}, {"contactId": "bad", "gender": "x"}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    journals = {}
    async with run_sandbox(_config()) as sb:
        for k in range(2):
            out = tmp_path / f"shard{k}.jsonl"
            args = [
                "update",
                str(data),
                "--out",
                str(out),
                "--base-url",
                sb.base_url,
                "--tokens",
                str(tokens),
                "--shard",
                f"{k}/2",
                "--no-progress",
            ]
            ran = await run_cli(*args, token="tok-LOC0-SECRET-93ab71")
            assert f"shard {k}/2: " in ran.stdout, ran.stderr
            again = await run_cli(*args, "--resume", token="tok-LOC0-SECRET-93ab71")
            assert "skipped" in again.stdout
            journals[k] = {line["contactId"]: line for line in journal_lines(out)}
        requests = sb.stats()["requests"]
    assert requests == 6 * 3 + 1  # each record once, over both shards and both resumes
    assert not set(journals[0]) & set(journals[1])
    assert len(journals[0]) + len(journals[1]) == len(rows)
    for loc in range(6):
        owner = shard_of(f"loc{loc}", 2)
        assert all(f"k{loc}x{n}" in journals[owner] for n in range(3))
    assert "nolocation1" in journals[0]  # no location: shard 0
    assert any(line["status"] == "rejected" for line in journals[0].values())


async def test_a_shard_that_draws_no_record_says_so_rather_than_calling_the_input_empty(
    tmp_path: Path,
) -> None:
    """A shard whose hash drew none of the file's locations has nothing to send: it exits 0
    saying the records belong to other shards, not that the input holds none (it did)."""
    tokens = _tokens_file(tmp_path, TOKENS)
    owner = shard_of("loc0", 2)
    rows = [{"contactId": f"k0x{n}", "locationId": "loc0", "firstName": "A"} for n in range(3)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    async with run_sandbox(_config()) as sb:
        ran = await run_cli(
            "update",
            str(data),
            "--out",
            str(tmp_path / "other.jsonl"),
            "--base-url",
            sb.base_url,
            "--tokens",
            str(tokens),
            "--shard",
            f"{1 - owner}/2",
            "--no-progress",
            token=None,
        )
        assert sb.stats()["requests"] == 0
    assert ran.status == 0, ran.stderr
    assert "holds no records" not in ran.stderr
    assert f"all 3 records of {data} belong to other shards than {1 - owner}/2" in ran.stderr


@pytest.mark.parametrize("bad", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
async def test_a_shard_outside_its_range_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"contactId": "c1"}])
    ran = await run_cli(
        "update", str(data), "--out", str(tmp_path / "o.jsonl"), f"--shard={bad}", token=None
    )
    assert ran.status == 2
    assert "K/N" in ran.stderr


async def test_sigterm_sends_nothing_more_from_the_spill_and_the_resume_finishes(
    tmp_path: Path,
) -> None:
    """Stopped mid-run, a side-by-side run sends no spilled record; the journal holds exactly
    what was sent; the printed resume command sends the rest, each contact once in all."""
    tokens = _tokens_file(tmp_path, TOKENS)
    rows = [
        {"contactId": f"t{loc}x{n}", "locationId": f"loc{loc}", "firstName": "A"}
        for loc in range(3)
        for n in range(200)
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    async with run_sandbox(_config(rate_limit=100, rate_window=1.0)) as sb:
        args = [
            "update",
            str(data),
            "--out",
            str(out),
            "--base-url",
            sb.base_url,
            "--rate",
            "100/1s",
            "--concurrency",
            "4",
            "--tokens",
            str(tokens),
            "--no-progress",
        ]
        proc = await start_cli(*args, token=None)
        await wait_for_lines(out, 30, proc)
        proc.send_signal(signal.SIGTERM)
        ran = await finish(proc, limit=15)
        first = journal_lines(out)
        sent_before = sb.stats()["requests"]
        resume_line = ran.stderr.split("to resume, run:\n", 1)[1].splitlines()[0].strip()
        assert "--tokens" in resume_line
        again = await run_command(resume_line, token=None, limit=30)
        writes = dict(sb.stats()["writes"])
    assert ran.status == 1
    assert 30 <= len(first) < 600
    sent = [o for o in first if o["attempts"]]
    assert len(sent) == sent_before  # nothing sent without its outcome line
    assert all(o["status"] == "updated" for o in sent)
    # Held in memory, not sent: "cancelled" (stop()); those in the spill file: no line at all.
    assert all((o["status"], o["error"]) == ("failed", "cancelled") for o in first if o not in sent)
    assert again.status == 0, again.stderr
    assert {o["contactId"] for o in journal_lines(out)} == {r["contactId"] for r in rows}
    assert len(writes) == 600
    assert set(writes.values()) == {1}  # each contact once, over both runs


async def test_a_429_pauses_only_its_own_location() -> None:
    """Someone else spends loc0's budget: loc0 meets 429s and pauses; loc1 never waits."""
    events: list[Event] = []
    records = [
        Record(n + 1, f"p{n}", UpdateContact(first_name="p"), f"loc{n % 2}") for n in range(20)
    ]
    async with (
        run_sandbox(_config(rate_limit=10, rate_window=1.0)) as sb,
        GrowthHubClient(
            tokens=TOKENS, base_url=sb.base_url, rate="10/1s", hooks=[events.append]
        ) as gh,
        GrowthHubClient(tokens={"loc0": TOKENS["loc0"]}, base_url=sb.base_url, rate=None) as other,
    ):
        for n in range(10):  # another program spends loc0's whole window
            await other.update_contact(f"o{n}", UpdateContact(first_name="o"), token_key="loc0")
        outcomes = await _collect(gh.update_contacts(records))
    assert all(o.status is Status.UPDATED for o in outcomes)
    limited = {e.token_key for e in events if isinstance(e, RateLimitHit)}
    paused = {e.token_key for e in events if isinstance(e, Paused)}
    assert limited == {"loc0"}
    assert paused == {"loc0"}


async def test_state_keys_by_location_and_journal_hashes_are_the_records(tmp_path: Path) -> None:
    """Issues 13 + 14: the state keeps (locationId, contactId); the resume key on each outcome
    is the input record's, also for a record the state judged ``unchanged`` and one sent with
    its changed fields only (the engine then sends, and would hash, less than the record)."""
    events: list[Event] = []
    encode = UpdateContactCodec("field_value").encode
    path = tmp_path / "s.db"

    def records(name: str) -> list[Record]:
        return [
            Record(1, "c0", UpdateContact(first_name="A", last_name="L"), "loc0"),
            Record(2, "c1", UpdateContact(first_name=name, last_name="L"), "loc1"),
        ]

    async with run_sandbox(_config()) as sb:
        for run in (records("A"), records("A"), records("B")):
            events.clear()
            async with GrowthHubClient(tokens=TOKENS, base_url=sb.base_url, state=path) as gh:
                stream = gh.update_contacts(
                    run, hooks=[events.append], record_hashes=True, changed_fields_only=True
                )
                statuses = {o.line: o.status async for o in stream}
            finished = {e.outcome.line: e for e in events if isinstance(e, RecordFinished)}
            assert {line: e.record_hash for line, e in finished.items()} == {
                r.line: record_hash(r, encode) for r in run
            }
        history = sb.history
    # Third run: loc0's contact unchanged, loc1's sent with only its changed field.
    assert statuses == {1: Status.UNCHANGED, 2: Status.UPDATED}
    assert history["c1"][-1] == {"firstName": "B"}
    assert len(history["c0"]) == 1
    async with SyncState(path, readonly=True) as state:
        stats = await state.stats()
    assert sorted((loc.location, loc.contacts) for loc in stats.locations) == [
        ("loc0", 1),
        ("loc1", 1),
    ]


# -- file descriptors: a pool within what the process may open ------------------------------

_FD_CLIENT = r"""
import asyncio, collections, json, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[3]), hard))
from growthhub_async import GrowthHubClient, Record, UpdateContact
from growthhub_async.locations import LocationTokens
from growthhub_async.retry import RetryPolicy

async def main(base_url, tokens):
    retry = RetryPolicy(max_tries=2, max_time=30.0, base_delay=0.01, max_delay=0.05)
    async with GrowthHubClient(
        base_url=base_url, rate=None, locations=LocationTokens(tokens), retry=retry
    ) as gh:
        records = [Record(n + 1, f"fd{n:06d}", UpdateContact(first_name="A"), token_key=key)
                   for n, key in enumerate(tokens)]
        async with gh.update_contacts(records) as stream:
            outcomes = [o async for o in stream]
    counts = collections.Counter((o.status.value, o.attempts) for o in outcomes)
    print(json.dumps({f"{s}/{a}": n for (s, a), n in counts.items()}))

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


async def test_many_slow_locations_wait_for_a_connection_within_the_open_files_limit() -> None:
    # 240 locations answering slowly, in a process that may open 96 files: 240 connections at
    # once would be "Too many open files" (a ConnectionFailed, an attempt spent). The pool keeps
    # to half the limit, so every record is one request, updated.
    tokens = {f"fdloc{n:03d}": f"tok-fd-{n:03d}" for n in range(240)}
    config = SandboxConfig(
        location_tokens={token: loc for loc, token in tokens.items()},
        rate_limit=1_000_000,
        rate_window=1.0,
        faults=Faults(latency=0.2),
    )
    async with run_sandbox(config) as sb:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _FD_CLIENT, sb.base_url, json.dumps(tokens), "96",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert json.loads(out) == {"updated/1": 240}


def test_the_command_raises_its_open_files_limit_to_the_hard_limit() -> None:
    code = (
        "import resource\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "from growthhub_async.cli import raise_open_files_limit\n"
        "raise_open_files_limit()\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    soft, hard = map(int, out.split())
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    assert soft == max(64, wanted)
