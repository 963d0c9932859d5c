-- depends: 0006_candles_1m
-- The sparse time index (tickstream/time_index.py) replaces the secondary index (script_id, traded_at) of ticks:
-- ~26 B per stored tick there, one row per script and UTC minute here. The ingest widens a minute's bounds in
-- the same transaction as its ticks; readers take trade-id bounds here, then scan the primary key.
CREATE TABLE IF NOT EXISTS tick_minutes (  -- IF NOT EXISTS: a run cut off after this statement can run again
    script_id       INT UNSIGNED    NOT NULL,
    minute          INT UNSIGNED    NOT NULL,  -- minutes since the epoch, UTC, of traded_at
    first_trade_id  BIGINT UNSIGNED NOT NULL,  -- lowest and highest trade id traded in the minute
    last_trade_id   BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (script_id, minute)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Every stored tick, read from the old index (covering: script_id, traded_at and the primary key's trade_id; a
-- fifth of the table's bytes) before it goes. Rows an older ingest commits after this statement are not indexed:
-- `python -m tickstream.coverage rebuild` widens the buckets from the ticks (see the README's upgrade note).
INSERT INTO tick_minutes (script_id, minute, first_trade_id, last_trade_id)
SELECT script_id, TIMESTAMPDIFF(MINUTE, '1970-01-01', traded_at) AS m, MIN(trade_id), MAX(trade_id)
FROM ticks FORCE INDEX (ix_ticks_script_traded_at)
GROUP BY script_id, m
ON DUPLICATE KEY UPDATE first_trade_id = LEAST(first_trade_id, VALUES(first_trade_id)),
                        last_trade_id = GREATEST(last_trade_id, VALUES(last_trade_id));

ALTER TABLE ticks DROP INDEX ix_ticks_script_traded_at;
