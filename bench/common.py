"""What every stage shares: throw-away databases, synthetic ticks, result rows."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql

from tickstream.codec import pack_ticks
from tickstream.db import connect
from tickstream.migrate import migrate
from tickstream.settings import DatabaseSettings, database_settings
from tickstream.ticks import Tick

T0_US = 1_760_000_000_000_000  # 2025-10-09, µs
BENCH_DB_PREFIX = "tickstream_bench_"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the printed table."""

    stage: str
    metric: str
    value: float | str | None
    unit: str = ""
    goal: str = ""
    met: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "metric": self.metric, "value": self.value, "unit": self.unit,
                "goal": self.goal, "met": self.met}


@dataclass
class StageResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def add(self, metric: str, value: float | str | None, unit: str = "", goal: str = "",
            met: bool | None = None) -> None:
        self.rows.append(Row(self.name, metric, value, unit, goal, met))


@contextlib.contextmanager
def bench_database(label: str) -> Iterator[DatabaseSettings]:
    """A fresh, migrated database `tickstream_bench_<label>_<hex>` on the DB_* server, dropped afterwards."""
    server = database_settings()
    db = DatabaseSettings(server.host, server.port, server.user, server.password,
                          f"{BENCH_DB_PREFIX}{label}_{uuid.uuid4().hex[:8]}")
    migrate(db)
    try:
        yield db
    finally:
        drop_database(db)


def wait_for_database(timeout: float = 90.0) -> None:
    """Until the DB_* server answers (a fault drill elsewhere may have stopped it for a while)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect(database_settings(), database=False, connect_timeout=2).close()
            return
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def drop_database(db: DatabaseSettings) -> None:
    conn = connect(db, database=False, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{db.name}`")
    finally:
        conn.close()


def scalar(conn: pymysql.Connection, sql: str, args: Sequence[Any] = ()) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, args)
        row = cursor.fetchone()
    return None if row is None else row[0]


def make_scripts(conn: pymysql.Connection, symbols: Sequence[str], api_config: str = "{}",
                 stream: str = "trade", broker_name: str = "Bench exchange") -> dict[str, int]:
    """A broker with one active script per symbol; returns symbol → script id."""
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO brokers (type, name, api_config) VALUES ('binance', %s, %s)",
                       (broker_name, api_config))
        broker_id = cursor.lastrowid
        ids = {}
        for symbol in symbols:
            cursor.execute("INSERT INTO scripts (broker_id, name, trading_symbol, additional_data)"
                           " VALUES (%s, %s, %s, %s)", (broker_id, symbol, symbol, f'{{"stream": "{stream}"}}'))
            ids[symbol] = cursor.lastrowid
    conn.commit()
    return ids


def synthetic_ticks(script_ids: Sequence[int], count: int, first_trade_id: int = 1) -> list[Tick]:
    """`count` ticks interleaved over the scripts (as a combined stream delivers them), ids contiguous per script."""
    ticks = []
    n = len(script_ids)
    for i in range(count):
        trade_id = first_trade_id + i // n
        traded = T0_US + i * 37
        price = f"{95_000 + (i * 7919) % 5000}.{(i * 104729) % 100:02d}000000"
        ticks.append(Tick(script_ids[i % n], trade_id, price, f"0.{(i * 31) % 99999 + 1:05d}000", i % 3 == 0,
                          traded, traded + 2_000, traded + 9_000))
    return ticks


def bodies_of(ticks: Sequence[Tick]) -> list[str]:
    """Message bodies as the producer packs them (default 64 KiB)."""
    return list(pack_ticks(ticks))


def ticks_per_message(sample: int = 100_000) -> float:
    """How many synthetic ticks the producer packs into one message (default bound)."""
    return sample / len(bodies_of(synthetic_ticks((1, 2, 3, 4), sample)))


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of unsorted values (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
