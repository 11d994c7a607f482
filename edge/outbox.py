"""Durable outbox: events are written here before publishing and deleted only on the broker's PUBACK.

The same file keeps each cough's label and the moment it was produced (table ``coughs``; never audio), written
in the transaction that stores its event, for the rolling counts (edge/counts.py); bounded in days.

The file is created 0600 and locked (``fcntl.flock`` on ``<outbox>.lock``) for the life of the process, so a
second daemon pointed at the same outbox is refused instead of delivering every event twice. Problems found at
start (a folder that cannot be created, a file that is not ours, a read-only file) raise :class:`OutboxError`
naming the path and the cause; write failures later raise :class:`sqlite3.Error` for the caller to handle.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from .counts import LOOKBACK_S, ClockReading, Recent

TABLES = {
    "outbox": ["seq", "event_id", "topic", "payload"],
    "counters": ["name", "value"],
    "coughs": ["event_id", "label", "wall_s", "boot_id", "boot_s"],
}
"""The tables (and their columns) of an outbox; a file holding anything else belongs to another program."""


class OutboxError(RuntimeError):
    """The outbox cannot be used; the message names the file and the cause."""


class Outbox:
    """SQLite (WAL) queue of ``(event_id, topic, payload)``; bounded, oldest dropped first and counted."""

    def __init__(self, path: str | Path, max_events: int = 10000) -> None:
        if max_events < 1:
            raise ValueError(f"outbox max_events must be >= 1, got {max_events}")
        self.path = str(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._lock_file = None  # a file object: garbage collection closes it, which drops the lock
        if self.path != ":memory:":
            self._prepare_file(Path(self.path))
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._check_foreign()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "event_id TEXT UNIQUE NOT NULL, topic TEXT NOT NULL, payload TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS coughs (event_id TEXT PRIMARY KEY, label TEXT NOT NULL, "
                             "wall_s REAL NOT NULL, boot_id TEXT NOT NULL, boot_s REAL NOT NULL)")
            self._db.execute("BEGIN IMMEDIATE")  # proves the file is writable now, not at the first cough
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._release()
            raise OutboxError(f"outbox {self.path} cannot be used: {exc}") from exc

    def _prepare_file(self, path: Path) -> None:
        """Create the folder and an owner-only file, and take the lock that keeps a second daemon out."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"outbox {path}: cannot create its folder {path.parent}: {exc.strerror}") from exc
        if path.exists() and not path.is_file():
            raise OutboxError(f"outbox {path} exists and is not a file")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._lock_file = open(os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o600), "r+b", buffering=0)
        except OSError as exc:
            raise OutboxError(f"outbox {path} cannot be created or opened for writing: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._lock_file.read(32).decode(errors="replace").strip() or "unknown"
            self._release()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise OutboxError(f"outbox {path} is in use by another edge process (pid {holder}); "
                                  "two daemons on one outbox would deliver every event twice") from exc
            raise OutboxError(f"outbox {path}: cannot lock {path}.lock: {exc.strerror}") from exc
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n".encode())

    def _check_foreign(self) -> None:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                "AND name NOT LIKE 'sqlite_%'").fetchall()
        for (table,) in rows:
            columns = [r[1] for r in self._db.execute(f"PRAGMA table_info('{table}')")]
            if TABLES.get(table) != columns:
                raise OutboxError(f"outbox {self.path} is an SQLite file of another program (table {table!r} "
                                  f"with columns {columns}); point device.outbox at a new file")

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the flock
            self._lock_file = None

    def add(self, event_id: str, topic: str, payload: str, cough: tuple[str, ClockReading] | None = None) -> int:
        """Store durably, with ``cough`` = ``(label, when produced)`` for the counts in the same transaction;
        returns how many old events were dropped to stay within ``max_events``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR IGNORE INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
                                 (event_id, topic, payload))
                if cough is not None:
                    label, at = cough
                    self._db.execute("INSERT OR IGNORE INTO coughs VALUES (?, ?, ?, ?, ?)",
                                     (event_id, label, at.wall_s, at.boot_id, at.boot_s))
                (depth,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                dropped = max(0, depth - self.max_events)
                if dropped:
                    self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq "
                                     "LIMIT ?)", (dropped,))
                    self._db.execute("INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) "
                                     "DO UPDATE SET value = value + excluded.value", (dropped,))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return dropped

    def add_cough(self, event_id: str, cough: tuple[str, ClockReading]) -> None:
        """Keep a cough for the counts whose event was delivered before the outbox could store it."""
        label, at = cough
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO coughs VALUES (?, ?, ?, ?, ?)",
                             (event_id, label, at.wall_s, at.boot_id, at.boot_s))

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

    # The coughs: ages come from the boot clock within this boot, else from the wall clock, never less than the
    # time since boot (see edge/counts.py).
    _AGE = "MAX(0.0, CASE WHEN boot_id = :boot_id THEN :boot_s - boot_s ELSE MAX(:wall_s - wall_s, :boot_s) END)"

    def recent_coughs(self, now: ClockReading) -> Recent:
        """The coughs within the counts' look-back, the latest one's age and how many are kept."""
        clock = {"boot_id": now.boot_id, "boot_s": now.boot_s, "wall_s": now.wall_s}
        with self._lock:
            rows = self._db.execute(f"SELECT age, label FROM (SELECT {self._AGE} AS age, label FROM coughs) "
                                    "WHERE age < :lookback", {**clock, "lookback": LOOKBACK_S}).fetchall()
            last, kept = self._db.execute(f"SELECT MIN({self._AGE}), COUNT(*) FROM coughs", clock).fetchone()
        return Recent(rows, last, kept)

    def reanchor_coughs(self, now: ClockReading) -> int:
        """Rewrite the wall times of this boot's coughs from the boot clock (after a wall-clock step, or when a
        new process starts), so that they keep their ages after the next reboot; returns how many moved."""
        with self._lock:
            cursor = self._db.execute("UPDATE coughs SET wall_s = :wall_s - (:boot_s - boot_s) WHERE boot_id = "
                                      ":boot_id AND ABS(wall_s - (:wall_s - (:boot_s - boot_s))) > 1.0",
                                      {"boot_id": now.boot_id, "boot_s": now.boot_s, "wall_s": now.wall_s})
            return cursor.rowcount

    def prune_coughs(self, now: ClockReading, keep_s: float, max_rows: int) -> int:
        """Forget coughs older than ``keep_s`` seconds, and the oldest beyond ``max_rows``; returns how many."""
        clock = {"boot_id": now.boot_id, "boot_s": now.boot_s, "wall_s": now.wall_s}
        with self._lock:
            old = self._db.execute(f"DELETE FROM coughs WHERE {self._AGE} >= :keep", {**clock, "keep": keep_s})
            (count,) = self._db.execute("SELECT COUNT(*) FROM coughs").fetchone()
            over = self._db.execute(f"DELETE FROM coughs WHERE event_id IN (SELECT event_id FROM coughs ORDER BY "
                                    f"{self._AGE} DESC LIMIT :n)", {**clock, "n": max(0, count - max_rows)})
            return old.rowcount + over.rowcount

    def flag(self, name: str) -> int:
        """A small persistent number kept beside the events (0 when never set)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            return row[0] if row else 0

    def set_flag(self, name: str, value: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = "
                             "excluded.value", (name, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._release()
