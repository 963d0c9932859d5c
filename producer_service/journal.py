"""An append-only on-disk journal of SQS message bodies, for when SQS is unreachable or slow.

Bodies are single lines of text, so the journal is newline-separated segment files (`<n>.journal`), replayed oldest
first. A segment is deleted only after all of its bodies were accepted by SQS; a crash mid-replay resends that
segment, and the ingest function's primary key makes the resend harmless.

Durability (the fsync policy): an append reaches the OS before it returns, so a killed process loses nothing; it
reaches the disk at the next fsync, batched every `fsync_seconds` (PRODUCER_JOURNAL_FSYNC_MS, 50 ms; 0 = before
every append returns). A power loss can therefore cost the bodies appended in the last interval: lines missing, cut
short or turned to garbage (NUL bytes). Such lines are quarantined — moved to `quarantine/<segment>`, counted, logged
as errors — and never stop a start or a replay.

Start-up reads no bodies: after each fsync the journal appends to the segment's index (`<n>.ids`) one line with the
trade id per script up to which that fsync made bodies durable (the sink's figure: never above the highest, see
TickSink), and a restart reads these small files plus only the bytes after the last index line (the interval
before a crash), so it takes the same time whatever the journal holds.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tickstream.codec import V2_PREFIX, InvalidMessage, decode_message

log = logging.getLogger(__name__)
SEGMENT_BYTES = 16 * 1024**2
SQS_MAX_BODY_BYTES = 256 * 1024
QUARANTINE = "quarantine"
SAMPLE_BYTES = 80
# What SQS takes and the ingest can read: the version 2 prefix and base64, nothing else (no NUL, no non-ASCII).
# The full validation is the ingest's; this only keeps garbage from blocking the replay.
_V2_BODY = re.compile(re.escape(V2_PREFIX.encode()) + rb"[A-Za-z0-9+/]+={0,2}").fullmatch
_SEGMENT_NAME = re.compile(r"[0-9]+\.journal")


class Journal:
    def __init__(self, directory: Path, max_bytes: int, fsync_seconds: float = 0.05,
                 stop: threading.Event | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync_seconds = fsync_seconds
        self.stop = stop or threading.Event()
        self.quarantined = 0  # lines moved aside, since this process started
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Condition()
        self._segments = _segment_files(directory)
        for index in directory.glob("*.ids"):
            if not index.with_suffix(".journal").exists():
                index.unlink()  # its segment was replayed; the process stopped before removing the index
        self._bytes = sum(path.stat().st_size for path in self._segments)
        self._writer = None
        self._writer_path: Path | None = None
        self._dirty = False  # the open segment has bytes its last fsync did not cover
        self._unsynced_ids: dict[int, int] = {}  # of the open segment's bodies since its last fsync
        # Numbers never repeat while a quarantined segment keeps its name, so its file holds one segment's lines.
        numbered = [*self._segments, *_segment_files(directory / QUARANTINE)]
        self._next_number = 1 + max((int(path.stem) for path in numbered), default=0)
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None

    def pending(self) -> bool:
        with self._lock:
            return bool(self._segments)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, bodies: list[str], last_ids: dict[int, int] | None = None) -> None:
        """Write bodies to the OS (to the disk within fsync_seconds); blocks (loudly) while the disk budget is
        exhausted. `last_ids`: per script, a trade id that `bodies` hold, at most their highest (for the index), if
        the caller knows (the sink does); else the highest are read from the bodies, at ~6 µs a tick."""
        data = "".join(body + "\n" for body in bodies).encode()
        ids = _last_ids(bodies) if last_ids is None else last_ids
        with self._lock:
            while self._bytes + len(data) > self.max_bytes and self._segments and not self.stop.is_set():
                log.error("journal full (%d bytes, budget %d): not reading more until SQS takes the backlog",
                          self._bytes, self.max_bytes)
                self._lock.wait(10)
            writer = self._current_writer()
            writer.write(data)
            writer.flush()
            merge_last_ids(self._unsynced_ids, ids)
            self._dirty = True
            self._bytes += len(data)
            if writer.tell() >= SEGMENT_BYTES:
                self._close_writer()
            elif self.fsync_seconds <= 0:
                self._sync()
            self._start_flusher()

    def replay(self, send: Callable[[list[str]], None], batch: int = 10) -> int:
        """Send the oldest segment through `send` (which raises on failure); returns bodies sent. Lines that are
        not message bodies are quarantined, the others sent."""
        with self._lock:
            if not self._segments:
                return 0
            if self._segments[0] == self._writer_path:
                self._close_writer()  # replay reads closed segments only
            segment = self._segments[0]
        bodies = self._readable_bodies(segment)
        for start in range(0, len(bodies), batch):
            send(bodies[start:start + batch])
        with self._lock:
            self._bytes -= segment.stat().st_size
            segment.unlink()
            segment.with_suffix(".ids").unlink(missing_ok=True)
            self._segments.pop(0)
            self._lock.notify_all()
        return len(bodies)

    def last_trade_ids(self) -> dict[int, int]:
        """Per script, the trade id up to which the journal vouches for what it still holds: a restarted producer
        resumes after it instead of fetching from REST what the journal is about to send anyway. Reads the
        segments' indexes and only the bytes no index covers yet (normally the last fsync interval before a
        crash)."""
        with self._lock:
            segments = list(self._segments)
        last: dict[int, int] = {}
        for segment in segments:
            try:
                covered, ids = _read_index(segment.with_suffix(".ids"))
                merge_last_ids(last, ids)
                with segment.open("rb") as handle:
                    handle.seek(covered)
                    tail = handle.read()
            except FileNotFoundError:
                continue  # replayed meanwhile
            except OSError as error:
                log.error("journal segment %s unreadable (%s): its ids are fetched from REST again", segment.name,
                          error)
                continue
            merge_last_ids(last, _last_ids(_bodies_before_a_bad_line(tail)))
        return last

    def close(self) -> None:
        """Make everything durable and stop the flusher (a later append restarts it)."""
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        self._closing.clear()
        with self._lock:
            self._close_writer()

    # -- writing -------------------------------------------------------------------------------------------
    def _current_writer(self):
        if self._writer is None:
            path = self.directory / f"{self._next_number:012d}.journal"
            self._next_number += 1
            self._writer = open(path, "ab")  # noqa: SIM115 - kept open across appends
            self._writer_path = path
            self._segments.append(path)
            _fsync_path(self.directory)  # a power loss must not lose the file itself
        return self._writer

    def _sync(self) -> None:
        """fsync the open segment, then record in its index what is now durable (lock held)."""
        if self._writer is None or not self._dirty:
            return
        self._writer.flush()
        os.fsync(self._writer.fileno())
        self._dirty = False
        # Only the ids this fsync made durable (an index grows with the data, not with fsyncs × scripts), and only
        # after the fsync: the index never vouches for bodies a power loss can take.
        line = orjson.dumps({"end": self._writer.tell(), "last": {str(k): v for k, v in self._unsynced_ids.items()}})
        self._unsynced_ids = {}
        with self._writer_path.with_suffix(".ids").open("ab") as index:  # type: ignore[union-attr]
            index.write(line + b"\n")

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._sync()
            index = self._writer_path.with_suffix(".ids")  # type: ignore[union-attr]
            if index.exists():  # once per segment: a power loss then costs no closed segment its index
                _fsync_path(index)
            self._writer.close()
            self._writer, self._writer_path = None, None

    def _start_flusher(self) -> None:
        if self.fsync_seconds > 0 and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="journal-fsync", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closing.wait(self.fsync_seconds):
            with self._lock:
                self._sync()

    # -- reading -------------------------------------------------------------------------------------------
    def _readable_bodies(self, segment: Path) -> list[str]:
        """The segment's bodies; lines that are not bodies (garbage, NUL bytes, invalid UTF-8, a last line cut
        short by a crash mid-write) are quarantined."""
        lines = segment.read_bytes().split(b"\n")
        bodies: list[str] = []
        bad: list[tuple[int, bytes]] = []
        for number, line in enumerate(lines[:-1], start=1):
            if _is_body(line):
                bodies.append(line.decode("ascii"))
            else:
                bad.append((number, line))
        if lines[-1]:  # appends end with a newline: anything after the last one is a write cut short
            bad.append((len(lines), lines[-1]))
        if bad:
            self._quarantine(segment, bad)
        return bodies

    def _quarantine(self, segment: Path, bad: list[tuple[int, bytes]]) -> None:
        target = self.directory / QUARANTINE / segment.name
        target.parent.mkdir(exist_ok=True)
        with target.open("ab") as handle:
            handle.writelines(line + b"\n" for _, line in bad)
        self.quarantined += len(bad)
        number, sample = bad[0]
        log.error("journal segment %s: %d line(s) are not message bodies (a power loss or a crash mid-write); moved "
                  "to %s and not sent (%d quarantined since start). Line %d begins %r. Their trades are missing from "
                  "storage until backfilled: a restart's hole scan fetches them from REST", segment.name, len(bad),
                  target, self.quarantined, number, sample[:SAMPLE_BYTES])


def _segment_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.glob("*.journal") if _SEGMENT_NAME.fullmatch(path.name))


def _is_body(line: bytes) -> bool:
    if len(line) > SQS_MAX_BODY_BYTES:
        return False
    if _V2_BODY(line):
        return True
    if not line.startswith(b"{"):
        return False
    try:  # version 1 (JSON), journaled by an older producer: rare, so validated in full
        decode_message(line)
    except (InvalidMessage, UnicodeDecodeError):
        return False
    return line.isascii()  # orjson writes non-ASCII as is; SQS takes it, but the journal only ever held ASCII


def _bodies_before_a_bad_line(data: bytes) -> list[str]:
    """The bodies a restart may vouch for in bytes no fsync covered: up to the first line that is not a body (a
    power loss may have taken lines after it as well, but kept later ones), so REST fetches every live id after
    it again."""
    lines = data.split(b"\n")
    lines.pop()  # empty, or a line cut short
    bodies = []
    for line in lines:
        if not _is_body(line):
            break
        bodies.append(line.decode("ascii"))
    return bodies


def _last_ids(bodies: list[str]) -> dict[int, int]:
    """The highest trade id per script in `bodies`; bodies that do not decode are skipped (the replay quarantines
    them)."""
    last: dict[int, int] = {}
    for body in bodies:
        try:
            rows = decode_message(body).rows
        except InvalidMessage:
            continue
        for row in rows.splitlines():
            script, trade, _ = row.split(b"\t", 2)
            script_id, trade_id = int(script), int(trade)
            if trade_id > last.get(script_id, -1):
                last[script_id] = trade_id
    return last


def merge_last_ids(into: dict[int, int], ids: dict[int, int]) -> None:
    """`into` becomes the highest id per script of both."""
    for script_id, trade_id in ids.items():
        if trade_id > into.get(script_id, -1):
            into[script_id] = trade_id


def _read_index(path: Path) -> tuple[int, dict[int, int]]:
    """(bytes of the segment the index covers, the ids vouched for in them); (0, {}) without an index (a segment
    that never reached an fsync, or one written before indexes existed). A line a power loss damaged only costs
    its ids (REST fetches them again)."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return 0, {}
    covered, last = 0, {}
    for line in lines:
        try:
            entry = orjson.loads(line)
            end, ids = int(entry["end"]), {int(k): int(v) for k, v in entry["last"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue  # empty, or damaged by a power loss
        covered = max(covered, end)
        merge_last_ids(last, ids)
    return covered, last


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def wait_until_empty(journal: Journal, deadline: float) -> bool:
    while journal.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not journal.pending()
