"""The baseline of ``cpu_per_record``: the least a hand-written aiohttp loop does for the same I/O.

    python -m benchmarks._raw_loop INPUT OUTCOMES BASE_URL CONCURRENCY [uvloop]

Reads the same JSONL file line by line, takes ``contactId`` out of each line (stdlib ``json``:
what a quick script would do), PUTs the rest with one shared session and ``CONCURRENCY`` workers,
reads the answer, and writes one small outcome line per record with one ``os.write`` (the same
syscall per record as our journal; no JSON encoding of a full outcome). No validation, no
retries, no pacing, no events. The token comes from ``GROWTHHUB_TOKEN`` as for the command.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator

import aiohttp


async def run(path: str, out: str, base_url: str, concurrency: int) -> int:
    """Send every record of ``path``; return how many were answered 200."""
    headers = {
        "Authorization": f"Bearer {os.environ['GROWTHHUB_TOKEN']}",
        "Version": "2021-07-28",
        "Content-Type": "application/json",
    }
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    ok = 0
    with open(path, "rb") as f:  # noqa: ASYNC230 (the command reads its input the same way)
        lines: Iterator[tuple[int, bytes]] = enumerate(f, 1)

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal ok
            for number, line in lines:
                record = json.loads(line)
                contact_id = record.pop("contactId")
                async with session.put(
                    f"{base_url}/contacts/{contact_id}", data=json.dumps(record), headers=headers
                ) as resp:
                    await resp.read()
                    status = resp.status
                ok += status == 200
                os.write(fd, b'{"line":%d,"status":%d}\n' % (number, status))

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    os.close(fd)
    return ok


def main() -> int:
    """Run the loop; exit 0 when every record was answered 200."""
    path, out, base_url, concurrency = sys.argv[1:5]
    if sys.argv[5:] == ["uvloop"]:
        import uvloop  # noqa: PLC0415 (optional)

        uvloop.install()
    ok = asyncio.run(run(path, out, base_url, int(concurrency)))
    with open(path, "rb") as f:
        total = sum(1 for _ in f)
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
