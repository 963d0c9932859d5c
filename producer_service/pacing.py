"""Rate limiting and backoff, shared by the WebSocket and REST sides."""

from __future__ import annotations

import random
import threading
import time
from collections import deque


class RateLimiter:
    """At most `count` events per `period` seconds (sliding window); `acquire` waits for a slot."""

    def __init__(self, count: int, period: float) -> None:
        self.count = count
        self.period = period
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def try_acquire(self) -> float:
        """Take a slot now and return 0, or return how long to wait for one."""
        with self._lock:
            now = time.monotonic()
            while self._times and now - self._times[0] >= self.period:
                self._times.popleft()
            if len(self._times) < self.count:
                self._times.append(now)
                return 0.0
            return self.period - (now - self._times[0])

    def peek(self) -> float:
        """How long until a slot is free (0: one is free now), without taking it."""
        with self._lock:
            now = time.monotonic()
            while self._times and now - self._times[0] >= self.period:
                self._times.popleft()
            return 0.0 if len(self._times) < self.count else self.period - (now - self._times[0])

    def acquire(self, stop: threading.Event | None = None) -> bool:
        while (wait := self.try_acquire()) > 0:
            if stop is not None and stop.wait(wait):
                return False
            if stop is None:
                time.sleep(wait)
        return True


class Backoff:
    """Exponential backoff with full jitter and a cap; `reset` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0
