"""Storing decoded tick batches: the logic behind the ingest Lambda, free of Lambda types.

One `TickIngestor` lives per warm container. It opens its MySQL connection lazily (so a cold start costs no
connection until there is work), keeps it between invocations, and reconnects once when the server has gone away.

An invocation's batches are written through an `IngestPipeline`: a writer thread loads chunk k into MySQL while the
handler decodes the records of chunk k+1. MySQL's share (~3.5 µs per row) and the decoding (~1.3 µs per row) then
overlap instead of adding up; the writer is the only thread that touches the connection, and everything is one
transaction, committed only after the last chunk.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import pymysql

from tickstream.codec import TickBatch
from tickstream.coverage import Summary, summarize_batch
from tickstream.db import CONNECTION_ERRORS, connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import InsertResult, TickStore

# Rows after which pending batches go to the writer: about half a full message (~1,800 rows), so a full message is
# one LOAD DATA of its own (~6 ms of MySQL work; the writer starts early) and a redelivered message is a chunk of
# duplicates only, whose coverage needs no reload group by group (tickstream.tick_store).
CHUNK_ROWS = 1_000


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    stored: int
    duplicates: int
    unknown_script_ticks: int
    unknown_script_ids: frozenset[int]

    def __add__(self, other: StoreOutcome) -> StoreOutcome:
        return StoreOutcome(self.stored + other.stored, self.duplicates + other.duplicates,
                            self.unknown_script_ticks + other.unknown_script_ticks,
                            self.unknown_script_ids | other.unknown_script_ids)


NOTHING_STORED = StoreOutcome(0, 0, 0, frozenset())


class TickIngestor:
    def __init__(self, db: DatabaseSettings, open_store: Callable[[], TickStore] | None = None, *,
                 keep_coverage: bool = True) -> None:
        """`keep_coverage=False` (with a store opened the same way) only measures what coverage costs."""
        self.keep_coverage = keep_coverage
        self._open_store = open_store or (
            lambda: TickStore(connect(db, local_infile=True), keep_coverage=keep_coverage))
        self._store: TickStore | None = None
        self._known_scripts: set[int] = set()

    def store(self, batches: Sequence[TickBatch]) -> StoreOutcome:
        """Insert the batches idempotently in one transaction. Raises if MySQL cannot be reached: nothing is
        half-done."""
        with self.pipeline() as pipeline:
            for batch in batches:
                pipeline.add(batch)
        return pipeline.outcome

    def pipeline(self) -> IngestPipeline:
        return IngestPipeline(self)

    def store_serially(self, batch: TickBatch) -> StoreOutcome:
        """One batch in one transaction, on the calling thread; reconnects once if the server went away."""
        try:
            return self._store_once(batch)
        except CONNECTION_ERRORS:
            self.close()  # the server went away (restart, failover, idle timeout): one fresh try
            return self._store_once(batch)

    def _store_once(self, batch: TickBatch) -> StoreOutcome:
        store = self._connected_store()
        try:
            outcome = self.write(batch)
            store.commit()
        except BaseException:
            store.rollback()
            raise
        return outcome

    def write(self, batch: TickBatch, summary: Summary | None = None) -> StoreOutcome:
        """Write the batch's ticks of existing scripts into the open transaction (no commit); `summary` is
        the batch's coverage and time-index summary when the caller computed it already."""
        store = self._connected_store()
        known = self._known_script_ids(store, batch.script_ids)
        storable = batch.for_scripts(known)
        if summary is not None and storable is not batch:
            summary = summary.for_scripts(known)
        result: InsertResult = store.write(storable, summary)
        return StoreOutcome(result.inserted, result.duplicates, batch.count - storable.count,
                            batch.script_ids - storable.script_ids)

    def commit(self) -> None:
        if self._store is not None:
            self._store.commit()

    def rollback(self) -> None:
        if self._store is not None:
            self._store.rollback()

    def _known_script_ids(self, store: TickStore, wanted: frozenset[int]) -> set[int]:
        """Cached ids of existing scripts, read again whenever a batch names one the cache lacks: a script created
        a moment ago must never be mistaken for a deleted one (its ticks would be dropped)."""
        if not wanted <= self._known_scripts:
            self._known_scripts = store.existing_script_ids()
        return self._known_scripts

    def _connected_store(self) -> TickStore:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            with contextlib.suppress(pymysql.err.Error):
                store.close()


class IngestPipeline:
    """`add` decoded batches as they come; leaving the `with` block commits them all (or raises, committing
    nothing of this invocation that SQS would not deliver again).

    If the server went away mid-way, everything is written again once, serially, on a fresh connection.
    """

    def __init__(self, ingestor: TickIngestor) -> None:
        self.ingestor = ingestor
        self.outcome = NOTHING_STORED
        self._batches: list[TickBatch] = []
        self._pending: list[TickBatch] = []
        self._pending_rows = 0
        self._chunks: queue.SimpleQueue[tuple[TickBatch, Summary | None] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_chunks, name="ingest-writer", daemon=True)

    def __enter__(self) -> IngestPipeline:
        self._writer.start()
        return self

    def add(self, batch: TickBatch) -> TickBatch:
        self._batches.append(batch)
        self._pending.append(batch)
        self._pending_rows += batch.count
        if self._pending_rows >= CHUNK_ROWS:
            self._hand_over()
        return batch

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None) -> None:
        if kind is None:
            self._hand_over()
        else:
            self._error = self._error or error  # the writer stops writing and rolls back
        self._chunks.put(None)
        self._writer.join()
        if kind is not None:
            return
        if isinstance(self._error, CONNECTION_ERRORS):
            self.ingestor.close()
            self.outcome = self.ingestor.store_serially(TickBatch.join(self._batches))
        elif self._error is not None:
            raise self._error

    def _hand_over(self) -> None:
        """The pending batches to the writer, with their coverage summary: computed here, on the handler's thread,
        while the writer waits for MySQL on the previous chunk: the two overlap instead of adding up."""
        if self._pending:
            chunk = TickBatch.join(self._pending)
            self._chunks.put((chunk, summarize_batch(chunk.rows) if self.ingestor.keep_coverage else None))
            self._pending, self._pending_rows = [], 0

    def _write_chunks(self) -> None:
        """The writer thread: every chunk into one transaction, then commit; after an error, only drain."""
        wrote = False
        while (item := self._chunks.get()) is not None:
            if self._error is None:
                try:
                    self.outcome += self.ingestor.write(*item)
                    wrote = True
                except BaseException as error:  # handed to the caller's thread in __exit__
                    self._error = error
        self._finish_transaction(wrote)

    def _finish_transaction(self, wrote: bool) -> None:
        if self._error is not None:
            self.ingestor.rollback()
            return
        if not wrote:
            return
        try:
            self.ingestor.commit()
        except BaseException as error:
            self.ingestor.rollback()
            self._error = error
