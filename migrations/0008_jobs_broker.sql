-- depends: 0007_tick_minutes
-- A broker's purge is a background job too (kind purge_broker): it names its broker here, and script_id with
-- cursor_trade_id say which of the broker's scripts it is deleting and how far it got.
ALTER TABLE jobs ADD COLUMN broker_id INT UNSIGNED NULL AFTER kind;
