"""The teacher's response cache: every answered request, keyed by a hash of its full body.

One SQLite file (WAL journal), shared by every run that points at it (default `<out_dir>/cache/teacher`).
Each answer is committed the moment it arrives, so a `kill -9` loses only requests still in flight; a
re-run replays the rest from here and pays for nothing twice. The key hashes the request body (model,
messages, generation parameters, response format and schema, seed) and the prompt version, so any change
to what would be asked makes a new entry while the old ones stay valid for runs that still use them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotaforge.config import stable_hash


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def request_key(body: dict[str, Any], prompt_version: str) -> str:
    """The cache key of one request: sha256 of its canonical JSON and the prompt version."""
    return stable_hash({"body": body, "prompt_version": prompt_version}, length=64)


class ResponseCache:
    """Get and put answers by key; safe across threads (one lock) and processes (SQLite locking)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives the process dying at any moment (kill -9); only power loss may drop the last few.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, content TEXT NOT NULL, finish_reason TEXT NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, task TEXT NOT NULL,"
            " created_at REAL NOT NULL)")

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._db.execute("SELECT content, finish_reason, prompt_tokens, completion_tokens FROM answers "
                                   "WHERE key = ?", (key,)).fetchone()
        return CachedAnswer(*row) if row else None

    def put(self, key: str, answer: CachedAnswer, task: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (key, answer.content, answer.finish_reason, answer.prompt_tokens,
                              answer.completion_tokens, task, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
