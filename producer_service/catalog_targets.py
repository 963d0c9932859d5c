"""What the producer should collect, read from the shared catalog (brokers and their scripts)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pymysql

from producer_service.exchanges.base import ExchangeAdapter, ScriptTarget, script_target
from producer_service.exchanges.registry import UnknownExchange, adapter_for
from tickstream import catalog
from tickstream.exchange_endpoints import endpoint_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerTargets:
    broker_id: int
    broker_type: str
    adapter: ExchangeAdapter | None  # None: no adapter speaks `broker_type` (`problem` says so; nothing collected)
    ws_url: str
    rest_url: str
    targets: tuple[ScriptTarget, ...]
    problem: str | None = None

    @property
    def endpoint(self) -> tuple[int, str, str, str]:
        return self.broker_id, self.broker_type, self.ws_url, self.rest_url


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
    """Per broker, its adapter (by `brokers.type`) and its scripts. A broker of a type no adapter speaks is kept,
    with `adapter` None and the `problem`, so the producer reports its scripts rather than silently skipping them."""
    reported = set() if reported is None else reported
    by_broker: dict[int, list[catalog.ActiveScript]] = {}
    for script in scripts:
        by_broker.setdefault(script.broker_id, []).append(script)
    brokers = [_broker(broker_id, rows, reported) for broker_id, rows in sorted(by_broker.items())]
    return [broker for broker in brokers if broker.targets
            and (broker.adapter is None or _allowed(broker, allowed_hosts, reported))]


def _broker(broker_id: int, rows: list[catalog.ActiveScript], reported: set[str]) -> BrokerTargets:
    broker_type = rows[0].broker_type
    try:
        adapter = adapter_for(broker_type)
    except UnknownExchange as error:
        problem = f"broker {broker_id}: {error}; not collecting its {len(rows)} script(s)"
        if problem not in reported:
            reported.add(problem)
            log.error("%s", problem)
        targets = tuple(ScriptTarget(row.script_id, row.trading_symbol, row.stream, "") for row in rows)
        return BrokerTargets(broker_id, broker_type, None, "", "", targets, str(error))
    streams = adapter.venue.streams
    valid = []
    for row in rows:
        if row.stream in streams:
            valid.append(script_target(adapter, row.script_id, row.trading_symbol, row.stream))
        else:
            log.error("script %d (%s): stream %r is not one of %s; skipped", row.script_id, row.trading_symbol,
                      row.stream, ", ".join(streams))
    return BrokerTargets(broker_id, broker_type, adapter, rows[0].ws_url or adapter.venue.ws_url,
                         rows[0].rest_url or adapter.venue.rest_url, tuple(valid))


def _allowed(broker: BrokerTargets, allowed_hosts: frozenset[str], reported: set[str]) -> bool:
    assert broker.adapter is not None
    problems = [f"{kind} URL {url!r} {problem}" for kind, url in (("ws", broker.ws_url), ("rest", broker.rest_url))
                if (problem := endpoint_problem(url, kind, allowed_hosts, broker.adapter.venue))]
    for problem in problems:
        if problem not in reported:
            reported.add(problem)
            log.error("broker %d: %s; not collecting its %d script(s) (README: Security)", broker.broker_id,
                      problem, len(broker.targets))
    return not problems
