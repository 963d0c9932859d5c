"""Producer settings, read once from the environment (all listed in .env.example)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tickstream.codec import DEFAULT_MAX_MESSAGE_BYTES


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def broker_ids_from_env() -> list[int]:
    """BROKER_ID (the seed's name) may hold one id or a comma-separated list; empty means all brokers."""
    raw = os.environ.get("BROKER_ID", "")
    return [int(part) for part in raw.replace(" ", "").split(",") if part]


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    refresh_seconds: float = 5.0  # how often scripts/brokers are re-read (live changes)
    max_streams_per_connection: int = 1024  # Binance's cap
    rotate_after_seconds: float = 23 * 3600.0  # Binance cuts a connection at 24 h
    watchdog_seconds: float = 45.0  # a healthy connection sees at least a ping every 20 s
    control_messages_per_second: float = 3.0  # of Binance's 5/s, pongs included: leave room for pongs
    reconnect_backoff_max_seconds: float = 30.0
    connection_attempts_per_5_min: int = 250  # Binance allows 300 per IP
    linger_seconds: float = 0.1  # how long a partly filled SQS message may wait
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    buffer_ticks: int = 200_000  # in-memory ticks between the sockets and the sender
    journal_dir: Path = Path(".state/journal")
    journal_max_bytes: int = 2 * 1024**3
    journal_fsync_seconds: float = 0.05  # journaled bodies reach the disk within this; 0: before each append returns
    rest_weight_per_minute: int = 6000
    rest_weight_share: float = 0.8  # keep 20 % of the IP's REST budget for everyone else
    max_backfill_trades: int = 5_000_000  # a live id jump larger than this is suspect until a second id confirms it
    rest_timeout_seconds: float = 10.0  # a REST call's connect/read timeout; the backfill retries after it
    status_seconds: float = 5.0  # how often producer_status is upserted (one statement per broker)
    lagging_ms: int = 5_000  # lag p50 above this: the status says lagging
    stats_log_seconds: float = 30.0
    unknown_symbol_recheck_seconds: float = 300.0
    heartbeat_seconds: float = 30.0  # the liveness metric's period (0: none); the alarm allows 3 minutes
    stack_name: str = "tickstream"  # the heartbeat's Stack dimension: the deployed stack's name

    @classmethod
    def from_env(cls) -> ProducerSettings:
        default = cls()
        return cls(
            refresh_seconds=_float("PRODUCER_REFRESH_SECONDS", default.refresh_seconds),
            max_streams_per_connection=min(1024, _int("PRODUCER_MAX_STREAMS_PER_CONNECTION",
                                                      default.max_streams_per_connection)),
            rotate_after_seconds=_float("PRODUCER_ROTATE_AFTER_SECONDS", default.rotate_after_seconds),
            watchdog_seconds=_float("PRODUCER_WATCHDOG_SECONDS", default.watchdog_seconds),
            linger_seconds=_float("PRODUCER_LINGER_MS", default.linger_seconds * 1000) / 1000,
            max_message_bytes=_int("SQS_MESSAGE_MAX_BYTES", default.max_message_bytes),
            buffer_ticks=_int("PRODUCER_BUFFER_TICKS", default.buffer_ticks),
            journal_dir=Path(os.environ.get("PRODUCER_JOURNAL_DIR") or default.journal_dir),
            journal_max_bytes=_int("PRODUCER_JOURNAL_MAX_BYTES", default.journal_max_bytes),
            journal_fsync_seconds=_float("PRODUCER_JOURNAL_FSYNC_MS", default.journal_fsync_seconds * 1000) / 1000,
            rest_weight_per_minute=_int("BINANCE_REST_WEIGHT_PER_MINUTE", default.rest_weight_per_minute),
            max_backfill_trades=_int("PRODUCER_MAX_BACKFILL_TRADES", default.max_backfill_trades),
            rest_timeout_seconds=_float("PRODUCER_REST_TIMEOUT_SECONDS", default.rest_timeout_seconds),
            status_seconds=_float("PRODUCER_STATUS_SECONDS", default.status_seconds),
            lagging_ms=_int("PRODUCER_LAGGING_MS", default.lagging_ms),
            stats_log_seconds=_float("PRODUCER_STATS_LOG_SECONDS", default.stats_log_seconds),
            heartbeat_seconds=_float("PRODUCER_HEARTBEAT_SECONDS", default.heartbeat_seconds),
            stack_name=os.environ.get("STACK_NAME") or default.stack_name,
        )
