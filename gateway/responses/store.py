"""Where stored responses live: the `ResponseStore` interface and its SQLite implementation.

A stored response is what `GET /v1/responses/{id}` answers, its input items (for
`input_items`), and the conversation up to and including it as chat messages, media already
prepared (images as the JPEG data: URLs SGLang got, audio as its clips or transcript), so a
`previous_response_id` continues it without fetching or decoding anything again.

`SQLiteResponseStore` is the default: one file (`RESPONSES_STORE_PATH`, created on start, WAL
mode so that the `WORKERS` processes of one host can share it), every call run in a worker
thread so that the event loop never waits on the disk. What is kept is bounded by age
(`RESPONSES_STORE_MAX_AGE_SECONDS`) and total size (`RESPONSES_STORE_MAX_BYTES`; the oldest go
first). Replicas on several hosts share a store by implementing `ResponseStore` over a shared
database; nothing else in the gateway knows where responses live.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import orjson


@dataclass(frozen=True)
class StoredResponse:
    """One response as stored."""

    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]  # chat messages, without the request's instructions


class ResponseStore(Protocol):
    """The store the Responses API needs; every method may be called concurrently."""

    async def put(self, stored: StoredResponse) -> None: ...

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str) -> bool: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    response BLOB NOT NULL,
    input_items BLOB NOT NULL,
    history BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""


class SQLiteResponseStore:
    """`ResponseStore` in one SQLite file (or `:memory:`)."""

    def __init__(self, path: str, *, max_age_seconds: float, max_bytes: int) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._max_age = max_age_seconds
        self._max_bytes = max_bytes
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, fast
        self._db.execute("PRAGMA busy_timeout=5000")  # other workers' writes
        self._db.executescript(_SCHEMA)

    async def put(self, stored: StoredResponse) -> None:
        await anyio.to_thread.run_sync(self._put, stored)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await anyio.to_thread.run_sync(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete, response_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _put(self, stored: StoredResponse) -> None:
        blobs = [orjson.dumps(x) for x in (stored.response, stored.input_items, stored.history)]
        size = sum(len(blob) for blob in blobs)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                    (stored.id, now, size, *blobs),
                )
                self._prune(now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _prune(self, now: float) -> None:
        """Drop what is too old, then the oldest until the total fits `max_bytes`."""
        self._db.execute("DELETE FROM responses WHERE created_at < ?", (now - self._max_age,))
        (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
        if total <= self._max_bytes:
            return
        excess = total - self._max_bytes
        rows = self._db.execute("SELECT id, size FROM responses ORDER BY created_at")
        doomed = []
        for response_id, size in rows:
            if excess <= 0:
                break
            doomed.append((response_id,))
            excess -= size
        self._db.executemany("DELETE FROM responses WHERE id = ?", doomed)

    def _get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT created_at, response, input_items, history FROM responses WHERE id = ?",
                (response_id,),
            ).fetchone()
        if row is None or row[0] < time.time() - self._max_age:
            return None
        return StoredResponse(
            response_id, orjson.loads(row[1]), orjson.loads(row[2]), orjson.loads(row[3])
        )

    def _delete(self, response_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0
