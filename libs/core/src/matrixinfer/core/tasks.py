"""Work that must not be cut in the middle when its caller goes away.

A gRPC handler is cancelled when its client cancels, when its deadline passes,
or when the server stops. Database work cancelled half-way is worse than work
finished for nobody: SQLAlchemy then terminates the connection, and with
aiosqlite that close can wait forever (``close()`` queues onto a worker thread
that a forced stop already ended), so the process never exits. Work run through
:class:`Uninterrupted` finishes (or fails) in a task of its own; the cancelled
caller returns at once, and ``drain`` waits for what is left before the
resources it uses are closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Uninterrupted:
    """Runs coroutines to their end even when the awaiting caller is cancelled."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Its caller may be gone: retrieve the outcome so that a failure nobody
        # awaited is not reported as "never retrieved".
        if not task.cancelled():
            task.exception()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float) -> None:
        """Wait for the work in flight, ``timeout_s`` at most; what is still
        running then is cancelled (and logged)."""
        if not self._tasks:
            return
        tasks = set(self._tasks)
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        if late:
            log.warning(
                "%d task(s) still running after %.1f s; cancelling them",
                len(late),
                timeout_s,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
