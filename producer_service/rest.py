"""The venue-neutral REST client of the backfill and the symbol checks: timeouts, no redirects, a body cap, the
exchange allowlist before every call, and the venue's REST budget (its adapter's `RestLimits`).

Venues count request weight per window per IP (e.g. 6000 per minute, reported in a response header). We
stay under a share of the budget, honour 429 + `Retry-After`, and stop for good on 418 (the IP is banned: calling on
extends it). Which paths, parameters and weights a call uses is the adapter's business (`ExchangeAdapter`).

The base URL must pass the exchange allowlist (tickstream.exchange_endpoints) before every call; redirects are
never followed (the allowlist would mean nothing) and a response body is read up to MAX_RESPONSE_BYTES, no further.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
import requests

from producer_service.exchanges.base import RestLimits
from tickstream.exchange_endpoints import check_endpoint
from tickstream.venues import BINANCE, Venue

log = logging.getLogger(__name__)

# The largest answer, a venue's list of every symbol, is a few MiB; a page of 1000 trades ~150 KiB.
MAX_RESPONSE_BYTES = 32 * 1024**2
# A client not told its venue's budget (tests, tools): no budget of its own, only 429s and bans are honoured.
NO_BUDGET = RestLimits(weight_per_window=2**62, window_seconds=60.0, page_size=1000)


class RestBanned(RuntimeError):
    """418: the exchange has banned this IP; no more REST calls until restart."""


class RestError(RuntimeError):
    """A REST call that failed in a way retrying will not fix (e.g. an invalid symbol)."""

    def __init__(self, status: int, code: int | str | None, message: str) -> None:
        super().__init__(f"HTTP {status} code {code}: {message}")
        self.status = status
        self.code = code


class RestClient:
    def __init__(self, base_url: str, limits: RestLimits = NO_BUDGET, share: float = 0.8,
                 stop: threading.Event | None = None, timeout: float = 10.0,
                 allowed_hosts: frozenset[str] = frozenset(), venue: Venue = BINANCE) -> None:
        """`limits`: the venue's budget (its adapter's), of which `share` is used. `allowed_hosts`:
        EXCHANGE_HOST_ALLOWLIST, beyond the venues' official hosts."""
        self.base_url = base_url.rstrip("/")
        self.allowed_hosts = allowed_hosts
        self.venue = venue  # whose official hosts base_url may name
        self.budget = int(limits.weight_per_window * share)
        self.window_seconds = limits.window_seconds
        self.used_weight_header = limits.used_weight_header
        self.stop = stop or threading.Event()
        self.timeout = timeout
        self.banned = False
        self.used_weight = 0
        self._window = self._current_window()
        self._lock = threading.Lock()
        self._session = requests.Session()

    def get(self, path: str, params: dict[str, Any], weight: int = 1) -> Any:
        """GET base_url + path within the budget (`weight`: what the venue counts for this call); the JSON body."""
        while True:
            if self.banned:
                raise RestBanned("REST is banned for this IP (418); not calling again")
            self._wait_for_budget(weight)
            if self.stop.is_set():
                raise InterruptedError("producer stopping")
            check_endpoint(self.base_url, "rest", self.allowed_hosts, self.venue)  # again here: defence in depth
            response = self._session.get(self.base_url + path, params=params, timeout=self.timeout,
                                         allow_redirects=False, stream=True)
            with response:
                body = _capped_body(response)
            self._note_weight(response)
            if response.status_code == 429:
                self._sleep(float(response.headers.get("Retry-After", "5")), "429 from REST")
                continue
            if response.status_code == 418:
                self.banned = True
                log.error("REST answered 418: this IP is banned; backfill stops (gaps stay reported)")
                raise RestBanned(_sample(body))
            if 300 <= response.status_code < 400:  # not followed: the allowlist checked this URL only
                raise RestError(response.status_code, None, "redirect to "
                                f"{response.headers.get('Location', '')[:200]!r} refused (exchange allowlist)")
            if response.status_code >= 400:
                raise _rest_error(response.status_code, body)
            return orjson.loads(body)

    def _current_window(self) -> int:
        return int(time.time() // self.window_seconds)

    def _wait_for_budget(self, weight: int) -> None:
        with self._lock:
            window = self._current_window()
            if window != self._window:
                self._window, self.used_weight = window, 0
            over = self.used_weight + weight > self.budget
            if not over and self.used_weight_header is None:
                self.used_weight += weight  # no header to tell us: count it ourselves
        if over:
            self._sleep(self.window_seconds - time.time() % self.window_seconds + 0.05,
                        f"REST weight budget {self.budget} per {self.window_seconds:.0f} s reached")

    def _note_weight(self, response: requests.Response) -> None:
        header = response.headers.get(self.used_weight_header) if self.used_weight_header else None
        if header and header.isdigit():
            with self._lock:
                self._window, self.used_weight = self._current_window(), int(header)

    def _sleep(self, seconds: float, why: str) -> None:
        log.warning("%s: pausing REST for %.1f s", why, seconds)
        self.stop.wait(seconds)


def _capped_body(response: requests.Response) -> bytes:
    """The (decompressed) body, refused past MAX_RESPONSE_BYTES: a hostile or broken server cannot fill memory."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise RestError(response.status_code, None, f"response of {declared} bytes refused ({MAX_RESPONSE_BYTES} max)")
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise RestError(response.status_code, None, f"response over {MAX_RESPONSE_BYTES} bytes refused")
        chunks.append(chunk)
    return b"".join(chunks)


def _sample(body: bytes) -> str:
    return body[:200].decode("utf-8", errors="replace")


def _rest_error(status: int, body: bytes) -> RestError:
    try:
        error = orjson.loads(body)
        return RestError(status, error.get("code"), str(error.get("msg")))
    except (ValueError, AttributeError):
        return RestError(status, None, _sample(body))
