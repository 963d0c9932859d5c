"""Binance REST for backfill: aggTrades / historicalTrades by `fromId`, within the IP's weight budget.

Binance counts request weight per minute per IP and reports it in `X-MBX-USED-WEIGHT-1M`. We stay under a share
of the budget, honour 429 + `Retry-After`, and stop for good on 418 (the IP is banned: calling on extends it).

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

from tickstream.exchange_endpoints import check_endpoint

log = logging.getLogger(__name__)

WEIGHTS = {"/api/v3/aggTrades": 4, "/api/v3/historicalTrades": 25, "/api/v3/exchangeInfo": 20}
PAGE_LIMIT = 1000
# exchangeInfo of every spot symbol, the largest answer, is a few MiB; a page of 1000 trades ~150 KiB.
MAX_RESPONSE_BYTES = 32 * 1024**2


class RestBanned(RuntimeError):
    """418: the exchange has banned this IP; no more REST calls until restart."""


class RestError(RuntimeError):
    """A REST call that failed in a way retrying will not fix (e.g. an invalid symbol)."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(f"HTTP {status} code {code}: {message}")
        self.status = status
        self.code = code


class BinanceRest:
    def __init__(self, base_url: str, weight_per_minute: int = 6000, share: float = 0.8,
                 stop: threading.Event | None = None, timeout: float = 10.0,
                 allowed_hosts: frozenset[str] = frozenset()) -> None:
        """`allowed_hosts`: EXCHANGE_HOST_ALLOWLIST, beyond the venues' official hosts."""
        self.base_url = base_url.rstrip("/")
        self.allowed_hosts = allowed_hosts
        self.budget = int(weight_per_minute * share)
        self.stop = stop or threading.Event()
        self.timeout = timeout
        self.banned = False
        self.used_weight = 0
        self._minute = int(time.time() // 60)
        self._lock = threading.Lock()
        self._session = requests.Session()

    def agg_trades(self, symbol: str, from_id: int, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        return self._get("/api/v3/aggTrades", {"symbol": symbol, "fromId": from_id, "limit": limit})

    def historical_trades(self, symbol: str, from_id: int, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        return self._get("/api/v3/historicalTrades", {"symbol": symbol, "fromId": from_id, "limit": limit})

    def trading_symbols(self) -> set[str]:
        """Symbols the exchange lists as TRADING (for telling unknown symbols from quiet ones)."""
        info = self._get("/api/v3/exchangeInfo", {})
        return {item["symbol"] for item in info.get("symbols", []) if item.get("status") == "TRADING"}

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        while True:
            if self.banned:
                raise RestBanned("REST is banned for this IP (418); not calling again")
            self._wait_for_budget(WEIGHTS.get(path, 1))
            if self.stop.is_set():
                raise InterruptedError("producer stopping")
            check_endpoint(self.base_url, "rest", self.allowed_hosts)  # again here: defence in depth
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

    def _wait_for_budget(self, weight: int) -> None:
        with self._lock:
            minute = int(time.time() // 60)
            if minute != self._minute:
                self._minute, self.used_weight = minute, 0
            over = self.used_weight + weight > self.budget
        if over:
            self._sleep(60 - time.time() % 60 + 0.05, f"REST weight budget {self.budget}/min reached")

    def _note_weight(self, response: requests.Response) -> None:
        header = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if header and header.isdigit():
            with self._lock:
                self._minute, self.used_weight = int(time.time() // 60), int(header)

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
