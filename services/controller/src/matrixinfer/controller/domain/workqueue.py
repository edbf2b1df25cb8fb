"""A work queue with Kubernetes controller semantics: a key is processed by one
worker at a time, adding a key that is already waiting is a no-op, a key added while
it is being processed is processed again afterwards, and failures are retried with
per-key exponential backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class WorkQueue:
    def __init__(self, base_delay_s: float = 0.1, max_delay_s: float = 30.0) -> None:
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s

    def add(self, key: Hashable) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay_s: float) -> None:
        if delay_s <= 0:
            self.add(key)
            return
        previous = self._timers.get(key)
        loop = asyncio.get_running_loop()
        if previous is not None:
            if previous.when() <= loop.time() + delay_s:
                return  # an earlier wake-up is already scheduled
            previous.cancel()
        self._timers[key] = loop.call_later(delay_s, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: Hashable) -> float:
        """Requeue after a failure; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(self._max_delay_s, self._base_delay_s * 2.0**failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    async def get(self) -> Hashable:
        key = await self._queue.get()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.put_nowait(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
