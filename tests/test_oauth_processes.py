"""OAuth token files under real processes, real permissions and real locks (issue 18, 2 and 5).

- The token file's directory is read-only when the rotation comes (and then the file too, and
  then every other place): the rotation is rewritten in place, or rescued to a file the
  command names with the ``mv`` that puts it back, or, with nowhere to write, never used.
- Two processes share one token file and both need a refresh: one refreshes, the other takes
  its rotation; no ``invalid_grant``, every record updated.

Permissions do not bind root, so under root each child process drops the capabilities that
bypass them (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, ``CAP_FOWNER``) before it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

from tests.cli_helpers import journal_lines, write_jsonl
from tests.oauth_server import OAuthServer, serve, token_file_data

# Run first in each child: drop the capabilities that let root ignore file permissions.
UNPRIVILEGED = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    drop = (1 << 1) | (1 << 2) | (1 << 3)
    data[0].effective &= ~drop
    data[0].permitted &= ~drop
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
from growthhub_async.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", UNPRIVILEGED, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


def setup(tmp_path: Path, records: int = 20) -> tuple[Path, Path, dict[str, str]]:
    folder = tmp_path / "tokens"
    folder.mkdir()
    path = folder / "oauth.json"
    path.write_text(json.dumps(token_file_data()))
    path.chmod(0o600)
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [{"contactId": f"c{n:03d}", "firstName": "Ada"} for n in range(records)])
    env = {k: v for k, v in os.environ.items() if k != "GROWTHHUB_TOKEN"}
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    env |= {"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    return path, source, env


def update_args(server: OAuthServer, source: Path, out: Path, path: Path) -> list[str]:
    return [
        "update", str(source), "--out", str(out), "--oauth", str(path),
        "--base-url", server.url, "--rate", "1000/1s", "--no-progress",
    ]  # fmt: skip


async def test_a_read_only_directory_gets_the_rotation_written_in_place(tmp_path: Path) -> None:
    path, source, env = setup(tmp_path)
    path.parent.chmod(0o500)  # read-only directory; the file itself is still writable
    try:
        async with serve(OAuthServer()) as server:
            out = tmp_path / "out.jsonl"
            status, output = await run_cli(*update_args(server, source, out, path), env=env)
            live = server.live_refresh_token()
    finally:
        path.parent.chmod(0o700)
    assert status == 0, output
    assert {line["status"] for line in journal_lines(out)} == {"updated"}
    assert json.loads(path.read_text())["refresh_token"] == live
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "rewritten in place" in output
    assert os.listdir(path.parent) == ["oauth.json"]


async def test_a_rotation_that_cannot_reach_the_file_is_rescued_and_the_user_told_how(
    tmp_path: Path,
) -> None:
    path, source, env = setup(tmp_path)
    path.chmod(0o400)
    path.parent.chmod(0o500)  # neither the directory nor the file can take it
    try:
        async with serve(OAuthServer()) as server:
            out = tmp_path / "out.jsonl"
            status, output = await run_cli(*update_args(server, source, out, path), env=env)
            live = server.live_refresh_token()
            assert server.token_statuses == [200]
            # The rescue holds the only valid refresh token, so sending went on.
            assert status == 0, output
            [rescued] = list((tmp_path / "home").iterdir())
            assert stat.S_IMODE(rescued.stat().st_mode) == 0o600
            assert json.loads(rescued.read_text())["refresh_token"] == live
            assert f"mv {rescued} {path}" in output
            assert "reinstalled" in output
            # The user does what the message says; the next run refreshes with it.
            path.parent.chmod(0o700)
            path.chmod(0o600)
            rescued.replace(path)
            server.access.clear()  # the access tokens expired meanwhile
            out2 = tmp_path / "out2.jsonl"
            status, output = await run_cli(*update_args(server, source, out2, path), env=env)
            assert status == 0, output
            assert server.token_statuses == [200, 200]
    finally:
        path.parent.chmod(0o700)


async def test_with_nowhere_to_save_the_rotation_the_new_token_is_never_used(
    tmp_path: Path,
) -> None:
    path, source, env = setup(tmp_path)
    for folder in (path.parent, tmp_path / "home", tmp_path / "tmp"):
        folder.chmod(0o500)
    path.chmod(0o400)
    try:
        async with serve(OAuthServer()) as server:
            out = tmp_path / "out.jsonl"
            status, output = await run_cli(*update_args(server, source, out, path), env=env)
            assert server.token_statuses == [200]
            assert 200 not in server.put_statuses  # the unsaved token was never sent
    finally:
        for folder in (path.parent, tmp_path / "home", tmp_path / "tmp"):
            folder.chmod(0o700)
    assert status == 1
    lines = journal_lines(out)
    assert {line["status"] for line in lines} == {"unauthorized"}
    assert "could not be saved" in lines[0]["error"]
    assert "check the OAuth token file" in output  # not "check GROWTHHUB_TOKEN"
    assert "GROWTHHUB_TOKEN" not in output


async def test_two_processes_sharing_one_token_file_both_finish(tmp_path: Path) -> None:
    path, source, env = setup(tmp_path, records=200)
    async with serve(OAuthServer()) as server:
        outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
        results = await asyncio.gather(
            *(run_cli(*update_args(server, source, out, path), env=env) for out in outs)
        )
        assert [status for status, _ in results] == [0, 0], results
        assert server.token_statuses == [200]  # one refresh; the other took its rotation
        assert json.loads(path.read_text())["refresh_token"] == server.live_refresh_token()
    for out in outs:
        assert {line["status"] for line in journal_lines(out)} == {"updated"}


async def test_the_command_line_journals_and_prints_no_echoed_secret(tmp_path: Path) -> None:
    path, source, env = setup(tmp_path, records=50)
    secrets = [token_file_data()[k] for k in ("client_secret", "refresh_token", "access_token")]
    async with serve(OAuthServer(refresh_tokens={"not-yours-rt"}, echo_form=True)) as server:
        out = tmp_path / "out.jsonl"
        status, output = await run_cli(*update_args(server, source, out, path), env=env)
        assert server.token_statuses == [400]
    pit = "pit+Echo/Me==42"
    async with serve(OAuthServer(echo_authorization=True)) as server:
        out2 = tmp_path / "out2.jsonl"
        args = update_args(server, source, out2, path)
        args = args[: args.index("--oauth")] + args[args.index("--oauth") + 2 :]
        status2, output2 = await run_cli(*args, env=env | {"GROWTHHUB_TOKEN": pit})
    assert (status, status2) == (1, 1)
    lines = journal_lines(out) + journal_lines(out2)
    assert len(lines) == 100
    assert {line["status"] for line in lines} == {"unauthorized"}
    for journal in (out, out2):  # the server's echo is there, redacted
        assert any("<redacted>" in line["error"] for line in journal_lines(journal))
    shown = output + output2 + out.read_text() + out2.read_text()
    for secret in [*secrets, pit]:
        for form in (secret, quote(secret, safe=""), quote_plus(secret)):
            assert form not in shown
