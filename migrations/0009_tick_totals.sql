-- depends: 0008_jobs_broker
-- What /stats and GET /scripts/{id} need per script, at a cost of O(scripts), not O(scripts x days):
-- `tick_totals` holds each script's tick_coverage rows summed up: stored ticks, lowest/highest id and time. It is
-- kept in the same transaction as the coverage rows it sums, by relative updates (stored = stored + n, LEAST,
-- GREATEST) from the ingest and the retention, so writers that race never lose each other's counts; the ingest
-- also counts what it stores per minute there. `missing` turns a day's
-- expected − stored into an indexed column, so a script's incomplete days are an index range, not a scan of its
-- days. An ingest still on the previous version during a deploy does not add to tick_totals; the maintenance
-- schedule recounts every script's totals from tick_coverage (tickstream.coverage.recount_totals).
CREATE TABLE tick_totals (
    script_id        INT UNSIGNED    NOT NULL,
    stored           BIGINT          NOT NULL,  -- signed: a relative update never fails on a transient negative sum
    first_trade_id   BIGINT UNSIGNED NOT NULL,
    last_trade_id    BIGINT UNSIGNED NOT NULL,
    first_traded_at  DATETIME(6)     NOT NULL,
    last_traded_at   DATETIME(6)     NOT NULL,
    -- Ticks stored per UTC minute of the database clock, in the minute of the last write that stored some and the
    -- one before it: what /stats shows as arriving, without counting rows.
    stored_minute              INT    NOT NULL DEFAULT 0,  -- minutes since the epoch; signed, so differences are
    stored_in_minute           BIGINT NOT NULL DEFAULT 0,
    stored_in_previous_minute  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (script_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- A day's expected − stored, and whether that is more than none: incomplete days are an index range, of all
-- scripts (/stats) or of one (the audit), ordered by day.
ALTER TABLE tick_coverage
    ADD COLUMN missing BIGINT GENERATED ALWAYS AS (GREATEST(CAST(last_trade_id AS SIGNED)
        - CAST(first_trade_id AS SIGNED) + 1 - CAST(stored AS SIGNED), 0)) STORED,
    ADD COLUMN incomplete BOOL GENERATED ALWAYS AS (CAST(last_trade_id AS SIGNED)
        - CAST(first_trade_id AS SIGNED) + 1 > CAST(stored AS SIGNED)) STORED,
    ADD KEY ix_tick_coverage_incomplete (incomplete, script_id);

INSERT INTO tick_totals (script_id, stored, first_trade_id, last_trade_id, first_traded_at, last_traded_at)
SELECT script_id, SUM(stored), MIN(first_trade_id), MAX(last_trade_id), MIN(first_traded_at), MAX(last_traded_at)
FROM tick_coverage GROUP BY script_id;
