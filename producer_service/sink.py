"""Ticks → packed SQS messages, with a disk journal when SQS cannot take them.

One sender thread packs ticks into size-bounded bodies (flushed when full or after a short linger) and sends them
with SendMessageBatch (10 entries), retrying the per-entry `Failed` list. While SQS is unreachable, or while older
bodies still wait in the journal, new bodies go to the journal too, so the journal is replayed in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from producer_service.journal import Journal, merge_last_ids, wait_until_empty
from producer_service.pacing import Backoff
from tickstream.codec import MessagePacker
from tickstream.ticks import Tick

log = logging.getLogger(__name__)
SQS_BATCH_ENTRIES = 10
SQS_BATCH_MAX_BYTES = 1024 * 1024
ENTRY_RETRIES = 5


class SqsUnavailable(RuntimeError):
    """SQS did not take every body; the caller keeps them (journal)."""


class SqsSender:
    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.requests = 0
        self.messages = 0

    def send(self, bodies: list[str]) -> None:
        """Send all bodies or raise SqsUnavailable; entries SQS reports as Failed are retried."""
        for batch in _batches(bodies):
            self._send_batch(batch)

    def _send_batch(self, bodies: list[str]) -> None:
        pending = {str(index): body for index, body in enumerate(bodies)}
        backoff = Backoff(base=0.05, cap=1.0)
        for _ in range(ENTRY_RETRIES):
            entries = [{"Id": key, "MessageBody": body} for key, body in pending.items()]
            try:
                self.requests += 1
                response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as error:
                raise SqsUnavailable(str(error)) from error
            for ok in response.get("Successful", []):
                pending.pop(ok["Id"], None)
                self.messages += 1
            if not pending:
                return
            log.warning("SQS refused %d of %d entries (%s); retrying", len(pending), len(entries),
                        response.get("Failed", [{}])[0].get("Code"))
            time.sleep(backoff.next_delay())
        raise SqsUnavailable(f"{len(pending)} entries still failing after {ENTRY_RETRIES} tries")


def _batches(bodies: list[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    size = 0
    for body in bodies:
        body_size = len(body.encode())
        if not batches or len(batches[-1]) == SQS_BATCH_ENTRIES or size + body_size > SQS_BATCH_MAX_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(body)
        size += body_size
    return batches


class Taken:
    """A marker put after ticks: `event` is set once every tick put before it has been sent to SQS or journaled
    (so the backfill may record them as delivered). Falsy, like the close sentinel None: the packer's one check
    per tick (`if not tick`) covers both, and a Tick (a non-empty tuple) is always truthy."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def __bool__(self) -> bool:
        return False


