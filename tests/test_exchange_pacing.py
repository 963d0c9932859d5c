"""The connection's one pace and keepalive, and the generic caps on a venue's declared limits (issue 14): pongs,
client pings and subscriptions share one evenly spaced pace under the venue's incoming-message limit; a venue that
wants client pings gets them after the declared silence. Over real sockets (the simulator, a crafted server)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from producer_service.config import ProducerSettings
from producer_service.connection import OPCODE_PING, OPCODE_TEXT, ConnectionLimits, StreamConnection
from producer_service.exchanges import binance
from producer_service.exchanges.base import Keepalive
from producer_service.feed import VENUE_LIMIT_SHARE, attempts_limiter, rotate_after_seconds
from producer_service.pacing import RateLimiter
from simulator.harness import ExchangeSimulator
from tests.conftest import SIMULATOR_HOSTS
from tests.test_producer import CraftedServer

# --- the shared pace and the caps on the venue's limits ------------------------------------------------------

def test_pongs_and_subscriptions_share_one_pace_under_the_venues_limit() -> None:
    """Pings ten times a second (each owed a pong) while 1,000 streams are subscribed (5 messages): answered one by
    one, the pongs alone would exceed the simulator's 5 incoming messages/s and get the connection cut. Through the
    one pace (4/s, a pong first, answering the latest ping) the connection lives, every ping is answered in time
    and every stream is subscribed."""
    symbols = tuple(f"P{n:04d}USDT" for n in range(1000))
    with ExchangeSimulator(symbols=symbols, rate=0, seed=8, ping_interval=0.1, pong_timeout=2.0) as sim:
        limits = ConnectionLimits(binance.SPOT_LIMITS.messages_per_second * VENUE_LIMIT_SHARE, 10.0, 0.2)
        conn = StreamConnection("paced", sim.ws_url, binance.ADAPTER, limits, RateLimiter(100, 1.0),
                                lambda *_: None, lambda _conn: None, SIMULATOR_HOSTS)
        conn.start({binance.ADAPTER.stream_key(symbol, "aggTrade") for symbol in symbols})
        try:
            deadline = time.monotonic() + 15
            while len(sim.subscriptions()) < 1000 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3.0)  # 30 more pings
            assert len(sim.subscriptions()) == 1000
            assert conn.sessions == 1, "neither the message limit nor the pong timeout cut the connection"
        finally:
            conn.close()


def test_generic_settings_cap_the_venues_limits() -> None:
    spot = binance.SPOT_LIMITS
    assert rotate_after_seconds(ProducerSettings(), spot) == 23 * 3600.0, "an hour before Binance's 24 h cut"
    assert rotate_after_seconds(ProducerSettings(rotate_after_seconds=4.0), spot) == 4.0
    assert rotate_after_seconds(ProducerSettings(rotate_after_seconds=10**6), spot) == 23 * 3600.0
    forever = dataclasses.replace(spot, connection_lifetime_seconds=None)
    assert rotate_after_seconds(ProducerSettings(), forever) == float("inf"), "no lifetime: no rotation by age"
    assert attempts_limiter(spot).count == 240, "80 % of 300 attempts per 5 minutes"


@pytest.mark.parametrize(("client_ping", "opcode", "payload"), [("ping", OPCODE_TEXT, b"ping"),
                                                                 (None, OPCODE_PING, b"")])
def test_a_venue_that_wants_client_pings_gets_them_after_silence(client_ping: str | None, opcode: int,
                                                                  payload: bytes) -> None:
    """Keepalive with `client_ping_seconds` (OKX: a text "ping" within 30 s of silence): a silent server gets a
    ping after that long, once per silence, as text or as a WS ping frame; never more often than the silence."""
    keepalive = Keepalive(server_ping_seconds=None, idle_timeout_seconds=30.0, client_ping_seconds=0.3,
                          client_ping=client_ping)
    pinging = dataclasses.replace(binance.ADAPTER, limits=dataclasses.replace(binance.SPOT_LIMITS,
                                                                              keepalive=keepalive))
    server = CraftedServer(b"")  # says nothing: only the client's pings break the silence
    conn = StreamConnection("pinging", server.url, pinging, ConnectionLimits(4.0, 10.0, 0.2), RateLimiter(100, 1.0),
                            lambda *_: None, lambda _conn: None, SIMULATOR_HOSTS)
    conn.start({"btcusdt@aggTrade"})
    try:
        time.sleep(1.0)  # silent all along: one ping, not one per 0.3 s, since nothing was heard after it
        pings = [p for _n, op, p in server.received if (op, p) == (opcode, payload)]
        assert len(pings) == 1
        assert conn.sessions == 1
    finally:
        conn.close()
        server.close()
