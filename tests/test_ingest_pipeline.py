"""The ingest pipeline against the real MariaDB: many chunks, one transaction; a failure commits nothing."""

from __future__ import annotations

import threading

import pymysql
import pytest

from tests.conftest import make_broker, make_script, tick_count
from tickstream.codec import TickBatch
from tickstream.coverage import Key, RowGroup
from tickstream.db import connect
from tickstream.ingest import CHUNK_ROWS, TickIngestor
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import InsertResult, TickStore
from tickstream.ticks import Tick

T0 = 1_750_000_000_000_000


def batch(script_id: int, first: int, count: int) -> TickBatch:
    return TickBatch.from_ticks([Tick(script_id, i, "1.5", "2", False, T0 + i, T0 + i, T0 + i)
                                 for i in range(first, first + count)])


class FailingStore(TickStore):
    """A real store whose n-th write raises, after the earlier ones reached the server."""

    def __init__(self, conn: pymysql.Connection, fail_on_write: int, error: BaseException) -> None:
        super().__init__(conn, use_load_data=True)
        self.writes, self.fail_on_write, self.error = 0, fail_on_write, error
        self.threads: set[str] = set()

    def write(self, batch: TickBatch, groups: dict[Key, RowGroup] | None = None) -> InsertResult:
        self.writes += 1
        self.threads.add(threading.current_thread().name)
        if self.writes == self.fail_on_write:
            raise self.error
        return super().write(batch, groups)


def test_many_chunks_are_one_transaction_written_by_one_thread(db_settings: DatabaseSettings,
                                                               db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    stores: list[FailingStore] = []

    def open_store() -> TickStore:
        stores.append(FailingStore(connect(db_settings, local_infile=True), fail_on_write=0, error=RuntimeError()))
        return stores[-1]

    ingestor = TickIngestor(db_settings, open_store=open_store)
    with ingestor.pipeline() as pipeline:
        for start in range(0, 5 * CHUNK_ROWS, CHUNK_ROWS // 2):
            pipeline.add(batch(script, start, CHUNK_ROWS // 2))
    assert (pipeline.outcome.stored, tick_count(db)) == (5 * CHUNK_ROWS, 5 * CHUNK_ROWS)
    assert stores[0].writes == 5 and stores[0].threads == {"ingest-writer"}
    ingestor.close()


@pytest.mark.parametrize("error", [pymysql.err.IntegrityError(1062, "injected"), RuntimeError("injected")])
def test_a_failing_chunk_commits_nothing_and_raises(db_settings: DatabaseSettings, db: pymysql.Connection,
                                                    error: BaseException) -> None:
    """Chunks 1-2 reached the server, chunk 3 failed: the invocation raises and SQS keeps the whole batch."""
    script = make_script(db, make_broker(db), "BTCUSDT")
    ingestor = TickIngestor(db_settings,
                            open_store=lambda: FailingStore(connect(db_settings, local_infile=True), 3, error))
    with pytest.raises(type(error), match="injected"), ingestor.pipeline() as pipeline:
        for start in range(0, 5 * CHUNK_ROWS, CHUNK_ROWS):
            pipeline.add(batch(script, start, CHUNK_ROWS))
    assert tick_count(db) == 0
    ingestor.close()


def test_a_lost_server_is_retried_once_serially_with_everything(db_settings: DatabaseSettings,
                                                               db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    stores: list[FailingStore] = []

    def open_store() -> TickStore:
        stores.append(FailingStore(connect(db_settings, local_infile=True), 2 if not stores else 0, lost))
        return stores[-1]

    ingestor = TickIngestor(db_settings, open_store=open_store)
    with ingestor.pipeline() as pipeline:
        for start in range(0, 3 * CHUNK_ROWS, CHUNK_ROWS):
            pipeline.add(batch(script, start, CHUNK_ROWS))
    assert len(stores) == 2, "a fresh connection for the retry"
    assert (pipeline.outcome.stored, tick_count(db)) == (3 * CHUNK_ROWS, 3 * CHUNK_ROWS)
    ingestor.close()


def test_an_error_in_the_handler_rolls_back_what_was_written(db_settings: DatabaseSettings,
                                                             db: pymysql.Connection) -> None:
    script = make_script(db, make_broker(db), "BTCUSDT")
    ingestor = TickIngestor(db_settings)
    with pytest.raises(KeyError), ingestor.pipeline() as pipeline:
        for start in range(0, 3 * CHUNK_ROWS, CHUNK_ROWS):
            pipeline.add(batch(script, start, CHUNK_ROWS))
        raise KeyError("the handler failed after handing over chunks")
    assert tick_count(db) == 0
    assert ingestor.store([batch(script, 0, 10)]).stored == 10, "the connection is usable afterwards"
    ingestor.close()
