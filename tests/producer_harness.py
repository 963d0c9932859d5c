"""Running the producer against the exchange simulator and a real (LocalStack) SQS queue, and reading back."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import orjson
import pymysql

from producer_service.config import ProducerSettings
from producer_service.service import ProducerService, build_service
from simulator.harness import ExchangeSimulator
from tests.conftest import SIMULATOR_HOSTS, make_broker, make_script
from tickstream.codec import decode_message
from tickstream.settings import DatabaseSettings, Settings
from tickstream.tick_store import insert_ticks_ignore
from tickstream.ticks import Tick
from tickstream.venues import venue

FAST_PRODUCER = ProducerSettings(refresh_seconds=0.5, watchdog_seconds=10, stats_log_seconds=5,
                                 reconnect_backoff_max_seconds=1.0)


def sqs(endpoint_url: str) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


def fresh_queue(client: Any) -> str:
    return client.create_queue(QueueName=f"producer-test-{uuid.uuid4().hex[:8]}")["QueueUrl"]


def register_simulator(conn: pymysql.Connection, sim: ExchangeSimulator, symbols: list[str],
                       name: str = "Simulated exchange") -> dict[str, int]:
    """A broker of the simulator's venue (its `brokers.type`) pointing at it, with one script per symbol on the
    venue's default stream; returns symbol → script id."""
    api_config = orjson.dumps({"ws_url": sim.ws_url, "rest_url": sim.rest_url}).decode()
    broker = make_broker(conn, name, api_config, sim.venue)
    stream = venue(sim.venue).streams[0]
    return {symbol: make_script(conn, broker, symbol, stream) for symbol in symbols}


@dataclasses.dataclass
class RunningProducer:
    service: ProducerService
    thread: threading.Thread

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=30)


@contextmanager
def running_producer(db: DatabaseSettings, endpoint_url: str, queue_url: str, journal_dir: Path,
                     **overrides: Any) -> Iterator[RunningProducer]:
    settings = Settings(db=db, aws_endpoint_url=endpoint_url, aws_region="us-east-1", ticks_queue_url=queue_url,
                        ticks_dlq_url=None, api_token=None, api_token_secret_arn=None,
                        exchange_host_allowlist=SIMULATOR_HOSTS)
    producer = dataclasses.replace(FAST_PRODUCER, journal_dir=journal_dir, **overrides)
    service = build_service(settings, producer, None)

    def run() -> None:
        try:
            service.run()
        finally:
            service.close()

    thread = threading.Thread(target=run, name="producer-under-test", daemon=True)
    thread.start()
    running = RunningProducer(service, thread)
    try:
        yield running
    finally:
        running.stop()


class QueueReader:
    """Drains a queue, remembering every (script_id, trade_id) seen, duplicates included."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.seen: Counter[tuple[int, int]] = Counter()
        self.messages = 0

    def drain_once(self) -> int:
        response = self.client.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        for message in messages:
            for tick in decode_message(message["Body"]):
                self.seen[(tick.script_id, tick.trade_id)] += 1
        if messages:
            self.messages += len(messages)
            self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        return len(messages)

    def ids(self, script_id: int) -> set[int]:
        return {trade_id for (sid, trade_id) in self.seen if sid == script_id}

    def duplicates(self) -> list[tuple[int, int]]:
        return [key for key, count in self.seen.items() if count > 1]

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.drain_once():
                pass
            if done():
                return True
            time.sleep(0.2)
        return done()


def wait_for[T](condition: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    """Poll `condition` every `interval` seconds until its answer is truthy or `timeout` passes; that answer, or
    its last one (so `assert wait_for(...)` fails on time out, and a caller can keep what it waited for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := condition():
            return answer
        time.sleep(interval)
    return condition()


def expected_ids(sim: ExchangeSimulator, symbol: str) -> set[int]:
    return set(sim.emitted_ids(symbol))


def start_trading(sim: ExchangeSimulator, producer: RunningProducer, rate: float = 150.0,
                  timeout: float = 10.0) -> None:
    """Let the exchange trade once every producer connection is subscribed, so every emitted id is expected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        feeds = list(producer.service.feeds.values())
        # A feed whose connections are not open yet would pass an all() over connections: every feed needs one.
        if feeds and all(feed.connections and all(conn.frames > 0 for conn in feed.connections)  # SUBSCRIBE acked
                         for feed in feeds):
            sim.config.rate = rate
            return
        time.sleep(0.05)
    raise TimeoutError("the producer did not subscribe in time")


def stop_trading(sim: ExchangeSimulator) -> None:
    """No more trades: the last ids are final, so the stored set can be compared exactly."""
    sim.config.rate = 0


def store_with_coverage(conn: pymysql.Connection, ticks: list[Tick]) -> None:
    """Store ticks as an earlier run would have, with the tick_coverage rows the ingest keeps (per script per UTC
    day: rows stored, lowest/highest id and time), so the producer's audit sees what they cover."""
    insert_ticks_ignore(conn, ticks)
    days: dict[tuple[int, str], list[Tick]] = {}
    for tick in ticks:
        day = time.strftime("%Y-%m-%d", time.gmtime(tick.traded_at_us / 1e6))
        days.setdefault((tick.script_id, day), []).append(tick)
    with conn.cursor() as cursor:
        for (script_id, day), rows in days.items():
            low, high = min(rows, key=lambda t: t.trade_id), max(rows, key=lambda t: t.trade_id)
            cursor.execute(
                "INSERT INTO tick_coverage (script_id, day, stored, first_trade_id, last_trade_id, first_traded_at,"
                " last_traded_at) VALUES (%s, %s, %s, %s, %s, FROM_UNIXTIME(%s), FROM_UNIXTIME(%s))"
                " ON DUPLICATE KEY UPDATE stored = stored + VALUES(stored),"
                " first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),"
                " last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id))",
                (script_id, day, len(rows), low.trade_id, high.trade_id, low.traded_at_us / 1e6,
                 high.traded_at_us / 1e6))
    conn.commit()
