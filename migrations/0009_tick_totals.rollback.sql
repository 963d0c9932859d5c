ALTER TABLE tick_coverage DROP KEY ix_tick_coverage_missing, DROP COLUMN missing;
DROP TABLE tick_totals;
