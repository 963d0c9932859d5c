"""`make bench` (`python -m bench`): throughput, latency, cost and cold start, each against a ceiling measured in the
same run. Stage modules: storage, ingest, e2e, latency, cost, coldstart; `bench.hotpaths` isolates the producer's and
the ingest function's hot paths for profiling."""
