"""The labeling database: one SQLite file (WAL) that holds the queue and every judgment.

Nothing is lost: each label is committed (``synchronous=FULL``, so a commit is on disk, not just
in the page cache) before the caller is told it was stored, and an undo marks a label undone
rather than deleting it. One server at a time: ``ServerLock`` holds an advisory lock on
``<db>.lock`` that the kernel drops when the process dies, so a SIGKILLed server leaves nothing
to clean up and a second live server refuses to start.

Choices are stored against the pair's canonical order (``a`` = ``pairs.response_a``); which
response was on the left is stored beside each assignment and label.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA_VERSION = 1
CHOICES = ("a", "b", "tie", "both_bad")
ORDERS = ("random", "uncertainty", "disagreement")  # the queue orders (label/selection.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, source TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    text TEXT NOT NULL, model TEXT NOT NULL, sampling TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    response_a INTEGER NOT NULL REFERENCES responses(id),
    response_b INTEGER NOT NULL REFERENCES responses(id),
    priority REAL NOT NULL DEFAULT 0, want INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    left_response INTEGER NOT NULL, assigned REAL NOT NULL,
    PRIMARY KEY (pair_id, annotator_id));
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, pair_id INTEGER NOT NULL REFERENCES pairs(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    left_response INTEGER NOT NULL, reason TEXT, ideal TEXT,
    created REAL NOT NULL, undone REAL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_label
    ON labels (pair_id, annotator_id) WHERE undone IS NULL;
CREATE INDEX IF NOT EXISTS pairs_queue ON pairs (priority DESC, id);
"""


class LabelDBError(RuntimeError):
    """The database cannot be used as asked (a newer schema, a second server, a bad label)."""


class ServerLock:
    """An exclusive lock on ``<db>.lock`` holding the owner's pid, for one server per database."""

    def __init__(self, db_path: str | Path) -> None:
        self.path = Path(f"{db_path}.lock")
        self._file = open(self.path, "a+")  # noqa: SIM115 -- held open for the lock's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            owner = self._file.read().strip() or "unknown"
            self._file.close()
            raise LabelDBError(
                f"{db_path} is already served by another label server (pid {owner}, lock "
                f"{self.path}); stop it first, or give this one another --db"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


class LabelDB:
    """The schema and every read and write the app, the sampler and the exporters make.

    One connection guarded by a lock: SQLite runs one writer at a time anyway, and the web
    server calls in from its thread pool.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self._check_schema()

    def _check_schema(self) -> None:
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if has_meta:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise LabelDBError(
                    f"{self.path} has schema version {version}, newer than this lightning_rlhf "
                    f"reads ({SCHEMA_VERSION}); upgrade lightning_rlhf to open it (the file was "
                    "left untouched)"
                )
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def transaction(self):
        return _Transaction(self)

    def close(self) -> None:
        self.conn.close()

    # --- filling the queue -------------------------------------------------------------------

    def add_prompt(self, text: str, source: str = "") -> int:
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO prompts (text, source, created) VALUES (?, ?, ?)",
                (text, source, time.time()),
            )
            return self.conn.execute("SELECT id FROM prompts WHERE text=?", (text,)).fetchone()[0]

    def add_pair(
        self,
        prompt: str,
        responses: tuple[str, str],
        models: tuple[str, str],
        sampling: dict,
        priority: float = 0.0,
        want: int = 1,
        source: str = "",
    ) -> int:
        """Store a prompt (once), its two responses with the model and options that made each,
        and the pair joining them; returns the pair's id."""
        now = time.time()
        with self.transaction():
            prompt_id = self.add_prompt(prompt, source)
            ids = [
                self.conn.execute(
                    "INSERT INTO responses (prompt_id, text, model, sampling, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (prompt_id, text, model, json.dumps(sampling, sort_keys=True), now),
                ).lastrowid
                for text, model in zip(responses, models)
            ]
            return self.conn.execute(
                "INSERT INTO pairs (prompt_id, response_a, response_b, priority, want, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (prompt_id, ids[0], ids[1], priority, want, now),
            ).lastrowid

    def count_pairs(self, models: tuple[str, str] | None = None) -> int:
        if models is None:
            return self.conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        return self.conn.execute(
            "SELECT COUNT(*) FROM pairs p JOIN responses a ON a.id = p.response_a "
            "JOIN responses b ON b.id = p.response_b WHERE a.model = ? AND b.model = ?",
            models,
        ).fetchone()[0]

    def queued_prompts(self, models: tuple[str, str]) -> set[str]:
        rows = self.conn.execute(
            "SELECT pr.text FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id "
            "JOIN responses a ON a.id = p.response_a JOIN responses b ON b.id = p.response_b "
            "WHERE a.model = ? AND b.model = ?",
            models,
        )
        return {r[0] for r in rows}

    def open_pairs(self) -> list[sqlite3.Row]:
        """Pairs still short of their wanted labels, with both texts (for re-ranking)."""
        with self._lock:
            return self.conn.execute(
                "SELECT p.id, pr.text AS prompt, a.text AS text_a, b.text AS text_b FROM pairs p "
                "JOIN prompts pr ON pr.id = p.prompt_id JOIN responses a ON a.id = p.response_a "
                "JOIN responses b ON b.id = p.response_b WHERE p.want > "
                "(SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.id AND l.undone IS NULL) "
                "ORDER BY p.id"
            ).fetchall()

    def set_priorities(self, priorities: dict[int, float]) -> None:
        with self.transaction():
            self.conn.executemany(
                "UPDATE pairs SET priority = ? WHERE id = ?",
                [(float(v), int(k)) for k, v in priorities.items()],
            )

    # --- annotators ----------------------------------------------------------------------------

    def ensure_annotator(self, name: str, token: str | None = None) -> int:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO annotators (name, token, created) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET token = excluded.token",
                (name, token, time.time()),
            )
            return self.annotator_id(name)

    def annotator_id(self, name: str) -> int:
        row = self.conn.execute("SELECT id FROM annotators WHERE name=?", (name,)).fetchone()
        if row is None:
            raise LabelDBError(f"no annotator named {name!r} in {self.path}")
        return row[0]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the database's lock; nested uses join the outer
    one. IMMEDIATE takes the write lock at the start, so two writers never both read then write."""

    def __init__(self, db: LabelDB) -> None:
        self.db = db
        self.outer = False

    def __enter__(self):
        self.db._lock.acquire()
        self.outer = not self.db.conn.in_transaction
        if self.outer:
            self.db.conn.execute("BEGIN IMMEDIATE")
        return self.db.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.outer:
                self.db.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.db._lock.release()
