"""Fan-out of stored events to watchers.

One hub per registry process reads new events from the store once (however many
watchers there are) whenever it is woken: by a local commit, by the store's change feed
(PostgreSQL LISTEN/NOTIFY, so writes made through other registry processes arrive too)
or by a periodic poll that keeps things moving if a notification is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from matrixinfer.core.errors import Expired, ResourceExhausted
from matrixinfer.registry.domain.store import Event, Store

log = logging.getLogger(__name__)

EventFilter = Callable[[Event], bool]


@dataclass(eq=False)
class Subscription:
    matches: EventFilter
    queue: asyncio.Queue[Event | BaseException]
    last_rv: int


@dataclass
class WatchHub:
    store: Store
    poll_interval_s: float = 1.0
    queue_size: int = 10_000
    read_batch: int = 1000
    compact_every_s: float = 60.0
    keep_events: int = 100_000
    event_retention_s: float = 3600.0
    last_rv: int = 0
    _subs: set[Subscription] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Newest resourceVersion known to be committed; a wake-up at or below last_rv
    #: (e.g. the NOTIFY echo of our own write) costs no query.
    _known_rv: int = 0
    #: Events committed by this process, delivered without reading them back.
    _local: dict[int, Event] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.last_rv = await self.store.current_resource_version()
        self.store.on_commit(self._committed)
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="watch-dispatch"),
            asyncio.create_task(self._feed_loop(), name="watch-feed"),
            asyncio.create_task(self._compact_loop(), name="watch-compact"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in list(self._subs):
            self._close(sub, None)

    def wake(self) -> None:
        """Read new events now, whatever is known (used by the periodic poll)."""
        self._known_rv = max(self._known_rv, self.last_rv + 1)
        self._wake.set()

    def _committed(self, committed: list[Event]) -> None:
        """Events this process just committed: kept for delivery in order."""
        for event in committed:
            if event.resource_version > self.last_rv:
                self._local[event.resource_version] = event
        self._notified(committed[-1].resource_version)

    def _notified(self, resource_version: int) -> None:
        """Something up to ``resource_version`` committed (0: unknown)."""
        if resource_version == 0:
            self.wake()
        elif resource_version > self.last_rv:
            self._known_rv = max(self._known_rv, resource_version)
            self._wake.set()

    async def subscribe(self, after_rv: int, matches: EventFilter) -> Subscription:
        """Events after ``after_rv`` that ``matches``; Expired if they are gone."""
        async with self._lock:
            sub = Subscription(matches, asyncio.Queue(self.queue_size), after_rv)
            cursor = after_rv
            while cursor < self.last_rv:
                backlog = await self.store.events_after(cursor, self.read_batch)
                backlog = [e for e in backlog if e.resource_version <= self.last_rv]
                if not backlog:
                    break
                for event in backlog:
                    if matches(event):
                        if sub.queue.full():
                            raise ResourceExhausted(
                                "too many changes to replay; list again and watch "
                                "from the list's resourceVersion"
                            )
                        sub.queue.put_nowait(event)
                cursor = backlog[-1].resource_version
            # Checked after reading: a compaction racing the read is caught too.
            floor = await self.store.compacted_resource_version()
            if after_rv < floor:
                raise Expired(
                    f"resourceVersion {after_rv} is too old (history starts after "
                    f"{floor}); list again and watch from the list's resourceVersion"
                )
            sub.last_rv = max(after_rv, self.last_rv)
            self._subs.add(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def _close(self, sub: Subscription, error: BaseException | None) -> None:
        self._subs.discard(sub)
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(error or asyncio.CancelledError())

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._known_rv <= self.last_rv:
                continue
            try:
                await self._dispatch()
            except Exception:
                log.exception("watch dispatch failed; retrying on the next wake-up")
                await asyncio.sleep(self.poll_interval_s)

    async def _dispatch(self) -> None:
        async with self._lock:
            while self._known_rv > self.last_rv:
                # resourceVersions are gap-free and handed out in commit order, so
                # the next one is either our own (in hand) or must be read: it was
                # written by another process, or our commit's callback is still due.
                batch: list[Event] = []
                rv = self.last_rv + 1
                while rv in self._local:
                    batch.append(self._local.pop(rv))
                    rv += 1
                if not batch:
                    batch = await self.store.events_after(self.last_rv, self.read_batch)
                    if not batch:
                        return  # known_rv came from a poll: nothing new after all
                self._deliver(batch)
                self.last_rv = batch[-1].resource_version
                for stale in [r for r in self._local if r <= self.last_rv]:
                    del self._local[stale]
                for sub in self._subs:
                    sub.last_rv = max(sub.last_rv, self.last_rv)

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            for sub in list(self._subs):
                if event.resource_version <= sub.last_rv or not sub.matches(event):
                    continue
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._subs.discard(sub)
                    # Make room for the error so the watcher learns why.
                    with contextlib.suppress(asyncio.QueueEmpty):
                        sub.queue.get_nowait()
                    sub.queue.put_nowait(
                        ResourceExhausted(
                            "watcher fell too far behind; list again and watch "
                            "from the list's resourceVersion"
                        )
                    )

    async def _feed_loop(self) -> None:
        """Wake on the store's change feed, and poll as a safety net."""

        async def follow() -> None:
            while True:
                try:
                    async for resource_version in self.store.changes():
                        self._notified(resource_version)
                except Exception as e:
                    log.warning("change feed lost (%s); reconnecting", e)
                await asyncio.sleep(self.poll_interval_s)

        follower = asyncio.create_task(follow(), name="watch-follow")
        try:
            while True:
                await asyncio.sleep(self.poll_interval_s)
                self.wake()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _compact_loop(self) -> None:
        while True:
            await asyncio.sleep(self.compact_every_s)
            try:
                started = time.monotonic()
                removed = await self.store.compact(
                    self.keep_events, self.event_retention_s
                )
                if removed:
                    log.info(
                        "compacted %d events in %.3f s",
                        removed,
                        time.monotonic() - started,
                    )
            except Exception:
                log.exception("event compaction failed; trying again later")
