-- depends: 0009_tick_totals
-- The lags of the ticks the ingest stores, sampled, per script and bucket (two significant digits of µs), counted
-- in the database clock's current minute and the one before (tickstream.lags): /stats' percentiles read a few rows
-- per script, never a tick. At most scripts x buckets rows: a bucket's row is reused minute after minute.
CREATE TABLE tick_lags (
    script_id           INT UNSIGNED    NOT NULL,
    bucket_us           BIGINT UNSIGNED NOT NULL,  -- the lag rounded down to two significant digits
    minute              INT             NOT NULL,  -- minutes since the epoch of the last write; signed, as in tick_totals
    in_minute           BIGINT          NOT NULL,
    in_previous_minute  BIGINT          NOT NULL DEFAULT 0,
    PRIMARY KEY (script_id, bucket_us)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
