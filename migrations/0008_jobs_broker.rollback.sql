ALTER TABLE jobs DROP COLUMN broker_id;
