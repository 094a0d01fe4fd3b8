"""Records waiting for their location, on disk: the spill file of a side-by-side run (issue 13).

A file sorted by location (every database export) must not run one location after another, and
memory must not grow with the input. So a side-by-side run reads ahead of the workers, and a
record whose location already has its share in memory goes here instead: one unlinked temporary
file (no name to leak, gone when the process ends, even by SIGKILL), each location's records in
FIFO order. Why not an index of offsets into the input: standard input cannot be read twice,
CSV records span lines and UTF-16 input is transcoded, so an offset does not point at a record;
what is spilled is the record as it will be sent (the wire body), which also spares a second
validation.

Layout: each record is framed (4-byte big-endian length, payload). A location's records are
gathered in a small buffer and written as one chunk when the buffer reaches ``chunk_bytes``, or
when all buffers together pass ``buffered_bytes``; per location, memory holds only a queue of
chunk extents (one integer each) and the read position in its oldest chunk. A sorted input gives
a handful of chunks per location; a shuffled one, chunks of ``buffered_bytes / locations``.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from typing import IO, Final

__all__ = ["Spill"]

_LENGTH: Final = 4
_EXTENT_BITS: Final = 24  # a chunk's length in the low bits of its extent, its offset above
_PEEK: Final = 512  # bytes read at once: most records are shorter, so one read each


class _Queue:
    __slots__ = ("buffer", "chunks", "count", "cursor", "end")

    def __init__(self) -> None:
        self.chunks: deque[int] = deque()
        self.buffer = bytearray()
        self.count = 0
        self.cursor = 0
        self.end = 0


class Spill:
    """FIFO queues of byte strings by key, on one temporary file in ``directory``.

    ``directory`` defaults to the system's temporary folder; the file is created (mode 0600) on
    the first :meth:`push` and closed by :meth:`close`.
    """

    def __init__(
        self,
        directory: str | None = None,
        *,
        chunk_bytes: int = 32 << 10,
        buffered_bytes: int = 4 << 20,
    ) -> None:
        self.directory = directory
        self.chunk_bytes = min(chunk_bytes, (1 << _EXTENT_BITS) // 2)
        self.buffered_bytes = buffered_bytes
        self._queues: dict[str, _Queue] = {}
        self._file: IO[bytes] | None = None
        self._fd = -1
        self._end = 0
        self._buffered = 0
        self.total = 0
        """Records held, all keys together."""
        self.written = 0
        """Bytes written to the file so far."""

    def __len__(self) -> int:
        return self.total

    def count(self, key: str) -> int:
        """Records held for ``key``."""
        queue = self._queues.get(key)
        return queue.count if queue is not None else 0

    def push(self, key: str, payload: bytes) -> None:
        """Append ``payload`` to ``key``'s queue."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        queue.buffer += len(payload).to_bytes(_LENGTH, "big")
        queue.buffer += payload
        queue.count += 1
        self.total += 1
        self._buffered += _LENGTH + len(payload)
        if len(queue.buffer) >= self.chunk_bytes:
            self._flush(queue)
        if self._buffered > self.buffered_bytes:
            for other in self._queues.values():
                if other.buffer:
                    self._flush(other)

    def pop(self, key: str) -> bytes | None:
        """The oldest payload of ``key``'s queue, or ``None`` when it is empty."""
        queue = self._queues.get(key)
        if queue is None or not queue.count:
            return None
        if queue.cursor == queue.end:
            if not queue.chunks:
                self._flush(queue)  # the rest is in the buffer: one code path reads it
            extent = queue.chunks.popleft()
            queue.cursor = extent >> _EXTENT_BITS
            queue.end = queue.cursor + (extent & ((1 << _EXTENT_BITS) - 1))
        data = os.pread(self._fd, min(_PEEK, queue.end - queue.cursor), queue.cursor)
        size = int.from_bytes(data[:_LENGTH], "big")
        whole = _LENGTH + size
        if whole <= len(data):
            payload = data[_LENGTH:whole]
        else:
            payload = data[_LENGTH:] + os.pread(
                self._fd, whole - len(data), queue.cursor + len(data)
            )
        queue.cursor += whole
        queue.count -= 1
        self.total -= 1
        if not queue.count:
            del self._queues[key]
        return payload

    def _flush(self, queue: _Queue) -> None:
        if self._file is None:
            # Closed by close(): the file lives as long as the run.
            file = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self.directory, prefix="growthhub-spill-"
            )
            self._file = file
            self._fd = file.fileno()
        data = queue.buffer
        view = memoryview(data)
        offset = self._end
        while view:  # pwrite may write less than asked
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written
        view.release()
        queue.chunks.append((self._end << _EXTENT_BITS) | len(data))
        self._end += len(data)
        self.written += len(data)
        self._buffered -= len(data)
        queue.buffer = bytearray()

    def close(self) -> None:
        """Drop every queue and the file."""
        self._queues.clear()
        self.total = 0
        self._buffered = 0
        if self._file is not None:
            self._file.close()
            self._file = None
            self._fd = -1
