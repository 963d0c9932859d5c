"""The producer process: follows the catalog (brokers, scripts) live and runs one feed per broker endpoint, each
speaking its broker's venue through the adapter `brokers.type` names (producer_service.exchanges.registry)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import pymysql

from producer_service.audit import Auditor, AuditRequest
from producer_service.catalog_targets import BrokerTargets, load_targets_for
from producer_service.config import ProducerSettings
from producer_service.exchanges.base import ExchangeAdapter
from producer_service.feed import Feed, ScriptTarget, attempts_limiter
from producer_service.heartbeat import Heartbeat
from producer_service.journal import Journal
from producer_service.ledger import GapLedger
from producer_service.pacing import RateLimiter
from producer_service.rest import RestClient
from producer_service.sequencer import Sequencer
from producer_service.sink import SqsSender, TickSink
from producer_service.status import StatusPublisher
from tickstream.aws_clients import cloudwatch_client, sqs_client
from tickstream.db import CONNECTION_ERRORS, connect
from tickstream.settings import Settings
from tickstream.tick_store import last_trade_ids

log = logging.getLogger(__name__)


class ProducerService:
    def __init__(self, settings: ProducerSettings, sink: TickSink,
                 connect_db: Callable[[], pymysql.Connection],
                 load_targets: Callable[[pymysql.Connection], list[BrokerTargets]],
                 allowed_hosts: frozenset[str] = frozenset()) -> None:
        """`allowed_hosts`: EXCHANGE_HOST_ALLOWLIST, enforced again by every REST call and WebSocket connect."""
        self.settings = settings
        self.allowed_hosts = allowed_hosts
        self.sink = sink
        self.connect_db = connect_db
        self.load_targets = load_targets
        self.stop_requested = threading.Event()  # SIGTERM: leave the run loop
        self.sequencer = Sequencer(max_jump=settings.max_backfill_trades)
        self.attempts: dict[str, RateLimiter] = {}  # venue type → its connection attempts, shared by its feeds
        self.feeds: dict[tuple[int, str, str, str], Feed] = {}
        self.unsupported: dict[int, BrokerTargets] = {}  # brokers of a type no adapter speaks: reported in status
        self._db: pymysql.Connection | None = None
        self.ledger = GapLedger(connect_db)
        self.auditor = Auditor(connect_db, self.ledger, self.stop_requested)
        self.auditor.start()  # waits for requests: scripts resumed, after they are subscribed
        self.status = StatusPublisher(settings.status_seconds, settings.lagging_ms)
        self._journaled = sink.journal.last_trade_ids()  # ids a restart must not fetch again: the journal has them
        self._stats_at = time.monotonic()
        self._stats_counts: dict[int, int] = {}
        self.last_loop_at = time.monotonic()  # the heartbeat reports the run loop's turns

    def run(self) -> None:
        """Until `stop()`: refresh the catalog every refresh_seconds, maintain connections twice a second."""
        next_refresh = 0.0
        while not self.stop_requested.is_set():
            self.last_loop_at = time.monotonic()
            if time.monotonic() >= next_refresh:
                self.refresh()
                next_refresh = time.monotonic() + self.settings.refresh_seconds
            for feed in list(self.feeds.values()):
                feed.maintain()
            self._log_stats()
            self._publish_status()
            self.stop_requested.wait(0.5)

    def stop(self) -> None:
        self.stop_requested.set()

    def refresh(self) -> None:
        try:
            brokers = self.load_targets(self._connection())
        except CONNECTION_ERRORS as error:
            log.warning("catalog unavailable (%s); keeping current subscriptions", error)
            self._drop_connection()
            return
        self.unsupported = {broker.broker_id: broker for broker in brokers if broker.adapter is None}
        wanted = {broker.endpoint: broker for broker in brokers if broker.adapter is not None}
        for endpoint in set(self.feeds) - set(wanted):
            self._close_feed(endpoint)
        for broker in wanted.values():
            self._apply(broker)

    def _apply(self, broker: BrokerTargets) -> None:
        feed = self.feeds.get(broker.endpoint)
        if feed is None:
            assert broker.adapter is not None  # refresh() keeps the others apart
            feed = self.feeds[broker.endpoint] = self._open_feed(broker, broker.adapter)
        gone = [target for stream, target in feed.by_stream.items()
                if stream not in {t.stream for t in broker.targets}]
        new = [target for target in broker.targets if target.stream not in feed.by_stream]
        resume_points = self._resume(feed, new)  # before subscribing: the first live id is compared with them
        added = feed.apply(list(broker.targets))
        self._audit(feed, added, resume_points)  # after subscribing: in the background
        for target in gone:
            self.sequencer.forget(target.script_id)

    def _open_feed(self, broker: BrokerTargets, adapter: ExchangeAdapter) -> Feed:
        stop = threading.Event()  # the feed's own: closing it (an endpoint change) stops its backfill and REST
        rest = RestClient(broker.rest_url, adapter.rest_limits, self.settings.rest_weight_share, stop,
                          self.settings.rest_timeout_seconds, self.allowed_hosts, adapter.venue)
        attempts = self.attempts.get(adapter.venue.type)
        if attempts is None:
            attempts = self.attempts[adapter.venue.type] = attempts_limiter(adapter.limits)
        return Feed(f"broker {broker.broker_id}", broker.ws_url, adapter, rest, self.settings, self.sink,
                    self.sequencer, attempts, stop, self.ledger, self.allowed_hosts)

    def _resume(self, feed: Feed, targets: list[ScriptTarget]) -> dict[int, int]:
        """The sequencer continues after what is stored or journaled (the first live id then reveals the gap
        since); the ledger's unfinished gaps of these scripts go to the backfill. Returns the resume points."""
        if not targets:
            return {}
        stored = last_trade_ids(self._connection(), [target.script_id for target in targets])
        by_script = {target.script_id: target for target in targets}
        for target in targets:
            self.sequencer.resume(target.script_id, stored.get(target.script_id))
            self.sequencer.resume(target.script_id, self._journaled.get(target.script_id))
            feed.note_cause(target.script_id, "restart")
        for row in self.ledger.open_gaps(list(by_script)):
            target = by_script[row.script_id]
            feed.backfiller.resume(row, target.symbol, target.stream_type)
        return {target.script_id: last for target in targets
                if (last := self.sequencer.last_id(target.script_id)) is not None}

    def _audit(self, feed: Feed, targets: list[ScriptTarget], resume_points: dict[int, int]) -> None:
        """Below its resume point, a script's ids are the audit's; above it, the live stream's and its gaps'."""
        for target in targets:
            resume_point = resume_points.get(target.script_id)
            if resume_point is not None:
                self.auditor.request(AuditRequest(target.script_id, target.symbol, target.stream_type, resume_point,
                                                  feed.backfiller))

    def _close_feed(self, endpoint: tuple[int, str, str, str]) -> None:
        feed = self.feeds.pop(endpoint)
        for target in feed.by_stream.values():
            self.sequencer.forget(target.script_id)
        feed.close()

    def close(self) -> None:
        """SIGTERM path: stop reading and backfilling (the gap ledger keeps what is left for the next start: no
        need to wait for a backfill), flush the sink."""
        self.stop_requested.set()  # ends the audit and the heartbeat
        for feed in self.feeds.values():  # its connections, its backfill, its REST waits
            feed.close()
        self.sink.close()
        self._publish_status(final=True)
        self.ledger.close()
        self._drop_connection()

    def _connection(self) -> pymysql.Connection:
        if self._db is None:
            self._db = self.connect_db()
        return self._db

    def _drop_connection(self) -> None:
        if self._db is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._db.close()
            self._db = None

    def _publish_status(self, final: bool = False) -> None:
        """One upsert per broker, at most every status_seconds (a database error only delays it)."""
        if not (final or self.status.due()):
            return
        try:
            for endpoint, feed in self.feeds.items():
                self.status.publish(self._connection(), endpoint[0], feed, self.sequencer, stopped=final)
            for broker in self.unsupported.values():
                self.status.publish_unsupported(self._connection(), broker.broker_id, broker.targets,
                                                broker.problem or "no exchange adapter")
        except CONNECTION_ERRORS as error:
            log.warning("producer status not published (%s)", error)
            self._drop_connection()

    def _log_stats(self) -> None:
        elapsed = time.monotonic() - self._stats_at
        if elapsed < self.settings.stats_log_seconds:
            return
        now_us = time.time_ns() // 1000
        for feed in self.feeds.values():
            parts = []
            for target in sorted(feed.by_stream.values(), key=lambda t: t.symbol):
                count = feed.counts[target.script_id]
                rate = (count - self._stats_counts.get(target.script_id, 0)) / elapsed
                self._stats_counts[target.script_id] = count
                last = feed.last_trade_us.get(target.script_id)
                lag = f"{(now_us - last) / 1000:.0f} ms" if last else "n/a"
                parts.append(f"{target.symbol} {rate:.1f}/s lag {lag}")
            if parts:
                oversized = sum(conn.oversized_messages for conn in feed.connections)
                log.info("%s: %s; malformed %d, oversized messages %d, backfilled %d", feed.name, "; ".join(parts),
                         feed.malformed, oversized, feed.backfiller.filled)
        self._stats_at = time.monotonic()


def build_service(settings: Settings, producer: ProducerSettings, broker_ids: list[int] | None) -> ProducerService:
    """The producer wired to SQS, its journal and the catalog; the sink is started, the feeds start on run()."""
    if not settings.ticks_queue_url:
        raise SystemExit("TICKS_QUEUE_URL is not set (make up sets it from the deployed stack)")
    journal = Journal(producer.journal_dir, producer.journal_max_bytes, producer.journal_fsync_seconds)
    sink = TickSink(SqsSender(sqs_client(settings), settings.ticks_queue_url), journal, producer.max_message_bytes,
                    producer.linger_seconds, producer.buffer_ticks)
    allowed_hosts = settings.exchange_host_allowlist
    service = ProducerService(producer, sink, lambda: connect(settings.db, autocommit=True),
                              load_targets_for(broker_ids or None, allowed_hosts), allowed_hosts)
    sink.start()  # after the service has read what the journal holds: replay deletes what it sent
    if producer.heartbeat_seconds > 0:
        Heartbeat(cloudwatch_client(settings), producer.stack_name, producer.heartbeat_seconds,
                  lambda: service.last_loop_at, service.stop_requested).start()  # ends with stop() or close()
    return service
