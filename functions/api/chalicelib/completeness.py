"""The routes that tell completeness: a script with its totals and producer status, /stats, per-day coverage and
the gap ledger. Free of HTTP like `chalicelib.service`; the data access is `tickstream.completeness`, whose reads
cost O(scripts), O(days) or O(gaps), never O(stored ticks).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from chalicelib.errors import not_found
from chalicelib.models import (
    CoverageDayOut,
    CoverageOut,
    CoverageQuery,
    GapOut,
    GapPage,
    GapsQuery,
    ProducerStatusOut,
    QueueDepthOut,
    QueuesOut,
    ScriptDetailOut,
    ScriptStatsOut,
    ScriptTicksOut,
    StatsOut,
)
from chalicelib.service import database
from tickstream import catalog, completeness, queues


def _status_out(status: completeness.ProducerStatus | None) -> ProducerStatusOut | None:
    if status is None:
        return None
    fields = dataclasses.asdict(status)
    del fields["script_id"]
    return ProducerStatusOut(**fields)


def _gap_out(gap: completeness.Gap) -> GapOut:
    return GapOut(**dataclasses.asdict(gap))


def get_script(script_id: int) -> ScriptDetailOut:
    with database.connection() as conn:
        found = completeness.script_stats(conn, script_id)
        if not found:
            raise not_found(f"no script with id {script_id}")
        days = completeness.covered_days(conn, script_id)
    (stats,) = found
    return ScriptDetailOut(**dataclasses.asdict(stats.script), status=_status_out(stats.status),
                           ticks=ScriptTicksOut(**dataclasses.asdict(stats.totals), days=days))


def stats() -> StatsOut:
    with database.connection() as conn:
        per_script = completeness.script_stats(conn)
    rows = [_script_stats_out(figures) for figures in per_script]
    depths = queues.queue_depths()  # outside the database lock: SQS may be slow to answer
    return StatsOut(
        generated_at=datetime.now(UTC), window_seconds=completeness.STATS_WINDOW_SECONDS, scripts=rows,
        queues=QueuesOut(queue=_depth_out(depths["queue"]), dlq=_depth_out(depths["dlq"])),
    )


def _script_stats_out(stats: completeness.ScriptStats) -> ScriptStatsOut:
    script, totals = stats.script, stats.totals
    return ScriptStatsOut(
        script_id=script.id, broker_id=script.broker_id, name=script.name, trading_symbol=script.trading_symbol,
        is_active=script.is_active, tick_count=totals.tick_count, first_trade_at=totals.first_trade_at,
        last_trade_at=totals.last_trade_at, incomplete_days=totals.incomplete_days,
        missing_trades=totals.missing_trades, ticks_last_minute=totals.stored_last_minute,
        ticks_this_minute=totals.stored_this_minute,
        lag_ms_p50=stats.lag_p50_ms, lag_ms_p99=stats.lag_p99_ms, status=_status_out(stats.status),
    )


def _depth_out(depth: queues.QueueDepth) -> QueueDepthOut:
    return QueueDepthOut(approximate_messages=depth.visible, approximate_in_flight=depth.in_flight,
                         approximate_delayed=depth.delayed, reason=depth.reason)


def script_coverage(script_id: int, query: CoverageQuery) -> CoverageOut:
    assert query.from_ is not None and query.to is not None  # CoverageQuery fills in the defaults
    with database.connection() as conn:
        if catalog.get_script(conn, script_id) is None:
            raise not_found(f"no script with id {script_id}")
        report = completeness.coverage_report(conn, script_id, query.from_, query.to)
    days = [CoverageDayOut(day=entry.day.day, first_trade_id=entry.day.first_trade_id,
                           last_trade_id=entry.day.last_trade_id, first_traded_at=entry.day.first_traded_at,
                           last_traded_at=entry.day.last_traded_at, stored=entry.day.stored,
                           expected=entry.day.expected, missing=entry.day.missing, complete=entry.day.complete,
                           audited_at=entry.day.audited_at, gaps=[_gap_out(gap) for gap in entry.gaps])
            for entry in report.days]
    return CoverageOut(script_id=script_id, first_day=query.from_, last_day=query.to, days=days,
                       gaps_truncated=report.gaps_truncated)


def list_gaps(query: GapsQuery) -> GapPage:
    with database.connection() as conn:
        page = completeness.list_gaps(conn, script_id=query.script_id, state=query.state,
                                      after=None if query.cursor is None else int(query.cursor),
                                      limit=query.limit, descending=query.order == "desc")
    return GapPage(gaps=[_gap_out(gap) for gap in page.gaps],
                   next_cursor=None if page.next_cursor is None else str(page.next_cursor))
