"""Storing decoded tick batches: the logic behind the ingest Lambda, free of Lambda types.

One `TickIngestor` lives per warm container. It opens its MySQL connection lazily (so a cold start costs no
connection until there is work), keeps it between invocations, and reconnects once when the server has gone away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pymysql

from tickstream.db import CONNECTION_ERRORS, connect
from tickstream.settings import DatabaseSettings
from tickstream.tick_store import TickStore
from tickstream.ticks import Tick


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    stored: int
    duplicates: int
    unknown_script_ticks: int
    unknown_script_ids: frozenset[int]


class TickIngestor:
    def __init__(self, db: DatabaseSettings, open_store: Callable[[], TickStore] | None = None) -> None:
        self._open_store = open_store or (lambda: TickStore(connect(db)))
        self._store: TickStore | None = None
        self._known_scripts: set[int] = set()

    def store(self, ticks: Sequence[Tick]) -> StoreOutcome:
        """Insert `ticks` idempotently and commit. Raises if MySQL cannot be reached: nothing is half-done."""
        try:
            return self._store_once(ticks)
        except CONNECTION_ERRORS:
            self.close()  # the server went away (restart, failover, idle timeout): one fresh try
            return self._store_once(ticks)

    def _store_once(self, ticks: Sequence[Tick]) -> StoreOutcome:
        store = self._connected_store()
        known = self._known_script_ids(store, {tick.script_id for tick in ticks})
        storable = [tick for tick in ticks if tick.script_id in known]
        result = store.insert_ticks(storable)
        unknown_ids = frozenset(tick.script_id for tick in ticks if tick.script_id not in known)
        return StoreOutcome(result.inserted, result.duplicates, len(ticks) - len(storable), unknown_ids)

    def _known_script_ids(self, store: TickStore, wanted: set[int]) -> set[int]:
        """Cached ids of existing scripts, read again whenever a batch names one the cache lacks: a script created
        a moment ago must never be mistaken for a deleted one (its ticks would be dropped)."""
        if not wanted <= self._known_scripts:
            self._known_scripts = store.existing_script_ids()
        return self._known_scripts

    def _connected_store(self) -> TickStore:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            with contextlib.suppress(pymysql.err.Error):
                store.close()
