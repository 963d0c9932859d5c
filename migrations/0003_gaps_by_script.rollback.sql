DROP INDEX ix_gaps_script_id ON gaps;
