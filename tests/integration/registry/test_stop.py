"""The registry's database work is never cut in the middle: a call whose client
goes away (and then the server's stop) leaves no connection half-closed, and the
store closes, so the process exits (before the fix, aiosqlite's close waited
forever and the registry hung on SIGTERM)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from matrixinfer.registry.adapters.db.store import SqlStore

pytestmark = pytest.mark.timeout(120)

# About a second of work in either database.
SLOW = text(
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 3000000) SELECT count(*) FROM c"
)


async def test_a_read_cancelled_twice_still_lets_the_store_close(
    database_url: str,
) -> None:
    store = await SqlStore.open(database_url)
    read = asyncio.create_task(store._read(SLOW))
    await asyncio.sleep(0.1)
    read.cancel()  # the client went away
    await asyncio.sleep(0.01)
    read.cancel()  # and the server stops
    with pytest.raises(asyncio.CancelledError):
        await read
    await asyncio.wait_for(store.close(), 30)
    await asyncio.sleep(0.2)
    left = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and not task.done()
    ]
    assert left == []
