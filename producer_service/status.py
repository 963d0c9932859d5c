"""The producer's status per script (table producer_status), one multi-row upsert per broker every few seconds.

States: subscribed, unknown_symbol (the exchange does not list it, or refused its subscription: nothing is
collected), backfilling (open gaps, with ids done / in all), lagging (median trade-to-receive lag above
PRODUCER_LAGGING_MS), connecting (its connection is not up), unknown_type (its broker's `type` has no exchange
adapter: nothing is collected). Lag percentiles come from the feed's bounded per-script sample, never from the
ticks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pymysql

from producer_service.sequencer import Sequencer

if TYPE_CHECKING:
    from producer_service.exchanges.base import ScriptTarget
    from producer_service.feed import Feed

COLUMNS = ("script_id", "broker_id", "state", "detail", "connection", "last_trade_id", "last_traded_at",
           "backfill_done", "backfill_total", "lag_ms_p50", "lag_ms_p99", "reported_at")
UPSERT = (f"INSERT INTO producer_status ({', '.join(COLUMNS)}) VALUES {{rows}} ON DUPLICATE KEY UPDATE "
          + ", ".join(f"{column} = VALUES({column})" for column in COLUMNS[1:]))
StatusRow = tuple[object, ...]

MAX_LAG_MS = 2**32 - 1  # producer_status.lag_ms_* are INT UNSIGNED


def percentile(sorted_values: list[int], fraction: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _lag_column(ms: int | None) -> int | None:
    """Into INT UNSIGNED: a frame with an absurd time (far past or future) must not fail the broker's whole upsert."""
    return None if ms is None else min(max(0, ms), MAX_LAG_MS)


def _utc(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC).replace(tzinfo=None)


class StatusPublisher:
    def __init__(self, every_seconds: float, lagging_ms: int = 5_000) -> None:
        self.every = every_seconds
        self.lagging_ms = lagging_ms
        self._last = float("-inf")

    def due(self) -> bool:
        if time.monotonic() - self._last < self.every:
            return False
        self._last = time.monotonic()
        return True

    def publish(self, conn: pymysql.Connection, broker_id: int, feed: Feed, sequencer: Sequencer,
                stopped: bool = False) -> int:
        return self._upsert(conn, self.rows(broker_id, feed, sequencer, stopped))

    def publish_unsupported(self, conn: pymysql.Connection, broker_id: int, targets: Sequence[ScriptTarget],
                            problem: str) -> int:
        """The scripts of a broker whose type no adapter speaks: state unknown_type, the problem as detail."""
        now = datetime.now(UTC).replace(tzinfo=None)
        return self._upsert(conn, [(target.script_id, broker_id, "unknown_type", problem[:500], None, None, None,
                                    None, None, None, None, now) for target in targets])

    @staticmethod
    def _upsert(conn: pymysql.Connection, rows: list[StatusRow]) -> int:
        if rows:
            with conn.cursor() as cursor:
                placeholders = ", ".join(["(" + ", ".join(["%s"] * len(COLUMNS)) + ")"] * len(rows))
                cursor.execute(UPSERT.format(rows=placeholders), [value for row in rows for value in row])
            conn.commit()
        return len(rows)

    def rows(self, broker_id: int, feed: Feed, sequencer: Sequencer, stopped: bool = False) -> list[StatusRow]:
        now = datetime.now(UTC).replace(tzinfo=None)
        progress = feed.backfiller.progress()
        connection_of = {stream: conn for conn in feed.connections for stream in conn.streams}
        rows: list[StatusRow] = []
        for target in self._targets(feed):
            conn = connection_of.get(target.stream)
            lags = sorted(feed.lag_us.get(target.script_id, ()))
            p50, p99 = (percentile(lags, 0.5) // 1000, percentile(lags, 0.99) // 1000) if lags else (None, None)
            done, total = progress.get(target.script_id, (None, None))
            state, detail = self._state(feed, target, conn, p50, total, stopped)
            rows.append((target.script_id, broker_id, state, detail, conn.name if conn else None,
                         sequencer.last_id(target.script_id), _utc(feed.last_trade_us.get(target.script_id)),
                         done, total, _lag_column(p50), _lag_column(p99), now))
        return rows

    @staticmethod
    def _targets(feed: Feed) -> Iterable[ScriptTarget]:
        return [*feed.by_stream.values(), *(t for s, t in feed.unknown.items() if s not in feed.by_stream)]

    def _state(self, feed: Feed, target: ScriptTarget, conn: object, p50: int | None, backfill_total: int | None,
               stopped: bool) -> tuple[str, str | None]:
        if target.stream in feed.unknown:
            return "unknown_symbol", f"{target.symbol} is not a trading symbol on {feed.rest.base_url}"
        refused = feed.refused.get(target.stream)
        if refused is not None:
            return "unknown_symbol", f"{target.symbol}: the exchange refused the subscription: {refused}"[:500]
        if stopped:
            return "connecting", "producer stopped"
        if conn is None or getattr(conn, "connected_at", None) is None:
            return "connecting", None
        if backfill_total:
            return "backfilling", None
        if p50 is not None and p50 > self.lagging_ms:
            return "lagging", f"lag p50 {p50} ms"
        return "subscribed", None
