"""What the benchmarks share: the machine line, result files, pinned server processes, CPU reads.

Servers run in their own process pinned to one CPU (``os.sched_setaffinity``) and the code under
test runs on the others, so the two never compete for a core. CPU time is read the cheap way,
without psutil: ``/proc/PID/stat`` for a live process, ``os.wait4`` for a finished child.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-token"  # a throwaway token for local servers, not a secret
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def uvloop_version() -> str | None:
    """uvloop's version when it is installed (the ``speed`` extra), else ``None``."""
    try:
        return importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Where a benchmark ran: CPUs, CPU model, Python and library versions, platform."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for row in f:
                if row.startswith("model name"):
                    model = row.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        # The machine's CPUs, not this process's affinity (benchmarks pin themselves).
        "nproc": os.cpu_count(),
        "cpuModel": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "msgspec": msgspec.__version__,
        "uvloop": uvloop_version(),
        "platform": platform.platform(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """The machine in one line, as the README shows it."""
    return (
        f"{m['nproc']} CPUs ({m['cpuModel'] or 'unknown model'}), Python {m['python']}, "
        f"aiohttp {m['aiohttp']}, msgspec {m['msgspec']}, uvloop {m['uvloop'] or 'not installed'}, "
        f"{m['platform']}"
    )


def write_result(
    name: str, figures: dict[str, Any], out: Path | None = None, *, module: str | None = None
) -> Path:
    """Write ``results/<name>.json`` (or ``out``): the figures, the machine and the command
    (``python -m benchmarks.<module>``, the module defaulting to ``name``)."""
    path = out if out is not None else RESULTS / f"{name}.json"
    report = {
        "benchmark": name,
        "command": shlex.join(["python", "-m", f"benchmarks.{module or name}", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # The machine's load when the result was written: other work disturbs CPU figures.
        "loadAverage1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "machine": machine(),
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def available_cpus() -> list[int]:
    """The CPUs this process may run on, in order (empty where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return []


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server CPU, client CPUs): the first CPU for the server, the others for the client."""
    cpus = available_cpus()
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin ``pid`` (0: this process) to ``cpus`` where the OS supports it."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far, from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def busy_cpus() -> int:
    """How many pytest processes run on this machine now (the benchmark notes it)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pytest" in cmdline and entry.name != str(os.getpid()):
            count += 1
    return count


@dataclass
class Server:
    """A server subprocess: its base URL and process."""

    proc: subprocess.Popen[str]
    base_url: str

    def cpu_seconds(self) -> float:
        """CPU seconds it has used so far."""
        return cpu_seconds(self.proc.pid)


@contextmanager
def server_process(code: str, cpus: set[int] | None, *args: str) -> Iterator[Server]:
    """Run ``python -c code args...`` pinned to ``cpus``; it prints its base URL on one line
    and stops on SIGTERM."""
    env = {**os.environ, "GROWTHHUB_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        pin(proc.pid, cpus)
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url):
            raise SystemExit(f"the server did not start: {base_url!r}")
        yield Server(proc, base_url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


FAST_SERVER = r"""
# A minimal HTTP/1.1 keep-alive server: every request gets 200 and a small Update Contact
# answer naming the contact of the path (the client refuses an answer naming another).
# Raw asyncio, no parsing beyond the request line and Content-Length, so it costs far less
# than the client.
import asyncio, signal
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
BODY = b'{"succeded":true,"contact":{"id":"%s"}}'

OPEN = [0, 0]  # connections open now, and the most at once since the last GET /__peak

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()
        OPEN[0] += 1
        OPEN[1] = max(OPEN[1], OPEN[0])
    def connection_lost(self, exc):
        OPEN[0] -= 1
    def data_received(self, data):
        buf = self.buf
        buf += data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15:j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            path = bytes(buf[: buf.find(b"\r\n")]).split(b" ")[1]
            if path == b"/__peak":  # the most connections at once since the last ask
                body, OPEN[1] = b"%d" % OPEN[1], OPEN[0]
                out.append(HEAD % len(body) + body)
                del buf[:total]
                continue
            body = BODY % path.rsplit(b"/", 1)[-1]
            out.append(HEAD % len(body) + body)
            del buf[:total]
        if out:
            self.transport.write(b"".join(out))

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", 0, backlog=1024)
    print("http://127.0.0.1:%d" % server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()

asyncio.run(main())
"""

SANDBOX_SERVER = r"""
# The sandbox, configured by a JSON argument: SandboxConfig fields, "faults" as Faults fields.
import asyncio, json, os, signal, sys
from growthhub_async.sandbox import Faults, SandboxConfig, run_sandbox

async def main():
    options = json.loads(sys.argv[1])
    faults = Faults(**options.pop("faults", {}))
    config = SandboxConfig(tokens=frozenset({os.environ["GROWTHHUB_TOKEN"]}), faults=faults,
                           **options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with run_sandbox(config) as sb:
        print(sb.base_url, flush=True)
        await stop.wait()

asyncio.run(main())
"""


def sandbox_process(cpus: set[int] | None, **options: Any) -> Any:
    """The sandbox in a pinned subprocess; ``options`` are SandboxConfig fields (``faults`` a
    dict of Faults fields)."""
    return server_process(SANDBOX_SERVER, cpus, json.dumps(options))


def write_records(path: Path, count: int) -> None:
    """A JSONL input of ``count`` small valid records with distinct alphanumeric contact ids."""
    with open(path, "w", encoding="utf-8") as f:
        chunk: list[str] = []
        for i in range(count):
            chunk.append(
                f'{{"contactId":"bench{i:015d}","firstName":"Ada","email":"ada{i}@example.com",'
                f'"tags":["vip"]}}\n'
            )
            if len(chunk) == 10_000:
                f.writelines(chunk)
                chunk.clear()
        f.writelines(chunk)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a measured child: ours, with bytecode caching on.

    ``PYTHONDONTWRITEBYTECODE`` (set in some shells and containers) would make every child
    compile every module it imports again, start-up figures several times too large; a warm-up
    run with it off leaves the ``.pyc`` files behind, as a user's first run does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def write_tokens(path: Path, locations: int) -> Path:
    """A 0600 tokens file (``--tokens``) beside ``path``: ``loc0000`` ... with a token each."""
    tokens = path.with_suffix(".tokens.json")
    tokens.write_text(json.dumps({f"loc{n:04d}": f"bench-{n:04d}" for n in range(locations)}))
    tokens.chmod(0o600)
    return tokens


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
