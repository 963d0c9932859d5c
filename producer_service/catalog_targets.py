"""What the producer should collect, read from the shared catalog (brokers and their scripts)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pymysql

from producer_service.feed import ScriptTarget
from tickstream import catalog
from tickstream.binance import PRODUCTION_REST_URL, PRODUCTION_WS_URL, STREAM_TYPES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerTargets:
    broker_id: int
    ws_url: str
    rest_url: str
    targets: tuple[ScriptTarget, ...]

    @property
    def endpoint(self) -> tuple[int, str, str]:
        return self.broker_id, self.ws_url, self.rest_url


def load_targets_for(broker_ids: list[int] | None) -> Callable[[pymysql.Connection], list[BrokerTargets]]:
    def load(conn: pymysql.Connection) -> list[BrokerTargets]:
        return broker_targets(catalog.active_scripts(conn, broker_ids))
    return load


def broker_targets(scripts: list[catalog.ActiveScript]) -> list[BrokerTargets]:
    by_broker: dict[int, list[catalog.ActiveScript]] = {}
    for script in scripts:
        if script.stream not in STREAM_TYPES:
            log.error("script %d (%s): stream %r is not one of %s; skipped", script.script_id,
                      script.trading_symbol, script.stream, ", ".join(STREAM_TYPES))
            continue
        by_broker.setdefault(script.broker_id, []).append(script)
    return [
        BrokerTargets(
            broker_id=broker_id,
            ws_url=rows[0].ws_url or PRODUCTION_WS_URL,
            rest_url=rows[0].rest_url or PRODUCTION_REST_URL,
            targets=tuple(ScriptTarget(row.script_id, row.trading_symbol, row.stream) for row in rows),
        )
        for broker_id, rows in sorted(by_broker.items())
    ]
