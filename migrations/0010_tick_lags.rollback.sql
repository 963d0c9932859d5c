DROP TABLE tick_lags;
