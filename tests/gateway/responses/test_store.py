"""store.py: SQLiteResponseStore keeps, bounds and forgets stored responses."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from gateway.responses.store import SQLiteResponseStore, StoredResponse

pytestmark = pytest.mark.anyio


def stored(response_id: str, size: int = 10) -> StoredResponse:
    return StoredResponse(
        response_id,
        {"id": response_id, "object": "response", "padding": "x" * size},
        [{"id": "msg_1", "type": "message", "role": "user", "content": []}],
        [{"role": "user", "content": "hi"}],
    )


async def test_put_get_delete_round_trip(tmp_path: Path) -> None:
    store = SQLiteResponseStore(
        str(tmp_path / "a" / "r.sqlite3"), max_age_seconds=60, max_bytes=1 << 20
    )
    await store.put(stored("resp_1"))
    assert await store.get("resp_1") == stored("resp_1")
    assert await store.get("resp_2") is None
    assert await store.delete("resp_1") is True
    assert await store.delete("resp_1") is False
    assert await store.get("resp_1") is None
    store.close()
    mode = sqlite3.connect(tmp_path / "a" / "r.sqlite3").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


async def test_the_oldest_go_first_when_over_the_byte_bound() -> None:
    store = SQLiteResponseStore(":memory:", max_age_seconds=60, max_bytes=1 << 20)
    for index in range(5):
        await store.put(stored(f"resp_{index}", size=300_000))
    kept = [index for index in range(5) if await store.get(f"resp_{index}") is not None]
    assert kept == [2, 3, 4]  # 3 x ~300 kB fit in 1 MiB
    store.close()


async def test_too_old_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteResponseStore(":memory:", max_age_seconds=10, max_bytes=1 << 20)
    await store.put(stored("resp_old"))
    later = time.time() + 11
    monkeypatch.setattr(time, "time", lambda: later)
    assert await store.get("resp_old") is None  # expired on read
    await store.put(stored("resp_new"))  # and pruned on the next write
    monkeypatch.undo()
    assert await store.get("resp_new") is not None
    store.close()


async def test_concurrent_writes_and_reads(tmp_path: Path) -> None:
    store = SQLiteResponseStore(str(tmp_path / "r.sqlite3"), max_age_seconds=60, max_bytes=1 << 24)
    async with anyio.create_task_group() as tasks:
        for index in range(50):
            tasks.start_soon(store.put, stored(f"resp_{index}"))
    found = [await store.get(f"resp_{index}") for index in range(50)]
    assert all(item is not None for item in found)
    # A second store on the same file (another WORKERS process) sees them.
    other = SQLiteResponseStore(str(tmp_path / "r.sqlite3"), max_age_seconds=60, max_bytes=1 << 24)
    assert await other.get("resp_7") == stored("resp_7")
    other.close()
    store.close()
