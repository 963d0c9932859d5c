"""The producer's exchange adapters, one package per venue, behind one protocol (exchanges/base.py) and picked by
`brokers.type` (exchanges/registry.py). Everything outside this package is venue-neutral."""
