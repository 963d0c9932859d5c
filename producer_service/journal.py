"""An append-only on-disk journal of SQS message bodies, for when SQS is unreachable or slow.

Bodies are single lines of text, so the journal is newline-separated segment files, replayed oldest first. A segment is
deleted only after all of its bodies were accepted by SQS; a crash mid-replay resends that segment, and the ingest
function's primary key makes the resend harmless.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tickstream.codec import decode_message

log = logging.getLogger(__name__)
SEGMENT_BYTES = 16 * 1024**2


class Journal:
    def __init__(self, directory: Path, max_bytes: int, stop: threading.Event | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stop = stop or threading.Event()
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Condition()
        self._segments = sorted(directory.glob("*.journal"))
        self._bytes = sum(path.stat().st_size for path in self._segments)
        self._writer = None
        self._writer_path: Path | None = None
        self._next_number = 1 + max((int(path.stem) for path in self._segments), default=0)

    def pending(self) -> bool:
        with self._lock:
            return bool(self._segments)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, bodies: list[str]) -> None:
        """Write bodies durably to the OS; blocks (loudly) while the disk budget is exhausted."""
        data = "".join(body + "\n" for body in bodies).encode()
        with self._lock:
            while self._bytes + len(data) > self.max_bytes and self._segments and not self.stop.is_set():
                log.error("journal full (%d bytes, budget %d): not reading more until SQS takes the backlog",
                          self._bytes, self.max_bytes)
                self._lock.wait(10)
            writer = self._current_writer()
            writer.write(data)
            writer.flush()
            self._bytes += len(data)
            if writer.tell() >= SEGMENT_BYTES:
                self._close_writer()

    def replay(self, send: Callable[[list[str]], None], batch: int = 10) -> int:
        """Send the oldest segment through `send` (which raises on failure); returns bodies sent."""
        with self._lock:
            if not self._segments:
                return 0
            if self._segments[0] == self._writer_path:
                self._close_writer()  # replay reads closed segments only
            segment = self._segments[0]
        bodies = _complete_bodies(segment)
        for start in range(0, len(bodies), batch):
            send(bodies[start:start + batch])
        with self._lock:
            self._bytes -= segment.stat().st_size
            segment.unlink()
            self._segments.pop(0)
            self._lock.notify_all()
        return len(bodies)

    def last_trade_ids(self) -> dict[int, int]:
        """The highest trade id per script still waiting in the journal: a restarted producer resumes after them
        instead of fetching from REST what the journal is about to send anyway."""
        with self._lock:
            segments = list(self._segments)
        last: dict[int, int] = {}
        for segment in segments:
            if not segment.exists():
                continue  # replayed meanwhile
            for body in _complete_bodies(segment):
                for tick in decode_message(body).ticks():
                    if tick.trade_id > last.get(tick.script_id, -1):
                        last[tick.script_id] = tick.trade_id
        return last

    def close(self) -> None:
        with self._lock:
            self._close_writer()

    def _current_writer(self):
        if self._writer is None:
            path = self.directory / f"{self._next_number:012d}.journal"
            self._next_number += 1
            self._writer = open(path, "ab")  # noqa: SIM115 - kept open across appends
            self._writer_path = path
            self._segments.append(path)
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer, self._writer_path = None, None


def _complete_bodies(segment: Path) -> list[str]:
    """The segment's bodies, without a last line cut short by a crash mid-write (its ticks are newer than every
    complete line's, so the restarted producer backfills them from REST)."""
    lines = segment.read_text().split("\n")
    if lines.pop():  # appends end with a newline: anything after the last one is a write cut short
        log.warning("%s: skipping an incomplete last journal line", segment.name)
    return lines


def wait_until_empty(journal: Journal, deadline: float) -> bool:
    while journal.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not journal.pending()
