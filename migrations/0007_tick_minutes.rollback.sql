-- Puts the secondary index back (built from the ticks) before the time index goes: nothing is lost either way.
ALTER TABLE ticks ADD INDEX ix_ticks_script_traded_at (script_id, traded_at);
DROP TABLE tick_minutes;
