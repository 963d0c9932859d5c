-- depends: 0001_initial
-- tickstream schema, version 2: what makes completeness provable and reads independent of the size of `ticks`.
-- Every table here is small (O(scripts × days) or O(gaps)); none is read or written per stored row.

-- One row per script per UTC day of trade time, kept by the ingest in the same transaction as the ticks it stores.
-- `stored` counts rows really inserted (a redelivered duplicate adds nothing). For a venue with contiguous trade ids,
-- expected = last_trade_id - first_trade_id + 1 and missing = expected - stored: an incomplete day shows at once.
CREATE TABLE tick_coverage (
    script_id        INT UNSIGNED    NOT NULL,
    day              DATE            NOT NULL,
    stored           BIGINT UNSIGNED NOT NULL,
    first_trade_id   BIGINT UNSIGNED NOT NULL,
    last_trade_id    BIGINT UNSIGNED NOT NULL,
    first_traded_at  DATETIME(6)     NOT NULL,
    last_traded_at   DATETIME(6)     NOT NULL,
    audited_at       DATETIME(6)     NULL,      -- when an audit last compared this day with the ticks
    updated_at       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (script_id, day)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The gap ledger: every range of trade ids the producer knows it has not delivered, written before it is filled.
-- pending -> filling -> filled | unrecoverable (only on a definitive answer from the exchange, never a transport
-- error). next_trade_id is the resume point: a restart continues a gap from there.
CREATE TABLE gaps (
    id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    script_id        INT UNSIGNED    NOT NULL,
    first_trade_id   BIGINT UNSIGNED NOT NULL,
    last_trade_id    BIGINT UNSIGNED NOT NULL,
    next_trade_id    BIGINT UNSIGNED NOT NULL,
    cause            VARCHAR(32)     NOT NULL,  -- stream_jump | reconnect | restart | audit
    state            VARCHAR(16)     NOT NULL DEFAULT 'pending',
    attempts         INT UNSIGNED    NOT NULL DEFAULT 0,
    last_error       VARCHAR(500)    NULL,
    trades_filled    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    detected_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    filled_at        DATETIME(6)     NULL,
    updated_at       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_gaps_script_first (script_id, first_trade_id),
    KEY ix_gaps_state (state, script_id, id),
    KEY ix_gaps_script_state (script_id, state, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- What the producer is doing for each script, upserted at a low rate (one statement per broker every few seconds).
CREATE TABLE producer_status (
    script_id        INT UNSIGNED    NOT NULL,
    broker_id        INT UNSIGNED    NOT NULL,
    state            VARCHAR(32)     NOT NULL,  -- subscribed | unknown_symbol | backfilling | lagging | connecting
    detail           VARCHAR(500)    NULL,
    connection       VARCHAR(200)    NULL,
    last_trade_id    BIGINT UNSIGNED NULL,
    last_traded_at   DATETIME(6)     NULL,
    backfill_done    BIGINT UNSIGNED NULL,
    backfill_total   BIGINT UNSIGNED NULL,
    lag_ms_p50       INT UNSIGNED    NULL,      -- trade time to the producer's receive time, over a bounded sample
    lag_ms_p99       INT UNSIGNED    NULL,
    reported_at      DATETIME(6)     NOT NULL,
    PRIMARY KEY (script_id),
    KEY ix_producer_status_broker (broker_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Background work the API hands off (a purge of a script's ticks; retention): chunked, restartable from its cursor.
CREATE TABLE jobs (
    id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    kind             VARCHAR(32)     NOT NULL,  -- purge_script | retention
    script_id        INT UNSIGNED    NULL,
    state            VARCHAR(16)     NOT NULL DEFAULT 'queued',  -- queued | running | done | failed
    cursor_trade_id  BIGINT UNSIGNED NULL,      -- everything below it (for this script) is already deleted
    rows_deleted     BIGINT UNSIGNED NOT NULL DEFAULT 0,
    error            VARCHAR(500)    NULL,
    created_at       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    finished_at      DATETIME(6)     NULL,
    PRIMARY KEY (id),
    KEY ix_jobs_state (state, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
