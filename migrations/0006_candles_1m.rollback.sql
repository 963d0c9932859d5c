DROP TABLE candles_1m;
