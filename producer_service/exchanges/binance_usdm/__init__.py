"""Binance USD-M futures (`brokers.type` "binance_usdm"): Binance's combined-stream protocol (the spot adapter's
code, `BinanceAdapter`) with futures' own limits and REST paths. Protocol reference: docs/venues/binance_usdm.md.

- WebSocket (developers.binance.com, derivatives/usds-margined-futures, "Websocket Market Streams"): 10 incoming
  messages per second per connection (spot: 5), 1024 streams per connection, a server ping frame every 3 minutes
  and a disconnect after 10 minutes without a pong (spot: 20 s and 60 s), 24 h connection lifetime. Connection
  attempts per IP are not documented for futures: spot's 300 per 5 minutes is assumed.
- `aggTrade` only (`tickstream.venues.BINANCE_USDM.streams`), sequenced and backfilled on `a`, which is contiguous;
  `f`/`l` skip the insurance-fund and ADL trades no aggregate covers, so they are never read.
- REST (https://fapi.binance.com): 2400 request weight per minute per IP (X-MBX-USED-WEIGHT-1M), exchangeInfo
  (weight 1; every symbol, status TRADING of any contractType), aggTrades by `fromId` (weight 20, 1000 a page).
"""

from producer_service.exchanges.base import Keepalive, Limits, RestLimits
from producer_service.exchanges.binance import BinanceAdapter, BinanceRest, Endpoint
from tickstream.venues import BINANCE_USDM

USDM_LIMITS = Limits(
    streams_per_connection=1024, messages_per_second=10.0, streams_per_message=200,
    connection_lifetime_seconds=24 * 3600.0, connection_attempts=300, connection_attempts_seconds=300.0,
    # The venue pings only every 3 minutes: the producer pings (a WS ping frame) after 15 s of silence, so a quiet
    # but healthy connection is heard (its pong) well within the watchdog and never reconnected for nothing.
    keepalive=Keepalive(server_ping_seconds=180.0, idle_timeout_seconds=600.0, client_ping_seconds=15.0),
)
USDM_REST = RestLimits(weight_per_window=2400, window_seconds=60.0, page_size=1000,
                       used_weight_header="X-MBX-USED-WEIGHT-1M")
USDM_API = BinanceRest(Endpoint("/fapi/v1/exchangeInfo", 1), Endpoint("/fapi/v1/aggTrades", 20),
                       historical_trades=None)

ADAPTER = BinanceAdapter(BINANCE_USDM, USDM_LIMITS, USDM_REST, USDM_API)
