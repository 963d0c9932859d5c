"""The producer's liveness metric (producer_service.heartbeat) against LocalStack's real CloudWatch."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from producer_service.heartbeat import METRIC, NAMESPACE, Heartbeat

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
    deadline = time.monotonic() + 10
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
