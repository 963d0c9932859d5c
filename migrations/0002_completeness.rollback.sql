DROP TABLE jobs;
DROP TABLE producer_status;
DROP TABLE gaps;
DROP TABLE tick_coverage;
