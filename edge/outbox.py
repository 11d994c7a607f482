"""Durable outbox: events are written here before publishing and deleted only on the broker's PUBACK."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class Outbox:
    """SQLite (WAL) queue of ``(event_id, topic, payload)``; bounded, oldest dropped first and counted."""

    def __init__(self, path: str | Path, max_events: int = 10000) -> None:
        if max_events < 1:
            raise ValueError(f"outbox max_events must be >= 1, got {max_events}")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "event_id TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    def add(self, event_id: str, topic: str, payload: str) -> int:
        """Store durably; returns how many old events were dropped to stay within ``max_events``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
                             (event_id, topic, payload))
            (depth,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            dropped = max(0, depth - self.max_events)
            if dropped:
                self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                                 (dropped,))
                self._db.execute("INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) "
                                 "DO UPDATE SET value = value + excluded.value", (dropped,))
            self._db.execute("COMMIT")
            return dropped

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[tuple[int, str, str, str]]:
        """Oldest first: ``(seq, event_id, topic, payload)`` with ``seq > after_seq``."""
        with self._lock:
            return self._db.execute("SELECT seq, event_id, topic, payload FROM outbox WHERE seq > ? ORDER BY seq "
                                    "LIMIT ?", (after_seq, limit)).fetchall()

    def remove(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
            return row[0] if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
