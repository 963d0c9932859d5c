"""The producer's liveness metric (producer_service.heartbeat) against LocalStack's real CloudWatch."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

from producer_service.heartbeat import METRIC, NAMESPACE, Heartbeat
from tests.producer_harness import fresh_queue, running_producer
from tickstream.settings import DatabaseSettings

pytestmark = pytest.mark.localstack


def _heartbeats(cloudwatch: Any, stack: str) -> float:
    end = time.time() + 60
    statistics = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE, MetricName=METRIC, Dimensions=[{"Name": "Stack", "Value": stack}],
        StartTime=end - 600, EndTime=end, Period=60, Statistics=["Sum"])
    return sum(point["Sum"] for point in statistics["Datapoints"])


@pytest.fixture
def cloudwatch(aws: Callable[[str], Any]) -> Any:
    return aws("cloudwatch")


def test_a_turning_run_loop_sends_heartbeats_until_stopped(cloudwatch: Any) -> None:
    stack = f"heartbeat-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    heartbeat = Heartbeat(cloudwatch, stack, 0.1, time.monotonic, stop).start()  # a loop that always just turned
    deadline = time.monotonic() + 60  # LocalStack loads its CloudWatch provider on the first call
    while heartbeat.sent < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    heartbeat.join(timeout=5)
    assert heartbeat.sent >= 3
    assert _heartbeats(cloudwatch, stack) == heartbeat.sent  # the alarm's metric, in the alarm's dimension


def test_a_stalled_run_loop_sends_none(cloudwatch: Any) -> None:
    stack = f"heartbeat-{uuid.uuid4().hex[:8]}"
    stalled_since = time.monotonic() - 120  # the process lives, its run loop does not turn
    heartbeat = Heartbeat(cloudwatch, stack, 30, lambda: stalled_since, threading.Event())
    assert heartbeat.beat() is False
    assert _heartbeats(cloudwatch, stack) == 0


def test_cloudwatch_down_never_stops_the_producer() -> None:
    import boto3
    from botocore.config import Config

    unreachable = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                               aws_access_key_id="test", aws_secret_access_key="test",
                               config=Config(connect_timeout=0.5, retries={"max_attempts": 1}))
    heartbeat = Heartbeat(unreachable, "down", 30, time.monotonic, threading.Event())
    assert heartbeat.beat() is False and heartbeat.beat() is False
    assert heartbeat.sent == 0


def test_the_producer_beats_while_it_runs_and_stops_with_it(cloudwatch: Any, aws: Callable[[str], Any],
                                                          localstack: Any, db: pymysql.Connection,
                                                          db_settings: DatabaseSettings, tmp_path: Any) -> None:
    """The real wiring: build_service starts the heartbeat, the run loop feeds it, close() ends it."""
    stack = f"heartbeat-{uuid.uuid4().hex[:8]}"
    queue_url = fresh_queue(aws("sqs"))
    with running_producer(db_settings, localstack.endpoint_url, queue_url, tmp_path / "journal",
                          heartbeat_seconds=0.2, stack_name=stack):
        deadline = time.monotonic() + 60
        while _heartbeats(cloudwatch, stack) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _heartbeats(cloudwatch, stack) >= 3
    deadline = time.monotonic() + 15  # a PutMetricData under way finishes first
    while _heartbeat_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _heartbeat_threads()
    sent = _heartbeats(cloudwatch, stack)
    time.sleep(0.6)
    assert _heartbeats(cloudwatch, stack) == sent  # stopped with the producer
    aws("sqs").delete_queue(QueueUrl=queue_url)


def _heartbeat_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "heartbeat" and thread.is_alive()]
