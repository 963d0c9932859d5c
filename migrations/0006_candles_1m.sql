-- depends: 0002_completeness
-- One-minute candles of sealed minutes: a cache of what GET /scripts/{id}/candles computes from the ticks, so a
-- day of bars reads 1,440 rows instead of every trade. A minute is stored only once it can no longer change: its
-- trade ids are contiguous and the ids just before and after it are stored, in the minutes before and after it
-- (ids increase with trade time), so no later tick can fall into it. Rebuildable: deleting rows loses nothing.
CREATE TABLE candles_1m (
    script_id       INT UNSIGNED    NOT NULL,
    minute          INT UNSIGNED    NOT NULL,  -- minutes since the epoch, UTC
    first_trade_id  BIGINT UNSIGNED NOT NULL,
    last_trade_id   BIGINT UNSIGNED NOT NULL,
    open            DECIMAL(36, 18) NOT NULL,
    high            DECIMAL(36, 18) NOT NULL,
    low             DECIMAL(36, 18) NOT NULL,
    close           DECIMAL(36, 18) NOT NULL,
    volume          DECIMAL(65, 18) NOT NULL,
    quote_volume    DECIMAL(65, 30) NOT NULL,
    trades          INT UNSIGNED    NOT NULL,
    PRIMARY KEY (script_id, minute)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
