"""What the producer should collect, read from the shared catalog (brokers and their scripts)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pymysql

from producer_service.feed import ScriptTarget
from tickstream import catalog
from tickstream.binance import PRODUCTION_REST_URL, PRODUCTION_WS_URL, STREAM_TYPES
from tickstream.exchange_endpoints import endpoint_problem

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


def load_targets_for(broker_ids: list[int] | None, allowed_hosts: frozenset[str] = frozenset()
                     ) -> Callable[[pymysql.Connection], list[BrokerTargets]]:
    """`allowed_hosts`: EXCHANGE_HOST_ALLOWLIST. A broker whose endpoints it refuses is skipped (logged once per
    endpoint); the API refuses such URLs already, this also covers rows written by hand or before the rule."""
    reported: set[str] = set()

    def load(conn: pymysql.Connection) -> list[BrokerTargets]:
        return broker_targets(catalog.active_scripts(conn, broker_ids), allowed_hosts, reported)
    return load


def broker_targets(scripts: list[catalog.ActiveScript], allowed_hosts: frozenset[str] = frozenset(),
                   reported: set[str] | None = None) -> list[BrokerTargets]:
    by_broker: dict[int, list[catalog.ActiveScript]] = {}
    for script in scripts:
        if script.stream not in STREAM_TYPES:
            log.error("script %d (%s): stream %r is not one of %s; skipped", script.script_id,
                      script.trading_symbol, script.stream, ", ".join(STREAM_TYPES))
            continue
        by_broker.setdefault(script.broker_id, []).append(script)
    brokers = [
        BrokerTargets(
            broker_id=broker_id,
            ws_url=rows[0].ws_url or PRODUCTION_WS_URL,
            rest_url=rows[0].rest_url or PRODUCTION_REST_URL,
            targets=tuple(ScriptTarget(row.script_id, row.trading_symbol, row.stream) for row in rows),
        )
        for broker_id, rows in sorted(by_broker.items())
    ]
    return [broker for broker in brokers if _allowed(broker, allowed_hosts, set() if reported is None else reported)]


def _allowed(broker: BrokerTargets, allowed_hosts: frozenset[str], reported: set[str]) -> bool:
    problems = [f"{kind} URL {url!r} {problem}" for kind, url in (("ws", broker.ws_url), ("rest", broker.rest_url))
                if (problem := endpoint_problem(url, kind, allowed_hosts))]
    for problem in problems:
        if problem not in reported:
            reported.add(problem)
            log.error("broker %d: %s; not collecting its %d script(s) (README: Security)", broker.broker_id,
                      problem, len(broker.targets))
    return not problems
