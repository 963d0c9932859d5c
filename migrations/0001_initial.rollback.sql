DROP TABLE ticks;
DROP TABLE scripts;
DROP TABLE brokers;
