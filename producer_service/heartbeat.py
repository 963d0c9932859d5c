"""The producer's liveness metric: `tickstream` / ProducerHeartbeat (dimension Stack), value 1 once per interval
while the service's run loop turns. template.yaml's ProducerHeartbeatAlarm fires when 3 minutes pass without one:
the task is down, crash-looping, or its run loop is stuck.

A thread of its own, so a slow CloudWatch never delays the run loop; it reports the run loop's progress
(`last_loop_at`), not merely that the process exists, so a stuck loop silences it. CloudWatch failures are logged
(once per outage) and never stop the producer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)
# The namespace the task role may write (template.yaml: cloudwatch:namespace condition) and the alarm watches.
NAMESPACE = "tickstream"
METRIC = "ProducerHeartbeat"


class Heartbeat:
    def __init__(self, client: Any, stack: str, interval_seconds: float, last_loop_at: Callable[[], float],
                 stop: threading.Event) -> None:
        self.client = client
        self.stack = stack
        self.interval = interval_seconds
        self.last_loop_at = last_loop_at  # time.monotonic() of the run loop's latest turn
        self.stop = stop
        self.sent = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.beat()

    def beat(self) -> bool:
        """Send one heartbeat if the run loop turned within the interval; True if CloudWatch took it."""
        stalled = time.monotonic() - self.last_loop_at()
        if stalled > self.interval:
            log.warning("run loop stalled for %.0f s: no heartbeat", stalled)
            return False
        try:
            self.client.put_metric_data(Namespace=NAMESPACE, MetricData=[{
                "MetricName": METRIC, "Dimensions": [{"Name": "Stack", "Value": self.stack}],
                "Value": 1.0, "Unit": "Count"}])
        except (BotoCoreError, ClientError) as error:
            if not self._failing:
                log.warning("heartbeat not sent (CloudWatch: %s); retrying every %.0f s", error, self.interval)
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeat sent again")
        self._failing = False
        self.sent += 1
        return True
