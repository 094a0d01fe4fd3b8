"""A Ctrl-C while the command is still importing its modules: ``interrupted``, exit 130.

Deterministic: a ``sitecustomize`` on the child's ``PYTHONPATH`` holds the import of aiohttp
(which the command's modules import) until the test has sent a real SIGINT from outside, so the
signal lands inside that import every time, as a user's Ctrl-C during start-up does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_env

HOOK = """
import os, sys, time

class _HoldImport:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("GH_TEST_HOLD_IMPORT"):
            sys.meta_path.remove(self)
            os.write(2, b"holding the import of " + name.encode() + b"\\n")
            time.sleep(60)  # a SIGINT ends it with KeyboardInterrupt, inside the import
        return None

sys.meta_path.insert(0, _HoldImport())
"""

SCRIPT = Path(sys.executable).with_name("growthhub-async")


@pytest.mark.parametrize("how", ["python -m", "script"])
def test_ctrl_c_during_the_imports_prints_interrupted_and_exits_130(
    tmp_path: Path, how: str
) -> None:
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    env["GH_TEST_HOLD_IMPORT"] = "aiohttp"
    command = [sys.executable, "-m", "growthhub_async"] if how == "python -m" else [str(SCRIPT)]
    data = tmp_path / "in.jsonl"
    data.write_text('{"contactId":"c1","firstName":"A"}\n')
    args = ["update", str(data), "--out", str(tmp_path / "out.jsonl"), "--base-url"]
    proc = subprocess.Popen(
        [*command, *args, "http://127.0.0.1:9", "--no-progress"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first == b"holding the import of aiohttp\n", first + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err.decode(), out) == (130, "interrupted\n", b"")
    assert not (tmp_path / "out.jsonl").exists()  # nothing started


def test_the_package_imports_nothing_heavy_and_every_public_name_resolves() -> None:
    # What keeps the window for a traceback small: importing the package runs no heavy import.
    check = (
        "import sys, growthhub_async\n"
        "heavy = {'aiohttp', 'msgspec', 'growthhub_async.client', 'growthhub_async.cli'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "from growthhub_async import *\n"
        "assert GrowthHubClient.__module__ == 'growthhub_async.client'\n"
        "assert sorted(dir(growthhub_async)) == sorted(set(dir(growthhub_async)))\n"
        "missing = [n for n in growthhub_async.__all__ if not hasattr(growthhub_async, n)]\n"
        "assert not missing, missing\n"
    )
    ran = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    import growthhub_async  # noqa: PLC0415

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        growthhub_async.Nope  # type: ignore[attr-defined]  # noqa: B018
