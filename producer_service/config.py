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


def _optional_float(name: str) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw else None


def broker_ids_from_env() -> list[int]:
    """BROKER_ID (the seed's name) may hold one id or a comma-separated list; empty means all brokers."""
    raw = os.environ.get("BROKER_ID", "")
    return [int(part) for part in raw.replace(" ", "").split(",") if part]


# No venue allows more streams on one connection; each adapter declares its own limit, at most this.
STREAMS_PER_CONNECTION_CEILING = 1024


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """Generic settings. A venue's own limits (streams per connection, messages per second, connection lifetime,
    connection attempts, REST budget) are its adapter's (producer_service.exchanges); the settings here that
    overlap them are caps applied on top."""

    refresh_seconds: float = 5.0  # how often scripts/brokers are re-read (live changes)
    max_streams_per_connection: int = STREAMS_PER_CONNECTION_CEILING  # a cap on the venue's own limit
    rotate_after_seconds: float | None = None  # a cap on the rotation age (None: the venue's lifetime less an hour)
    watchdog_seconds: float = 45.0  # a healthy connection hears something (data, a ping, a pong) well within it
    reconnect_backoff_max_seconds: float = 30.0
    linger_seconds: float = 0.1  # how long a partly filled SQS message may wait
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    buffer_ticks: int = 200_000  # in-memory ticks between the sockets and the sender
    journal_dir: Path = Path(".state/journal")
    journal_max_bytes: int = 2 * 1024**3
    journal_fsync_seconds: float = 0.05  # journaled bodies reach the disk within this; 0: before each append returns
    rest_weight_share: float = 0.8  # of the venue's REST budget: keep 20 % of the IP's for everyone else
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
            max_streams_per_connection=min(STREAMS_PER_CONNECTION_CEILING, _int(
                "PRODUCER_MAX_STREAMS_PER_CONNECTION", default.max_streams_per_connection)),
            rotate_after_seconds=_optional_float("PRODUCER_ROTATE_AFTER_SECONDS"),
            watchdog_seconds=_float("PRODUCER_WATCHDOG_SECONDS", default.watchdog_seconds),
            linger_seconds=_float("PRODUCER_LINGER_MS", default.linger_seconds * 1000) / 1000,
            max_message_bytes=_int("SQS_MESSAGE_MAX_BYTES", default.max_message_bytes),
            buffer_ticks=_int("PRODUCER_BUFFER_TICKS", default.buffer_ticks),
            journal_dir=Path(os.environ.get("PRODUCER_JOURNAL_DIR") or default.journal_dir),
            journal_max_bytes=_int("PRODUCER_JOURNAL_MAX_BYTES", default.journal_max_bytes),
            journal_fsync_seconds=_float("PRODUCER_JOURNAL_FSYNC_MS", default.journal_fsync_seconds * 1000) / 1000,
            max_backfill_trades=_int("PRODUCER_MAX_BACKFILL_TRADES", default.max_backfill_trades),
            rest_timeout_seconds=_float("PRODUCER_REST_TIMEOUT_SECONDS", default.rest_timeout_seconds),
            status_seconds=_float("PRODUCER_STATUS_SECONDS", default.status_seconds),
            lagging_ms=_int("PRODUCER_LAGGING_MS", default.lagging_ms),
            stats_log_seconds=_float("PRODUCER_STATS_LOG_SECONDS", default.stats_log_seconds),
            heartbeat_seconds=_float("PRODUCER_HEARTBEAT_SECONDS", default.heartbeat_seconds),
            stack_name=os.environ.get("STACK_NAME") or default.stack_name,
        )
