"""A real ``redis-server`` for the tests: started on a free loopback port in a temporary folder.

Never skipped: when ``redis-server`` is missing the tests fail naming the command that installs
it (``make test`` installs it itself when it runs as root; see the Makefile's ``deps-system``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

INSTALL = "apt-get install -y redis-server"
PASSWORD = "redis-test-pass-7Q2"  # a throwaway password, checked for leaks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process: ``stop()`` kills it (SIGKILL, as a crash), ``start()``
    starts it again on the same port, empty."""

    def __init__(self, folder: Path, *, password: str | None = PASSWORD) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(f"redis-server is not installed: run `{INSTALL}` (or `make test` as root)")
        self.binary = binary
        self.folder = folder
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2)

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        with self.client() as probe:
            while True:
                try:
                    probe.ping()
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
                else:
                    return

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