class TickBuffer:
    """A bounded FIFO from many putting threads to one taking thread, cheap on the hot path.

    `put` is a lock-free deque append (plus an Event.set only while the taker sleeps): `queue.Queue` takes a lock
    and notifies a condition on every put and get, which was a fifth of the producer's CPU per tick. While the
    buffer holds `capacity` items, `put` blocks (polling every millisecond), as Queue(maxsize) did.
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[Any] = deque()
        self._capacity = capacity
        self._wakeup = threading.Event()
        self._sleeping = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, stop: threading.Event | None = None) -> None:
        """Raises InterruptedError if `stop` is set while waiting for room (a closing feed's backfill)."""
        while len(self._items) >= self._capacity:
            if stop is not None and stop.is_set():
                raise InterruptedError("stopped while the tick buffer was full")
            time.sleep(0.001)
        self._items.append(item)
        if self._sleeping:
            self._wakeup.set()

    def take(self, max_items: int, timeout: float) -> list[Any]:
        """Up to `max_items`, oldest first; waits up to `timeout` for the first; [] if none came."""
        if not self._items:
            self._sleeping = True  # before the re-check: a put after it sees the flag and wakes us
            self._wakeup.clear()
            if not self._items:
                self._wakeup.wait(timeout)
            self._sleeping = False
        items, popleft = self._items, self._items.popleft
        return [popleft() for _ in range(min(max_items, len(items)))]


class TickSink:
    """Thread-safe `put(tick)`; a sender thread does the rest. `close()` flushes everything."""

    TAKE_MAX = 2_000  # ticks packed between two linger checks

    def __init__(self, sender: SqsSender, journal: Journal, max_message_bytes: int, linger_seconds: float,
                 buffer_ticks: int) -> None:
        self.sender = sender
        self.journal = journal
        self.linger = linger_seconds
        self._buffer = TickBuffer(buffer_ticks)
        self._packer = MessagePacker(max_message_bytes)
        self._ready: list[str] = []
        # A trade id per script that the ticks in the packer (in `_ready`) reach: what the journal's index vouches
        # for if `_ready` is journaled (reading ids back from the bodies would cost ~6 µs a tick). The packer's is
        # each script's last id: a backfilled tick may be lower than the live ones before it, so it can understate
        # (REST fetches a few ids again) but never overstate (which would lose ticks after a crash).
        self._packing_ids: dict[int, int] = {}
        self._ready_ids: dict[int, int] = {}
        self._oldest_at: float | None = None
        self._taken: list[Taken] = []  # markers whose ticks are all in `_ready`: set once it is delivered
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._pack_loop, name="sink-packer", daemon=True),
                         threading.Thread(target=self._replay_loop, name="sink-replayer", daemon=True)]
        self.ticks_in = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def put(self, tick: Tick, stop: threading.Event | None = None) -> None:
        """Blocks while the buffer is full: the sockets slow down rather than drop anything. A caller that may be
        stopped meanwhile (a backfill) passes `stop`: then InterruptedError ends the wait."""
        self._buffer.put(tick, stop)

    def put_taken_marker(self, stop: threading.Event | None = None) -> threading.Event:
        """An event set once every tick put so far (by this thread) is sent or journaled. The packer flushes at
        the marker rather than lingering: a backfill waits for it after each page."""
        marker = Taken()
        self._buffer.put(marker, stop)
        return marker.event

    def close(self, replay_seconds: float = 10.0) -> None:
        """Stop, send or journal every buffered tick, then give the journal a little time to drain."""
        self._buffer.put(None)
        self._threads[0].join()
        wait_until_empty(self.journal, time.monotonic() + replay_seconds)
        self._stopping.set()
        self._threads[1].join(timeout=5)
        self.journal.close()
        if self.journal.pending():
            log.warning("journal keeps %d bytes for the next start (SQS still unavailable)", self.journal.size_bytes)

    def _pack_loop(self) -> None:
        while self._pack(self._buffer.take(self.TAKE_MAX, self._linger_left())):
            if self._oldest_at is not None and time.monotonic() - self._oldest_at >= self.linger:
                self._ready.extend(self._packer.flush())
                self._ids_ready()
                self._oldest_at = None
            if self._ready and (len(self._ready) >= SQS_BATCH_ENTRIES or self._oldest_at is None):
                self._deliver()
        self._ready.extend(self._packer.flush())
        self._ids_ready()
        self._deliver()

    def _pack(self, ticks: list[Tick | None]) -> bool:
        """Pack `ticks`, sending every 10 full bodies; False once the close sentinel (None) is reached."""
        for tick in ticks:
            if not tick:  # None (close) or a Taken marker
                if tick is None:
                    return False
                self._mark_taken(tick)
                continue
            self._add(tick)
            if len(self._ready) >= SQS_BATCH_ENTRIES:
                self._deliver()
        return True

    def _add(self, tick: Tick) -> None:
        self.ticks_in += 1
        if self._oldest_at is None:
            self._oldest_at = time.monotonic()
        self._packing_ids[tick[0]] = tick[1]  # the last, not the highest: never more than the highest, and one store
        full = self._packer.add(tick)
        if full:
            self._ready.extend(full)
            self._ids_ready()
            self._oldest_at = time.monotonic() if len(self._packer) else None

    def _mark_taken(self, marker: Taken) -> None:
        self._ready.extend(self._packer.flush())
        self._ids_ready()
        self._oldest_at = None
        self._taken.append(marker)
        self._deliver()

    def _ids_ready(self) -> None:
        """After a flush: the packed ticks' ids now belong to `_ready`. Only once the packer is empty, so the ids
        never name a tick still in memory (the journal's index would vouch for ticks a crash loses)."""
        if not len(self._packer):
            merge_last_ids(self._ready_ids, self._packing_ids)
            self._packing_ids = {}

    def _linger_left(self) -> float:
        if self._oldest_at is None:
            return 0.5
        return max(0.0, self.linger - (time.monotonic() - self._oldest_at))

    def _deliver(self) -> None:
        bodies, ids, taken = self._ready, self._ready_ids, self._taken
        self._ready, self._ready_ids, self._taken = [], {}, []
        if bodies:
            self._send_or_journal(bodies, ids)
        for marker in taken:
            marker.event.set()

    def _send_or_journal(self, bodies: list[str], ids: dict[int, int]) -> None:
        if not self.journal.pending():
            try:
                self.sender.send(bodies)
                return
            except SqsUnavailable as error:
                log.warning("SQS unavailable (%s): journaling %d messages", error, len(bodies))
        self.journal.append(bodies, ids)

    def _replay_loop(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while not self._stopping.is_set():
            if not self.journal.pending():
                self._stopping.wait(0.05)
                continue
            try:
                sent = self.journal.replay(self.sender.send)
                if sent:
                    log.info("replayed %d journaled messages to SQS", sent)
                backoff.reset()
            except SqsUnavailable:
                self._stopping.wait(backoff.next_delay())
            except Exception:  # e.g. a disk error: retried, never the end of the replay (the journal would stay)
                log.exception("journal replay failed; retrying")
                self._stopping.wait(backoff.next_delay())
