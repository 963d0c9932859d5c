ALTER TABLE tick_coverage DROP KEY ix_tick_coverage_incomplete, DROP COLUMN incomplete, DROP COLUMN missing;
DROP TABLE tick_totals;
